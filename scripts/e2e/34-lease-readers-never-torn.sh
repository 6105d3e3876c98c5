#!/usr/bin/env bash
# scripts/e2e/34-lease-readers-never-torn.sh: eight readers read a file while the writer
# rewrites it in a loop. Every read of a chunk returns one whole version of that chunk:
# each version fills each chunk with one byte value, so a torn chunk shows two values.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME"
A=$MNT
mount_volume "$VOLUME"
B=$MNT
chunk=$((1 << 20))
chunks=4
seconds=${TORN_SECONDS:-8}

python3 - "$A/model" "$chunk" "$chunks" <<'PY'
import os, sys
path, chunk, chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "wb") as f:
    f.write(bytes([1]) * chunk * chunks)
PY
wait_until 3 test -s "$B/model"

step "the writer rewrites the file chunk by chunk for ${seconds}s while 8 readers read"
python3 - "$A/model" "$chunk" "$chunks" "$seconds" >"$WORK/writer.out" <<'PY' &
import os, sys, time
path, chunk, chunks, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.time() + seconds
version = 1
while time.time() < deadline:
    version = version % 250 + 2
    fd = os.open(path, os.O_WRONLY)
    for index in range(chunks):
        os.pwrite(fd, bytes([version]) * chunk, index * chunk)
    os.close(fd)
print(version)
PY
writer=$!

reader() {
    # O_DIRECT: each read of a chunk is one request to the daemon, not pages gathered
    # from the page cache at different moments.
    python3 - "$1" "$chunk" "$chunks" "$seconds" <<'PY'
import mmap, os, sys, time
path, chunk, chunks, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
buffer = mmap.mmap(-1, chunk)
deadline = time.time() + seconds
reads = torn = 0
while time.time() < deadline:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    for index in range(chunks):
        n = os.preadv(fd, [buffer], index * chunk)
        data = buffer[:n]
        reads += 1
        if n != chunk or data.count(data[0]) != n:
            torn += 1
            print(f"torn read of chunk {index}: {n} bytes, values {sorted(set(data))[:8]}", file=sys.stderr)
    os.close(fd)
print(reads, torn)
PY
}
pids=()
for i in 1 2 3 4; do
    reader "$B/model" >"$WORK/reader-b$i.out" &
    pids+=($!)
    reader "$A/model" >"$WORK/reader-a$i.out" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "a reader failed"; done
wait "$writer" || fail "the writer failed"

total=0
for out in "$WORK"/reader-*.out; do
    read -r reads torn <"$out"
    assert_equal 0 "$torn" "torn chunk reads in $(basename "$out")"
    ((reads > 0)) || fail "$(basename "$out") read nothing"
    total=$((total + reads))
done
log "$total chunk reads, none torn; the writer ended at version $(cat "$WORK/writer.out")"

step "afterwards both mounts show the last version"
last=$(cat "$WORK/writer.out")
final() {
    python3 -c "import sys; d=open(sys.argv[1],'rb').read(); sys.exit(0 if set(d)=={int(sys.argv[2])} else 1)" "$1" "$last"
}
final "$A/model" || fail "the writer's mount does not show the last version"
wait_until 2 final "$B/model"
unmount_volume "$B"
unmount_volume "$A"
