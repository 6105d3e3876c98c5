#!/usr/bin/env bash
# scripts/e2e/18-no-fd-leak.sh: the daemon's open descriptors do not grow across rounds
# of open/close, create/unlink and failed operations (a leak would end in EMFILE for a
# long-running worker). A bounded cache may hold some after the first round; the second
# round must add none, and the total stays far below the daemon's limit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
mount_volume
fds() { find "/proc/$MNT_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
limit=$(awk '/^Max open files/ { print $4 }' "/proc/$MNT_PID/limits")

head -c 3M /dev/urandom >"$MNT/f"
mkdir "$MNT/d"

# churn ROUND: a few thousand operations of every kind.
churn() {
    local i
    for _ in $(seq 1 1000); do
        : <"$MNT/f"
    done
    for i in $(seq 1 300); do
        printf x >"$MNT/d/tmp$1-$i"
        head -c 10 "$MNT/d/tmp$1-$i" >/dev/null
        rm "$MNT/d/tmp$1-$i"
    done
    for _ in $(seq 1 300); do
        cat "$MNT/missing" 2>/dev/null && fail "cat of a missing file succeeded"
        head -c 4096 "$MNT/f" >/dev/null
    done
    exec 3<"$MNT/f"
    for _ in $(seq 1 50); do
        cmp -s /proc/self/fd/3 "$MNT/f" || fail "the file reads differently"
    done
    exec 3<&-
    sleep 1
}

before=$(fds)
step "daemon has $before descriptors open (limit $limit); first round"
churn 1
first=$(fds)
step "daemon has $first descriptors open after the first round; second round"
churn 2
second=$(fds)
step "daemon has $second descriptors open after the second round"
if ((second > first + 4)); then
    ls -l "/proc/$MNT_PID/fd" | tail -n 20 >&2
    fail "the daemon's descriptors grew from $first to $second in a round that repeats the first"
fi
if [[ $limit =~ ^[0-9]+$ ]] && ((second * 4 > limit)); then
    fail "the daemon holds $second descriptors, more than a quarter of its limit $limit"
fi
daemon_alive "$MNT_PID" || fail "the daemon died"
unmount_volume
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
