#!/usr/bin/env bash
# scripts/e2e/43-hosts-object-store-down.sh: the S3 server stops while workers on two
# hosts read and write. Reads of chunks a worker has in its local cache keep working;
# other reads answer EIO within 30 s (no hang); writes answer EIO, and nothing in the
# metadata refers to an object that was not stored (fsck). When the server is back,
# everything works again without a remount.
# e2e-timeout: 360
set -euo pipefail
E2E_DEADLINE=${E2E_DEADLINE:-330}
. "$(dirname "$0")/lib.sh"
. "$E2E_DIR/hosts.sh"

two_workers --lease-idle 600

step "A writes files (into its cache, once its writes are quiet); B reads one of them (into its own), not the other"
head -c 12M /dev/urandom >"$WORK/cached"
head -c 12M /dev/urandom >"$WORK/uncached"
# A takes the lease with its first write and keeps it (--lease-idle).
cp "$WORK/cached" "$A/cached"
cp "$WORK/uncached" "$A/uncached"
printf 'small' >"$A/small"
cmp "$WORK/cached" "$B/cached"
# A streaming read's cache copies are written once its reads have gone quiet.
b_has_cached() { [[ $(netvol warmup "$B/cached" --check) == "100.0%"* ]]; }
wait_until 10 b_has_cached
# So are a streaming write's, once its writes have.
a_has_cached() { [[ $(netvol warmup "$A/uncached" --check) == "100.0%"* ]]; }
wait_until 10 a_has_cached

step "the object store stops"
stop_object_store

step "B reads what it has cached; other reads answer EIO within 30 s"
forget_pages "$B/cached"
cmp "$WORK/cached" "$B/cached" || fail "B's cached file reads differently with the store down"
expect_eio_within 30 cat "$B/uncached"
# The writer's uploads entered its own cache: it reads them still.
forget_pages "$A/uncached"
cmp "$WORK/uncached" "$A/uncached" || fail "A's own upload reads differently with the store down"

step "writes that need the store answer EIO within 30 s; the daemons stay up"
expect_eio_within 30 dd if=/dev/urandom of="$A/during" bs=1M count=4 conv=fsync status=none
# Metadata alone still works: a small file lives in the database.
printf 'still works' >"$A/tiny"
daemon_alive "$A_PID" || fail "A's daemon died"
daemon_alive "$B_PID" || fail "B's daemon died"
is_mounted "$A" && is_mounted "$B" || fail "a mount went away"

step "the object store returns: everything works again, without a remount"
start_object_store
forget_pages "$B/uncached"
cmp "$WORK/uncached" "$B/uncached" || fail "B cannot read what it could not read during the outage"
head -c 6M /dev/urandom >"$WORK/after"
dd if="$WORK/after" of="$A/after" bs=1M conv=fsync status=none
cmp "$WORK/after" "$B/after"
assert_equal "still works" "$(cat "$B/tiny")"
# The file whose data could not be stored reads whole, whatever it kept.
cat "$B/during" >/dev/null || fail "the file written during the outage does not read whole"
cmp "$WORK/cached" "$A/cached"

unmount_volume "$A"
unmount_volume "$B"
step "fsck: no chunk refers to an object that was not stored"
netvol fsck "$VOLUME" >"$WORK/fsck.out" || { cat "$WORK/fsck.out" >&2; fail "fsck after the outage"; }
