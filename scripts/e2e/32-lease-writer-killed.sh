#!/usr/bin/env bash
# scripts/e2e/32-lease-writer-killed.sh: kill -9 of the writer's daemon. After the lease
# ttl another mount takes over; every file the dead writer fsync'd is intact and nothing
# half-written is visible.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME" --lease-ttl 3
A=$MNT
A_PID=$MNT_PID
mount_volume "$VOLUME" --lease-ttl 3
B=$MNT

step "A writes and fsyncs some files, and leaves one half-written"
head -c 5M /dev/urandom >"$WORK/synced"
dd if="$WORK/synced" of="$A/synced" bs=1M conv=fsync status=none
printf 'small and synced' >"$A/small"
sync "$A/small"
printf 'old contents' >"$A/rewritten"
sync "$A/rewritten"
# One process writes without ever closing (every close, even of a dup, commits): a new
# file, and new bytes over committed ones. Both stay buffered in A.
python3 - "$A/half" "$A/rewritten" "$WORK/buffered" <<'PY' &
import os, sys, time
half = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(half, os.urandom(300 * 1024))
rewritten = os.open(sys.argv[2], os.O_RDWR)
os.pwrite(rewritten, b"NEW", 0)
open(sys.argv[3], "w").close()
time.sleep(600)
PY
holder=$!
wait_until 10 test -e "$WORK/buffered"

step "kill -9 A's daemon"
kill -KILL "$A_PID"
wait_until 10 daemon_gone "$A_PID"
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true

step "B is refused until the ttl runs out, then takes the lease"
b_writes() { sh -c "printf b > '$B/from-b'" 2>/dev/null; }
wait_until 12 b_writes
assert_equal_files "$WORK/synced" "$B/synced"
assert_equal "small and synced" "$(cat "$B/small")"
assert_equal "old contents" "$(cat "$B/rewritten")"
assert_never_committed "$B/half" "the file the dead writer never committed"

fusermount3 -uz "$A" || true
forget_mount "$A"
unmount_volume "$B"
netvol fsck "$VOLUME" >/dev/null || fail "fsck after the writer died"
