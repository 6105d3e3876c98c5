#!/usr/bin/env bash
# scripts/e2e/02-file-operations.sh: everyday shell commands on the mount behave as on a
# local disk: cat, ls -l, mv, ln -s, ln, chmod, touch, mkdir, rmdir, rm, and the errors
# each gives when misused.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# rename2 FROM TO: rename(2) itself, without mv's own checks.
rename2() { with_timeout 30 perl -e 'rename($ARGV[0], $ARGV[1]) or die "rename: $!\n"' "$@"; }
# link2 FROM TO: link(2) itself.
link2() { with_timeout 30 perl -e 'link($ARGV[0], $ARGV[1]) or die "link: $!\n"' "$@"; }

mount_volume

step "write and cat"
printf 'hello\nworld\n' >"$MNT/greeting"
assert_equal $'hello\nworld' "$(cat "$MNT/greeting")"
printf 'again\n' >>"$MNT/greeting"
assert_equal $'hello\nworld\nagain' "$(cat "$MNT/greeting")" "after >>"
printf 'short\n' >"$MNT/greeting"
assert_equal short "$(cat "$MNT/greeting")" "after > truncates"
assert_equal 6 "$(stat -c %s "$MNT/greeting")" "size after > truncates"

step "ls -l and stat"
listing=$(with_timeout 30 ls -l "$MNT/greeting")
assert_contains "$listing" '^-rw-r--r-- 1 root root 6 ' "ls -l greeting"
assert_equal "regular file" "$(stat -c %F "$MNT/greeting")"
assert_fails_with ENOENT ls -l "$MNT/missing"
assert_fails_with ENOENT cat "$MNT/missing"

step "mkdir, nested paths, rmdir"
mkdir -p "$MNT/a/b/c"
assert_equal directory "$(stat -c %F "$MNT/a/b/c")"
printf x >"$MNT/a/b/c/file"
assert_fails_with EEXIST mkdir "$MNT/a"
assert_fails_with ENOTEMPTY rmdir "$MNT/a/b/c"
assert_fails_with ENOTDIR ls "$MNT/a/b/c/file/"
rm "$MNT/a/b/c/file"
rmdir "$MNT/a/b/c"
assert_fails_with ENOENT stat "$MNT/a/b/c"
assert_equal "" "$(ls -A "$MNT/a/b")" "a/b after rmdir"

step "mv: rename, move across directories, replace a file"
printf one >"$MNT/one"
printf two >"$MNT/two"
mv "$MNT/one" "$MNT/a/moved"
assert_fails_with ENOENT stat "$MNT/one"
assert_equal one "$(cat "$MNT/a/moved")"
ino=$(stat -c %i "$MNT/a/moved")
mv -f "$MNT/a/moved" "$MNT/two"
assert_equal one "$(cat "$MNT/two")" "mv onto an existing file replaces it"
assert_equal "$ino" "$(stat -c %i "$MNT/two")" "inode number survives mv"
mkdir "$MNT/dir1" "$MNT/dir2"
printf inside >"$MNT/dir1/f"
mv "$MNT/dir1" "$MNT/dir2/"
assert_equal inside "$(cat "$MNT/dir2/dir1/f")" "a moved directory keeps its contents"
assert_fails_with ENOENT ls "$MNT/dir1"
mkdir "$MNT/full" "$MNT/empty"
printf x >"$MNT/full/x"
assert_fails_with ENOTEMPTY mv -T "$MNT/empty" "$MNT/full"
# mv checks these itself; rename(2) straight from perl asks the filesystem.
assert_fails_with ENOTDIR rename2 "$MNT/empty" "$MNT/two"
assert_fails_with EISDIR rename2 "$MNT/two" "$MNT/empty"
assert_fails_with ENOTEMPTY rename2 "$MNT/empty" "$MNT/full"
assert_fails_with EINVAL rename2 "$MNT/full" "$MNT/full/sub"
rmdir "$MNT/empty"

step "ln -s: symlinks, relative and dangling"
ln -s two "$MNT/link"
assert_equal two "$(readlink "$MNT/link")"
assert_equal one "$(cat "$MNT/link")" "reading through a symlink"
assert_equal "symbolic link" "$(stat -c %F "$MNT/link")"
ln -s ../two "$MNT/a/uplink"
assert_equal one "$(cat "$MNT/a/uplink")" "relative symlink to the parent"
ln -s /nonexistent/target "$MNT/dangling"
assert_equal /nonexistent/target "$(readlink "$MNT/dangling")"
assert_fails_with ENOENT cat "$MNT/dangling"
long=$(printf 'x%.0s' {1..1000})
ln -s "$long" "$MNT/longlink"
assert_equal "$long" "$(readlink "$MNT/longlink")" "a 1000-byte symlink target"
listing=$(ls -l "$MNT/link")
assert_contains "$listing" '^lrwxrwxrwx 1 root root 3 .*/link -> two$' "ls -l of a symlink"

step "ln: hard links share the inode and the data"
printf shared >"$MNT/orig"
ln "$MNT/orig" "$MNT/a/hard"
assert_equal "$(stat -c %i "$MNT/orig")" "$(stat -c %i "$MNT/a/hard")" "inode of both names"
assert_equal 2 "$(stat -c %h "$MNT/orig")" "link count with two names"
printf ' and changed' >>"$MNT/a/hard"
assert_equal "shared and changed" "$(cat "$MNT/orig")" "a write through one name shows through the other"
rm "$MNT/orig"
assert_equal 1 "$(stat -c %h "$MNT/a/hard")" "link count after rm of one name"
assert_equal "shared and changed" "$(cat "$MNT/a/hard")" "data after rm of the other name"
assert_fails_with EEXIST ln "$MNT/a/hard" "$MNT/two"
assert_fails_with EPERM link2 "$MNT/a" "$MNT/dirlink"

step "chmod, touch"
chmod 0640 "$MNT/two"
assert_equal 640 "$(stat -c %a "$MNT/two")"
assert_contains "$(ls -l "$MNT/two")" '^-rw-r----- ' "ls -l after chmod 0640"
chmod u+x,g+w "$MNT/two"
assert_equal 760 "$(stat -c %a "$MNT/two")" "after chmod u+x,g+w"
chmod 4755 "$MNT/two"
assert_equal 4755 "$(stat -c %a "$MNT/two")" "setuid bit"
chmod 1777 "$MNT/a"
assert_equal 1777 "$(stat -c %a "$MNT/a")" "sticky directory"
touch -d '2001-02-03 04:05:06.789 UTC' "$MNT/two"
assert_equal "981173106.789000000" "$(stat -c %.9Y "$MNT/two")" "mtime set by touch -d"
touch "$MNT/new-empty"
assert_equal 0 "$(stat -c %s "$MNT/new-empty")" "size of a touched file"
chown 1234:5678 "$MNT/new-empty"
assert_equal 1234:5678 "$(stat -c %u:%g "$MNT/new-empty")" "owner after chown"

step "rm -r of a tree"
mkdir -p "$MNT/tree/x/y"
for i in $(seq 1 50); do printf "%s" "$i" >"$MNT/tree/x/y/f$i"; done
assert_equal 50 "$(ls "$MNT/tree/x/y" | wc -l)" "files listed"
rm -r "$MNT/tree"
assert_fails_with ENOENT ls "$MNT/tree"

step "names: long, odd bytes"
name255=$(printf 'n%.0s' {1..255})
printf ok >"$MNT/$name255"
assert_equal ok "$(cat "$MNT/$name255")" "a 255-byte name"
assert_fails_with ENAMETOOLONG touch "$MNT/${name255}x"
odd=$'sp ace	tab
newline-ü-*?'
printf odd >"$MNT/$odd"
assert_equal odd "$(cat "$MNT/$odd")" "a name with spaces, tab, newline and UTF-8"
ls "$MNT" >/dev/null

unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck after the operations"
