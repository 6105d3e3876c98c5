#!/usr/bin/env bash
# scripts/e2e/46-replaced-while-opened.sh: a file that one mount keeps replacing by
# rename (as editors and `pip` save files) is always there for another mount: every
# open, stat and read there finds one whole version, never "No such file or directory",
# even when the second mount's kernel still caches the name of a version the writer has
# since deleted.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program python3

make_volume --size 1G
mount_volume "$VOLUME"
A=$MNT
mount_volume "$VOLUME"
B=$MNT
seconds=${REPLACE_SECONDS:-8}

# Version v of the file is its number on the first line, then bytes that follow from it.
cat >"$WORK/versions.py" <<'PY'
import os, random, sys, time

def body(version):
    return random.Random(version).randbytes(4096 + version % 7 * 1000)

mode, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline = time.time() + seconds
if mode == "replace":
    version = 0
    while time.time() < deadline:
        version += 1
        temporary = os.path.join(os.path.dirname(path), ".model.tmp")
        with open(temporary, "wb") as out:
            out.write(b"%d\n" % version + body(version))
        os.rename(temporary, path)
    print(version)
else:
    reads = failures = 0
    while time.time() < deadline:
        try:
            os.stat(path)
            with open(path, "rb") as f:
                header, _, rest = f.read().partition(b"\n")
            if not header.isdigit() or rest != body(int(header)):
                failures += 1
                print("version %r (%d bytes) read wrong" % (header[:16], len(header) + 1 + len(rest)), file=sys.stderr)
        except OSError as error:
            failures += 1
            print("%s" % error, file=sys.stderr)
        reads += 1
    print(reads, failures)
PY
python3 "$WORK/versions.py" replace "$A/model" 0.1 >/dev/null
wait_until 5 test -s "$B/model"

step "A replaces the file for ${seconds}s while two readers on B open, stat and read it"
python3 "$WORK/versions.py" replace "$A/model" "$seconds" >"$WORK/replaced" &
writer=$!
python3 "$WORK/versions.py" read "$B/model" "$seconds" >"$WORK/reader-1.out" 2>"$WORK/reader-1.err" &
reader1=$!
python3 "$WORK/versions.py" read "$B/model" "$seconds" >"$WORK/reader-2.out" 2>"$WORK/reader-2.err" &
reader2=$!
wait "$writer" || fail "the writer failed"
wait "$reader1" || fail "reader 1 failed: $(tail -n 5 "$WORK/reader-1.err")"
wait "$reader2" || fail "reader 2 failed: $(tail -n 5 "$WORK/reader-2.err")"
versions=$(cat "$WORK/replaced")
log "A wrote $versions versions"
((versions >= 20)) || fail "only $versions versions were written: the test proves little"
for i in 1 2; do
    read -r reads failures <"$WORK/reader-$i.out"
    if ((failures > 0)); then
        sort "$WORK/reader-$i.err" | uniq -c | sort -rn | head -n 5 >&2
        fail "reader $i: $failures of $reads opens of the replaced file failed"
    fi
    ((reads > 0)) || fail "reader $i read nothing"
    log "reader $i: $reads reads, every one whole"
done
