#!/usr/bin/env bash
# scripts/e2e/40-hosts-share.sh: three workers on separate hosts share one network
# volume. The writer's every change is seen by the other two within 2 s, by name and by a
# walk of the tree; their own writes
# answer EROFS while it holds the lease; `netvol status` on any host lists all three
# mounts; when the writer leaves, another takes over and the third sees its changes.
# e2e-links: direct delay flaky
# e2e-timeout: 420
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-390}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

hosts_up worker-a worker-b worker-c
start_storage
make_volume --size 2G --chunk-size 1M
# A takes the lease with its first write and keeps it (--lease-idle).
mount_workers --lease-idle 600
READERS=("$B" "$C")

step "netvol status on every host lists the three mounts, each on its own host"
for host in worker-a worker-b worker-c; do
    listed=$(status_on "$host" | python3 -c '
import json, sys
status = json.load(sys.stdin)
print(" ".join(sorted("%s:%s" % (m["host"], m["mountpoint"]) for m in status["mounts"])))')
    assert_equal "worker-a:$A worker-b:$B worker-c:$C" "$listed" "mounts netvol status lists on $host"
done

# seen_within SECONDS CHECK [ARGS...]: CHECK MOUNT ARGS... holds on every reader's mount
# within SECONDS of now (one clock for all of them, polled every 50 ms).
seen_within() {
    local seconds=$1
    shift
    local start=${EPOCHREALTIME/./} mount pending
    while true; do
        pending=()
        for mount in "${READERS[@]}"; do
            "$@" "$mount" || pending+=("$mount")
        done
        ((${#pending[@]} > 0)) || break
        if ((${EPOCHREALTIME/./} - start > seconds * 1000000)); then
            fail "not seen within ${seconds}s on ${pending[*]}: $*"
        fi
        sleep 0.05
    done
    log "seen after $(((${EPOCHREALTIME/./} - start) / 1000)) ms: $*"
}

reads() { [[ $(cat "$2/$1" 2>/dev/null) == "$3" ]]; }
has_digest() { [[ $(sha256sum <"$2/$1" 2>/dev/null | cut -d' ' -f1) == "$3" ]]; }
is_gone() { [[ ! -e $2/$1 && ! -L $2/$1 ]]; }
has_mode() { [[ $(stat -c %a "$2/$1" 2>/dev/null) == "$3" ]]; }
links_to() { [[ $(readlink "$2/$1" 2>/dev/null) == "$3" ]]; }
# Arguments in the order seen_within passes them: the mount comes last.
check() {
    local what=$1 path=$2 expected=${3:-} mount=${!#}
    "$what" "$path" "$mount" "$expected"
}

step "each change A makes is seen on B and C within 2 s"
printf hello >"$A/f"
seen_within 2 check reads f hello
head -c 8M /dev/urandom >"$WORK/model"
cp "$WORK/model" "$A/model.bin"
digest=$(sha256sum <"$WORK/model" | cut -d' ' -f1)
seen_within 2 check has_digest model.bin "$digest"
# B and C read f above; what their kernels cached must go too.
printf ' world' >>"$A/f"
seen_within 2 check reads f "hello world"
mkdir -p "$A/d/e"
printf x >"$A/d/e/g"
seen_within 2 check reads d/e/g x
mv "$A/f" "$A/d/f2"
seen_within 2 check reads d/f2 "hello world"
seen_within 2 check is_gone f
chmod 600 "$A/d/f2"
seen_within 2 check has_mode d/f2 600
ln -s d/f2 "$A/link"
seen_within 2 check links_to link d/f2
truncate -s 5 "$A/d/f2"
seen_within 2 check reads d/f2 hello
head -c 1M /dev/urandom | dd of="$WORK/model" bs=1M seek=3 conv=notrunc status=none
dd if="$WORK/model" of="$A/model.bin" bs=1M skip=3 seek=3 count=1 conv=notrunc status=none
digest=$(sha256sum <"$WORK/model" | cut -d' ' -f1)
seen_within 2 check has_digest model.bin "$digest"
rm "$A/d/e/g"
rmdir "$A/d/e"
seen_within 2 check is_gone d/e

step "a walk on B and C sees what A changed under directories it listed before"
# The readers' walks keep every listing they read, and the ones read ahead of them: a
# change deep in the tree must reach a walk all the same.
tree_of() { (cd "$1" && find . -printf '%p:%s ' | tr ' ' '\n' | LC_ALL=C sort | tr '\n' ' '); }
walks_as() { [[ $(tree_of "$2/$1" 2>/dev/null) == "$3" ]]; }
mkdir -p "$A/w/x/y" "$A/w/v"
printf 1 >"$A/w/x/y/one"
seen_within 2 check walks_as w "$(tree_of "$A/w")"
printf 22 >"$A/w/x/y/two"
rm "$A/w/x/y/one"
mkdir "$A/w/x/z"
mv "$A/w/v" "$A/w/x/z/v"
seen_within 2 check walks_as w "$(tree_of "$A/w")"
rm -r "$A/w"

step "B's and C's writes answer EROFS while A holds the lease"
for mount in "$B" "$C"; do
    assert_fails_with EROFS sh -c "printf no > '$mount/new'"
    assert_fails_with EROFS sh -c "printf no >> '$mount/d/f2'"
    assert_fails_with EROFS mkdir "$mount/dir"
    assert_fails_with EROFS rm "$mount/link"
    assert_fails_with EROFS mv "$mount/d/f2" "$mount/moved"
    assert_fails_with EROFS chmod 644 "$mount/d/f2"
    assert_fails_with EROFS truncate -s 0 "$mount/model.bin"
done
assert_equal hello "$(cat "$A/d/f2")" "A's file after the refused writes"

step "A leaves; B takes the lease at its first write, and C sees B's changes"
unmount_volume "$A"
printf 'from B' >"$B/from-b"
READERS=("$C")
seen_within 2 check reads from-b "from B"
cmp "$WORK/model" "$C/model.bin" || fail "the model changed across the handover"
assert_fails_with EROFS sh -c "printf no > '$C/new'"

unmount_volume "$B"
unmount_volume "$C"
E2E_HOST=worker-c netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck"; }
expect_faults_injected
