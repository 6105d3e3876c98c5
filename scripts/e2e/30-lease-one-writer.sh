#!/usr/bin/env bash
# scripts/e2e/30-lease-one-writer.sh: two on-demand mounts of one volume. The first to
# write gets the writer lease; the other's writes fail with "Read-only file system",
# while its reads work and show the writer's data within 2 s.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME"
A=$MNT
mount_volume "$VOLUME"
B=$MNT

step "A writes first and takes the lease"
printf 'from A' >"$A/f"
holder=$(netvol lease "$VOLUME")
assert_contains "$holder" "held by"

step "B's changes are refused, with EROFS"
assert_fails_with EROFS sh -c "printf x > '$B/g'"
assert_fails_with EROFS mkdir "$B/d"
assert_fails_with EROFS rm "$B/f"
assert_fails_with EROFS dd if=/dev/zero of="$B/f" bs=1 count=1 oflag=append conv=notrunc status=none
mount_log "$B" | grep -q "held by" || fail "B's log does not name the lease holder"

step "B reads A's data, and sees A's changes within 2 s"
assert_equal "from A" "$(cat "$B/f")"
head -c 3M /dev/urandom >"$WORK/big"
cp "$WORK/big" "$A/big"
mkdir "$A/dir"
printf 'second version' >"$A/f"
same_big() { cmp -s "$WORK/big" "$B/big"; }
has_dir() { [[ -d $B/dir ]]; }
second() { [[ $(cat "$B/f") == "second version" ]]; }
wait_until 2 same_big
wait_until 2 has_dir
wait_until 2 second
rm "$A/f"
gone() { [[ ! -e $B/f ]]; }
wait_until 2 gone

step "an open file on B keeps reading while A rewrites it, and sees the new data after a poll"
printf 'version one' >"$A/live"
wait_until 2 test -e "$B/live"
exec 3<"$B/live"
printf 'version two' >"$A/live"
sleep 1.5
assert_equal "version two" "$(cat <&3)"
exec 3<&-

unmount_volume "$B"
unmount_volume "$A"
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
