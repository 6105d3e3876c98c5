#!/usr/bin/env bash
# scripts/e2e/08-permissions.sh: the kernel enforces permissions for other users
# (default_permissions, allow_other): nobody cannot read a 0700 root directory or write
# a 0644 root file, can create in a sticky 1777 directory but not remove root's file
# there, and files it creates are its own.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_nobody

mount_volume
assert_contains "$(awk -v m="$MNT" '$2 == m { print $4 }' /proc/self/mounts)" 'default_permissions' "mount options"
assert_contains "$(awk -v m="$MNT" '$2 == m { print $4 }' /proc/self/mounts)" 'allow_other' "mount options"

step "nobody can read what is world-readable"
printf public >"$MNT/public"
chmod 0755 "$MNT"
assert_equal public "$(as_nobody cat "$MNT/public")" "nobody reading a 0644 file"
as_nobody ls "$MNT" >/dev/null

step "a 0700 root directory is closed to nobody"
mkdir -m 0700 "$MNT/private"
printf secret >"$MNT/private/secret"
chmod 0644 "$MNT/private/secret"
assert_fails_with EACCES as_nobody ls "$MNT/private"
assert_fails_with EACCES as_nobody cat "$MNT/private/secret"
assert_fails_with EACCES as_nobody touch "$MNT/private/new"
assert_fails_with EACCES as_nobody stat "$MNT/private/secret"
assert_equal secret "$(cat "$MNT/private/secret")" "root still reads it"

step "a 0600 root file is closed to nobody; a 0644 one is read-only to it"
printf 'root only' >"$MNT/root-only"
chmod 0600 "$MNT/root-only"
assert_fails_with EACCES as_nobody cat "$MNT/root-only"
assert_fails_with EACCES as_nobody sh -c "printf x >> '$MNT/public'"
assert_fails_with EACCES as_nobody truncate -s 0 "$MNT/public"
assert_equal public "$(cat "$MNT/public")" "the file nobody could not write"
assert_fails_with EPERM as_nobody chmod 0666 "$MNT/public"
assert_fails_with EPERM as_nobody chown nobody "$MNT/public"
assert_fails_with EACCES as_nobody touch "$MNT/public"
printf writable >"$MNT/writable"
chmod 0666 "$MNT/writable"
as_nobody touch "$MNT/writable" || fail "nobody cannot set the times of a 0666 file to now"
assert_fails_with EPERM as_nobody touch -d 2001-01-01 "$MNT/writable"
assert_equal 644 "$(stat -c %a "$MNT/public")" "mode after the refused chmod"

step "nobody cannot create in or remove from a 0755 root directory"
assert_fails_with EACCES as_nobody touch "$MNT/by-nobody"
assert_fails_with EACCES as_nobody mkdir "$MNT/dir-by-nobody"
assert_fails_with EACCES as_nobody rm -f "$MNT/public"
assert_fails_with EACCES as_nobody mv "$MNT/public" "$MNT/renamed"
[[ -e $MNT/public ]] || fail "public is gone"

step "a sticky 1777 directory: nobody creates, but cannot remove root's file"
mkdir "$MNT/tmp"
chmod 1777 "$MNT/tmp"
assert_equal 1777 "$(stat -c %a "$MNT/tmp")" "mode of the sticky directory"
printf root >"$MNT/tmp/roots"
chmod 0666 "$MNT/tmp/roots"
as_nobody sh -c "printf mine > '$MNT/tmp/nobodys'" || fail "nobody cannot create a file in a 1777 directory"
assert_equal 65534:65534 "$(stat -c %u:%g "$MNT/tmp/nobodys")" "owner of the file nobody created"
assert_equal mine "$(cat "$MNT/tmp/nobodys")"
as_nobody mkdir "$MNT/tmp/nobodys-dir" || fail "nobody cannot mkdir in a 1777 directory"
assert_equal 65534:65534 "$(stat -c %u:%g "$MNT/tmp/nobodys-dir")" "owner of the directory nobody created"
assert_fails_with EPERM as_nobody rm -f "$MNT/tmp/roots"
assert_fails_with EPERM as_nobody mv "$MNT/tmp/roots" "$MNT/tmp/stolen"
assert_equal root "$(cat "$MNT/tmp/roots")" "root's file in the sticky directory"
as_nobody sh -c "printf ' and written' >> '$MNT/tmp/roots'" || fail "nobody cannot write a 0666 file"
assert_equal "root and written" "$(cat "$MNT/tmp/roots")" "root's 0666 file written by nobody"
as_nobody rm "$MNT/tmp/nobodys" || fail "nobody cannot remove its own file in a sticky directory"
as_nobody rmdir "$MNT/tmp/nobodys-dir" || fail "nobody cannot remove its own directory"
rm "$MNT/tmp/roots"

step "groups: a 0040 file is readable through the group only"
printf group >"$MNT/group-file"
chown 0:65534 "$MNT/group-file"
chmod 0040 "$MNT/group-file"
assert_equal group "$(as_nobody cat "$MNT/group-file")" "read through the group"
chmod 0400 "$MNT/group-file"
assert_fails_with EACCES as_nobody cat "$MNT/group-file"

step "the setgid bit on a directory passes its group on"
mkdir "$MNT/shared"
chown 0:65534 "$MNT/shared"
chmod 2775 "$MNT/shared"
printf x >"$MNT/shared/f"
assert_equal 65534 "$(stat -c %g "$MNT/shared/f")" "group of a file in a setgid directory"
mkdir "$MNT/shared/sub"
assert_equal 2755 "$(stat -c %a "$MNT/shared/sub")" "a subdirectory of a setgid directory keeps the bit"

step "writing, truncating or chowning a setuid file removes setuid and setgid, as on a local disk"
# netvol removes these bits itself (the kernel leaves it to the daemon, which spares a
# security.capability lookup per write): the results must be Linux's.
setid_file() { printf a >"$MNT/setid"; chmod "$1" "$MNT/setid"; }
setid_file 6777
as_nobody sh -c "printf b >>'$MNT/setid'"
assert_equal 777 "$(stat -c %a "$MNT/setid")" "after a write by nobody"
assert_equal ab "$(cat "$MNT/setid")" "the write itself"
setid_file 6777
printf c >>"$MNT/setid"
assert_equal 6777 "$(stat -c %a "$MNT/setid")" "after a write by root (CAP_FSETID keeps them)"
setid_file 6777
as_nobody truncate -s 1 "$MNT/setid"
assert_equal 777 "$(stat -c %a "$MNT/setid")" "after a truncate by nobody"
setid_file 6777
as_nobody sh -c ": >'$MNT/setid'"
assert_equal 777 "$(stat -c %a "$MNT/setid")" "after an O_TRUNC open by nobody"
assert_equal 0 "$(stat -c %s "$MNT/setid")" "size after an O_TRUNC open by nobody"
setid_file 6777
chown 1234:1234 "$MNT/setid"
assert_equal 777 "$(stat -c %a "$MNT/setid")" "after a chown by root"
setid_file 6767
as_nobody sh -c "printf b >>'$MNT/setid'"
assert_equal 767 "$(stat -c %a "$MNT/setid")" "setgid without group execute, written by nobody outside the group"
setid_file 6767
chown 0:65534 "$MNT/setid"
setid_file 6767
as_nobody sh -c "printf b >>'$MNT/setid'"
assert_equal 2767 "$(stat -c %a "$MNT/setid")" "setgid without group execute, written by a member of the group"
mkdir -p "$MNT/setid-dir" && chmod 6777 "$MNT/setid-dir" && chown 1234:1234 "$MNT/setid-dir"
assert_equal 6777 "$(stat -c %a "$MNT/setid-dir")" "a directory's chown keeps its bits"

step "ownership and modes survive a remount"
unmount_volume
mount_volume
assert_fails_with EACCES as_nobody ls "$MNT/private"
assert_equal 1777 "$(stat -c %a "$MNT/tmp")"
unmount_volume
