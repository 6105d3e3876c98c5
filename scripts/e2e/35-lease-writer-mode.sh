#!/usr/bin/env bash
# scripts/e2e/35-lease-writer-mode.sh: `mount --writer` takes the lease at mount. Against
# a held lease it fails with one line naming the holder; with --wait it gets the lease
# when the holder unmounts. `netvol lease --break` fences a holder.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

make_volume --size 1G
mount_volume "$VOLUME" --writer
A=$MNT
holder=$(netvol status "$VOLUME" --json | sed -n 's/^ *"holder" *: *"\(.*\)".*/\1/p')
[[ -n $holder ]] || fail "status --json names no lease holder"

step "a second --writer fails, naming the holder"
target=$WORK/second
assert_cli_error "$holder" "$NETVOL" mount "$VOLUME" "$target" --writer
is_mounted "$target" && fail "the refused mount is mounted"

step "--writer --wait gets the lease when the holder unmounts"
E2E_MOUNTS+=("$target")
E2E_LOG[$target]=$VOLUME/netvol.log
E2E_LOG_START[$target]=$(wc -l <"$VOLUME/netvol.log")
"$NETVOL" mount "$VOLUME" "$target" --writer --wait &
waiter=$!
sleep 2
kill -0 "$waiter" 2>/dev/null || fail "mount --wait returned while the lease was held"
unmount_volume "$A"
wait_until 20 daemon_gone "$waiter"
wait "$waiter" || fail "mount --wait failed"
is_mounted "$target" || fail "mount --wait returned but nothing is mounted"
E2E_PID[$target]=$(daemon_pid "$VOLUME" "$target")
printf 'written by the waiter' >"$target/f"
assert_equal "written by the waiter" "$(cat "$target/f")"

step "status shows the holder, its token, renewal and expiry, and the mounts"
netvol status "$VOLUME" >"$WORK/status"
assert_contains "$(cat "$WORK/status")" "token"
assert_contains "$(cat "$WORK/status")" "expires in"
assert_contains "$(cat "$WORK/status")" "$target"

step "breaking the lease fences the holder until it takes the lease again"
netvol lease "$VOLUME" --break 2>"$WORK/break.err" >/dev/null
assert_contains "$(cat "$WORK/break.err")" "warning"
assert_contains "$(netvol lease "$VOLUME")" "free"
unmount_volume "$target"
