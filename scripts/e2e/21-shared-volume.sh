#!/usr/bin/env bash
# scripts/e2e/21-shared-volume.sh: one volume mounted three times (two on-demand mounts
# and a --read-only one): exactly one writes at a time. The first write takes the writer
# lease; the other mounts get EROFS ("Read-only file system") and log who holds it, yet
# see the writer's changes within seconds; an idle writer gives the lease back and
# another mount can then write. status shows the mounts and the lease holder.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
# A log file each, so that each mount's lines can be told apart.
mount_volume "$VOLUME" --lease-idle 2 --log-file "$WORK/a.log"
A=$MNT
mount_volume "$VOLUME" --lease-idle 2 --log-file "$WORK/b.log"
B=$MNT
mount_volume "$VOLUME" --read-only --log-file "$WORK/r.log"
R=$MNT

# json_string KEY: the string values of KEY in JSON on stdin, one a line.
json_string() { sed -n "s/^ *\"$1\" *: *\"\\(.*\\)\",\\{0,1\\} *\$/\\1/p" | sed 's|\\/|/|g'; }
# lease_holder: the mountpoint of the mount holding the writer lease (empty when free).
lease_holder() {
    netvol status "$VOLUME" --json | awk '
        function value(line) { sub(/^[^:]*: *"/, "", line); sub(/",? *$/, "", line); gsub(/\\\//, "/", line); return line }
        /"holder" *:/ { holder = value($0) }
        /"id" *:/ { id = value($0) }
        /"mountpoint" *:/ { if (holder != "" && id == holder) print value($0) }'
}
lease_is() { [[ $(lease_holder) == "$1" ]]; }
# sees MOUNTPOINT/FILE TEXT: the file reads TEXT there.
sees() { [[ $(cat "$1" 2>/dev/null) == "$2" ]]; }

step "status lists three mounts and no writer"
mounts=$(netvol status "$VOLUME" --json | json_string mountpoint | LC_ALL=C sort)
assert_equal "$(printf '%s\n' "$A" "$B" "$R" | LC_ALL=C sort)" "$mounts" "mountpoints in status --json"
assert_equal "" "$(lease_holder)" "the lease holder before any write"

step "the first write takes the lease; the other mounts see the data"
printf 'from a' >"$A/f"
assert_equal "$A" "$(lease_holder)" "the lease holder after a write through A"
wait_until 10 sees "$B/f" "from a"
wait_until 10 sees "$R/f" "from a"
assert_contains "$(netvol status "$VOLUME")" "^writer: +.*token [0-9]+" "netvol status"

step "while A writes, B and the read-only mount get EROFS"
assert_fails_with EROFS touch "$B/new"
assert_fails_with EROFS mkdir "$B/dir"
assert_fails_with EROFS rm "$B/f"
append_to() { printf x | dd of="$1" oflag=append conv=notrunc status=none; }
assert_fails_with EROFS append_to "$B/f"
assert_fails_with EROFS touch "$R/new"
assert_fails_with EROFS rm "$R/f"
assert_equal "from a" "$(cat "$A/f")" "the file after the refused changes"
assert_fails_with ENOENT stat "$A/new"
assert_contains "$(mount_log "$B")" "write refused: the writer lease is held by" "B's log"
printf ' and more' >>"$A/f"
wait_until 10 sees "$B/f" "from a and more"

step "an idle writer gives the lease back; then B writes and A sees it"
wait_until 20 lease_is ""
printf 'from b' >"$B/g"
assert_equal "$B" "$(lease_holder)" "the lease holder after a write through B"
wait_until 10 sees "$A/g" "from b"
assert_fails_with EROFS touch "$A/from-a-again"
assert_fails_with EROFS touch "$R/g"

step "a change to a file another mount has open shows there at the next open"
exec 3<"$A/f"
printf 'rewritten by b' >"$B/f"
wait_until 10 sees "$A/f" "rewritten by b"
exec 3<&-

step "all mounts unmount cleanly; the volume holds every change"
unmount_volume "$R"
unmount_volume "$A"
unmount_volume "$B"
assert_equal "" "$(daemon_pid "$VOLUME")" "mounts in status after unmounting all"
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
mount_volume
assert_equal "rewritten by b" "$(cat "$MNT/f")"
assert_equal "from b" "$(cat "$MNT/g")"
unmount_volume
