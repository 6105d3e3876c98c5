#!/usr/bin/env bash
# scripts/e2e/39-warmup.sh: `netvol warmup` on a fresh mount of a network volume fetches
# the files' chunks into the host's cache: `--check` goes from 0% to 100%, and reading
# the files afterwards makes no object-store request (the mount's metrics show it) while
# the reads do reach the daemon. `--evict` empties the cache of them again. A warmup
# interrupted with SIGINT stops, says so, exits 130, and leaves only whole objects (the
# files still read right). On an embedded volume warmup reads the files into the page
# cache and `--check` says there is no cache.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3 curl

mount_volume
mkdir "$MNT/model" "$MNT/model/tokenizer"
head -c 40M /dev/urandom >"$WORK/weights"
cp "$WORK/weights" "$MNT/model/weights.safetensors"
head -c 3M /dev/urandom >"$MNT/model/tokenizer/vocab.bin"
printf '{"small": true}' >"$MNT/model/config.json"
unmount_volume

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A fresh mount of another host: an empty cache of its own.
mount_volume "$VOLUME" --metrics "$port"
metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v name="$1" '$1 == name { print $2 }'; }

if ! is_network_volume "$VOLUME"; then
    step "embedded: warmup reads the files into the page cache; --check says there is no cache"
    out=$(netvol warmup "$MNT/model")
    assert_contains "$out" "^warmed 3 of 3 files, 43.0 MiB of 43.0 MiB" "warmup's summary"
    assert_contains "$(netvol warmup "$MNT/model" --check)" "embedded volume: .*no cache" "warmup --check"
    cmp "$WORK/weights" "$MNT/model/weights.safetensors"
    unmount_volume
    exit 0
fi

step "--check on a cold cache: nothing cached"
check=$(netvol warmup "$MNT/model" --check)
printf '%s\n' "$check" >&2
assert_contains "$check" "^  0.0%  0 B of 43.0 MiB cached in 3 files$" "warmup --check before"
assert_contains "$check" "kept in the metadata  .*/config.json" "warmup --check of a small file"

step "warmup fetches everything, with progress lines when not on a terminal"
out=$(netvol warmup "$MNT/model" --threads 4 2>"$WORK/progress")
assert_contains "$out" "^warmed 3 of 3 files, 43.0 MiB of 43.0 MiB" "warmup's summary"
assert_contains "$(netvol warmup "$MNT/model" --check)" "^100.0%  43.0 MiB of 43.0 MiB cached in 3 files$" "warmup --check after"

step "reading the warmed files asks nothing of the object store"
requests=$(metric netvol_object_store_requests_total)
read_before=$(metric netvol_read_bytes_total)
for file in weights.safetensors tokenizer/vocab.bin config.json; do forget_pages "$MNT/model/$file"; done
cmp "$WORK/weights" "$MNT/model/weights.safetensors"
cat "$MNT/model/tokenizer/vocab.bin" "$MNT/model/config.json" >/dev/null
assert_equal "$requests" "$(metric netvol_object_store_requests_total)" "object store requests while reading warmed files"
(($(metric netvol_read_bytes_total) >= read_before + 43 * 1024 * 1024)) || fail "the reads did not reach the daemon"

step "--evict drops them from the cache"
netvol warmup "$MNT/model" --evict >/dev/null
assert_contains "$(netvol warmup "$MNT/model" --check)" "^  0.0%  0 B of 43.0 MiB cached in 3 files$" "warmup --check after --evict"

step "an interrupted warmup stops, says so, and leaves only whole objects"
head -c 400M /dev/urandom >"$WORK/big"
cp "$WORK/big" "$MNT/big"
netvol warmup "$MNT/big" --evict >/dev/null
"$NETVOL" warmup "$MNT/big" --threads 2 >"$WORK/interrupted.out" 2>"$WORK/interrupted.err" &
warmer=$!
sleep 0.5
kill -INT "$warmer"
status=0
wait "$warmer" || status=$?
assert_equal 130 "$status" "warmup's exit status after SIGINT"
assert_contains "$(cat "$WORK/interrupted.err")" "warmup interrupted: .* what was fetched stays cached" "the interrupted warmup's message"
forget_pages "$MNT/big"
cmp "$WORK/big" "$MNT/big" || fail "the file reads wrong after an interrupted warmup"
unmount_volume
