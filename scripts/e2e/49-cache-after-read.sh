#!/usr/bin/env bash
# scripts/e2e/49-cache-after-read.sh: a cold streaming read of a network volume leaves
# the host cache's copies of what its prefetches fetched for later, and the daemon writes
# them from the kernel's pages of the file once the reads have gone quiet: the cache then
# holds the whole file with no second download (the object store's request count stands
# still), and a read after the pages are dropped asks the store nothing. `netvol unmount`
# right after a cold read writes the copies before the pages go with the mount.
# e2e-backends: network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3 curl

mount_volume
head -c 96M /dev/urandom >"$WORK/model"
cp "$WORK/model" "$MNT/model"
unmount_volume

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A fresh mount of another host: an empty cache of its own.
mount_volume "$VOLUME" --metrics "$port"
cache=$WORK/cache$E2E_MOUNT_COUNT
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }
cached_whole() { [[ $(netvol warmup "$MNT/model" --check) == "100.0%  96.0 MiB of 96.0 MiB cached  $MNT/model" ]]; }
# Bytes of cached objects in a cache directory (downloads under way live in tmp/).
cached_bytes() { find "$1" -path "$1/tmp" -prune -o -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }'; }

step "a cold read: copies written once the reads are quiet, from the kernel's pages"
cmp "$WORK/model" "$MNT/model"
requests=$(metric netvol_object_store_requests_total)
wait_until 30 cached_whole
assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests while the copies were written"
later=$(metric netvol_cache_written_later_total)
((later >= 20)) || fail "only $later of the file's 24 objects were written after the read"

step "the next read, with the pages dropped, asks the object store nothing"
forget_pages "$MNT/model"
cmp "$WORK/model" "$MNT/model"
assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests reading from the cache"

step "an unmount right after a cold read writes the copies first"
netvol warmup "$MNT/model" --evict >/dev/null
assert_equal 0 "$(cached_bytes "$cache")" "bytes cached after --evict"
forget_pages "$MNT/model"
cmp "$WORK/model" "$MNT/model"
unmount_volume
assert_equal $((96 << 20)) "$(cached_bytes "$cache")" "bytes cached after the unmount"
