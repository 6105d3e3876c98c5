#!/usr/bin/env bash
# scripts/e2e/41-hosts-crash.sh: the writer's daemon killed with -9 in the middle of a
# mixed workload, on one host after the other. Each time, a worker on another host can
# write within the lease's ttl + 2 s of the kill; every file the dead writer had closed
# or fsynced reads back exactly (crash_workload.py --close-commits keeps the journal);
# every file reads whole; fsck finds nothing wrong.
# e2e-links: direct delay flaky
# e2e-timeout: 480
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-450}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

TTL=5
ROUNDS=${NETVOL_HOSTS_CRASH_ROUNDS:-4}
seed=${NETVOL_CRASH_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
log "seed $seed; replay with NETVOL_CRASH_SEED=$seed"
RANDOM=$seed
workload=$E2E_DIR/crash_workload.py
journal=$WORK/journal

hosts_up worker-a worker-b
start_storage
make_volume --size 2G --chunk-size 64K
mount_on worker-a --lease-ttl "$TTL" --lease-idle 600
writer=worker-a
WRITER_MNT=$MNT
WRITER_PID=$MNT_PID
mount_on worker-b --lease-ttl "$TTL" --lease-idle 600
other=worker-b
OTHER_MNT=$MNT

for ((round = 1; round <= ROUNDS; round++)); do
    step "round $round: $writer writes, and its daemon is killed"
    python3 "$workload" run "$WRITER_MNT" "$journal" "$((seed + round))" --close-commits 2>"$WORK/workload.err" &
    runner=$!
    # Long enough for the writer to take the lease and write across many chunks.
    delay=$((3000 + RANDOM % 3000))
    sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
    kill -9 "$WRITER_PID"
    killed=${EPOCHREALTIME/./}
    status=0
    wait "$runner" || status=$?
    ((status == 0)) || { cat "$WORK/workload.err" >&2; fail "round $round: the workload failed on its own (status $status)"; }
    wait_until 10 daemon_gone "$WRITER_PID"

    step "round $round: $other writes within ttl + 2 s"
    write_within $((TTL + 2)) "$killed" "$OTHER_MNT/round" "$round" "round $round's kill"

    step "round $round: everything $writer closed or fsynced is there, nothing is torn"
    python3 "$workload" check "$OTHER_MNT" "$journal" >"$WORK/check.out" ||
        { cat "$WORK/check.out" >&2; fail "round $round (seed $seed): files lost or torn by the kill"; }
    log "round $round: $(tail -n 1 "$WORK/check.out")"

    # The dead writer's host mounts again, and the roles swap.
    timeout -k 5 30 fusermount3 -uz "$WRITER_MNT"
    forget_mount "$WRITER_MNT"
    mount_on "$writer" --lease-ttl "$TTL" --lease-idle 600
    read -r writer other <<<"$other $writer"
    read -r WRITER_MNT OTHER_MNT <<<"$OTHER_MNT $MNT"
    WRITER_PID=$(E2E_HOST=$writer daemon_pid "$VOLUME" "$WRITER_MNT")
done

step "fsck finds nothing wrong"
unmount_volume "$WRITER_MNT"
unmount_volume "$OTHER_MNT"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after the crashes (seed $seed)"; }
expect_faults_injected
