#!/usr/bin/env bash
# scripts/e2e/20-mmap.sh: files read through mmap, as safetensors loads models, give the
# same bytes as read(2), at any offset; a shared writable mapping writes through to the
# volume and persists.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_program python3

make_volume --size 1G --chunk-size 1M
mount_volume
head -c 9M /dev/urandom >"$WORK/model"
cp "$WORK/model" "$MNT/model.safetensors"

# py SCRIPT ARGS...: a short python3 script, bounded.
py() { with_timeout 120 python3 -c "$@"; }

step "mmap reads the same bytes as read(2)"
expected=$(sha256sum <"$WORK/model" | cut -d' ' -f1)
actual=$(py '
import hashlib, mmap, sys
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
    print(hashlib.sha256(m).hexdigest())
' "$MNT/model.safetensors")
assert_equal "$expected" "$actual" "sha256 through mmap"

step "random offsets through mmap, across chunk boundaries"
py '
import mmap, random, sys
random.seed(1)
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m, open(sys.argv[2], "rb") as g:
    want = g.read()
    assert len(m) == len(want), (len(m), len(want))
    points = [(1 << 20) - 3, (2 << 20) - 1, (9 << 20) - 10] + [random.randrange(len(want) - 4096) for _ in range(500)]
    for offset in points:
        n = min(4096, len(want) - offset)
        if m[offset:offset + n] != want[offset:offset + n]:
            sys.exit("mmap bytes differ at offset %d" % offset)
' "$MNT/model.safetensors" "$WORK/model" || fail "random reads through mmap differ"

step "a shared writable mapping writes through"
py '
import mmap, sys
with open(sys.argv[1], "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
    m[(1 << 20) - 2:(1 << 20) + 2] = b"MMAP"
    m[100:104] = b"head"
    m.flush()
' "$MNT/model.safetensors"
printf 'MMAP' | dd of="$WORK/model" bs=1 seek=$(((1 << 20) - 2)) conv=notrunc status=none
printf 'head' | dd of="$WORK/model" bs=1 seek=100 conv=notrunc status=none
assert_equal_files "$WORK/model" "$MNT/model.safetensors"

step "and persists"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
mount_volume
assert_equal_files "$WORK/model" "$MNT/model.safetensors"
unmount_volume
