#!/usr/bin/env bash
# scripts/e2e/11-space-after-rm.sh: space given back by rm, truncate or the last close of
# an unlinked file can be written again at once (without anyone running df first), and
# status and df agree with what is left.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 16M --chunk-size 1M
mount_volume
write_mib() { with_timeout 60 dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync status=none; }
df_used() { with_timeout 30 df -B1 --output=used "$MNT" | sed -n '2{s/ //g;p}'; }

step "truncate gives space back"
write_mib "$MNT/a" 12
truncate -s 0 "$MNT/a"
assert_equal 0 "$(status_field "$VOLUME" used_bytes)" "used_bytes after truncate -s 0"
write_mib "$MNT/a" 12 || fail "writing 12 MiB again after truncate -s 0 failed"

step "rm gives space back"
rm "$MNT/a"
# A deleted file's chunks are released in the daemon's next batch (twice a second), and
# at once when a write or df needs the space.
used_is() { [[ $(status_field "$VOLUME" used_bytes) == "$1" ]]; }
wait_until 2 used_is 0
# No df here: the daemon itself must know the space is free again.
write_mib "$MNT/b" 12 || fail "writing 12 MiB after rm of a 12 MiB file failed (used_bytes $(status_field "$VOLUME" used_bytes))"
assert_equal $((12 << 20)) "$(status_field "$VOLUME" used_bytes)" "used_bytes after writing again"

step "the last close of an unlinked file gives space back"
exec 3<"$MNT/b"
rm "$MNT/b"
exec 3<&-
freed() { [[ $(status_field "$VOLUME" used_bytes) == 0 ]]; }
wait_until 10 freed
write_mib "$MNT/c" 12 || fail "writing 12 MiB after the last close of an unlinked 12 MiB file failed"

step "rm -r of a directory gives space back"
mkdir "$MNT/dir"
mv "$MNT/c" "$MNT/dir/c"
rm -r "$MNT/dir"
write_mib "$MNT/d" 12 || fail "writing 12 MiB after rm -r of a directory with 12 MiB failed"

step "replacing a file with mv gives the old one's space back"
write_mib "$WORK/two" 2
cp "$WORK/two" "$MNT/small"
mv -f "$MNT/small" "$MNT/d"
wait_until 2 used_is $((2 << 20))
write_mib "$MNT/e" 12 || fail "writing 12 MiB after mv replaced a 12 MiB file failed"

df_now=$(df_used)
assert_equal "$(status_field "$VOLUME" used_bytes)" "$df_now" "df used and status used_bytes"
unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
