#!/usr/bin/env bash
# scripts/e2e/14-cli-errors.sh: every mistake a person can make on the command line gets
# a non-zero exit, nothing on stdout, exactly one stderr line starting "netvol: " that
# says what is wrong, and changes nothing on disk.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

cd "$WORK"
make_volume_at "$WORK/vol" --size 1G
mkdir "$WORK/not-a-volume"
printf 'keep me\n' >"$WORK/not-a-volume/file"
printf 'a file\n' >"$WORK/a-file"

# snapshot: every path under $WORK with its type and mode, each file's checksum
# (SQLite's own files aside: any command that opens the volume may create, checkpoint or
# remove volume.db-wal and -shm; the daemon's log aside too), and the volume's
# logical state as status reports it.
snapshot() {
    (
        cd "$WORK"
        find . \( -name 'cli.out' -o -name 'cli.err' -o -name 'snapshot.*' -o -name netvol.log -o -name 'volume.db-*' -o -name mount.lock \) -prune -o -printf '%p %y %m\n' | LC_ALL=C sort
        find . -type f ! -name 'volume.db*' ! -name netvol.log ! -name mount.lock ! -name 'cli.*' ! -name 'snapshot.*' -print0 | LC_ALL=C sort -z | xargs -0 md5sum
        # Heartbeats and lease times move on by themselves.
        netvol status "$WORK/vol" --json | grep -Ev '"(heartbeat_at|renewed_at|expires_at|expires_in_seconds)"'
    )
}
snapshot >"$WORK/snapshot.before"
# refused PATTERN ARGS...: netvol ARGS fails with one line matching PATTERN, and the
# disk is as it was.
refused() {
    local pattern=$1
    shift
    assert_cli_error "$pattern" netvol "$@"
    snapshot >"$WORK/snapshot.after"
    if ! cmp -s "$WORK/snapshot.before" "$WORK/snapshot.after"; then
        diff -u "$WORK/snapshot.before" "$WORK/snapshot.after" >&2 || true
        fail "'netvol $*' changed the disk (diff above)"
    fi
    local args="$*"
    log "ok: netvol ${args//$WORK/\$WORK} -> ${E2E_OUTPUT//$WORK/\$WORK}"
}

step "mount: missing volume, not a volume, mountpoint a file"
refused "does not exist" mount "$WORK/missing" "$WORK/mnt-missing"
refused "not a netvol volume" mount "$WORK/not-a-volume" "$WORK/mnt-not-a-volume"
refused "a-file.*not a directory" mount "$WORK/vol" "$WORK/a-file"
refused "not a directory" mount "$WORK/a-file" "$WORK/mnt-a-file"

step "create: bad sizes, an unknown option, an existing volume, a non-empty directory"
refused "'abc' is not a size" create "$WORK/new" --size abc
refused "greater than zero" create "$WORK/new" --size 0
refused "size" create "$WORK/new" --size -5
refused "size" create "$WORK/new" --size 10Q
refused "too large" create "$WORK/new" --size 99999999999P
refused "size" create "$WORK/new"
refused "chunk-size.*power of two" create "$WORK/new" --size 1G --chunk-size 3M
refused "chunk-size.*64K to 64M" create "$WORK/new" --size 1G --chunk-size 1K
refused "[Uu]nknown option '--bogus'" create "$WORK/new" --size 1G --bogus
refused "already a netvol volume" create "$WORK/vol" --size 1G
refused "not empty" create "$WORK/not-a-volume" --size 1G
refused "not a directory" create "$WORK/a-file" --size 1G

step "resize: smaller, not a size, missing volume"
refused "cannot shrink.*1.0 GiB.*512.0 MiB" resize "$WORK/vol" --size 512M
refused "'abc' is not a size" resize "$WORK/vol" --size abc
refused "greater than zero" resize "$WORK/vol" --size 0
refused "does not exist" resize "$WORK/missing" --size 2G
refused "not a netvol volume" resize "$WORK/not-a-volume" --size 2G

step "status, fsck, gc, unmount: wrong targets"
refused "does not exist" status "$WORK/missing"
refused "not a netvol volume" status "$WORK/not-a-volume" --json
refused "not a netvol volume" fsck "$WORK/not-a-volume"
refused "does not exist" fsck "$WORK/missing"
refused "not a netvol volume" gc "$WORK/not-a-volume"
refused "grace" gc "$WORK/vol" --grace -1
refused "not mounted" unmount "$WORK/not-a-volume"
refused "not mounted" unmount "$WORK/missing"
refused "[Uu]nexpected argument 'frobnicate'|frobnicate" frobnicate
refused "[Uu]nknown option '--bogus'" status "$WORK/vol" --bogus
refused "gc-grace" mount "$WORK/vol" "$WORK/mnt-grace" --gc-grace -1

refused "read-only.*writer|writer.*read-only" mount "$WORK/vol" "$WORK/mnt-modes" --read-only --writer
refused "wait" mount "$WORK/vol" "$WORK/mnt-wait" --wait
refused "lease-ttl" mount "$WORK/vol" "$WORK/mnt-ttl" --lease-ttl 0
refused "poll-us" mount "$WORK/vol" "$WORK/mnt-poll" --poll-us -1

step "mount: a mountpoint that is already mounted; the writer lease held by another mount"
mount_volume "$WORK/vol" --writer
first=$MNT
make_volume_at "$WORK/vol2" --size 1G
snapshot >"$WORK/snapshot.before"
refused "already a mountpoint" mount "$WORK/vol2" "$first"
refused "already a mountpoint" mount "$WORK/vol" "$first"
assert_equal "$MNT_PID" "$(daemon_pid "$WORK/vol" "$first")" "the first mount's daemon after the refused mounts"
[[ -z $(ls -A "$first") ]] || fail "the first mount shows files after the refused mounts"
mkdir "$WORK/second"
snapshot >"$WORK/snapshot.before"
refused "writer lease .* is held by" mount "$WORK/vol" "$WORK/second" --writer
! is_mounted "$WORK/second" || fail "a second writer mount happened"
rmdir "$WORK/second"
snapshot >"$WORK/snapshot.before"

step "a refused mount leaves no mountpoint directory behind"
# netvol mount creates a missing mountpoint; when it then refuses, it must not leave it.
refused "writer lease .* is held by" mount "$WORK/vol" "$WORK/would-be-created" --writer
unmount_volume "$first"
snapshot >"$WORK/snapshot.before"
refused "mount options|bogusopt" mount "$WORK/vol2" "$WORK/would-be-created-too" -o bogusopt
