#!/usr/bin/env bash
# scripts/e2e/03-du-df.sh: du counts only the data a file holds (a 5G sparse file shows
# about nothing), and df shows the volume's size limit and what is used.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 10G
mount_volume

# df_field FIELD: one column of `df -B1 --output=FIELD` for the mount.
df_field() { with_timeout 30 df -B1 --output="$1" "$MNT" | sed -n '2{s/ //g;p}'; }

step "df of an empty volume"
assert_equal $((10 << 30)) "$(df_field size)" "df size of a 10G volume"
assert_equal 0 "$(df_field used)" "df used of an empty volume"
assert_equal $((10 << 30)) "$(df_field avail)" "df avail of an empty volume"
assert_contains "$(with_timeout 30 df -h "$MNT")" " 10G +0 +10G +0% $MNT\$" "df -h"
assert_equal fuse.netvol "$(awk -v m="$MNT" '$2 == m { print $3 }' /proc/self/mounts)" "filesystem type"

step "a 5G sparse file takes no space"
with_timeout 30 truncate -s 5G "$MNT/sparse"
assert_equal $((5 << 30)) "$(stat -c %s "$MNT/sparse")" "size of the sparse file"
assert_equal 0 "$(du -s --block-size=1 "$MNT/sparse" | cut -f1)" "du -s of the sparse file"
assert_equal 0 "$(df_field used)" "df used with only a sparse file"
assert_equal 0 "$(status_field "$VOLUME" used_bytes)" "status used_bytes with only a sparse file"

step "8 MiB of data shows in du, df and status"
with_timeout 60 dd if=/dev/urandom of="$MNT/data" bs=1M count=8 status=none
du_data=$(du -s --block-size=1 "$MNT/data" | cut -f1)
((du_data >= 8 << 20 && du_data < 9 << 20)) || fail "du -s of 8 MiB of data is $du_data bytes"
assert_equal $((8 << 20)) "$(df_field used)" "df used after writing 8 MiB"
assert_equal $(((10 << 30) - (8 << 20))) "$(df_field avail)" "df avail after writing 8 MiB"
assert_equal $((8 << 20)) "$(status_field "$VOLUME" used_bytes)" "status used_bytes"
assert_equal $(((10 << 30) - (8 << 20))) "$(status_field "$VOLUME" free_bytes)" "status free_bytes"

step "a few bytes in the middle of the sparse file take about one block"
printf x | with_timeout 30 dd of="$MNT/sparse" bs=1 seek=$((3 << 30)) conv=notrunc status=none
du_sparse=$(du -s --block-size=1 "$MNT/sparse" | cut -f1)
((du_sparse <= 4 << 20)) || fail "du -s of a sparse file with one byte written is $du_sparse bytes"
assert_equal $((5 << 30)) "$(stat -c %s "$MNT/sparse")" "size after writing into the hole"

step "du -s of a directory adds up"
mkdir "$MNT/dir"
for i in 1 2 3 4; do with_timeout 30 dd if=/dev/zero of="$MNT/dir/f$i" bs=256K count=1 status=none; done
assert_equal 1024 "$(du -s --block-size=1K "$MNT/dir" | cut -f1)" "du -s of 4 x 256 KiB"

step "rm gives the space back"
rm "$MNT/data" "$MNT/sparse"
rm -r "$MNT/dir"
assert_equal 0 "$(df_field used)" "df used after rm"
assert_equal 0 "$(status_field "$VOLUME" used_bytes)" "status used_bytes after rm"

unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
