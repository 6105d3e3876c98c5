#!/usr/bin/env bash
# scripts/e2e/05-persistence.sh: what was written before an unmount is there, unchanged,
# after the next mount (data, names, links, modes, times, sparse holes), and fsck agrees.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

tree=$(real_tree)

describe() {
    (cd "$1" && find . \( -type d -printf 'd %m %u:%g %T@ %p\n' \) \
        -o -printf '%y %m %u:%g %n %s %T@ %p -> %l\n' | LC_ALL=C sort)
}

mount_volume
step "filling the volume"
with_timeout 240 cp -a "$tree" "$MNT/tree"
mkdir -p "$MNT/misc/deep/er"
head -c 9M /dev/urandom >"$WORK/random"          # more than two 4 MiB chunks
cp "$WORK/random" "$MNT/misc/random"
printf 'hello' >"$MNT/misc/deep/er/small"
ln "$MNT/misc/deep/er/small" "$MNT/misc/hard"
ln -s deep/er/small "$MNT/misc/sym"
truncate -s 3G "$MNT/misc/sparse"
printf 'end' | dd of="$MNT/misc/sparse" bs=1 seek=$(((3 << 30) - 3)) conv=notrunc status=none
chmod 0604 "$MNT/misc/deep/er/small"
chown 1000:1000 "$MNT/misc/random"
touch -d '2020-01-01 00:00:00.123456789 UTC' "$MNT/misc/deep"
# A file rewritten in place: only the last contents may survive.
printf 'first version, longer' >"$MNT/misc/rewritten"
printf 'second' >"$MNT/misc/rewritten"
describe "$MNT" >"$WORK/before"
used_before=$(status_field "$VOLUME" used_bytes)
files_before=$(status_field "$VOLUME" files)

step "unmount, check, mount again"
unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after unmount"; }
assert_equal "$used_before" "$(status_field "$VOLUME" used_bytes)" "used_bytes unmounted"
assert_equal "$files_before" "$(status_field "$VOLUME" files)" "files unmounted"
mount_volume

step "everything is as it was"
assert_equal_trees "$tree" "$MNT/tree"
assert_equal_files "$WORK/random" "$MNT/misc/random"
assert_equal hello "$(cat "$MNT/misc/sym")"
assert_equal second "$(cat "$MNT/misc/rewritten")"
assert_equal end "$(tail -c 3 "$MNT/misc/sparse")" "the end of the sparse file"
assert_equal 0 "$(with_timeout 60 head -c $((64 << 20)) "$MNT/misc/sparse" | tr -d '\0' | wc -c)" "non-zero bytes in the hole"
describe "$MNT" >"$WORK/after"
assert_equal_files "$WORK/before" "$WORK/after"

step "and again after changes in the second mount"
rm -r "$MNT/tree/"*
rmdir "$MNT/tree"
printf 'third' >"$MNT/misc/rewritten"
describe "$MNT" >"$WORK/before2"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck after the second unmount"
mount_volume
describe "$MNT" >"$WORK/after2"
assert_equal_files "$WORK/before2" "$WORK/after2"
assert_equal third "$(cat "$MNT/misc/rewritten")"
unmount_volume
