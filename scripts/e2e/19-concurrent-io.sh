#!/usr/bin/env bash
# scripts/e2e/19-concurrent-io.sh: many processes at once: parallel writers of separate
# files, readers running while writers write, and writers of disjoint ranges of one file
# whose ranges share chunks; every byte ends up where it was written.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 2G --chunk-size 1M
mount_volume
N=6
for i in $(seq 1 $N); do head -c 6M /dev/urandom >"$WORK/src$i"; done

# wait_all PID...: waits for each background job; fails if any failed.
wait_all() {
    local pid status=0
    for pid; do wait "$pid" || status=1; done
    return "$status"
}

step "$N writers at once"
pids=()
for i in $(seq 1 $N); do with_timeout 120 cp "$WORK/src$i" "$MNT/file$i" & pids+=($!); done
wait_all "${pids[@]}" || fail "a parallel writer failed"
for i in $(seq 1 $N); do assert_equal_files "$WORK/src$i" "$MNT/file$i"; done

step "$N readers while $N writers rewrite other files"
pids=()
for i in $(seq 1 $N); do
    with_timeout 120 cp "$WORK/src$i" "$MNT/other$i" & pids+=($!)
    with_timeout 120 cmp "$WORK/src$i" "$MNT/file$i" & pids+=($!)
    with_timeout 120 cmp "$WORK/src$(((i % N) + 1))" "$MNT/file$(((i % N) + 1))" & pids+=($!)
done
wait_all "${pids[@]}" || fail "a reader or writer failed, or a reader saw different bytes"
for i in $(seq 1 $N); do assert_equal_files "$WORK/src$i" "$MNT/other$i"; done

step "4 writers of disjoint, chunk-straddling ranges of one file"
# Writer k writes bytes [k * 1.5 MiB, (k + 1) * 1.5 MiB) of src1: each 1 MiB chunk in the
# middle is shared by two writers.
piece=$((3 << 19))
truncate -s $((4 * piece)) "$MNT/shared"
pids=()
for k in 0 1 2 3; do
    with_timeout 120 dd if="$WORK/src1" of="$MNT/shared" bs=64K iflag=skip_bytes,count_bytes oflag=seek_bytes \
        skip=$((k * piece)) seek=$((k * piece)) count=$piece conv=notrunc status=none & pids+=($!)
done
wait_all "${pids[@]}" || fail "a writer of a range failed"
head -c $((4 * piece)) "$WORK/src1" >"$WORK/shared.expected"
assert_equal_files "$WORK/shared.expected" "$MNT/shared"

step "and all of it after a remount"
unmount_volume
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
mount_volume
for i in $(seq 1 $N); do
    assert_equal_files "$WORK/src$i" "$MNT/file$i"
    assert_equal_files "$WORK/src$i" "$MNT/other$i"
done
assert_equal_files "$WORK/shared.expected" "$MNT/shared"
unmount_volume
