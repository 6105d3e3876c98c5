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
# A fresh mount of another host: an empty cache of its own. --debug: the daemon's log
# says why a copy was not written.
mount_volume "$VOLUME" --metrics "$port" --debug
cache=$WORK/cache$E2E_MOUNT_COUNT
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }
# Requests to the object store but for retries of failed ones.
first_tries() { echo $(($(metric netvol_object_store_requests_total) - $(metric netvol_object_store_retries_total))); }
cached_whole() { [[ $(netvol warmup "$MNT/model" --check) == "100.0%  96.0 MiB of 96.0 MiB cached  $MNT/model" ]]; }
# Bytes of cached objects in a cache directory (downloads under way live in tmp/).
cached_bytes() { find "$1" -path "$1/tmp" -prune -o -type f -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }'; }

step "a cold read: copies written once the reads are quiet, from the kernel's pages"
base=$(first_tries)
cmp "$WORK/model" "$MNT/model"
wait_until 30 cached_whole
# The read downloaded each of the file's 24 objects once; besides, the store is asked
# only for copies whose pages went before they could be written, once each.
later=$(metric netvol_cache_written_later_total)
fetched=$(metric netvol_cache_fetched_again_total)
went=$(copies_whose_pages_went)
echo "copies written later: $later; downloaded again, their pages gone: $fetched; bytes the kernel read: $(metric netvol_read_bytes_total); requests $(($(first_tries) - base))"
assert_equal $((24 + fetched)) $(($(first_tries) - base)) "object store requests (24 for the read, and the copies downloaded again)"
assert_equal "$fetched" "$went" "copies downloaded again (the log's copies whose pages went)"
# The first chunk or two are the reader's own fetches, cached at once.
((later >= 1 && later + fetched >= 20)) ||
    fail "of the file's 24 objects, $later were written after the read and $fetched downloaded again"

step "the next read, with the pages dropped, asks the object store nothing"
requests=$(metric netvol_object_store_requests_total)
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
