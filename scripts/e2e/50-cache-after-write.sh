#!/usr/bin/env bash
# scripts/e2e/50-cache-after-write.sh: a streaming write to a network volume stores its
# full chunks without writing the host cache's copies while the writer waits; the daemon
# writes them from the kernel's pages of the file once the writes have gone quiet, so a
# read on this host after the pages are dropped asks the object store nothing. `netvol
# unmount` right after a write writes the copies before the pages go with the mount.
# e2e-backends: network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3 curl

head -c 96M /dev/urandom >"$WORK/model"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# --debug: the daemon's log says why a copy was not written.
mount_volume "$VOLUME" --metrics "$port" --debug
cache=$WORK/cache$E2E_MOUNT_COUNT
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }
# Requests to the object store but for retries of failed ones.
first_tries() { echo $(($(metric netvol_object_store_requests_total) - $(metric netvol_object_store_retries_total))); }
cached_whole() { [[ $(netvol warmup "$MNT/$1" --check) == "100.0%  96.0 MiB of 96.0 MiB cached  $MNT/$1" ]]; }

step "a streaming write: copies written once the writes are quiet, from the kernel's pages"
base=$(first_tries)
dd if="$WORK/model" of="$MNT/model" bs=1M conv=fsync status=none
wait_until 30 cached_whole model
# The write stored each of the file's 24 objects once; besides, the store is asked only
# for copies whose pages went before they could be written, once each.
later=$(metric netvol_cache_written_later_total)
fetched=$(metric netvol_cache_fetched_again_total)
assert_equal $((24 + fetched)) $(($(first_tries) - base)) "object store requests (24 for the write, and the copies downloaded again)"
went=$(copies_whose_pages_went)
echo "copies written later: $later; downloaded again, their pages gone: $fetched"
assert_equal "$fetched" "$went" "copies downloaded again (the log's copies whose pages went)"
# 24 objects of 4 MiB: every one is full, and was left for later.
((later >= 1 && later + fetched == 24)) ||
    fail "of the file's 24 objects, $later were written after the write and $fetched downloaded again"

step "a read with the pages dropped asks the object store nothing"
requests=$(metric netvol_object_store_requests_total)
forget_pages "$MNT/model"
cmp "$WORK/model" "$MNT/model"
assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests reading from the cache"

step "an unmount right after a write writes the copies first"
dd if="$WORK/model" of="$MNT/again" bs=1M conv=fsync status=none
unmount_volume
# The same host mounts again over the same cache: the file is in it, and reads from it.
mount_volume "$VOLUME" --metrics "$port" --cache-dir "$cache"
cached_whole again || fail "the unmount did not write the copies: $(netvol warmup "$MNT/again" --check)"
requests=$(metric netvol_object_store_requests_total)
cmp "$WORK/model" "$MNT/again"
assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests after the remount"
unmount_volume
