#!/usr/bin/env bash
# scripts/e2e/run-all.sh: runs every scripts/e2e/NN-*.sh in order, each under
# `timeout 300` (or the seconds its "# e2e-timeout:" line asks for), prints PASS, FAIL or
# SKIP for each (and the output of each that failed),
# and ends with one line "N passed, N failed, N skipped". Exits 1 if any failed.
#
# Usage: scripts/e2e/run-all.sh [PATTERN...]   (only scripts whose name contains a PATTERN)
# Environment: NETVOL (the binary; default .build/debug/netvol of this repository),
# E2E_LOGS (where each script's output goes; default a new directory under /tmp),
# E2E_NO_INSTALL=1 (do not apt-get install the attr package that 16-xattrs.sh needs).
set -uo pipefail

dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$dir/../.." && pwd)
export NETVOL=${NETVOL:-"$repo/.build/debug/netvol"}
logs=${E2E_LOGS:-$(mktemp -d /tmp/netvol-e2e-logs.XXXXXX)}
mkdir -p "$logs"

if [[ ! -x $NETVOL ]]; then
    echo "run-all: netvol binary $NETVOL is missing; build it with: cd $repo && swift build" >&2
    echo "0 passed, 1 failed, 0 skipped"
    exit 1
fi

# The xattr test needs setfattr and getfattr. Install them here, once, rather than from
# inside a test; without them that test skips.
if ! command -v setfattr >/dev/null && [[ ${E2E_NO_INSTALL:-0} != 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "run-all: installing the attr package for setfattr and getfattr" >&2
    { DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q attr ||
        { timeout 300 apt-get update -q && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q attr; }; } \
        >"$logs/apt-get.log" 2>&1 || echo "run-all: could not install attr (see $logs/apt-get.log); 16-xattrs will skip" >&2
fi

# A test's mounts live under /tmp/netvol-e2e-<name>.* (in its own mount namespace unless
# E2E_UNSHARE=0, but it may not have one); any left in ours after the test is a
# failure of that test's cleanup.
leftover_mounts() { awk -v p="/tmp/netvol-e2e-$1." 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo; }

# Scripts that apply to network volumes too say so in a line "# e2e-backends: embedded
# network"; they run a second time on a PostgreSQL + S3 volume when scripts/test.sh has
# started the servers.
network_ready() { [[ -n ${NETVOL_TEST_PG_URL:-} && -n ${NETVOL_TEST_S3_ENDPOINT:-} && -n ${NETVOL_E2E_BUCKET:-} ]]; }
runs=()
shopt -s nullglob
for script in "$dir"/[0-9][0-9]-*.sh; do
    # A script for network volumes alone says "# e2e-backends: network".
    grep -q '^# e2e-backends:' "$script" && ! grep -q '^# e2e-backends:.*embedded' "$script" && continue
    # The multi-host scenarios run once for each link their "# e2e-links:" line names
    # (direct, delay, flaky; see hosts.sh).
    links=$(sed -n 's/^# e2e-links: *//p' "$script" | head -n 1)
    for link in ${links:-direct}; do runs+=("$script|embedded|$link"); done
done
for script in "$dir"/[0-9][0-9]-*.sh; do
    grep -q '^# e2e-backends:.*network' "$script" && runs+=("$script|network|direct")
done

passed=0 failed=0 skipped=0
failures=()
for run in "${runs[@]}"; do
    IFS="|" read -r script backend link <<<"$run"
    base=$(basename "$script" .sh)
    name=$base
    [[ $backend == embedded ]] || name="$name-network"
    [[ $link == direct ]] || name="$name-$link"
    if (($# > 0)); then
        wanted=0
        for pattern; do [[ $name == *"$pattern"* ]] && wanted=1; done
        ((wanted)) || continue
    fi
    start=$SECONDS
    # A script that needs longer says so in a line "# e2e-timeout: SECONDS".
    limit=$(sed -n 's/^# e2e-timeout: \([0-9][0-9]*\)$/\1/p' "$script" | head -n 1)
    limit=${limit:-300}
    if [[ $backend == network ]] && ! network_ready; then
        if [[ ${NETVOL_REQUIRE_SERVERS:-0} == 1 ]]; then
            echo "no PostgreSQL or S3 server for the network run: FAIL" >"$logs/$name.log"
            status=1
        else
            echo "$name: SKIP: no PostgreSQL and S3 servers (scripts/test.sh starts them)" >"$logs/$name.log"
            status=77
        fi
    else
        E2E_BACKEND=$backend E2E_LINK=$link timeout -k 30 "$limit" bash "$script" </dev/null >"$logs/$name.log" 2>&1
        status=$?
    fi
    took=$((SECONDS - start))
    left=$(leftover_mounts "$base")
    if [[ -n $left ]]; then
        echo "run-all: $name left mounts behind: $left" >>"$logs/$name.log"
        [[ $status != 0 && $status != 77 ]] || status=1
    fi
    case $status in
        0)
            passed=$((passed + 1))
            printf 'PASS %s (%ss)\n' "$name" "$took"
            ;;
        77)
            skipped=$((skipped + 1))
            printf 'SKIP %s: %s\n' "$name" "$(grep -m1 'SKIP:' "$logs/$name.log" | sed 's/.*SKIP: //')"
            ;;
        *)
            failed=$((failed + 1))
            failures+=("$name")
            why=
            [[ $status != 124 && $status != 137 ]] || why=", timed out after ${limit}s"
            printf 'FAIL %s (exit status %s%s, %ss); its output (%s):\n' "$name" "$status" "$why" "$took" "$logs/$name.log"
            tail -n 40 "$logs/$name.log" | sed 's/^/    /'
            ;;
    esac
done

((${#failures[@]} == 0)) || echo "failed: ${failures[*]}; logs in $logs"
echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0))
