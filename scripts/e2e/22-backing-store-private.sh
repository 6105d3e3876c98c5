#!/usr/bin/env bash
# scripts/e2e/22-backing-store-private.sh: the backing store holds every file's bytes
# unencrypted, so only its owner may reach it: the volume directory is 0700, its database,
# WAL and log 0600, the chunk directories 0700 and the objects 0400, from creation on.
# Another user cannot list or read anything under it and still reads, through the mount,
# exactly what the mount's permissions allow. A volume left open by an earlier version is
# closed when it is mounted.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_nobody

# $WORK is open to everyone (lib.sh), so the volume's own modes are the only thing
# between nobody and the bytes.
assert_equal 755 "$(stat -c %a "$WORK")" "mode of the work directory"

# mode_of PATH: the permission bits of PATH, in octal.
mode_of() { stat -c %a "$1"; }

# check_private VOLUME_DIR: every mode under the volume directory is the owner's alone.
check_private() {
    local dir=$1 path
    assert_equal 700 "$(mode_of "$dir")" "mode of the volume directory"
    for path in "$dir"/volume.db*; do
        assert_equal 600 "$(mode_of "$path")" "mode of $(basename "$path")"
    done
    [[ ! -e $dir/netvol.log ]] || assert_equal 600 "$(mode_of "$dir/netvol.log")" "mode of the log"
    local open
    open=$(find "$dir" \( -type d -perm /077 \) -o \( -type f -perm /077 \) -print)
    [[ -z $open ]] || fail "group or other can reach: $open"
    local objects
    objects=$(find "$dir/chunks" -type f ! -perm 0400 -print)
    [[ -z $objects ]] || fail "objects that are not 0400: $objects"
}

# nobody_is_shut_out VOLUME_DIR: nobody cannot list, read or even stat what is inside.
nobody_is_shut_out() {
    local dir=$1 object
    assert_fails_with EACCES as_nobody ls "$dir"
    assert_fails_with EACCES as_nobody cat "$dir/volume.db"
    assert_fails_with EACCES as_nobody cat "$dir/volume.db-wal"
    assert_fails_with EACCES as_nobody cat "$dir/netvol.log"
    assert_fails_with EACCES as_nobody ls "$dir/chunks"
    object=$(find "$dir/chunks" -type f | head -n 1)
    [[ -n $object ]] || fail "the volume has no chunk object to try"
    assert_fails_with EACCES as_nobody cat "$object"
}

step "a new volume is private from its first byte"
make_volume
assert_equal 700 "$(mode_of "$VOLUME")" "mode of a new volume directory"
assert_equal 600 "$(mode_of "$VOLUME/volume.db")" "mode of a new database"
assert_equal 700 "$(mode_of "$VOLUME/chunks")" "mode of a new chunk directory"

step "a volume made in an empty directory someone prepared"
mkdir -m 0755 "$WORK/prepared"
netvol create "$WORK/prepared" --size 1G >/dev/null
check_private "$WORK/prepared"

step "what the mount writes stays private"
mount_volume
chmod 0755 "$MNT"
printf 'inline secret' >"$MNT/small-secret"
chmod 0600 "$MNT/small-secret"
head -c 300K /dev/urandom >"$WORK/large"
cp "$WORK/large" "$MNT/large-secret"
chmod 0600 "$MNT/large-secret"
printf 'for everyone' >"$MNT/public"
chmod 0644 "$MNT/public"
sync "$MNT/public"
check_private "$VOLUME"
nobody_is_shut_out "$VOLUME"

step "through the mount, nobody reads what the mount allows and nothing else"
assert_equal 'for everyone' "$(as_nobody cat "$MNT/public")" "nobody reading a 0644 file"
assert_fails_with EACCES as_nobody cat "$MNT/small-secret"
assert_fails_with EACCES as_nobody cat "$MNT/large-secret"
assert_equal_files "$WORK/large" "$MNT/large-secret"
unmount_volume

step "a volume left open by an earlier version is closed when it is mounted"
chmod 0755 "$VOLUME" "$VOLUME/chunks"
find "$VOLUME/chunks" -mindepth 1 -type d -exec chmod 0755 {} +
find "$VOLUME/chunks" -type f -exec chmod 0444 {} +
chmod 0644 "$VOLUME"/volume.db* "$VOLUME/netvol.log"
assert_equal 'inline secret' "$(as_nobody cat "$VOLUME"/volume.db* | grep -a -o 'inline secret' | head -n 1)" \
    "the open volume leaks (the check is able to see a leak)"
mount_volume
nobody_is_shut_out "$VOLUME"
# The objects' own modes follow in the background.
objects_private() { [[ -z $(find "$VOLUME/chunks" -type f ! -perm 0400 -print) ]]; }
wait_until 30 objects_private || fail "objects are still not 0400"
check_private "$VOLUME"
assert_equal 'for everyone' "$(as_nobody cat "$MNT/public")" "nobody reading a 0644 file after the repair"
unmount_volume
