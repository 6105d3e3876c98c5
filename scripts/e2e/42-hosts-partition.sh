#!/usr/bin/env bash
# scripts/e2e/42-hosts-partition.sh: a writer cut off from the network (its host's link
# down), and then a writer frozen (SIGSTOP), each while it holds the lease with a file
# open and writes it has not flushed. A worker on another host takes the lease after the
# ttl and writes. When the stale writer comes back it commits nothing more: its open
# files answer EIO on fsync and close, new changes answer EROFS, and the volume holds
# exactly the new writer's data plus what the stale one had fsynced before it was cut.
# e2e-links: direct delay flaky
# e2e-timeout: 420
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-390}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

TTL=5
two_workers --lease-ttl "$TTL" --lease-idle 600

# stale_writer HOW STALE_MNT STALE_PID STALE_HOST NEW_MNT: HOW is cut or freeze.
stale_writer() {
    local how=$1 stale=$2 stale_pid=$3 stale_host=$4 new=$5
    local results=$WORK/results-$how
    mkdir -p "$results"

    step "$how: the writer fsyncs some files, then buffers writes it never flushes"
    head -c 6M /dev/urandom >"$WORK/synced-$how"
    dd if="$WORK/synced-$how" of="$stale/synced-$how" bs=1M conv=fsync status=none
    printf 'old contents' >"$stale/kept-$how"
    printf 'from the stale writer' >"$stale/shared-$how"
    sync "$stale/kept-$how" "$stale/shared-$how"
    # A process that keeps its descriptors open across the cut: a new file with 3 MiB
    # (chunks that go nowhere) and new bytes over a committed file.
    python3 - "$stale" "$how" "$results" <<'PY' &
import os, sys, time
mount, how, results = sys.argv[1:4]
fresh = os.open(os.path.join(mount, "open-" + how), os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fresh, os.urandom(3 << 20))
kept = os.open(os.path.join(mount, "kept-" + how), os.O_RDWR)
os.pwrite(kept, b"NEW", 0)
open(os.path.join(results, "buffered"), "w").close()
while not os.path.exists(os.path.join(results, "go")):
    time.sleep(0.05)

def outcome(call, fd):
    try:
        call(fd)
        return "ok"
    except OSError as error:
        return os.strerror(error.errno)

for name, call, fd in (("fsync", os.fsync, fresh), ("close", os.close, kept)):
    with open(os.path.join(results, name), "w") as out:
        out.write(outcome(call, fd))
try:
    os.close(fresh)
except OSError:
    pass
PY
    local holder=$!
    wait_until 20 test -e "$results/buffered"

    if [[ $how == cut ]]; then
        step "$how: the writer's link goes down"
        cut_link "$stale_host"
    else
        step "$how: the writer's daemon is stopped"
        freeze "$stale_pid"
    fi
    local start=${EPOCHREALTIME/./}

    step "$how: another worker takes the lease after the ttl, and writes"
    write_within $((TTL + 3)) "$start" "$new/from-new-$how" "from the new writer" "the writer was cut off ($how)"
    printf 'from the new writer' >"$new/shared-$how"
    head -c 2M /dev/urandom >"$WORK/new-$how"
    cp "$WORK/new-$how" "$new/big-$how"

    if [[ $how == cut ]]; then
        step "$how: the link comes back"
        heal_link "$stale_host"
    else
        step "$how: the daemon resumes"
        thaw "$stale_pid"
    fi
    touch "$results/go"
    wait_until 60 test -e "$results/close"
    wait "$holder" || fail "$how: the process holding files open failed"
    assert_equal "Input/output error" "$(cat "$results/fsync")" "$how: fsync of the stale writer's unflushed new file"
    assert_equal "Input/output error" "$(cat "$results/close")" "$how: close of the stale writer's unflushed rewrite"

    step "$how: every change the stale writer tries now is refused"
    assert_fails_with EROFS sh -c "printf late > '$stale/late-$how'"
    assert_fails_with EROFS sh -c "printf late > '$stale/kept-$how'"
    assert_fails_with EROFS mkdir "$stale/late-dir-$how"
    assert_fails_with EROFS rm "$stale/synced-$how"
    grep -q "lost the writer lease" <<<"$(mount_log "$stale")" || fail "$how: the stale writer's log does not say it lost the lease"

    step "$how: the volume holds the new writer's data and what the stale one fsynced, seen from both"
    local mount
    for mount in "$new" "$stale"; do
        wait_until 5 test -e "$mount/big-$how"
        cmp "$WORK/synced-$how" "$mount/synced-$how" || fail "$how: $mount/synced-$how differs"
        assert_equal "old contents" "$(cat "$mount/kept-$how")" "$how: the file rewritten but never flushed, on $mount"
        assert_equal "from the new writer" "$(cat "$mount/shared-$how")" "$how: the file both wrote, on $mount"
        assert_equal "from the new writer" "$(cat "$mount/from-new-$how")"
        cmp "$WORK/new-$how" "$mount/big-$how" || fail "$how: $mount/big-$how differs"
        assert_never_committed "$mount/open-$how" "$how: the new file never flushed, on $mount"
        [[ ! -e $mount/late-$how && ! -e $mount/late-dir-$how ]] || fail "$how: a late change of the stale writer exists"
    done
}

stale_writer cut "$A" "$A_PID" worker-a "$B"
# B holds the lease now; it is the one frozen next.
stale_writer freeze "$B" "$B_PID" worker-b "$A"

unmount_volume "$A"
unmount_volume "$B"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
expect_faults_injected
