#!/usr/bin/env bash
# scripts/e2e/06-two-volumes.sh: two volumes mounted at once are independent: each sees
# only its own files, size and usage, each has its own daemon, and unmounting one leaves
# the other working. (One volume mounted twice: 21-shared-volume.sh.)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume_at "$WORK/a" --size 1G
make_volume_at "$WORK/b" --size 2G --chunk-size 1M
mount_volume "$WORK/a"
A=$MNT A_PID=$MNT_PID
mount_volume "$WORK/b"
B=$MNT B_PID=$MNT_PID
[[ $A_PID != "$B_PID" ]] || fail "both mounts are served by pid $A_PID"

step "same names, different contents"
printf 'in a' >"$A/same-name"
printf 'in b, longer' >"$B/same-name"
mkdir "$A/only-in-a"
head -c 3M /dev/urandom >"$B/only-in-b"
assert_equal "in a" "$(cat "$A/same-name")"
assert_equal "in b, longer" "$(cat "$B/same-name")"
assert_equal $'only-in-a\nsame-name' "$(ls "$A")" "listing of a"
assert_equal $'only-in-b\nsame-name' "$(ls "$B")" "listing of b"

step "each has its own size and usage"
assert_equal $((1 << 30)) "$(df -B1 --output=size "$A" | sed -n '2{s/ //g;p}')" "df size of a"
assert_equal $((2 << 30)) "$(df -B1 --output=size "$B" | sed -n '2{s/ //g;p}')" "df size of b"
assert_equal 4 "$(status_field "$WORK/a" used_bytes)" "used bytes of a"
assert_equal $(((3 << 20) + 12)) "$(status_field "$WORK/b" used_bytes)" "used bytes of b"
assert_equal $((1 << 20)) "$(status_field "$WORK/b" chunk_size_bytes)" "chunk size of b"

step "rename across the two mounts is a copy, not a link"
assert_fails_with EXDEV perl -e 'rename($ARGV[0], $ARGV[1]) or die "rename: $!\n"' "$A/same-name" "$B/from-a"
mv "$A/same-name" "$B/from-a"
assert_equal "in a" "$(cat "$B/from-a")"
assert_fails_with ENOENT cat "$A/same-name"

step "unmounting a leaves b working"
unmount_volume "$A"
assert_equal "in b, longer" "$(cat "$B/same-name")"
printf more >>"$B/same-name"
assert_equal "in b, longermore" "$(cat "$B/same-name")"
daemon_alive "$B_PID" || fail "the daemon of b died when a was unmounted"
unmount_volume "$B"

netvol fsck "$WORK/a" >/dev/null || fail "fsck of a"
netvol fsck "$WORK/b" >/dev/null || fail "fsck of b"
