#!/usr/bin/env bash
# scripts/e2e/16-xattrs.sh: extended attributes with setfattr and getfattr: set, get,
# list, replace, remove, binary and 64 KiB values, on files and directories; the errors
# for missing ones; EOPNOTSUPP for ACLs and SELinux labels; permissions for another user; cp -a keeps them; they persist.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_program setfattr getfattr    # the attr package; run-all.sh installs it when it can

mount_volume
f=$MNT/file
printf data >"$f"
# value NAME PATH: the value of one attribute.
value() { with_timeout 30 getfattr --absolute-names --only-values -n "$1" "$2"; }
# names PATH: every attribute name, sorted.
names() { with_timeout 30 getfattr --absolute-names -d -m - "$1" | sed -n 's/=.*//p' | LC_ALL=C sort; }

step "set, get, list"
setfattr -n user.color -v blue "$f"
setfattr -n user.empty "$f"
setfattr -n trusted.root-only -v secret "$f"
assert_equal blue "$(value user.color "$f")" "user.color"
assert_equal "" "$(value user.empty "$f")" "an attribute with an empty value"
assert_equal $'trusted.root-only\nuser.color\nuser.empty' "$(names "$f")" "names listed"
assert_equal data "$(cat "$f")" "the file's data"

step "replace and remove"
setfattr -n user.color -v "a much longer value than before" "$f"
assert_equal "a much longer value than before" "$(value user.color "$f")" "replaced value"
setfattr -n user.color -v red "$f"
assert_equal red "$(value user.color "$f")" "shorter replaced value"
setfattr -x user.color "$f"
assert_fails_with ENODATA getfattr -n user.color "$f"
assert_fails_with ENODATA setfattr -x user.color "$f"
assert_fails_with ENODATA getfattr -n user.never-set "$f"
assert_equal $'trusted.root-only\nuser.empty' "$(names "$f")" "names after remove"

step "binary and large values"
setfattr -n user.binary -v 0x00ff0a0d00 "$f"
assert_equal "user.binary=0x00ff0a0d00" "$(getfattr --absolute-names -e hex -n user.binary "$f" | sed -n 2p)" "a binary value"
head -c 65536 /dev/urandom >"$WORK/big"
# 128 Ki hex digits is too long for one argument: give it to setfattr as a dump.
printf '# file: %s\nuser.big=0x%s\n' "$f" "$(od -An -v -tx1 "$WORK/big" | tr -d ' \n')" >"$WORK/big.dump"
with_timeout 30 setfattr --restore="$WORK/big.dump"
with_timeout 30 getfattr --absolute-names --only-values -n user.big "$f" >"$WORK/big.read"
cmp "$WORK/big" "$WORK/big.read" || fail "the 64 KiB value read back differs"
long_name=user.$(printf 'n%.0s' {1..250})
setfattr -n "$long_name" -v x "$f"
assert_equal x "$(value "$long_name" "$f")" "a 255-byte name"
assert_fails_with ERANGE setfattr -n "${long_name}x" -v x "$f"
for i in $(seq 1 100); do setfattr -n "user.many$i" -v "$i" "$f"; done
assert_equal 100 "$(names "$f" | grep -c '^user\.many')" "100 attributes listed"
assert_equal 57 "$(value user.many57 "$f")" "one of 100"

step "ACLs and SELinux labels are not kept: EOPNOTSUPP, as on a filesystem mounted without them"
assert_fails_with EOPNOTSUPP getfattr -n system.posix_acl_access "$f"
assert_fails_with EOPNOTSUPP getfattr -n security.selinux "$f"
assert_fails_with EOPNOTSUPP setfattr -n security.selinux -v system_u:object_r:tmp_t:s0 "$f"
if command -v setfacl >/dev/null; then assert_fails_with EOPNOTSUPP setfacl -m u:nobody:r "$f"; fi
ls -l "$f" >/dev/null || fail "ls -l of a file on a mount without ACLs or labels"

step "directories, and the same name on two files"
mkdir "$MNT/dir"
printf other >"$MNT/other"
setfattr -n user.where -v dir "$MNT/dir"
setfattr -n user.where -v other "$MNT/other"
assert_equal dir "$(value user.where "$MNT/dir")"
assert_equal other "$(value user.where "$MNT/other")"
assert_fails_with ENODATA getfattr -n user.where "$f"

step "another user: may read what it may read, may not write"
chmod 0644 "$f"
assert_equal 57 "$(as_nobody getfattr --absolute-names --only-values -n user.many57 "$f")" "nobody reading user.many57"
assert_fails_with EACCES as_nobody setfattr -n user.by-nobody -v x "$f"
assert_fails_with EPERM as_nobody setfattr -n trusted.by-nobody -v x "$f"
if as_nobody getfattr --absolute-names -d -m - "$f" 2>/dev/null | grep -q trusted; then
    fail "nobody can list trusted.* attributes"
fi

step "cp -a and mv keep them"
cp -a "$f" "$MNT/copy"
assert_equal 57 "$(value user.many57 "$MNT/copy")" "user.many57 on the copy"
assert_equal_files <(getfattr --absolute-names -d -e hex "$f" | sed 1d) <(getfattr --absolute-names -d -e hex "$MNT/copy" | sed 1d)
mv "$MNT/other" "$MNT/dir/moved"
assert_equal other "$(value user.where "$MNT/dir/moved")" "after mv"

step "they persist"
names "$f" >"$WORK/names.before"
unmount_volume
mount_volume
f=$MNT/file
names "$f" >"$WORK/names.after"
assert_equal_files "$WORK/names.before" "$WORK/names.after"
with_timeout 30 getfattr --absolute-names --only-values -n user.big "$f" >"$WORK/big.read"
cmp "$WORK/big" "$WORK/big.read" || fail "the 64 KiB value differs after remount"
assert_equal dir "$(value user.where "$MNT/dir")" "on the directory after remount"

step "they go with the file"
rm "$f" "$MNT/copy"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
