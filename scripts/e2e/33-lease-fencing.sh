#!/usr/bin/env bash
# scripts/e2e/33-lease-fencing.sh: a writer stopped with SIGSTOP past its lease's expiry
# while another takes the lease and writes, then SIGCONT: the old writer's buffered and
# later writes are refused, and the volume holds exactly the new writer's data.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME" --lease-ttl 3 --lease-idle 600
A=$MNT
A_PID=$MNT_PID
mount_volume "$VOLUME" --lease-ttl 3
B=$MNT

printf 'AAAA' >"$A/f"

step "a process on A buffers a write, then A's daemon is stopped"
# The writer keeps its descriptor open across the pause and reports how close ends.
python3 - "$A/f" "$WORK" <<'PY' &
import os, sys, time
path, work = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_WRONLY)
os.pwrite(fd, b"STALE-FROM-A", 0)
open(os.path.join(work, "buffered"), "w").close()
while not os.path.exists(os.path.join(work, "go")):
    time.sleep(0.05)
try:
    os.close(fd)
    result = "closed"
except OSError as error:
    result = os.strerror(error.errno)
with open(os.path.join(work, "close-result"), "w") as out:
    out.write(result)
PY
writer=$!
wait_until 10 test -e "$WORK/buffered"
kill -STOP "$A_PID"

step "past A's expiry, B takes the lease and writes"
b_writes() { sh -c "printf BBBB > '$B/f'" 2>/dev/null; }
wait_until 12 b_writes
printf 'only B' >"$B/g"

step "A resumes: everything it tries is refused"
kill -CONT "$A_PID"
touch "$WORK/go"
wait "$writer"
result=$(cat "$WORK/close-result")
assert_equal "Input/output error" "$result" "close of A's buffered write"
assert_fails_with EROFS sh -c "printf late > '$A/f'"
assert_fails_with EROFS sh -c "printf late > '$A/new'"
mount_log "$A" | grep -q "lost the writer lease" || fail "A's log does not say it lost the lease"

step "the volume holds exactly B's data"
assert_equal BBBB "$(cat "$B/f")"
assert_equal "only B" "$(cat "$B/g")"
[[ ! -e $B/new ]] || fail "A's late file exists"
assert_equal BBBB "$(cat "$A/f")"
unmount_volume "$A"
unmount_volume "$B"
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
