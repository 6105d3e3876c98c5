#!/usr/bin/env bash
# scripts/e2e/01-copy-tree.sh: a real tree copied in with cp reads back identical
# (contents, symlinks, modes, sizes, mtimes), and ls shows it as on a local disk.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# A real tree from this machine: kernel headers when present, else another one.
tree=$(real_tree)
step "copying $tree ($(du -sh "$tree" | cut -f1))"

mount_volume

step "cp -r, then diff -r"
with_timeout 240 cp -r "$tree" "$MNT/plain"
assert_equal_trees "$tree" "$MNT/plain"

step "cp -a keeps types, modes, owners, sizes, mtimes and link targets"
with_timeout 240 cp -a "$tree" "$MNT/archive"
assert_equal_trees "$tree" "$MNT/archive"
# Directory sizes and link counts are the filesystem's own business; the rest must agree.
describe() {
    (cd "$1" && with_timeout 60 find . \( -type d -printf 'd %m %u:%g %T@ %p\n' \) \
        -o -printf '%y %m %u:%g %s %T@ %p -> %l\n' | LC_ALL=C sort)
}
describe "$tree" >"$WORK/find.local"
describe "$MNT/archive" >"$WORK/find.mount"
assert_equal_files "$WORK/find.local" "$WORK/find.mount"

step "ls -l shows what stat shows"
first=$(cd "$tree" && find . -type f | LC_ALL=C sort | sed -n 1p)
read -r mode links owner group size < <(stat -c '%A %h %U %G %s' "$tree/$first")
listing=$(with_timeout 30 ls -l "$MNT/archive/$first")
assert_contains "$listing" "^$mode $links $owner $group +$size " "ls -l of $first"
assert_equal "$(cat "$tree/$first" | md5sum)" "$(with_timeout 30 cat "$MNT/archive/$first" | md5sum)" "cat of $first"

step "file count in status"
files=$(status_field "$VOLUME" files)
expected=$(find "$MNT" -printf '%i\n' | LC_ALL=C sort -u | wc -l)
assert_equal "$expected" "$files" "inodes in netvol status (root included)"

unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck after the copy"
