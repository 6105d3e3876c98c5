#!/usr/bin/env bash
# scripts/e2e/37-lease-takeover-while-writing.sh: the lease changes hands between two
# mounts that both cache the same file and directory: the mount that takes it does so in
# the middle of a write (and of a create), catches up on the other's changes, and the
# write completes (kernel invalidations are sent from the background, never from inside
# the request being served); afterwards both mounts agree on the data.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME" --lease-idle 1
A=$MNT
mount_volume "$VOLUME" --lease-idle 1
B=$MNT

for round in 1 2 3; do
    step "round $round: A writes, B caches, A goes idle, B writes the same file and directory"
    head -c 2M /dev/urandom >"$WORK/a$round"
    cp "$WORK/a$round" "$A/shared"
    mkdir -p "$A/dir"
    printf 'a%s' "$round" >"$A/dir/from-a"
    same() { cmp -s "$WORK/a$round" "$B/shared"; }
    wait_until 3 same                      # B has the pages cached now
    ls "$B/dir" >/dev/null
    a_idle() { ! netvol lease "$VOLUME" | grep -q "held by"; }
    wait_until 5 a_idle
    printf 'A' >"$A/dir/x$round" 2>/dev/null && rm -f "$A/dir/x$round"   # A changes the directory too
    wait_until 5 a_idle
    head -c 1M /dev/urandom >"$WORK/b$round"
    with_timeout 30 dd if="$WORK/b$round" of="$B/shared" bs=1M count=1 conv=notrunc status=none ||
        fail "B's write that took the lease did not complete"
    with_timeout 30 sh -c "printf b > '$B/dir/from-b$round'" || fail "B's create that took the lease did not complete"
    dd if="$WORK/a$round" bs=1M skip=1 status=none >>"$WORK/b$round"
    cmp -s "$WORK/b$round" "$B/shared" || fail "B does not read back what it wrote"
    agree() { cmp -s "$WORK/b$round" "$A/shared" && [[ -e $A/dir/from-b$round ]]; }
    wait_until 5 agree
    b_idle() { ! netvol lease "$VOLUME" | grep -q "held by"; }
    wait_until 5 b_idle
done
unmount_volume "$B"
unmount_volume "$A"
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
