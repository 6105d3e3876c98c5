#!/usr/bin/env bash
# scripts/e2e/47-hosts-free-lease-reads.sh: while nobody holds the lease, a reader on
# another host answers opens from its cache (its database calls do not grow with the
# files it reads). A writer that then takes the lease waits before its first change, so
# the reader's next open after the writer's close sees the new contents at once, before
# the reader has read the change feed again (close-to-open), round after round.
# e2e-links: direct delay
# e2e-timeout: 300
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-270}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

# A gives the lease back after a second without writes.
two_workers --lease-idle 1
FILES=40

lease_free() { ! E2E_HOST=worker-b netvol lease "$VOLUME" | grep -q "^held by"; }
database_calls() {
    with_timeout 10 curl -sf --unix-socket "/run/netvol/$B_PID.metrics" http://netvol/metrics |
        awk '$1 == "netvol_database_calls_total" { print $2 }'
}
# reads_all VERSION: every file on B holds what A last wrote to it.
reads_all() {
    local i
    for i in $(seq "$FILES"); do
        assert_equal "$1 of file $i" "$(cat "$B/d/f$i")" "B's file $i"
    done
}

step "A writes a directory of small files, then gives the lease back"
mkdir "$A/d"
for i in $(seq "$FILES"); do printf 'v0 of file %s' "$i" >"$A/d/f$i"; done
wait_until 15 lease_free
wait_until 10 test -e "$B/d/f$FILES"
# B reads the change feed twice a second; its next read finds the lease free.
sleep 1

step "B reads them all from its cache: a round trip per directory, not per file"
ls -l "$B/d" >/dev/null
before=$(database_calls)
[[ -n $before ]] || fail "no netvol_database_calls_total from B's daemon"
reads_all v0
after=$(database_calls)
# The feed's own reads (two a second) and one read of the directory's chunk maps.
((after - before < FILES / 2)) || fail "B asked the database $((after - before)) times to open $FILES files"

for round in 1 2 3; do
    step "round $round: A changes a file B has read and closes it; B's next open sees it"
    wait_until 15 lease_free
    reads_all "v$((round - 1))"
    started=${EPOCHREALTIME/./}
    printf 'v%s of file 1' "$round" >"$A/d/f1"
    log "A's first change took $(((${EPOCHREALTIME/./} - started) / 1000)) ms (it waits a second for B)"
    assert_equal "v$round of file 1" "$(cat "$B/d/f1")" "B's open right after A's close"
    for i in $(seq 2 "$FILES"); do printf 'v%s of file %s' "$round" "$i" >"$A/d/f$i"; done
    reads_all "v$round"
done

unmount_volume "$A"
unmount_volume "$B"
