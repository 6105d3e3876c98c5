#!/usr/bin/env bash
# scripts/e2e/17-gc-fsck.sh: rewriting files leaves replaced chunk objects behind; gc
# keeps them through the grace period and then deletes exactly those, never a chunk a
# file uses; fsck, the oracle, passes before and after, and the data is intact.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
objects() { find "$VOLUME/chunks" -type f | wc -l; }

mount_volume
step "writing, then rewriting parts of files"
for i in 1 2 3; do head -c 3M /dev/urandom >"$WORK/f$i"; cp "$WORK/f$i" "$MNT/f$i"; done
assert_equal 9 "$(objects)" "objects of three 3 MiB files"
# Rewrite a few bytes inside chunk 1 of f1 and chunk 2 of f2: each stores a new object.
printf 'patched' | dd of="$WORK/f1" bs=1 seek=$(((1 << 20) + 5)) conv=notrunc status=none
printf 'patched' | dd of="$MNT/f1" bs=1 seek=$(((1 << 20) + 5)) conv=notrunc status=none
printf 'patched' | dd of="$WORK/f2" bs=1 seek=$(((2 << 20) + 5)) conv=notrunc status=none
printf 'patched' | dd of="$MNT/f2" bs=1 seek=$(((2 << 20) + 5)) conv=notrunc status=none
# Replace f3 entirely, and remove nothing else.
head -c 2M /dev/urandom >"$WORK/f3"
cp "$WORK/f3" "$MNT/f3"
assert_equal $((3 + 3 + 2 << 20)) "$(status_field "$VOLUME" used_bytes)" "used_bytes counts only live chunks"
unmount_volume

step "fsck passes with garbage lying around"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck before gc"; }
before=$(objects)
((before > 8)) || fail "no replaced objects left to collect ($before objects)"

step "gc within the grace period deletes nothing"
netvol gc "$VOLUME" >"$WORK/gc.out"
assert_contains "$(cat "$WORK/gc.out")" "^deleted 0 objects" "gc output"
assert_equal "$before" "$(objects)" "objects after gc within the grace period"

step "gc after the grace period deletes the replaced objects, and only those"
netvol gc "$VOLUME" --grace 0 >"$WORK/gc.out"
assert_equal 8 "$(objects)" "objects left: 3 + 3 + 2 chunks in use"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after gc"; }
netvol gc "$VOLUME" --grace 0 >"$WORK/gc.out"
assert_contains "$(cat "$WORK/gc.out")" "^deleted 0 objects" "a second gc"

step "a stray object (stored, never committed) is collected too"
stray_dir=$(find "$VOLUME/chunks" -mindepth 1 -maxdepth 1 -type d | sed -n 1p)
# Objects are fanned out by the last two hex digits of their id.
head -c 1000 /dev/urandom >"$stray_dir/0000000000000a$(basename "$stray_dir")"
netvol gc "$VOLUME" --grace 0 >/dev/null
netvol gc "$VOLUME" --grace 0 >/dev/null
assert_equal 8 "$(objects)" "objects after collecting a stray"
netvol fsck "$VOLUME" >/dev/null || fail "fsck after collecting a stray"

step "the data is intact"
mount_volume
for i in 1 2 3; do assert_equal_files "$WORK/f$i" "$MNT/f$i"; done

step "gc while mounted, with the default grace, leaves the mounted volume intact"
printf 'again' | dd of="$MNT/f1" bs=1 seek=10 conv=notrunc status=none
printf 'again' | dd of="$WORK/f1" bs=1 seek=10 conv=notrunc status=none
netvol gc "$VOLUME" >/dev/null
for i in 1 2 3; do assert_equal_files "$WORK/f$i" "$MNT/f$i"; done
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck at the end"

step "on a terminal, fsck and gc show their progress; in a pipe, only the result"
require_program script
on_terminal() { with_timeout 120 script -qec "$*" /dev/null | tr '\r' '\n'; }
out=$(on_terminal "$NETVOL" fsck "$VOLUME")
assert_contains "$out" "fsck: 8 of 8 chunks \(100%\), .* checked, [0-9]+ MiB/s, 0 s left" "fsck's progress on a terminal"
assert_contains "$out" "checked .* inodes, 8 chunks: no problems" "fsck's result on a terminal"
mount_volume
rm "$MNT/f1"
unmount_volume
out=$(on_terminal "$NETVOL" gc "$VOLUME" --grace 0)
assert_contains "$out" "gc: [0-9]+ objects deleted" "gc's progress on a terminal"
assert_contains "$out" "deleted [0-9]+ objects;" "gc's result on a terminal"
out=$(netvol fsck "$VOLUME" 2>&1)
[[ $out != *"fsck: "* ]] || fail "fsck drew progress into a pipe: $out"
