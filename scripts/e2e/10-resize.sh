#!/usr/bin/env bash
# scripts/e2e/10-resize.sh: `netvol resize` grows a volume: a write that failed with
# ENOSPC succeeds afterwards, both when the volume was resized unmounted and while it is
# mounted (without anyone running df first), and df shows the new size.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 16M --chunk-size 1M
df_field() { with_timeout 30 df -B1 --output="$1" "$MNT" | sed -n '2{s/ //g;p}'; }
# write_mib FILE MIB: appends MIB MiB of random bytes to FILE, flushed to the volume.
write_mib() { with_timeout 60 dd if=/dev/urandom of="$1" bs=1M count="$2" oflag=append conv=notrunc,fsync status=none; }

mount_volume
step "a 16M volume takes 15 MiB, not 4 more"
write_mib "$MNT/fill" 15
assert_fails_with ENOSPC write_mib "$MNT/refused1" 4

step "resized while unmounted, it takes them after the next mount"
unmount_volume
assert_equal "volume $VOLUME is now 32.0 MiB" "$(netvol resize "$VOLUME" --size 32M)" "resize output"
assert_equal $((32 << 20)) "$(status_field "$VOLUME" size_bytes)" "status size_bytes"
mount_volume
assert_equal $((32 << 20)) "$(df_field size)" "df size after the remount"
used=$(status_field "$VOLUME" used_bytes)
write_mib "$MNT/more" 4 || fail "a 4 MiB write after resizing 16M to 32M failed"
assert_equal $((used + (4 << 20))) "$(status_field "$VOLUME" used_bytes)" "used_bytes"

step "full again"
write_mib "$MNT/fill" 12
assert_fails_with ENOSPC write_mib "$MNT/refused2" 4
# (Nothing is removed here: that would test whether rm gives space back, 12-space-after-rm.)

step "resized while mounted, the next write succeeds"
used=$(status_field "$VOLUME" used_bytes)
netvol resize "$VOLUME" --size 64M >/dev/null
assert_equal $((64 << 20)) "$(status_field "$VOLUME" size_bytes)" "status size_bytes"
# No df here: the mounted daemon must see the new limit by itself.
write_mib "$MNT/even-more" 4 || fail "a 4 MiB write after resizing the mounted volume from 32M to 64M failed"
assert_equal $((64 << 20)) "$(df_field size)" "df size after resizing while mounted"
assert_equal $((used + (4 << 20))) "$(status_field "$VOLUME" used_bytes)" "used_bytes"

step "and the new limit holds"
assert_fails_with ENOSPC write_mib "$MNT/way-too-much" 40
used=$(status_field "$VOLUME" used_bytes)
((used <= 64 << 20)) || fail "used_bytes $used is past the 64 MiB limit"

unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
