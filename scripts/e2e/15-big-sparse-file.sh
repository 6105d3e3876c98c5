#!/usr/bin/env bash
# scripts/e2e/15-big-sparse-file.sh: offsets past 4 GiB work: a few bytes written at 5G
# (and across the 4 GiB line) read back, holes read as zeros, the file takes almost no
# space, it survives a remount, and sizes past netvol's 16 TiB maximum fail with EFBIG.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

G=$((1 << 30))
make_volume --size 10G
mount_volume
f=$MNT/big

# read_at FILE OFFSET COUNT: COUNT bytes of FILE from byte OFFSET.
read_at() { with_timeout 60 dd if="$1" bs=64K iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none; }
# write_at FILE OFFSET: stdin into FILE at byte OFFSET, keeping the rest.
write_at() { with_timeout 60 dd of="$1" bs=64K oflag=seek_bytes seek="$2" conv=notrunc status=none; }
# zeros COUNT: are the COUNT bytes on stdin all zero?
zeros() { cmp -s -n "$1" - /dev/zero; }

step "a few bytes at offset 5G"
printf 'five gig' | write_at "$f" $((5 * G))
assert_equal $((5 * G + 8)) "$(stat -c %s "$f")" "size"
assert_equal "five gig" "$(read_at "$f" $((5 * G)) 8)" "bytes at 5G"
assert_equal "gig" "$(tail -c 3 "$f")" "tail -c 3"

step "across the 4 GiB line, and at the 2 GiB and 4 GiB marks"
printf 'ACROSS' | write_at "$f" $((4 * G - 3))
printf 'two' | write_at "$f" $((2 * G))
assert_equal "ACROSS" "$(read_at "$f" $((4 * G - 3)) 6)" "bytes across 4 GiB"
assert_equal "two" "$(read_at "$f" $((2 * G)) 3)" "bytes at 2 GiB"
assert_equal "five gig" "$(read_at "$f" $((5 * G)) 8)" "bytes at 5G after other writes"

step "holes read as zeros"
read_at "$f" 0 $((8 << 20)) | zeros $((8 << 20)) || fail "the first 8 MiB are not zeros"
read_at "$f" $((3 * G)) $((8 << 20)) | zeros $((8 << 20)) || fail "8 MiB at 3 GiB are not zeros"
read_at "$f" $((4 * G + 3)) $((4 << 20)) | zeros $((4 << 20)) || fail "4 MiB after the bytes across 4 GiB are not zeros"
read_at "$f" $((5 * G - (1 << 20))) $((1 << 20)) | zeros $((1 << 20)) || fail "the MiB before 5G is not zeros"
assert_equal "$(printf '\0\0\0two\0\0\0' | od -An -tx1)" "$(read_at "$f" $((2 * G - 3)) 9 | od -An -tx1)" "bytes around 2 GiB"

step "it takes almost no space"
used=$(status_field "$VOLUME" used_bytes)
((used <= 4 * (4 << 20))) || fail "a sparse file with 17 bytes of data uses $used bytes"
du=$(du -s --block-size=1 "$f" | cut -f1)
((du <= 16 << 20)) || fail "du -s says $du bytes"

step "reading past the end gives nothing; writing extends"
assert_equal 0 "$(read_at "$f" $((6 * G)) 100 | wc -c)" "bytes read past the end"
printf 'x' | write_at "$f" $((6 * G))
assert_equal $((6 * G + 1)) "$(stat -c %s "$f")" "size after a write past the end"
assert_equal 1024 "$(read_at "$f" $((6 * G - 1023)) 4096 | wc -c)" "bytes read up to the end"

step "shrinking and growing with truncate"
truncate -s $((5 * G + 4)) "$f"
assert_equal "five" "$(read_at "$f" $((5 * G)) 100)" "bytes after truncate into the data"
truncate -s $((7 * G)) "$f"
read_at "$f" $((5 * G + 4)) $((1 << 20)) | zeros $((1 << 20)) || fail "the bytes cut off by truncate came back"

step "past the 16 TiB maximum: EFBIG"
assert_fails_with EFBIG truncate -s 17T "$MNT/huge"
printf 'x' >"$MNT/huge"
byte_at() { printf 'x' | write_at "$@"; }
assert_fails_with EFBIG byte_at "$MNT/huge" $((1 << 44))
assert_fails_with EFBIG byte_at "$MNT/huge" $(((1 << 44) + (5 << 30)))
assert_equal 1 "$(stat -c %s "$MNT/huge")" "size after the refused writes"
truncate -s 16T "$MNT/huge"
assert_equal $((1 << 44)) "$(stat -c %s "$MNT/huge")" "a 16 TiB sparse file"
daemon_alive "$MNT_PID" || fail "the daemon died"

step "after a remount"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
mount_volume
f=$MNT/big
assert_equal $((7 * G)) "$(stat -c %s "$f")" "size after remount"
assert_equal "ACROSS" "$(read_at "$f" $((4 * G - 3)) 6)" "bytes across 4 GiB after remount"
assert_equal "five" "$(read_at "$f" $((5 * G)) 4)" "bytes at 5G after remount"
read_at "$f" $((6 * G)) $((1 << 20)) | zeros $((1 << 20)) || fail "zeros at 6G after remount"
unmount_volume
