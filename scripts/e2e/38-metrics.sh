#!/usr/bin/env bash
# scripts/e2e/38-metrics.sh: `netvol mount --metrics` serves /metrics in Prometheus' text
# format (parsed here by the Prometheus project's own Python parser), and after a known
# workload the counters moved by exactly what it did: requests by operation, bytes
# written and read, failures by errno (and `ls -lR` asks for ACLs and labels once, files
# written on the mount are read back from the page cache after it); the lease and memory gauges; for a network
# volume, the object store requests and the cache's misses, then hits. The same metrics
# are on the daemon's private unix socket, where `netvol stats` reads them; a busy port
# fails the mount in one line.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3 curl
python3 -c 'import prometheus_client' 2>/dev/null || skip "the Python package prometheus-client is missing (scripts/test.sh installs it)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mount_volume "$VOLUME" --metrics "$port"

# metric NAME [LABEL=VALUE]: one sample's value from a scrape, through prometheus_client's
# parser (which fails on anything that is not the exposition format); 0 when absent.
scrape() { with_timeout 30 curl -sf "http://127.0.0.1:$port/metrics" >"$WORK/scrape" || fail "no /metrics on port $port"; }
metric() {
    python3 - "$WORK/scrape" "$@" <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
path, name = sys.argv[1], sys.argv[2]
labels = dict(item.split("=", 1) for item in sys.argv[3:])
total = 0.0
for family in text_string_to_metric_families(open(path).read()):
    for sample in family.samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            total += sample.value
print(int(total) if total == int(total) else total)
PY
}

step "the exposition parses, and names the metrics it promises"
# Requests are counted per operation from the first one of each.
ls -la "$MNT" >/dev/null
scrape
for name in netvol_requests_total netvol_request_duration_seconds_count netvol_written_bytes_total \
    netvol_read_bytes_total netvol_lease_held netvol_resident_memory_bytes netvol_buffered_bytes \
    netvol_change_feed_age_seconds; do
    grep -q "^$name" "$WORK/scrape" || fail "/metrics has no $name"
done
resident=$(metric netvol_resident_memory_bytes)
((resident > 1000000)) || fail "resident memory $resident is not plausible"

step "a known workload moves the counters by what it did"
before_mkdir=$(metric netvol_requests_total op=mkdir)
before_written=$(metric netvol_written_bytes_total)
for i in 1 2 3; do mkdir "$MNT/d$i"; done
head -c 3M /dev/urandom >"$WORK/data"
dd if="$WORK/data" of="$MNT/data" bs=1M conv=fsync status=none
# A rename onto a non-empty directory reaches the daemon and fails there.
touch "$MNT/d2/x"
mv -T "$MNT/d1" "$MNT/d2" 2>/dev/null && fail "rename onto a non-empty directory succeeded"
scrape
assert_equal $((before_mkdir + 3)) "$(metric netvol_requests_total op=mkdir)" "mkdir requests"
assert_equal $((before_written + 3 * 1024 * 1024)) "$(metric netvol_written_bytes_total)" "bytes written"
(($(metric netvol_errors_total errno=ENOTEMPTY) >= 1)) || fail "the failed rename is not counted by errno"
(($(metric netvol_request_duration_seconds_count op=mkdir) == before_mkdir + 3)) || fail "mkdir latencies not recorded"
assert_equal 1 "$(metric netvol_lease_held)" "lease held by the writing mount"
# The three new directories' names were kept in memory when they were made: the misses
# of names in them (the kernel asks, having no negative entries yet) are answered there.
hits=$(metric netvol_metadata_cache_hits_total)
for i in 1 2 3; do ! stat "$MNT/d$i/missing-$i" 2>/dev/null || fail "a missing name was found"; done
scrape
(($(metric netvol_metadata_cache_hits_total) >= hits + 3)) || fail "the metadata cache answered none of three lookups in new directories"

step "reads are counted once they reach the daemon"
before_read=$(metric netvol_read_bytes_total)
forget_pages "$MNT/data"
cmp "$WORK/data" "$MNT/data"
scrape
assert_equal $((before_read + 3 * 1024 * 1024)) "$(metric netvol_read_bytes_total)" "bytes read"

step "ls -l asks for ACLs and labels once; files written here are read from memory after it"
mkdir "$MNT/small"
for i in $(seq 1 50); do head -c 4096 /dev/urandom >"$MNT/small/f$i"; done
scrape
before_getxattr=$(metric netvol_requests_total op=getxattr)
before_reads=$(metric netvol_requests_total op=read)
ls -lR "$MNT/small" >/dev/null
cat "$MNT"/small/f* >"$WORK/small.cat"
scrape
# ls stops asking once the mount answers EOPNOTSUPP: one question for ACLs, one for labels.
(($(metric netvol_requests_total op=getxattr) - before_getxattr <= 2)) ||
    fail "ls -lR of 50 files asked for $(($(metric netvol_requests_total op=getxattr) - before_getxattr)) xattrs"
# The pages written are the file as committed: the new attributes ls -l brought do not drop them.
assert_equal "$before_reads" "$(metric netvol_requests_total op=read)" "read requests for files just written"
assert_equal $((50 * 4096)) "$(stat -c %s "$WORK/small.cat")" "bytes cat read"

if is_network_volume "$VOLUME"; then
    step "network volume: a cold read fetches from the object store; the next is a cache hit"
    unmount_volume
    rm -rf "$WORK/cache1"
    mount_volume "$VOLUME" --metrics "$port" --cache-dir "$WORK/cache1"
    scrape
    requests=$(metric netvol_object_store_requests_total)
    misses=$(metric netvol_cache_misses_total)
    cmp "$WORK/data" "$MNT/data"
    scrape
    (($(metric netvol_object_store_requests_total) > requests)) || fail "a cold read made no object store request"
    (($(metric netvol_cache_misses_total) > misses)) || fail "a cold read missed nothing in the cache"
    (($(metric netvol_database_calls_total) > 0)) || fail "no database call counted"
    (($(metric netvol_database_call_microseconds_total) > 0)) || fail "no time counted for the database calls"
    # A reader has its bytes as they land; the download reaches the cache just after.
    for _ in $(seq 1 300); do
        scrape
        (($(metric netvol_cache_bytes) >= 3 * 1024 * 1024)) && break
        sleep 0.1
    done
    requests=$(metric netvol_object_store_requests_total)
    hits=$(metric netvol_cache_hits_total)
    forget_pages "$MNT/data"
    cmp "$WORK/data" "$MNT/data"
    scrape
    assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests of a read from the cache"
    (($(metric netvol_cache_hits_total) > hits)) || fail "a read from the cache counted no hit"
    (($(metric netvol_cache_bytes) >= 3 * 1024 * 1024)) || fail "the cache's size gauge is below what it holds"

    step "network volume: netvol status shows this host's mount's cache"
    netvol status "$VOLUME" --json | python3 -c '
import json, sys
mounts = json.load(sys.stdin)["mounts"]
assert len(mounts) == 1, mounts
cache = mounts[0]["cache"]
assert cache["cached_bytes"] >= 3 << 20 and cache["capacity_bytes"] == 10 << 30, cache
assert cache["hits"] >= 1 and cache["misses"] >= 1 and 0 < cache["hit_ratio"] < 1, cache
assert cache["cached_objects"] >= 1, cache' || fail "netvol status --json shows no right cache for the mount"
    assert_contains "$(netvol status "$VOLUME")" "cache: .* used of 10.0 GiB, [0-9]+ objects, hit ratio [0-9]+%" "netvol status"
fi

step "netvol stats --once: one sample of the figures, while a write runs"
dd if=/dev/zero of="$MNT/streamed" bs=1M count=20000 status=none 2>/dev/null &
writer=$!
wait_until 10 test -s "$MNT/streamed"
stats=$(netvol stats "$MNT" --once)
kill "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
rm -f "$MNT/streamed"
printf '%s\n' "$stats" >&2
for figure in "requests/s: +total [0-9]" "read [0-9.]+ MiB/s +written [0-9.]+ MiB/s" "p50 [0-9.]+ (µs|ms|s) +p99" \
    "lease: +held, token [0-9]+" "buffered" "cache: "; do
    assert_contains "$stats" "$figure" "netvol stats --once"
done
written=$(sed -n 's/.*written \([0-9.]*\) MiB\/s.*/\1/p' <<<"$stats")
[[ $written != 0.0 && -n $written ]] || fail "netvol stats shows nothing written while dd wrote"
if is_network_volume "$VOLUME"; then
    assert_contains "$stats" "cache: +hit ratio .* used .* of " "netvol stats --once"
fi
assert_cli_error "not mounted" "$NETVOL" stats "$WORK" --once

step "the same metrics on the daemon's unix socket, readable by root alone"
socket=/run/netvol/$MNT_PID.metrics
[[ -S $socket ]] || fail "no socket $socket"
assert_equal 600 "$(stat -c %a "$socket")" "the socket's mode"
with_timeout 30 curl -sf --unix-socket "$socket" http://netvol/metrics >"$WORK/socket-scrape" ||
    fail "no metrics on $socket"
grep -q '^netvol_requests_total' "$WORK/socket-scrape" || fail "the metrics on $socket lack netvol_requests_total"

step "a port already taken fails the mount in one line"
busy=("$WORK/busy" --metrics "$port")
if is_network_volume "$VOLUME"; then busy+=(--cache-dir "$WORK/cache-busy" --log-file "$WORK/busy.log"); fi
assert_cli_error "metrics" "$NETVOL" mount "$VOLUME" "${busy[@]}"
is_mounted "$WORK/busy" && fail "a mount whose metrics port was taken mounted"
unmount_volume
[[ ! -e $socket ]] || fail "the unmounted daemon left $socket behind"
