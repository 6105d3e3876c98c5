#!/usr/bin/env bash
# scripts/e2e/13-sigterm.sh: SIGTERM or SIGINT to the daemon unmounts cleanly, committing
# what was written (even through a descriptor still open); after a remount the data is
# there and fsck passes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M

mount_volume
step "writing, then SIGTERM to the daemon"
head -c 5M /dev/urandom >"$WORK/closed"
cp "$WORK/closed" "$MNT/closed"
mkdir "$MNT/dir"
ln -s ../closed "$MNT/dir/link"
head -c 3M /dev/urandom >"$WORK/open"
exec 3>"$MNT/open"
cat "$WORK/open" >&3          # written, not closed, not fsynced
pid=$(daemon_pid "$VOLUME" "$MNT")
[[ -n $pid ]] || fail "netvol status --json names no daemon for $MNT"
is_our_daemon "$pid" "$MNT" || fail "pid $pid from netvol status --json is not the daemon of $MNT"
kill -TERM "$pid"
expect_clean_exit "$MNT"
exec 3>&-
assert_equal "" "$(daemon_pid "$VOLUME")" "a mount in status --json after the daemon exited"

step "after a remount everything written is there"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after SIGTERM"; }
mount_volume
assert_equal_files "$WORK/closed" "$MNT/closed"
assert_equal_files "$WORK/closed" "$MNT/dir/link"
assert_equal_files "$WORK/open" "$MNT/open"

step "SIGINT does the same"
printf 'before SIGINT' >"$MNT/int"
kill -INT "$MNT_PID"
expect_clean_exit "$MNT"
mount_volume
assert_equal "before SIGINT" "$(cat "$MNT/int")"

step "SIGTERM with a file open for reading still unmounts"
exec 4<"$MNT/closed"
head -c 1M <&4 >/dev/null
kill -TERM "$MNT_PID"
expect_clean_exit "$MNT"
exec 4<&-
netvol fsck "$VOLUME" >/dev/null || fail "fsck at the end"
