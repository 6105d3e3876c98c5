#!/usr/bin/env bash
# scripts/e2e/29-systemd.sh: the unit scripts/systemd/netvol@.service passes
# `systemd-analyze verify` without a word, and the daemon behaves as its Type=notify
# promises: started as ExecStart starts it (here with a NOTIFY_SOCKET of our own, as
# systemd would give it), it says READY=1 only once the mount answers, and on SIGTERM
# (systemctl stop) it says STOPPING=1, commits, unmounts and exits 0.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_fuse
require_program systemd-analyze python3

unit=$REPO/scripts/systemd/netvol@.service
[[ -f $unit ]] || fail "$unit is missing"

step "systemd-analyze verify finds nothing to say"
units=$WORK/units
mkdir "$units"
# The unit as installed, but running the binary under test.
sed "s|/usr/local/bin/netvol|$NETVOL|g" "$unit" >"$units/netvol@.service"
verify=$(cd "$units" && with_timeout 60 systemd-analyze verify --man=no "$units/netvol@models.service" 2>&1) ||
    { printf '%s\n' "$verify" >&2; fail "systemd-analyze verify failed"; }
[[ -z $verify ]] || { printf '%s\n' "$verify" >&2; fail "systemd-analyze verify warns (above)"; }

step "started as ExecStart starts it, the daemon says READY=1 once the mount answers"
make_volume --size 1G
target=$WORK/mnt
mkdir "$target"
# In the foreground the daemon logs to stderr, which systemd hands to the journal.
options=""
if is_network_volume "$VOLUME"; then options="--cache-dir $WORK/cache"; fi
# systemd's side of sd_notify: a datagram socket; each message, and whether the mount
# answered at the moment it came, goes to a file.
python3 - "$WORK/notify.sock" "$WORK/notifications" "$target" <<'PY' &
import os, socket, sys
path, out, target = sys.argv[1:4]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
with open(out, "w") as log:
    while True:
        message = sock.recv(4096).decode()
        answers = os.path.ismount(target)
        log.write("%s mounted=%s\n" % (message.replace("\n", " "), answers))
        log.flush()
        if "STOPPING=1" in message:
            break
PY
listener=$!
wait_until 10 test -S "$WORK/notify.sock"
# ExecStart as systemd expands it with an /etc/netvol/NAME.conf: ${VAR} is one word,
# $VAR splits into words.
read -ra words <<<"$(sed -n 's/^ExecStart=//p' "$units/netvol@.service")"
command=()
for word in "${words[@]}"; do
    case $word in
        '${NETVOL_VOLUME}') command+=("$VOLUME") ;;
        '${NETVOL_MOUNTPOINT}') command+=("$target") ;;
        '$NETVOL_OPTIONS') read -ra split <<<"$options"; command+=("${split[@]}") ;;
        '$'*) fail "ExecStart uses $word, which this test does not know" ;;
        *) command+=("$word") ;;
    esac
done
[[ ${command[0]} == "$NETVOL" ]] || fail "ExecStart does not start netvol: ${command[*]}"
NOTIFY_SOCKET=$WORK/notify.sock setsid "${command[@]}" 2>"$WORK/stderr" &
daemon=$!
E2E_MOUNTS+=("$target")
E2E_LOG[$target]=$WORK/stderr
E2E_LOG_START[$target]=0
E2E_PID[$target]=$daemon
ready() { grep -q "READY=1" "$WORK/notifications" 2>/dev/null; }
wait_until 60 ready
grep "READY=1" "$WORK/notifications" | grep -q "mounted=True" ||
    fail "READY=1 came before the mount answered: $(cat "$WORK/notifications")"
grep "READY=1" "$WORK/notifications" | grep -q "MAINPID=$daemon" ||
    fail "READY=1 does not name the daemon's pid $daemon: $(cat "$WORK/notifications")"
printf 'under systemd' >"$target/f"

step "SIGTERM (systemctl stop): STOPPING=1, everything committed, unmounted, exit 0"
kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
assert_equal 0 "$status" "the daemon's exit status after SIGTERM"
wait "$listener" || fail "the notify listener failed"
grep -q "STOPPING=1" "$WORK/notifications" || fail "no STOPPING=1: $(cat "$WORK/notifications")"
expect_clean_exit "$target"
mount_volume
assert_equal "under systemd" "$(cat "$MNT/f")"
unmount_volume
