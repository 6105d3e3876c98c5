#!/usr/bin/env bash
# scripts/e2e/28-fstab.sh: netvol through mount(8) and umount(8): an /etc/fstab line (a
# private fstab, `mount -T`) with netvol's options and mount(8)'s own (_netdev, nofail,
# noauto, x-systemd.*), `mount -t netvol -o ro`, `mount -f`, an unknown option refused in
# one line, and `umount` ending each mount cleanly.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"
require_fuse
require_program mount umount findmnt

step "mount(8) finds netvol as its helper for fuse.netvol and netvol"
# What scripts/run.sh installs in /sbin, here only inside this test's mount namespace: an
# overlay puts the two links on top of /usr/sbin (/sbin on a merged-/usr system).
helpers=$WORK/helpers
mkdir "$helpers"
ln -s "$NETVOL" "$helpers/mount.fuse.netvol"
ln -s "$NETVOL" "$helpers/mount.netvol"
sbin=$(readlink -f /sbin)
mount -t overlay netvol-test-helpers -o "lowerdir=$helpers:$sbin" "$sbin"
register_mount "$sbin"
[[ -x /sbin/mount.fuse.netvol ]] || fail "the helper is not in /sbin"

make_volume --size 1G
extra=
if is_network_volume "$VOLUME"; then extra=",cache_dir=$WORK/cache"; fi

# expect_mounted_by_mount8 DIR LOG: registers a mount that mount(8) made, like
# mount_volume does for its own, so that the trap unmounts it whatever happens.
expect_mounted_by_mount8() {
    local target=$1 logfile=$2
    E2E_MOUNTS+=("$target")
    E2E_LOG[$target]=$logfile
    E2E_LOG_START[$target]=0
    is_mounted "$target" || fail "mount(8) returned but $target is not mounted"
    MNT_PID=$(daemon_pid "$VOLUME" "$target")
    [[ -n $MNT_PID ]] || fail "netvol status names no daemon for $target"
    E2E_PID[$target]=$MNT_PID
}

# umount_cleanly DIR: umount(8), then the daemon commits, says so and exits.
umount_cleanly() {
    with_timeout 60 umount "$1" || fail "umount $1 failed"
    expect_clean_exit "$1"
}

step "an fstab line: mount DIR, write, umount DIR"
fstab=$WORK/fstab
a=$WORK/from-fstab
mkdir "$a"
printf '# a private fstab\n%s %s fuse.netvol lease_ttl=5,lease_idle=5,timeout=15,poll_us=20,log_file=%s,_netdev,nofail,noauto,x-systemd.automount,x-systemd.requires=network-online.target,defaults%s 0 0\n' \
    "$VOLUME" "$a" "$WORK/a.log" "$extra" >"$fstab"
with_timeout 120 mount -T "$fstab" "$a" || fail "mount -T fstab $a failed"
expect_mounted_by_mount8 "$a" "$WORK/a.log"
assert_equal fuse.netvol "$(findmnt -n -o FSTYPE "$a")" "the mount's type"
tr '\0' ' ' <"/proc/$MNT_PID/cmdline" | grep -q -- "--lease-ttl 5.0 --lease-idle 5.0 --timeout 15.0 --poll-us 20" ||
    fail "the daemon did not get the fstab line's options: $(tr '\0' ' ' <"/proc/$MNT_PID/cmdline")"
printf 'through fstab' >"$a/f"
assert_equal "through fstab" "$(cat "$a/f")"
umount_cleanly "$a"

step "mount -t netvol -o ro: reads, refuses writes; umount"
b=$WORK/read-only
mkdir "$b"
with_timeout 120 mount -t netvol -o "ro,log_file=$WORK/b.log$extra" "$VOLUME" "$b" || fail "mount -t netvol -o ro failed"
expect_mounted_by_mount8 "$b" "$WORK/b.log"
assert_equal "through fstab" "$(cat "$b/f")"
assert_fails_with EROFS sh -c "printf x > '$b/g'"
findmnt -n -o OPTIONS "$b" | grep -qw ro || fail "the kernel does not show $b read-only: $(findmnt -n -o OPTIONS "$b")"
umount_cleanly "$b"

step "mount -f checks and mounts nothing; mistakes give one line"
with_timeout 60 mount -f -t fuse.netvol -o "writer$extra" "$VOLUME" "$b" || fail "mount -f failed"
is_mounted "$b" && fail "mount -f mounted"
out=$(with_timeout 60 mount -t fuse.netvol -o "bogus_option$extra" "$VOLUME" "$b" 2>&1) && fail "an unknown option was accepted"
assert_contains "$out" "netvol: unknown mount option bogus_option" "mount's output"
[[ $(wc -l <<<"$out") == 1 ]] || fail "more than one line for an unknown option: $out"
out=$(with_timeout 60 mount -t fuse.netvol -o "lease_ttl=0$extra" "$VOLUME" "$b" 2>&1) && fail "lease_ttl=0 was accepted"
assert_contains "$out" "lease-ttl" "mount's output for lease_ttl=0"
is_mounted "$b" && fail "a refused mount mounted"
netvol fsck "$VOLUME" >/dev/null || fail "fsck"
