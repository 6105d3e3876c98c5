#!/usr/bin/env bash
# scripts/e2e/07-unlink-while-open.sh: an open file keeps its data after rm: it still
# reads and writes through the open descriptor; after the last close its space comes
# back, and fsck passes.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mount_volume
head -c 6M /dev/urandom >"$WORK/data"

step "rm of a file open for reading and writing"
cp "$WORK/data" "$MNT/f"
used=$(status_field "$VOLUME" used_bytes)
assert_equal $((6 << 20)) "$used" "used_bytes with the file"
exec 3<>"$MNT/f"
rm "$MNT/f"
assert_fails_with ENOENT stat "$MNT/f"
assert_equal "" "$(ls -A "$MNT")" "listing after rm"
cmp "$WORK/data" /proc/self/fd/3 || fail "data read through the open descriptor differs"
cmp "$WORK/data" - <&3 || fail "data read with cat <&3 differs"

step "writing through the descriptor still works"
printf 'appended after rm' >&3
assert_equal $(((6 << 20) + 17)) "$(stat -L -c %s /proc/self/fd/3)" "size through the descriptor"
assert_equal 'appended after rm' "$(tail -c 17 /proc/self/fd/3)" "the bytes written after rm"
# Overwrite inside the file through a second descriptor on the same open file.
printf 'XYZ' | dd of=/proc/self/fd/3 bs=1 seek=100 conv=notrunc status=none
assert_equal XYZ "$(dd if=/proc/self/fd/3 bs=1 skip=100 count=3 status=none)" "an overwrite in the middle"
assert_equal 2 "$(status_field "$VOLUME" files)" "files while the unlinked one is open (root included)"

step "a new file of the same name is another file"
printf new >"$MNT/f"
assert_equal new "$(cat "$MNT/f")"
assert_equal XYZ "$(dd if=/proc/self/fd/3 bs=1 skip=100 count=3 status=none)" "the unlinked file after the name was reused"
rm "$MNT/f"

step "after the last close the space comes back"
exec 3>&-
# Closing answers before the daemon has purged the inode: give it a moment.
space_back() { [[ $(status_field "$VOLUME" used_bytes) == 0 ]]; }
wait_until 10 space_back
assert_equal 0 "$(df -B1 --output=used "$MNT" | sed -n '2{s/ //g;p}')" "df used after close"

step "rm of a file a reader is partway through"
cp "$WORK/data" "$MNT/g"
exec 4<"$MNT/g"
rm "$MNT/g"
head -c 1M <&4 >/dev/null
cmp <(tail -c +$(((1 << 20) + 1)) "$WORK/data") - <&4 || fail "reading on after rm differs"
exec 4<&-
wait_until 10 space_back

step "the unlinked inode is gone after unmount and fsck passes"
unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
assert_equal 0 "$(status_field "$VOLUME" used_bytes)" "used_bytes after unmount"
assert_equal 1 "$(status_field "$VOLUME" files)" "files after unmount (the root)"
netvol gc "$VOLUME" --grace 0 >/dev/null
assert_equal 0 "$(find "$VOLUME/chunks" -type f | wc -l)" "chunk objects left after gc"
