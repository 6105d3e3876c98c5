#!/usr/bin/env bash
# scripts/e2e/04-tar-roundtrip.sh: tar x into the mount and tar c out of it; a tree
# archived from the mount and unpacked elsewhere is the tree that went in.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

tree=$(real_tree)

# Add what a header tree lacks: hard links, symlinks, an empty dir, a sparse file, odd modes.
step "building a source tree from $tree"
src=$WORK/src
cp -a "$tree" "$src"
mkdir "$src/empty-dir"
first=$(cd "$src" && find . -type f | LC_ALL=C sort | sed -n 1p)
ln -s "${first#./}" "$src/link-to-first"
ln -P "$src/link-to-first" "$src/hard-link-to-symlink"
printf 'hard\n' >"$src/hard-a"
ln "$src/hard-a" "$src/hard-b"
truncate -s 20M "$src/sparse"
printf 'tail' | dd of="$src/sparse" bs=1 seek=$((15 << 20)) conv=notrunc status=none
head -c 5M /dev/urandom >"$src/random"
chmod 0600 "$src/random"
chmod 0750 "$src/empty-dir"

mount_volume

step "tar x into the mount"
with_timeout 240 tar -C "$WORK/src" --format=posix -cf - . | with_timeout 240 tar -C "$MNT" -xpf -
assert_equal_trees "$src" "$MNT"

step "tar c from the mount, tar x elsewhere"
mkdir "$WORK/out"
with_timeout 240 tar -C "$MNT" --format=posix -cSf "$WORK/from-mount.tar" .
with_timeout 240 tar -C "$WORK/out" -xpf "$WORK/from-mount.tar"
assert_equal_trees "$src" "$WORK/out"

step "modes, hard links and mtimes survive both ways"
describe() {
    (cd "$1" && find . \( -type d -printf 'd %m %p\n' \) -o -printf '%y %m %n %s %T@ %p -> %l\n' | LC_ALL=C sort)
}
describe "$src" >"$WORK/src.list"
describe "$WORK/out" >"$WORK/out.list"
assert_equal_files "$WORK/src.list" "$WORK/out.list"
assert_equal "$(stat -c %i "$MNT/hard-a")" "$(stat -c %i "$MNT/hard-b")" "hard link unpacked into the mount"

step "tar's listing of the mount matches the source's"
(cd "$src" && tar --format=posix -cf - . | tar -tvf - | LC_ALL=C sort) >"$WORK/src.tv"
tar -tvf "$WORK/from-mount.tar" | LC_ALL=C sort >"$WORK/mount.tv"
assert_equal_files "$WORK/src.tv" "$WORK/mount.tv"

unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
