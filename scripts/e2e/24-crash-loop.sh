#!/usr/bin/env bash
# scripts/e2e/24-crash-loop.sh: the daemon killed with -9 at random moments of a mixed
# workload (writes across chunk boundaries, creates, renames, unlinks, truncates, fsync,
# fsyncdir), 50 times in a row, remounting each time. After each kill: every file that
# was fsynced (with its directory) reads back with the bytes it had, every file reads
# whole (no torn or missing chunk), and `netvol fsck` finds no problem (every chunk
# matches its checksums, the usage is the sum of the chunks).
#
# Prints its seed; NETVOL_CRASH_SEED=N replays one, NETVOL_CRASH_ROUNDS=N sets the rounds.
# e2e-timeout: 900
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-870}
. "$(dirname "$0")/lib.sh"

require_program python3
seed=${NETVOL_CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
rounds=${NETVOL_CRASH_ROUNDS:-50}
log "seed $seed ($rounds rounds); replay with NETVOL_CRASH_SEED=$seed"
RANDOM=$seed
workload=$E2E_DIR/crash_workload.py
journal=$WORK/journal

make_volume --size 10G --chunk-size 64K
for ((round = 1; round <= rounds; round++)); do
    mount_volume "$VOLUME" --lease-idle 3600
    python3 "$workload" check "$MNT" "$journal" >"$WORK/check.out" ||
        { cat "$WORK/check.out" >&2; fail "round $round (seed $seed): files lost or torn by the last kill"; }

    python3 "$workload" run "$MNT" "$journal" "$((seed + round))" 2>"$WORK/workload.err" &
    runner=$!
    # Between 50 ms and 1.5 s into the workload.
    delay=$((50 + RANDOM % 1450))
    sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
    kill -9 "$MNT_PID"
    status=0
    wait "$runner" || status=$?
    ((status == 0)) || { cat "$WORK/workload.err" >&2; fail "round $round (seed $seed): the workload failed on its own (status $status)"; }
    wait_until 10 daemon_gone "$MNT_PID"
    timeout -k 5 30 fusermount3 -uz "$MNT"

    netvol fsck "$VOLUME" >"$WORK/fsck.out" ||
        { cat "$WORK/fsck.out" >&2; fail "round $round (seed $seed): fsck found problems after the kill"; }
    # The killed daemon held the lease: break it rather than wait for it to expire.
    netvol lease "$VOLUME" --break >/dev/null 2>&1
    log "round $round: $(tail -n 1 "$WORK/check.out"); killed after $(wc -l <"$journal") journal lines"
done

step "a last mount: everything durable is there"
mount_volume
python3 "$workload" check "$MNT" "$journal" >"$WORK/check.out" ||
    { cat "$WORK/check.out" >&2; fail "after the last kill (seed $seed): files lost or torn"; }
log "$(tail -n 1 "$WORK/check.out")"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck after the last clean unmount (seed $seed)"
