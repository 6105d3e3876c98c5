#!/usr/bin/env bash
# scripts/e2e/12-corruption.sh: damaged or missing chunk objects are errors, never wrong
# bytes: reading a garbled or deleted chunk gives EIO, the rest of that file and every
# other file still read, the daemon keeps running, its log names the inode and chunk,
# and fsck reports the damage with exit status 1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
# chunk_objects: every chunk object file of the volume, sorted.
chunk_objects() { find "$VOLUME/chunks" -type f | LC_ALL=C sort; }
# new_objects BEFORE_LIST: the objects that are not in BEFORE_LIST.
new_objects() { chunk_objects | LC_ALL=C comm -13 "$1" -; }

mount_volume
step "writing files, noting which objects each one adds"
head -c 2M /dev/urandom >"$WORK/good"
head -c 3M /dev/urandom >"$WORK/garbled"
head -c 1M /dev/urandom >"$WORK/missing"
head -c 1M /dev/urandom >"$WORK/flipped"
declare -A OBJECTS=()
for name in good garbled missing flipped; do
    chunk_objects >"$WORK/objects.before"
    cp "$WORK/$name" "$MNT/$name"
    OBJECTS[$name]=$(new_objects "$WORK/objects.before")
done
assert_equal 3 "$(wc -l <<<"${OBJECTS[garbled]}")" "objects of the 3 MiB file"
assert_equal 1 "$(wc -l <<<"${OBJECTS[missing]}")" "objects of the 1 MiB file"
declare -A INO=()
for name in good garbled missing flipped; do INO[$name]=$(stat -c %i "$MNT/$name"); done
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck before the damage"

step "damaging the objects"
garbled_object=$(sed -n 2p <<<"${OBJECTS[garbled]}")
head -c "$(stat -c %s "$garbled_object")" /dev/urandom >"$WORK/garbage"
cat "$WORK/garbage" >"$garbled_object"
missing_object=${OBJECTS[missing]}
rm "$missing_object"
# One byte flipped in the last 64 KiB block of the one-chunk file: the checksum is per
# block, so the first block must still read.
flipped_object=${OBJECTS[flipped]}
offset=$(((1 << 20) - 100))
byte=$(od -An -tu1 -j "$offset" -N1 "$flipped_object" | tr -d ' ')
# shellcheck disable=SC2059 # the format is the one byte, as an octal escape
printf "\\$(printf %03o $(((byte + 1) % 256)))" | dd of="$flipped_object" bs=1 seek="$offset" conv=notrunc status=none
assert_equal 1 "$({ cmp -l "$flipped_object" "$WORK/flipped" || true; } | wc -l)" "bytes changed in the flipped object"

mount_volume
step "the undamaged file reads back"
assert_equal_files "$WORK/good" "$MNT/good"

step "the garbled chunk gives EIO, never wrong bytes; the file's other chunks still read"
assert_fails_with EIO cat "$MNT/garbled"
bad_chunks=()
for index in 0 1 2; do
    if with_timeout 30 dd if="$MNT/garbled" of="$WORK/garbled.$index" bs=1M skip="$index" count=1 status=none 2>"$WORK/dd.err"; then
        cmp -s "$WORK/garbled.$index" <(dd if="$WORK/garbled" bs=1M skip="$index" count=1 status=none) ||
            fail "chunk $index of the garbled file read back different bytes without an error"
    else
        assert_contains "$(cat "$WORK/dd.err")" "Input/output error" "dd of chunk $index"
        bad_chunks+=("$index")
    fi
done
assert_equal 1 "${#bad_chunks[@]}" "chunks of the garbled file that fail (${bad_chunks[*]})"

step "the missing chunk gives EIO"
assert_fails_with EIO cat "$MNT/missing"
assert_fails_with EIO cp "$MNT/missing" "$WORK/copy-of-missing"

step "a flipped byte fails only the block it is in"
assert_fails_with EIO cat "$MNT/flipped"
head -c 65536 "$WORK/flipped" >"$WORK/flipped.first"
if with_timeout 30 dd if="$MNT/flipped" of="$WORK/flipped.read" bs=64K count=1 iflag=direct status=none; then
    assert_equal_files "$WORK/flipped.first" "$WORK/flipped.read"
else
    fail "reading the undamaged first block of the flipped file (O_DIRECT) failed"
fi

step "the daemon keeps running and still serves"
daemon_alive "$MNT_PID" || fail "the daemon died reading damaged chunks"
assert_equal_files "$WORK/good" "$MNT/good"
printf 'still writable' >"$MNT/after"
assert_equal "still writable" "$(cat "$MNT/after")"
ls -l "$MNT" >/dev/null

step "the log names the inode, the chunk and the object"
log_lines=$(mount_log)
garbled_id=$(basename "$garbled_object")
missing_id=$(basename "$missing_object")
flipped_id=$(basename "$flipped_object")
assert_contains "$log_lines" "inode ${INO[garbled]} chunk ${bad_chunks[0]} .*$garbled_id" "daemon log"
assert_contains "$log_lines" "inode ${INO[missing]} chunk 0 .*$missing_id" "daemon log"
assert_contains "$log_lines" "inode ${INO[flipped]} chunk 0 .*$flipped_id.*block 15" "daemon log"

step "a write over a damaged chunk does not hide the damage with zeros"
# Writing part of a garbled chunk must read it first: that fails, so the write must too.
assert_fails_with EIO dd if=/dev/zero of="$MNT/garbled" bs=4K count=1 seek=$((bad_chunks[0] * 256 + 10)) conv=notrunc,fsync status=none

unmount_volume
step "fsck finds the damage and exits 1"
status=0
netvol fsck "$VOLUME" >"$WORK/fsck.out" 2>&1 || status=$?
assert_equal 1 "$status" "fsck exit status; it printed: $(cat "$WORK/fsck.out")"
report=$(cat "$WORK/fsck.out")
assert_contains "$report" "inode ${INO[garbled]} chunk ${bad_chunks[0]}" "fsck report"
assert_contains "$report" "inode ${INO[missing]} chunk 0" "fsck report"
assert_contains "$report" "inode ${INO[flipped]} chunk 0" "fsck report"
if grep -Eq "inode ${INO[good]} " <<<"$report"; then fail "fsck blames the good file: $report"; fi
