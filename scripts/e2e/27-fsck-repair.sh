#!/usr/bin/env bash
# scripts/e2e/27-fsck-repair.sh: fsck finds a missing object, a damaged one, a nameless
# inode, an object nothing refers to and a wrong usage count; `fsck --repair` is refused
# while a mount holds the writer lease, then mends all of it and says what it changed:
# the damaged ranges read as zeros, every file keeps its size and its other bytes, and the
# next fsck is clean.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_program python3
make_volume --size 1G --chunk-size 1M
mount_volume
head -c 3M /dev/urandom >"$WORK/big"
head -c 2M /dev/urandom >"$WORK/second"
cp "$WORK/big" "$WORK/second" "$MNT/"
printf 'small and inline' >"$MNT/small"
printf 'soon nameless' >"$MNT/orphan"
unmount_volume

step "a repair is refused while a mount holds the writer lease"
mount_volume "$VOLUME" --writer
assert_cli_error "mounted for writing" netvol fsck "$VOLUME" --repair
unmount_volume

step "damage the backing store by hand"
python3 - "$VOLUME" <<'PY'
import os, shutil, sqlite3, sys
volume = sys.argv[1]
db = sqlite3.connect(os.path.join(volume, "volume.db"))
def path_of(name, index):
    (ino,) = db.execute("SELECT ino FROM dentries WHERE parent = 1 AND name = ?", (name.encode(),)).fetchone()
    (obj,) = db.execute("SELECT object FROM chunks WHERE ino = ? AND idx = ?", (ino, index)).fetchone()
    hexid = "%016x" % (obj & 0xFFFFFFFFFFFFFFFF)
    return os.path.join(volume, "chunks", hexid[-2:], hexid)
os.remove(path_of("big", 1))                       # a missing object
damaged = path_of("second", 0)
os.chmod(damaged, 0o600)
with open(damaged, "r+b") as f:                    # a damaged one
    f.seek(1000)
    f.write(b"not what was written")
stray = os.path.join(volume, "chunks", "ef")
os.makedirs(stray, mode=0o700, exist_ok=True)
shutil.copy(path_of("second", 1), os.path.join(stray, "00000000deadbeef"))  # an object nothing refers to
(ino,) = db.execute("SELECT ino FROM dentries WHERE parent = 1 AND name = ?", (b"orphan",)).fetchone()
db.execute("DELETE FROM dentries WHERE ino = ?", (ino,))
db.execute("UPDATE inodes SET nlink = 0 WHERE ino = ?", (ino,))   # a nameless inode
db.execute("UPDATE settings SET value = value + 12345 WHERE key = 'used_bytes'")
db.commit()
PY

step "fsck finds it all"
status=0
netvol fsck "$VOLUME" >"$WORK/fsck.out" || status=$?
cat "$WORK/fsck.out" >&2
((status == 1)) || fail "fsck exited $status on a damaged volume"
assert_contains "$(cat "$WORK/fsck.out")" "is missing" "fsck output"
assert_contains "$(cat "$WORK/fsck.out")" "does not match its checksums" "fsck output"
assert_contains "$(cat "$WORK/fsck.out")" "usage is recorded as" "fsck output"
assert_contains "$(cat "$WORK/fsck.out")" "1 nameless inodes, 1 objects nothing refers to" "fsck output"

step "fsck --repair mends it and says what it changed"
netvol fsck "$VOLUME" --repair >"$WORK/repair.out"
cat "$WORK/repair.out" >&2
assert_contains "$(cat "$WORK/repair.out")" "/big: bytes 1048576-2097152 now read as zeros" "repair report"
assert_contains "$(cat "$WORK/repair.out")" "/second: bytes 0-1048576 now read as zeros" "repair report"
assert_contains "$(cat "$WORK/repair.out")" "purged 1 nameless inodes" "repair report"
assert_contains "$(cat "$WORK/repair.out")" "deleted 1 objects nothing referred to" "repair report"
assert_contains "$(cat "$WORK/repair.out")" "recounted" "repair report"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after the repair"; }
! grep -q "left by a crash" "$WORK/fsck.out" || fail "leftovers after the repair: $(cat "$WORK/fsck.out")"

step "every file keeps its size and the bytes that were not damaged"
python3 - "$WORK/big" 1048576 2097152 <<'PY'
import sys
path, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytearray(open(path, "rb").read())
data[low:high] = bytes(high - low)
open(path, "wb").write(data)
PY
python3 - "$WORK/second" 0 1048576 <<'PY'
import sys
path, low, high = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = bytearray(open(path, "rb").read())
data[low:high] = bytes(high - low)
open(path, "wb").write(data)
PY
mount_volume
assert_equal_files "$WORK/big" "$MNT/big"
assert_equal_files "$WORK/second" "$MNT/second"
assert_equal "small and inline" "$(cat "$MNT/small")" "the small file"
unmount_volume
