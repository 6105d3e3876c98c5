#!/usr/bin/env bash
# scripts/e2e/31-lease-handover.sh: a writer that goes idle (--lease-idle) or unmounts
# gives the lease back, and the other mount can then write.
# e2e-backends: embedded network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G --chunk-size 1M
mount_volume "$VOLUME" --lease-idle 1
A=$MNT
mount_volume "$VOLUME" --lease-idle 1
B=$MNT

step "A writes; B is refused while A is busy"
printf one >"$A/f"
assert_fails_with EROFS sh -c "printf two > '$B/f'"

step "A goes idle: B can write"
b_writes() { sh -c "printf two > '$B/f'" 2>/dev/null; }
wait_until 5 b_writes
a_sees() { [[ $(cat "$A/f") == two ]]; }
wait_until 2 a_sees

step "a file open for writing keeps the lease however idle"
exec 3>>"$B/f"
sleep 2.5
assert_fails_with EROFS sh -c "printf three > '$A/g'"
exec 3>&-

step "the writer unmounts: the other writes at once"
b_holds() { sh -c "printf four > '$B/h'" 2>/dev/null; }
wait_until 3 b_holds
unmount_volume "$B"
printf five >"$A/f"
assert_equal five "$(cat "$A/f")"
unmount_volume "$A"
