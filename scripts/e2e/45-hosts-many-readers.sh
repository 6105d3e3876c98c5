#!/usr/bin/env bash
# scripts/e2e/45-hosts-many-readers.sh: eight processes on two reader hosts read one
# 1 GiB model file while the writer on a third host keeps replacing other files. Every
# byte read matches the checksum of the version it came from: the model's one version,
# and for the replaced files whichever version a reader opened (each version says in its
# first line which it is, and the rest of its bytes follow from that).
# e2e-timeout: 600
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-570}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

MODEL_MIB=${NETVOL_MODEL_MIB:-1024}
hosts_up worker-a worker-b worker-c
start_storage
make_volume --size 8G
# A takes the lease with its first write and keeps it (--lease-idle).
mount_workers --lease-idle 600

step "A writes a ${MODEL_MIB} MiB model"
head -c "${MODEL_MIB}M" /dev/urandom >"$WORK/model"
digest=$(sha256sum <"$WORK/model" | cut -d' ' -f1)
dd if="$WORK/model" of="$A/model.safetensors" bs=4M conv=fsync status=none
rm "$WORK/model"

# versioned.py write DIR NAME VERSION | check FILE: a file's versions. Version v of a
# file is its name and v on the first line, then bytes from a generator seeded by both,
# so any reader can tell from the file alone which version it read and whether every
# byte of it is right.
cat >"$WORK/versioned.py" <<'PY'
import hashlib, os, random, sys

def body(name, version):
    rng = random.Random("%s/%d" % (name, version))
    return rng.randbytes(rng.randrange(256 << 10, 3 << 20))

if sys.argv[1] == "write":
    directory, name, version = sys.argv[2], sys.argv[3], int(sys.argv[4])
    temporary = os.path.join(directory, ".%s.tmp" % name)
    with open(temporary, "wb") as out:
        out.write(b"%s %d\n" % (name.encode(), version))
        out.write(body(name, version))
    # Replaced whole, as tools that save files do: a reader opens one version or the other.
    os.rename(temporary, os.path.join(directory, name))
else:
    path = sys.argv[2]
    with open(path, "rb") as f:
        data = f.read()
    header, _, rest = data.partition(b"\n")
    name, version = header.decode().split()
    if name != os.path.basename(path) or rest != body(name, int(version)):
        print("%s: version %s read wrong (%d bytes)" % (path, version, len(data)))
        sys.exit(1)
    print(version)
PY
mkdir "$A/other"
for i in 0 1 2 3 4 5; do python3 "$WORK/versioned.py" write "$A/other" "f$i" 0; done

step "8 readers on B and C read the model while A replaces the other files"
python3 - "$A/other" "$WORK" <<'PY' &
import os, subprocess, sys, time
directory, work = sys.argv[1:3]
version = 0
while not os.path.exists(os.path.join(work, "readers-done")):
    version += 1
    for i in range(6):
        subprocess.run([sys.executable, os.path.join(work, "versioned.py"), "write", directory, "f%d" % i, str(version)], check=True)
with open(os.path.join(work, "versions"), "w") as out:
    out.write(str(version))
PY
rewriter=$!
readers=()
for mount in "$B" "$C"; do
    for i in 1 2 3 4; do
        # Each reader reads the model once, then the replaced files for as long as the
        # others take, then the model again through mmap, as a model loader does.
        # -X faulthandler: a reader killed by SIGBUS (a failed page of the mmap) says where.
        python3 -X faulthandler - "$mount" "$WORK" "$digest" "$i" >"$WORK/reader-${mount##*/}-$i.out" 2>&1 <<'PY' &
import hashlib, mmap, os, subprocess, sys
mount, work, expected, number = sys.argv[1:5]
def model_digest(use_mmap):
    digest = hashlib.sha256()
    with open(os.path.join(mount, "model.safetensors"), "rb") as f:
        if use_mmap:
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
                for start in range(0, len(mapped), 8 << 20):
                    digest.update(mapped[start:start + (8 << 20)])
        else:
            while block := f.read(4 << 20):
                digest.update(block)
    return digest.hexdigest()
if model_digest(False) != expected:
    sys.exit("model read wrong")
seen = set()
for round in range(3):
    for i in range(6):
        result = subprocess.run([sys.executable, os.path.join(work, "versioned.py"), "check", os.path.join(mount, "other", "f%d" % i)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit("f%d: %s%s" % (i, result.stdout, result.stderr))
        seen.add(result.stdout.strip())
if model_digest(True) != expected:
    sys.exit("model read wrong through mmap")
print("ok: versions seen %s" % sorted(seen, key=int))
PY
        readers+=($!)
    done
done
failed=0
names=()
for mount in "$B" "$C"; do for i in 1 2 3 4; do names+=("reader-${mount##*/}-$i"); done; done
for index in "${!readers[@]}"; do
    status=0
    wait "${readers[$index]}" || status=$?
    if ((status != 0)); then
        failed=1
        ((status > 128)) && log "${names[$index]}: killed by signal $((status - 128))" || log "${names[$index]}: exit status $status"
        sed 's/^/    /' "$WORK/${names[$index]}.out" >&2
    fi
done
touch "$WORK/readers-done"
wait "$rewriter" || fail "the writer's rewrites failed"
for out in "$WORK"/reader-*.out; do log "${out##*/}: $(tail -n 1 "$out")"; done
((failed == 0)) || fail "a reader read wrong bytes (see above)"
log "A wrote $(cat "$WORK/versions") versions of each file meanwhile"
(($(cat "$WORK/versions") >= 2)) || fail "the files were not replaced while the readers read"

unmount_volume "$A"
unmount_volume "$B"
unmount_volume "$C"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
