# scripts/e2e/lib.sh: shared helpers of the netvol end-to-end tests.
#
# Source it from a test script that runs with `set -euo pipefail`:
#
#   . "$(dirname "$0")/lib.sh"
#   mount_volume                      # creates $VOLUME if needed, mounts it, sets $MNT
#   printf abc > "$MNT/f"
#   assert_equal abc "$(cat "$MNT/f")"
#
# What it gives a test (after libfuse test/cases and swift-nio IntegrationTests):
# - a private work directory $WORK (mktemp -d under /tmp), removed at exit;
# - $VOLUME, the path of the test's first volume (inside $WORK);
# - an EXIT trap that unmounts everything the test mounted (fusermount3 -u, then -uz
#   as a last resort), stops a daemon that outlived its mount, shows the end of each
#   daemon log when the test failed, and removes $WORK, whatever way the test ends;
# - a deadline ($E2E_DEADLINE seconds, default 270) after which the test is stopped,
#   so that a hung FUSE request cannot hang the suite even when run alone;
# - its own private mount namespace (unless E2E_UNSHARE=0; see below);
# - exit status 0 pass, 1 fail, 77 skip (as automake and libfuse's tests use it).
#
# Network volumes: with E2E_BACKEND=network, $VOLUME is a PostgreSQL + S3 volume (a
# postgres:// URL in the database NETVOL_TEST_PG_URL names, its chunks in the bucket
# NETVOL_E2E_BUCKET at NETVOL_TEST_S3_ENDPOINT, as scripts/test.sh sets them up) instead
# of a directory; each mount gets its own cache directory and log under $WORK. Scripts
# that apply to both say so in a line "# e2e-backends: embedded network".
#
# Environment: NETVOL (the binary; default: the repository's .build/debug/netvol),
# E2E_DEADLINE, E2E_KEEP=1 (keep $WORK for a post mortem), E2E_UNSHARE=0.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
NETVOL=${NETVOL:-"$REPO/.build/debug/netvol"}
E2E_NAME=$(basename "$0" .sh)
E2E_DEADLINE=${E2E_DEADLINE:-270}

# Text of the errors tests expect, by errno name: what strerror(3) says in glibc, and so
# what ls, cat, cp, dd and the shell print.
declare -A ERRNO_TEXT=(
    [EPERM]="Operation not permitted"
    [ENOENT]="No such file or directory"
    [EIO]="Input/output error"
    [EBADF]="Bad file descriptor"
    [EACCES]="Permission denied"
    [EEXIST]="File exists"
    [EXDEV]="Invalid cross-device link"
    [ENOTDIR]="Not a directory"
    [EISDIR]="Is a directory"
    [EINVAL]="Invalid argument"
    [EFBIG]="File too large"
    [ENOSPC]="No space left on device"
    [EROFS]="Read-only file system"
    [EMLINK]="Too many links"
    [ERANGE]="Numerical result out of range"
    [ENAMETOOLONG]="File name too long"
    [ENOTEMPTY]="Directory not empty"
    [ENODATA]="No data available"
    [EOPNOTSUPP]="Operation not supported"
    [ENOTCONN]="Transport endpoint is not connected"
    [E2BIG]="Argument list too long"
)

# What some tools print instead of strerror's text (getfattr and setfattr say this for
# ENODATA).
declare -A ERRNO_ALT_TEXT=(
    [ENODATA]="No such attribute"
)

# Mountpoints this test mounted, and for each the daemon's pid, log file and the size of
# that log when the mount started (so that checks read only this mount's lines).
E2E_MOUNTS=()
# Network volumes this test created (make_volume_at).
declare -A E2E_CREATED=()
# Other filesystems a test mounted (register_mount), unmounted after its FUSE mounts.
E2E_OTHER_MOUNTS=()
# Functions the trap calls before it unmounts (to let daemons reach their servers again)
# and after (to stop those servers), whatever way the test ends.
E2E_BEFORE_UNMOUNT=()
E2E_AFTER_UNMOUNT=()
declare -A E2E_PID=() E2E_LOG=() E2E_LOG_START=()
E2E_WATCHDOG=
E2E_MOUNT_COUNT=0

# --- messages --------------------------------------------------------------------------

log() { printf '%s: %s\n' "$E2E_NAME" "$*" >&2; }

# Prints a step of the test, so a failure's output shows how far it got.
step() { printf '== %s\n' "$*" >&2; }

fail() {
    printf '%s: FAIL: %s\n' "$E2E_NAME" "$*" >&2
    exit 1
}

skip() {
    printf '%s: SKIP: %s\n' "$E2E_NAME" "$*" >&2
    exit 77
}

e2e_on_error() {
    # In a command substitution the failure shows again in the command that used it,
    # which may not care (a status used as a value); report it there only.
    [[ $BASH_SUBSHELL == 0 ]] || return 0
    local where=${BASH_SOURCE[1]:-$0}:${BASH_LINENO[0]}
    printf '%s: FAIL: exit status %s at %s: %s\n' "$E2E_NAME" "$1" "${where#"$E2E_DIR"/}" "$2" >&2
}

# --- bounded waits ---------------------------------------------------------------------

# with_timeout SECONDS PROGRAM [ARGS...]: runs a program (not a shell function) and stops
# it after SECONDS; says so on stderr and returns 124 when it had to.
with_timeout() {
    local seconds=$1
    shift
    case $(type -t "$1") in
        function | builtin | keyword) fail "with_timeout needs a program, not the shell $(type -t "$1") $1" ;;
    esac
    local status=0
    timeout -k 5 "$seconds" "$@" || status=$?
    if [[ $status == 124 || $status == 137 ]]; then
        log "timed out after ${seconds}s: $*"
    fi
    return "$status"
}

# wait_until SECONDS COMMAND...: polls COMMAND (a program or function) every 0.1 s until
# it succeeds; fails the test when it has not after SECONDS.
wait_until() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || fail "still not true after ${seconds}s: $*"
        sleep 0.1
    done
}

# netvol ARGS...: the binary under test, bounded like every other wait; on the simulated
# host E2E_HOST names when that is set (hosts.sh).
netvol() {
    if [[ -n ${E2E_HOST:-} ]]; then
        with_timeout 120 "$E2E_DIR/on-host" "$E2E_HOST" "$NETVOL" "$@"
    else
        with_timeout 120 "$NETVOL" "$@"
    fi
}

# as_nobody PROGRAM [ARGS...]: runs a program as nobody:nogroup with no other groups.
as_nobody() { with_timeout 60 setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }

# --- assertions ------------------------------------------------------------------------

# assert_equal EXPECTED ACTUAL [WHAT]
assert_equal() {
    if [[ "$1" != "$2" ]]; then
        fail "${3:-values differ}: expected '$(shorten "$1")', got '$(shorten "$2")'"
    fi
}

# assert_never_committed PATH WHAT: PATH was created by a writer that died or was cut off
# before it committed anything of the file. Its creation may have been made in the
# volume (the writer makes a file kept open within about a second) or forgotten with it,
# as a local filesystem forgets a file created since its last commit; either way it has
# no bytes.
assert_never_committed() {
    local size
    if size=$(stat -c %s "$1" 2>&1); then
        assert_equal 0 "$size" "$2"
    else
        [[ $size == *"No such file or directory"* ]] || fail "$2: stat failed: $size"
    fi
}

# shorten TEXT: TEXT, or its start and length when it is too long for a message.
shorten() {
    if ((${#1} > 200)); then
        printf '%s... (%s characters)' "${1:0:100}" "${#1}" | tr -c '[:print:]' '?'
    else
        printf '%s' "$1"
    fi
}

# assert_equal_files EXPECTED_FILE ACTUAL_FILE: fails with a unified diff.
assert_equal_files() {
    local difference
    if ! difference=$(with_timeout 120 diff -u -- "$1" "$2" 2>&1); then
        printf '%s\n' "$difference" | head -n 50 >&2
        fail "files differ: $1 $2"
    fi
}

# assert_equal_trees EXPECTED_DIR ACTUAL_DIR: diff -r, comparing symlinks as links.
assert_equal_trees() {
    local difference
    if ! difference=$(with_timeout 240 diff -r --no-dereference -- "$1" "$2" 2>&1); then
        printf '%s\n' "$difference" | head -n 50 >&2
        fail "trees differ: $1 $2"
    fi
}

# assert_contains TEXT PATTERN [WHAT]: PATTERN is an extended regular expression.
assert_contains() {
    if ! grep -Eq -- "$2" <<<"$1"; then
        printf '%s\n' "$1" | head -n 30 >&2
        fail "${3:-output} does not match /$2/ (text above)"
    fi
}

# assert_fails_with ERRNO_NAME COMMAND...: a command we expect to fail must say why. The
# command must exit non-zero and print the errno's text (e.g. ENOENT: "No such file or
# directory") on stderr. Programs run under with_timeout; functions must bound themselves.
# Its stdout is dropped; its stderr is left in $E2E_OUTPUT.
assert_fails_with() {
    local name=$1
    shift
    local text=${ERRNO_TEXT[$name]:-}
    [[ -n $text ]] || fail "assert_fails_with: unknown errno name $name"
    local status=0
    case $(type -t "$1") in
        function | builtin) E2E_OUTPUT=$("$@" 2>&1 >/dev/null) || status=$? ;;
        *) E2E_OUTPUT=$(with_timeout 60 "$@" 2>&1 >/dev/null) || status=$? ;;
    esac
    if [[ $status == 0 ]]; then
        fail "expected $name from '$*', but it succeeded; it printed: $E2E_OUTPUT"
    fi
    if [[ $status == 124 ]]; then
        fail "expected $name from '$*', but it timed out"
    fi
    local alt=${ERRNO_ALT_TEXT[$name]:-$text}
    if [[ $E2E_OUTPUT != *"$text"* && $E2E_OUTPUT != *"$alt"* ]]; then
        fail "expected $name ($text) from '$*'; it exited $status and printed: $E2E_OUTPUT"
    fi
}

# assert_cli_error PATTERN COMMAND...: a netvol command a person got wrong. It must exit
# non-zero, print nothing on stdout and exactly one line on stderr, starting "netvol: "
# and matching the extended regular expression PATTERN.
assert_cli_error() {
    local pattern=$1
    shift
    local out=$WORK/cli.out err=$WORK/cli.err status=0
    "$@" >"$out" 2>"$err" || status=$?
    local what="'${*/#$NETVOL/netvol}'"
    [[ $status != 0 ]] || fail "$what succeeded; it should have failed"
    [[ $status != 124 ]] || fail "$what timed out"
    [[ ! -s $out ]] || fail "$what printed on stdout: $(cat "$out")"
    local lines
    lines=$(wc -l <"$err")
    [[ $lines == 1 ]] || fail "$what printed $lines lines on stderr, not one: $(cat "$err")"
    local line
    line=$(cat "$err")
    [[ $line == "netvol: "* ]] || fail "$what: stderr does not start with 'netvol: ': $line"
    grep -Eq -- "$pattern" "$err" || fail "$what: stderr does not match /$pattern/: $line"
    E2E_OUTPUT=$line
}

# --- preconditions ---------------------------------------------------------------------

require_root() { [[ $(id -u) == 0 ]] || skip "needs root"; }

# require_nobody: as_nobody can run (root, setpriv, and nobody as uid 65534).
require_nobody() {
    require_root
    require_program setpriv
    id nobody >/dev/null 2>&1 || skip "there is no user nobody"
    [[ $(id -u nobody) == 65534 ]] || skip "nobody is not uid 65534 here"
}

require_fuse() {
    require_root
    [[ -c /dev/fuse ]] || skip "/dev/fuse is missing (in a container: --device /dev/fuse --cap-add SYS_ADMIN)"
    command -v fusermount3 >/dev/null || skip "fusermount3 is missing (apt-get install fuse3)"
}

require_program() {
    local program
    for program; do
        command -v "$program" >/dev/null || skip "$program is missing"
    done
}

# --- volumes and mounts ----------------------------------------------------------------

# real_tree: prints a real directory tree of this machine to copy (kernel headers when
# present, else another one); skips the test when there is none.
real_tree() {
    local candidate
    for candidate in /usr/include/linux /usr/share/perl5 /usr/share/doc /etc/ssl; do
        if [[ -d $candidate ]]; then printf '%s\n' "$candidate"; return; fi
    done
    skip "no source tree found on this machine"
}

# make_volume [CREATE_ARGS...]: creates the volume $VOLUME (default --size 10G).
make_volume() { make_volume_at "$VOLUME" "$@"; }

# make_volume_at DIR [CREATE_ARGS...]
make_volume_at() {
    local dir=$1
    shift
    (($# > 0)) || set -- --size 10G
    if is_network_volume "$dir"; then
        local name=${dir##*volume=}
        set -- "$@" --store "s3://$NETVOL_E2E_BUCKET/$name" --endpoint "$NETVOL_TEST_S3_ENDPOINT"
    fi
    netvol create "$dir" "$@" >/dev/null || fail "netvol create $dir $* failed"
    E2E_CREATED[$dir]=1
}

# is_network_volume VOLUME: VOLUME is a postgres:// URL.
is_network_volume() { [[ $1 == postgres://* || $1 == postgresql://* ]]; }

# volume_exists VOLUME: there is a volume there (a network one: this test made it).
volume_exists() {
    if is_network_volume "$1"; then [[ -n ${E2E_CREATED[$1]:-} ]]; else [[ -e $1/volume.db ]]; fi
}

# register_mount PATH: a filesystem the test mounted at PATH itself, for the trap to
# unmount after every netvol mount.
register_mount() { E2E_OTHER_MOUNTS+=("$1"); }

# is_mounted PATH: PATH is a mountpoint in this mount namespace (even a dead one).
is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# Any mount at or under PATH.
mounts_under() { awk -v m="$1" 'index($5, m "/") == 1 || $5 == m { print $5 }' /proc/self/mountinfo; }

# forget_pages FILE: drops what the kernel cached of FILE, so that reads reach the daemon.
forget_pages() {
    python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)' "$1"
}

# json_number KEY: the number after "KEY" : in JSON on stdin (netvol status --json).
json_number() { sed -n "s/^ *\"$1\" *: *\([0-9][0-9]*\).*/\1/p" | head -n 1; }

# status_field VOLUME_DIR KEY: one number from netvol status --json.
status_field() {
    local value
    value=$(netvol status "$1" --json | json_number "$2")
    [[ -n $value ]] || fail "netvol status $1 --json has no $2"
    printf '%s\n' "$value"
}

# daemon_pid VOLUME_DIR [MOUNTPOINT]: the pid of the daemon serving the volume at
# MOUNTPOINT (or of any mount of it), from netvol status --json: the "mounts" objects
# (or an older binary's single "mount" object) each name a mountpoint and a pid. Prints
# nothing when there is no such mount. (awk reads to the end: a writer cut off by an
# early exit would fail the pipeline with SIGPIPE.)
daemon_pid() {
    netvol status "$1" --json | awk -v want="${2:-}" '
        /"mountpoint" *:/ { mp = $0; sub(/^[^:]*: *"/, "", mp); sub(/",? *$/, "", mp); gsub(/\\\//, "/", mp) }
        /"pid" *:/ { pid = $0; gsub(/[^0-9]/, "", pid) }
        /}/ { if (pid != "" && (want == "" || mp == want) && !found) { print pid; found = 1 } mp = ""; pid = "" }'
}

# mount_volume [VOLUME_DIR [MOUNT_ARGS...]]: mounts a volume (default $VOLUME, created
# with make_volume if it is not a volume yet) at a fresh mountpoint under $WORK. Sets MNT
# to the mountpoint and MNT_PID to the daemon's pid.
mount_volume() {
    require_fuse
    local dir=${1:-$VOLUME}
    (($# == 0)) || shift
    volume_exists "$dir" || make_volume_at "$dir"
    E2E_MOUNT_COUNT=$((E2E_MOUNT_COUNT + 1))
    local target=$WORK/mnt$E2E_MOUNT_COUNT
    local logfile=$dir/netvol.log arg previous=
    if is_network_volume "$dir"; then
        # Each mount is a worker host of its own: its own cache, and a log in $WORK.
        logfile=$WORK/netvol-$E2E_MOUNT_COUNT.log
        set -- --cache-dir "$WORK/cache$E2E_MOUNT_COUNT" --log-file "$logfile" "$@"
    fi
    for arg; do
        [[ $previous != --log-file ]] || logfile=$arg
        previous=$arg
    done
    local start=0
    [[ ! -e $logfile ]] || start=$(wc -l <"$logfile")
    # Registered before mounting, so that the trap cleans up even a half-done mount.
    E2E_MOUNTS+=("$target")
    E2E_LOG[$target]=$logfile
    E2E_LOG_START[$target]=$start
    netvol mount "$dir" "$target" "$@" || fail "netvol mount $dir $target $* failed"
    is_mounted "$target" || fail "netvol mount returned but $target is not mounted"
    MNT_PID=$(daemon_pid "$dir" "$target")
    [[ -n $MNT_PID ]] || fail "netvol status $dir --json names no daemon for $target"
    E2E_PID[$target]=$MNT_PID
    MNT=$target
}

# mount_log [MOUNTPOINT]: what the daemon of a mount has logged since it started.
mount_log() {
    local target=${1:-$MNT}
    tail -n +"$((${E2E_LOG_START[$target]} + 1))" "${E2E_LOG[$target]}"
}

# copies_whose_pages_went [MOUNTPOINT]: how many cache copies the daemon (mounted with
# --debug) could not write from the kernel's pages because the kernel no longer held them
# all; fails if a copy was not written for any other reason (pages that changed, or none
# known). Pages can go within a second of being read or written, not only under memory
# pressure: a host may reclaim cold page cache on its own (DAMON's proactive reclaim on
# these VMs takes pages of a file read once).
copies_whose_pages_went() {
    local lines
    lines=$(mount_log "$@" | grep -F 'cache copy of object' || true)
    local other
    other=$(grep -Ev 'the kernel gave [0-9]+ of [0-9]+ bytes$' <<<"$lines" | grep . || true)
    [[ -z $other ]] || fail "cache copies not written for another reason than pages gone: $other"
    grep -c . <<<"$lines" || true
}

# Lines in a daemon log that mean it crashed or hit an internal error.
CRASH_PATTERN='Fatal error|Assertion failed|Precondition failed|Current stack trace|Illegal instruction|Segmentation fault|dispatch_assert'

# unmount_volume [MOUNTPOINT]: `netvol unmount`, then expect_clean_exit.
unmount_volume() {
    local target=${1:-$MNT}
    netvol unmount "$target" || fail "netvol unmount $target failed"
    expect_clean_exit "$target"
}

# expect_clean_exit [MOUNTPOINT]: waits (bounded) until the mount is gone and its daemon
# has exited, and checks that its log says it unmounted cleanly and shows no crash.
expect_clean_exit() {
    local target=${1:-$MNT}
    local pid=${E2E_PID[$target]:-}
    wait_until 30 not_mounted "$target"
    [[ -z $pid ]] || wait_until 30 daemon_gone "$pid"
    local lines
    lines=$(mount_log "$target")
    if grep -Eq "$CRASH_PATTERN" <<<"$lines"; then
        printf '%s\n' "$lines" | tail -n 30 >&2
        fail "the daemon of $target crashed or failed an assertion (log above)"
    fi
    grep -Fq "unmounted $target" <<<"$lines" || {
        printf '%s\n' "$lines" | tail -n 30 >&2
        fail "the daemon of $target did not log a clean unmount (log above)"
    }
    forget_mount "$target"
}

not_mounted() { ! is_mounted "$1"; }

forget_mount() {
    local target=$1 kept=() m
    for m in "${E2E_MOUNTS[@]}"; do
        [[ $m == "$target" ]] || kept+=("$m")
    done
    E2E_MOUNTS=(${kept[@]+"${kept[@]}"})
    unset "E2E_PID[$target]"
}

# daemon_gone PID: that process has exited (a zombie counts as exited).
daemon_gone() {
    [[ ! -e /proc/$1 ]] && return 0
    [[ $(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) == Z ]]
}

# daemon_alive PID: the process still runs (and is not a zombie).
daemon_alive() { ! daemon_gone "$1"; }

# Is PID a netvol daemon serving TARGET? Guards against killing a recycled pid.
is_our_daemon() {
    [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -Fq -- " $2 "
}

# --- setup and teardown ----------------------------------------------------------------

e2e_cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM HUP ERR
    [[ -z $E2E_WATCHDOG ]] || kill "$E2E_WATCHDOG" 2>/dev/null
    # Descriptors the test left open on its mounts (exec 3<...) would keep them busy.
    local fd
    for fd in "/proc/$$/fd/"*; do
        fd=${fd##*/}
        if ((fd > 2)) && [[ $(readlink "/proc/$$/fd/$fd" 2>/dev/null) == "$WORK"/* ]]; then
            eval "exec $fd>&-"
        fi
    done
    local target pid i hook
    for hook in ${E2E_BEFORE_UNMOUNT[@]+"${E2E_BEFORE_UNMOUNT[@]}"}; do "$hook"; done
    for ((i = ${#E2E_MOUNTS[@]} - 1; i >= 0; i--)); do
        target=${E2E_MOUNTS[i]}
        if is_mounted "$target"; then
            timeout -k 5 30 fusermount3 -u "$target" ||
                { log "fusermount3 -u $target failed; detaching it (-uz)"; timeout -k 5 30 fusermount3 -uz "$target"; }
        fi
        pid=${E2E_PID[$target]:-}
        if [[ -n $pid ]]; then
            local deadline=$((SECONDS + 15))
            while daemon_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
            if daemon_alive "$pid" && is_our_daemon "$pid" "$target"; then
                log "daemon $pid of $target outlived its mount; sending SIGTERM"
                kill -TERM "$pid"
                deadline=$((SECONDS + 10))
                while daemon_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
                if daemon_alive "$pid"; then
                    log "daemon $pid ignores SIGTERM; sending SIGKILL"
                    kill -KILL "$pid"
                fi
                [[ $status != 0 ]] || status=1
            fi
        fi
        if [[ $status != 0 && $status != 77 && -s ${E2E_LOG[$target]:-} ]]; then
            log "last lines the daemon of $target logged (${E2E_LOG[$target]}):"
            mount_log "$target" | tail -n 25 | sed 's/^/    /' >&2
        fi
    done
    # Filesystems the test mounted under its volumes (a small loop disk): after the
    # FUSE mounts that may use them.
    for ((i = ${#E2E_OTHER_MOUNTS[@]} - 1; i >= 0; i--)); do
        target=${E2E_OTHER_MOUNTS[i]}
        if is_mounted "$target"; then
            timeout -k 5 30 umount "$target" || { log "umount $target failed; detaching it"; umount -l "$target" || true; }
        fi
    done
    for hook in ${E2E_AFTER_UNMOUNT[@]+"${E2E_AFTER_UNMOUNT[@]}"}; do "$hook"; done
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        local left
        left=$(mounts_under "$WORK")
        if [[ -n $left ]]; then
            log "still mounted, keeping $WORK: $left"
            [[ $status != 0 ]] || status=1
        elif [[ ${E2E_KEEP:-0} == 1 ]]; then
            log "keeping $WORK"
        else
            rm -rf --one-file-system "$WORK"
        fi
    fi
    exit "$status"
}

# Stops the test when it runs past its deadline: its children first (a command blocked
# in a FUSE request ends on a fatal signal), then the script, whose trap then cleans up.
e2e_watchdog() {
    local script=$1 sleeper
    trap - ERR
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$E2E_DEADLINE" &
    sleeper=$!
    wait "$sleeper"
    printf '%s: FAIL: still running after %ss; stopping it\n' "$E2E_NAME" "$E2E_DEADLINE" >&2
    local child
    for child in $(cat /proc/"$script"/task/*/children 2>/dev/null); do
        [[ $child == "$BASHPID" ]] || kill -TERM "$child" 2>/dev/null
    done
    kill -TERM "$script"
}

[[ -x $NETVOL ]] || fail "netvol binary $NETVOL is missing; build it with: cd $REPO && swift build"

# Each test runs in a private mount namespace of its own, as a container does. Its mounts
# stay out of the rest of the machine, and above all out of mount namespaces that other
# processes create meanwhile (unshare, containers): such a namespace takes a copy of
# every mount there is, and the copy keeps a FUSE daemon serving after `netvol unmount`
# removed the original. E2E_UNSHARE=0 runs the test in the caller's namespace.
if [[ ${E2E_UNSHARE:-1} == 1 && -z ${E2E_IN_NAMESPACE:-} && $(id -u) == 0 ]] &&
    command -v unshare >/dev/null && unshare --mount --propagation private true 2>/dev/null; then
    export E2E_IN_NAMESPACE=1
    exec unshare --mount --propagation private -- bash "$0" "$@"
fi

# Tests assert the modes a default shell gives new files.
umask 022
WORK=$(mktemp -d "/tmp/netvol-e2e-$E2E_NAME.XXXXXX")
# Other users (permission tests) must be able to reach mountpoints inside.
chmod 0755 "$WORK"
VOLUME=$WORK/volume
if [[ ${E2E_BACKEND:-embedded} == network ]]; then
    [[ -n ${NETVOL_TEST_PG_URL:-} && -n ${NETVOL_TEST_S3_ENDPOINT:-} && -n ${NETVOL_E2E_BUCKET:-} ]] ||
        fail "E2E_BACKEND=network needs NETVOL_TEST_PG_URL, NETVOL_TEST_S3_ENDPOINT and NETVOL_E2E_BUCKET (scripts/test.sh sets them)"
    VOLUME="$NETVOL_TEST_PG_URL?volume=e2e-$E2E_NAME-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
fi
trap e2e_cleanup EXIT
# set -e stops a test at a failing command without a word; say which one it was.
set -o errtrace
trap 'e2e_on_error $? "$BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
e2e_watchdog "$$" &
E2E_WATCHDOG=$!
