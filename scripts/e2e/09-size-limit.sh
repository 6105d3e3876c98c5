#!/usr/bin/env bash
# scripts/e2e/09-size-limit.sh: a write past the volume's size limit fails with ENOSPC
# and changes nothing; df and status show the usage; the daemon carries on; holes do not
# count; shrinking the volume is refused.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 64M --chunk-size 1M
mount_volume

# df counts in 4 KiB blocks: used rounds up, avail down.
blocks_up() { echo $(((($1) + 4095) / 4096 * 4096)); }
blocks_down() { echo $((($1) / 4096 * 4096)); }
df_field() { with_timeout 30 df -B1 --output="$1" "$MNT" | sed -n '2{s/ //g;p}'; }

step "df shows the 64M limit"
assert_equal $((64 << 20)) "$(df_field size)" "df size"
assert_equal $((64 << 20)) "$(status_field "$VOLUME" size_bytes)" "status size_bytes"

step "filling all but 64 KiB works"
printf 'keep' >"$MNT/small"
with_timeout 60 head -c $(((64 << 20) - 4 - (64 << 10))) /dev/urandom >"$MNT/fill"
assert_equal $(((64 << 20) - (64 << 10))) "$(status_field "$VOLUME" used_bytes)" "used_bytes"
assert_equal $((64 << 10)) "$(status_field "$VOLUME" free_bytes)" "free_bytes"
assert_equal $((64 << 10)) "$(df_field avail)" "df avail"

step "a single write that does not fit fails with ENOSPC and changes nothing"
# One 96 KiB write(2) is one FUSE request; a larger write(2) is split, and its first
# parts may land before one fails, as on any filesystem.
assert_fails_with ENOSPC dd if=/dev/zero of="$MNT/small" bs=96K count=1 conv=notrunc status=none
assert_equal keep "$(cat "$MNT/small")" "the file the refused write went to"
assert_equal 4 "$(stat -c %s "$MNT/small")" "its size"
assert_equal $(((64 << 20) - (64 << 10))) "$(status_field "$VOLUME" used_bytes)" "used_bytes after a refused write"
with_timeout 60 dd if=/dev/zero of="$MNT/small" bs=32K count=1 conv=notrunc status=none ||
    fail "a 32 KiB write with 64 KiB free failed"
assert_equal $((32 << 10)) "$(stat -c %s "$MNT/small")" "size after the write that fit"

step "a long write stops at the limit with ENOSPC"
assert_fails_with ENOSPC dd if=/dev/zero of="$MNT/too-much" bs=1M count=8 conv=fsync status=none
used=$(status_field "$VOLUME" used_bytes)
((used <= 64 << 20)) || fail "used_bytes $used is past the 64 MiB limit"
size=$(stat -c %s "$MNT/too-much")
((size <= 32 << 10)) || fail "too-much holds $size bytes, more than was free"
assert_equal "$(blocks_up "$used")" "$(df_field used)" "df used agrees with status"
assert_equal "$(blocks_down $(((64 << 20) - used)))" "$(df_field avail)" "df avail agrees with status"
assert_equal $(((64 << 20) - used)) "$(status_field "$VOLUME" free_bytes)" "status free_bytes"
daemon_alive "$MNT_PID" || fail "the daemon died on ENOSPC"
cmp -s -n $((32 << 10)) "$MNT/small" /dev/zero || fail "small changed after ENOSPC elsewhere"

step "holes take no space: a sparse file larger than the volume is fine"
truncate -s 1G "$MNT/sparse"
assert_equal $((1 << 30)) "$(stat -c %s "$MNT/sparse")" "size of the sparse file"
assert_equal "$used" "$(status_field "$VOLUME" used_bytes)" "used_bytes after truncate -s 1G"
assert_fails_with ENOSPC dd if=/dev/zero of="$MNT/sparse" bs=1M count=1 seek=100 conv=notrunc status=none

step "shrinking is refused"
assert_cli_error "shrink" netvol resize "$VOLUME" --size 32M
assert_equal $((64 << 20)) "$(status_field "$VOLUME" size_bytes)" "size after a refused shrink"

unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
