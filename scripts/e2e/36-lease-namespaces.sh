#!/usr/bin/env bash
# scripts/e2e/36-lease-namespaces.sh: two "containers", each a private mount namespace
# with its own /runpod-volume over the same volume: one writes, the other reads and is
# refused writes; `netvol unmount /runpod-volume` in each unmounts its own.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_program unshare
require_program nsenter

make_volume --size 1G
ns_pids=()
cleanup_namespaces() {
    local pid
    for pid in "${ns_pids[@]}"; do
        nsenter -t "$pid" -m "$NETVOL" unmount /runpod-volume 2>/dev/null ||
            nsenter -t "$pid" -m fusermount3 -uz /runpod-volume 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
}
# e2e_cleanup reports the status the test ended with: hand it on.
trap 'ended=$?; cleanup_namespaces; (exit "$ended"); e2e_cleanup' EXIT

# A container: a namespace kept alive by a sleeping process, in which netvol mounts.
# Sets CONTAINER to its pid, registered for cleanup before anything can fail.
start_container() {
    unshare -m --propagation private sleep 600 </dev/null >/dev/null 2>&1 &
    CONTAINER=$!
    ns_pids+=("$CONTAINER")
    wait_until 5 test -e "/proc/$CONTAINER/ns/mnt"
    sleep 0.2
    # A container starts with its own mount table: drop the copy of any /runpod-volume
    # the machine itself has mounted (private propagation keeps the machine's).
    nsenter -t "$CONTAINER" -m sh -c 'if mountpoint -q /runpod-volume; then umount -l /runpod-volume; fi'
    nsenter -t "$CONTAINER" -m "$NETVOL" mount "$VOLUME" >/dev/null || fail "mount in namespace of $CONTAINER failed"
}
in_container() { local pid=$1; shift; timeout 30 nsenter -t "$pid" -m "$@"; }

# A volume the machine itself has at /runpod-volume (scripts/run.sh) is not ours.
host_had_mount=no
! is_mounted /runpod-volume || host_had_mount=yes
start_container
one=$CONTAINER
start_container
two=$CONTAINER
if [[ $host_had_mount == no ]] && is_mounted /runpod-volume; then
    fail "the containers' mounts leaked into the host namespace"
fi

step "container one writes, container two reads it and is refused writes"
in_container "$one" sh -c 'printf "from one" > /runpod-volume/f'
sees() { [[ $(in_container "$two" cat /runpod-volume/f 2>/dev/null) == "from one" ]]; }
wait_until 3 sees
out=$(in_container "$two" sh -c 'printf x > /runpod-volume/g' 2>&1) && fail "container two wrote while one holds the lease"
assert_contains "$out" "Read-only file system"
mounts=$(netvol status "$VOLUME" --json | grep -c '"mountpoint" : "/runpod-volume"' || true)
assert_equal 2 "$mounts" "mounts at /runpod-volume in status"

step "each container unmounts its own /runpod-volume"
in_container "$one" "$NETVOL" unmount /runpod-volume
in_container "$two" sh -c 'printf "from two" > /runpod-volume/g' || fail "container two cannot write after one unmounted"
in_container "$two" "$NETVOL" unmount /runpod-volume
mounts=$(netvol status "$VOLUME" --json | grep -c '"mountpoint"' || true)
assert_equal 0 "$mounts" "mounts left in status"
cleanup_namespaces
ns_pids=()
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
