#!/usr/bin/env bash
# scripts/e2e/23-full-backing-disk.sh: a 1 GiB volume on a backing disk of about 100 MiB.
# df on the mount reports what the disk can still take, not the volume's nominal free
# space; a write that meets the full disk answers ENOSPC and commits nothing half-done
# (fsck is clean); deleting a file makes room again within seconds, not after the
# garbage-collection grace period.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_root
require_program mkfs.ext4
require_program losetup
[[ -e /dev/loop-control ]] || skip "no loop devices here"

step "a small ext4 filesystem as the backing disk"
truncate -s 128M "$WORK/disk.img"
mkfs.ext4 -q -F -m 0 "$WORK/disk.img"
mkdir "$WORK/disk"
register_mount "$WORK/disk"
mount -o loop "$WORK/disk.img" "$WORK/disk" || fail "cannot loop-mount a file here"
VOLUME=$WORK/disk/volume
make_volume --size 1G --chunk-size 1M
mount_volume

# free_kib DIR: what df says is available under DIR, in KiB.
free_kib() { df --output=avail -k "$1" | tail -n 1 | tr -d ' '; }

step "df reports the disk's room, not the volume's"
disk_free=$(free_kib "$WORK/disk")
mount_free=$(free_kib "$MNT")
((mount_free <= disk_free)) || fail "df on the mount says $mount_free KiB free, the disk has only $disk_free KiB"
((mount_free < 200 * 1024)) || fail "df on the mount says $mount_free KiB free on a 128 MiB disk"

step "filling the disk: the write that does not fit answers ENOSPC"
dd if=/dev/urandom of="$WORK/first" bs=1M count=60 status=none
cp "$WORK/first" "$MNT/first"
sync "$MNT/first"
status=0
dd if=/dev/zero of="$MNT/second" bs=1M count=200 conv=fsync status=none 2>"$WORK/dd.err" || status=$?
((status != 0)) || fail "writing 200 MiB to a 128 MiB disk succeeded"
grep -q "${ERRNO_TEXT[ENOSPC]}" "$WORK/dd.err" || fail "dd failed, but not with ENOSPC: $(cat "$WORK/dd.err")"
log "disk left after the refused write: $(free_kib "$WORK/disk") KiB; second is $(stat -c %s "$MNT/second") bytes"
assert_equal_files "$WORK/first" "$MNT/first"

step "fsck is clean on the full disk"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck found problems after ENOSPC"; }

step "deleting files makes room within seconds"
rm "$MNT/first" "$MNT/second"
# A write that fits once the deleted files' objects are gone (the grace period is ten
# minutes; the disk being full shortens it to seconds).
write_fits() { dd if=/dev/urandom of="$MNT/third" bs=1M count=40 conv=fsync status=none 2>/dev/null; }
wait_until 30 write_fits
head -c 1M "$MNT/third" >/dev/null
unmount_volume

step "fsck and usage agree after it all"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck found problems"; }
used=$(status_field "$VOLUME" used_bytes)
assert_equal $((40 << 20)) "$used" "the volume's usage after the last write"
