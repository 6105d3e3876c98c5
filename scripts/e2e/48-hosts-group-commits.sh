#!/usr/bin/env bash
# scripts/e2e/48-hosts-group-commits.sh: a writer alone on its volume commits its closes
# in groups, yet close-to-open holds for every mount there is. A mount that attaches
# right after the writer's last close, on another host, finds every file the writer
# closed, whole (it waits for the writer's group first); from then on the writer commits
# at each close, so the other host's next open sees each new file at once. A writer
# killed while alone loses at most its last group: files it closed a second before the
# kill are there, and a host that attaches meanwhile waits for the lease to expire, not
# longer.
# e2e-links: direct delay
# e2e-timeout: 300
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-270}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

TTL=5
FILES=300
hosts_up worker-a worker-b worker-c
start_storage
make_volume --size 2G --chunk-size 1M
mount_on worker-a --lease-ttl "$TTL" --lease-idle 600
A=$MNT
A_PID=$MNT_PID

transactions() {
    with_timeout 10 curl -sf --unix-socket "/run/netvol/$A_PID.metrics" http://netvol/metrics |
        awk '$1 == "netvol_database_transactions_total" { print $2 }'
}

# write_files DIR N TAG: N files of distinct sizes (some past the 64 KiB kept inline).
write_files() {
    local i
    mkdir -p "$1"
    for i in $(seq "$2"); do
        head -c $(((i * 997) % 150000 + 1)) /dev/urandom >"$1/f$i"
        printf '%s %s' "$3" "$i" >>"$1/f$i"
    done
}

step "A, alone, writes $FILES files and a tree without fsync"
before=$(transactions)
write_files "$A/d" "$FILES" first
after=$(transactions)
log "A's $FILES closes took $((after - before)) transactions"
# Committed one by one, the closes alone would take $FILES; the count also holds the
# lease renewals, heartbeats and deferral checks made meanwhile, more of them the longer
# a loaded machine takes to write the files.
((after - before < FILES / 2)) || fail "A committed $FILES closes in $((after - before)) transactions: not in groups"
cp -R "$(real_tree)" "$A/tree"
(cd "$A" && find d tree -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums"

step "B attaches right after A's last close and finds all of it"
started=${EPOCHREALTIME/./}
mount_on worker-b --lease-ttl "$TTL"
B=$MNT
log "B's mount took $(((${EPOCHREALTIME/./} - started) / 1000)) ms"
(cd "$B" && sha256sum --quiet -c "$WORK/sums") || fail "B does not read what A closed before B attached"

step "with B attached, each close of A is seen by B's next open"
for i in $(seq 20); do
    printf 'second %s' "$i" >"$A/g$i"
    assert_equal "second $i" "$(cat "$B/g$i")" "B's open right after A's close of g$i"
done

step "B leaves; A, alone again, is killed after its closes"
unmount_volume "$B"
# A asks again whether it is alone a few seconds after it found B attached.
sleep 6
before=$(transactions)
write_files "$A/e" 100 killed
after=$(transactions)
((after - before < 50)) || fail "A, alone again, committed 100 closes in $((after - before)) transactions"
sleep 1
(cd "$A" && find e -type f -print0 | sort -z | xargs -0 sha256sum) >"$WORK/sums-e"
kill -9 "$A_PID"
killed=${EPOCHREALTIME/./}
timeout -k 5 30 fusermount3 -uz "$A" || true

step "C attaches: it waits at most for the lease to expire, and finds what A closed"
mount_on worker-c --lease-ttl "$TTL"
C=$MNT
waited=$(((${EPOCHREALTIME/./} - killed) / 1000))
log "C's mount was ready $waited ms after the kill"
((waited < (TTL + 10) * 1000)) || fail "C waited $waited ms for a dead writer (ttl ${TTL} s)"
(cd "$C" && sha256sum --quiet -c "$WORK/sums-e") || fail "files A closed a second before the kill are lost"
(cd "$C" && sha256sum --quiet -c "$WORK/sums") || fail "files A closed before B attached are lost"
unmount_volume "$C"
