#!/usr/bin/env bash
# scripts/e2e/44-hosts-database-down.sh: PostgreSQL stops (as a crash would) while two
# workers use the volume. Operations that need it answer EIO within 30 s; the daemons
# stay up; nothing committed is lost. When it is back, both mounts serve again without
# a remount, and the writer takes the lease up again at its next write.
# e2e-timeout: 360
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-330}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

TTL=5
two_workers --lease-ttl "$TTL" --lease-idle 600

step "A writes and commits; B reads"
head -c 5M /dev/urandom >"$WORK/data"
dd if="$WORK/data" of="$A/data" bs=1M conv=fsync status=none
mkdir "$A/dir"
for i in 1 2 3; do printf "file $i" >"$A/dir/f$i"; done
printf 'buffered, then fsynced' >"$A/late"
cmp "$WORK/data" "$B/data"
assert_equal "file 2" "$(cat "$B/dir/f2")"

step "PostgreSQL stops as a crash would"
pause_database immediate

step "what needs the database answers EIO within 30 s, on both hosts"
expect_eio_within 30 sh -c "printf new > '$A/new'"
expect_eio_within 30 stat "$B/never-looked-up"
expect_eio_within 30 ls "$B/dir/f1" "$B/dir/f9"
expect_eio_within 30 mkdir "$A/newdir"
daemon_alive "$A_PID" || fail "A's daemon died"
daemon_alive "$B_PID" || fail "B's daemon died"
is_mounted "$A" && is_mounted "$B" || fail "a mount went away"
# Longer than the lease's ttl: A's lease runs out while the database is away.
sleep "$TTL"

step "PostgreSQL returns: both mounts serve again, without a remount"
resume_database
cmp "$WORK/data" "$B/data" || fail "B reads committed data differently"
cmp "$WORK/data" "$A/data" || fail "A reads committed data differently"
for i in 1 2 3; do assert_equal "file $i" "$(cat "$B/dir/f$i")"; done
assert_equal "buffered, then fsynced" "$(cat "$B/late")"
a_writes() { sh -c "printf 'after the outage' > '$A/after'" 2>/dev/null; }
wait_until 30 a_writes
grep -q "took the writer lease" <<<"$(mount_log "$A")" || fail "A's log does not say it took the lease again"
wait_until 5 test -e "$B/after"
assert_equal "after the outage" "$(cat "$B/after")"
[[ ! -e $B/new && ! -e $B/newdir ]] || fail "a change refused during the outage exists"
daemon_alive "$A_PID" && daemon_alive "$B_PID" || fail "a daemon restarted"

unmount_volume "$A"
unmount_volume "$B"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after the outage"; }
