#!/usr/bin/env bash
# scripts/e2e/26-fallocate.sh: fallocate(1) through the mount. Punching a hole and zeroing a
# range make it read as zeros, give back the space of the chunks they cover whole (du
# shrinks), and keep or grow the size as asked; collapse and insert are refused.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_program fallocate
require_program python3
make_volume --size 1G --chunk-size 1M
mount_volume
head -c 9M /dev/urandom >"$WORK/reference"
cp "$WORK/reference" "$MNT/f"
sync "$MNT/f"

# zero_reference OFFSET LENGTH [GROW]: the same change to the reference, by hand.
zero_reference() {
    python3 - "$WORK/reference" "$@" <<'PY'
import sys
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
grow = len(sys.argv) > 4
data = bytearray(open(path, "rb").read())
end = offset + length if grow else min(offset + length, len(data))
if end > len(data):
    data.extend(bytes(end - len(data)))
data[offset:end] = bytes(end - offset)
open(path, "wb").write(data)
PY
}
kib() { du -k "$1" | cut -f1; }

step "punch a hole: zeros, same size, less space"
before=$(kib "$MNT/f")
fallocate --punch-hole --offset $((1536 << 10)) --length $((5 << 20)) "$MNT/f"
zero_reference $((1536 << 10)) $((5 << 20))
assert_equal_files "$WORK/reference" "$MNT/f"
assert_equal $((9 << 20)) "$(stat -c %s "$MNT/f")" "size after punching"
after=$(kib "$MNT/f")
# Chunks 2 to 5 are covered whole; 1 and 6 keep what lies outside the hole.
((before - after >= 4 * 1024)) || fail "du went from $before to $after KiB: the hole took no space back"

step "zero a range past the end: the file grows"
fallocate --zero-range --offset $((8 << 20)) --length $((3 << 20)) "$MNT/f"
zero_reference $((8 << 20)) $((3 << 20)) grow
assert_equal_files "$WORK/reference" "$MNT/f"
assert_equal $((11 << 20)) "$(stat -c %s "$MNT/f")" "size after zeroing past the end"

step "keep-size allocation changes nothing; collapse and insert are refused"
fallocate --keep-size --offset 0 --length $((20 << 20)) "$MNT/f"
assert_equal $((11 << 20)) "$(stat -c %s "$MNT/f")" "size after a keep-size allocation"
assert_fails_with EOPNOTSUPP fallocate --collapse-range --offset 0 --length $((1 << 20)) "$MNT/f"
assert_fails_with EOPNOTSUPP fallocate --insert-range --offset 0 --length $((1 << 20)) "$MNT/f"

step "after a remount: the same bytes, fsck clean"
unmount_volume
mount_volume
assert_equal_files "$WORK/reference" "$MNT/f"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck after fallocate"
