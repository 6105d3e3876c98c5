# scripts/e2e/hosts.sh: simulated hosts for the multi-host scenarios (40-46): a storage
# host running PostgreSQL and a SeaweedFS S3 server on its own address, and worker hosts
# that each mount the volume through their own network stack, with their own cache.
#
# Source it after lib.sh:
#
#   . "$E2E_DIR/hosts.sh"
#   hosts_up worker-a worker-b        # the network: storage 10.77.0.1, workers .11, .12
#   start_storage                     # servers on the storage host; sets $VOLUME
#   make_volume --size 2G             # netvol commands run on worker-a unless E2E_HOST
#   mount_on worker-a --writer        # MNT, MNT_PID, as mount_volume sets them
#   mount_workers --lease-ttl 5       # or all at once: A, B, C and A_PID, B_PID, C_PID
#   cut_link worker-a; heal_link worker-a
#   pause_database / resume_database; stop_object_store / start_object_store
#
# Each host is a network namespace (ip netns) with a veth pair to a bridge, which lives in
# a namespace of its own; nothing is added to this machine's own network, and nothing is
# sent anywhere but 10.77.0.0/24 inside these namespaces. The namespaces' names live in a
# tmpfs on /run/netns private to the test's mount namespace, so even a test killed
# outright leaves no name behind; the trap tears the network down in any case, after
# every mount is gone.
#
# E2E_LINK chooses what lies between the workers and the servers:
#   direct  the bridge alone;
#   delay   a relay on the storage host that delivers every byte 1 ms after it arrived,
#           each way: 2 ms more on every round trip (this kernel has no netem);
#   flaky   a relay that resets one connection in fifty at a random moment (relay.py).

require_fuse
require_program ip nsenter unshare python3 curl
[[ ${E2E_IN_NAMESPACE:-} == 1 ]] ||
    skip "the simulated hosts need the test's own mount namespace (do not set E2E_UNSHARE=0)"

. "$REPO/scripts/lib/deps.sh"
. "$REPO/scripts/lib/postgres.sh"
. "$REPO/scripts/lib/seaweedfs.sh"
if [[ -z $(postgres_bindir) ]] || ! command -v weed >/dev/null; then
    [[ ${NETVOL_REQUIRE_SERVERS:-0} != 1 ]] || fail "PostgreSQL or SeaweedFS is not installed (scripts/test.sh installs them)"
    skip "PostgreSQL or SeaweedFS is not installed (scripts/test.sh installs them)"
fi

export HOSTS_PREFIX=nv$$
HOSTS_SUBNET=10.77.0
STORAGE_ADDRESS=$HOSTS_SUBNET.1
HOSTS_LINK=${E2E_LINK:-direct}
HOSTS=()
declare -A HOST_ADDRESS=()
# Daemons a test stopped (SIGSTOP), links it cut, servers it stopped: the trap undoes
# them before unmounting, so that every daemon can commit and exit cleanly.
declare -A HOSTS_FROZEN=() HOSTS_CUT=()
HOSTS_DATABASE_DOWN=0
HOSTS_STORE_DOWN=0
HOSTS_RELAY_PID=
HOSTS_NETNS_MOUNTED=0
DATABASE_PORT=5432
STORE_PORT=
# What the workers connect to: the servers, or the relay in front of them.
DATABASE_ADDRESS=
STORE_ENDPOINT=

case $HOSTS_LINK in
    direct | delay | flaky) ;;
    *) fail "E2E_LINK must be direct, delay or flaky, not $HOSTS_LINK" ;;
esac
[[ $HOSTS_LINK == direct ]] || E2E_NAME="$E2E_NAME-$HOSTS_LINK"

# hosts_up WORKER...: the switch, the storage host and the workers. Netvol commands then
# run on the first worker unless E2E_HOST says otherwise.
hosts_up() {
    E2E_BEFORE_UNMOUNT+=(hosts_heal)
    E2E_AFTER_UNMOUNT+=(hosts_down)
    mkdir -p /run/netns
    mount -t tmpfs -o size=1m,mode=0755 netvol-test-netns /run/netns
    HOSTS_NETNS_MOUNTED=1
    ip netns add "$HOSTS_PREFIX-switch"
    ip -n "$HOSTS_PREFIX-switch" link add br0 type bridge
    ip -n "$HOSTS_PREFIX-switch" link set dev br0 up
    add_host storage 1
    local number=11 host
    for host; do
        add_host "$host" "$number"
        HOSTS+=("$host")
        number=$((number + 1))
    done
    E2E_HOST=$1
}

# add_host NAME NUMBER: a namespace with eth0 at 10.77.0.NUMBER, plugged into the switch.
add_host() {
    local name=$1 number=$2 netns=$HOSTS_PREFIX-$1
    # Interface names are made in this namespace first, where they must be unique and
    # short; they are renamed once moved.
    local end=nv$$h$number
    ip netns add "$netns"
    ip link add "$end" type veth peer name "${end}p"
    ip link set dev "$end" netns "$netns"
    ip -n "$netns" link set dev "$end" name eth0
    ip link set dev "${end}p" netns "$HOSTS_PREFIX-switch"
    ip -n "$HOSTS_PREFIX-switch" link set dev "${end}p" name "port-$name"
    ip -n "$HOSTS_PREFIX-switch" link set dev "port-$name" master br0 up
    ip -n "$netns" addr add "$HOSTS_SUBNET.$number/24" dev eth0
    ip -n "$netns" link set dev eth0 up
    ip -n "$netns" link set dev lo up
    HOST_ADDRESS[$name]=$HOSTS_SUBNET.$number
}

# on_host HOST PROGRAM [ARGS...]: runs a program on a host (see on-host).
on_host() { "$E2E_DIR/on-host" "$@"; }

# start_storage: PostgreSQL and SeaweedFS on the storage host (and the relay E2E_LINK
# asks for); sets VOLUME to a fresh volume's URL and the variables make_volume uses.
start_storage() {
    export SERVERS_NETNS=$HOSTS_PREFIX-storage
    start_postgres "$WORK/postgres" "$DATABASE_PORT" "$STORAGE_ADDRESS" || fail "PostgreSQL did not start on the storage host"
    STORE_PORT=$(pick_seaweedfs_port)
    start_seaweedfs "$WORK/seaweedfs" "$STORE_PORT" "$STORAGE_ADDRESS" || fail "SeaweedFS did not start on the storage host"
    make_bucket netvol-hosts || fail "cannot create the bucket"
    DATABASE_ADDRESS=$STORAGE_ADDRESS:$DATABASE_PORT
    STORE_ENDPOINT=http://$STORAGE_ADDRESS:$STORE_PORT
    case $HOSTS_LINK in
        delay) start_relay --delay-ms 1 ;;
        flaky) start_relay --reset-one-in 50 ;;
    esac
    export NETVOL_TEST_S3_ENDPOINT=$STORE_ENDPOINT
    export NETVOL_E2E_BUCKET=netvol-hosts
    VOLUME="postgres://netvol@$DATABASE_ADDRESS/netvol?volume=hosts-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    log "storage host up ($HOSTS_LINK link): database $DATABASE_ADDRESS, object store $STORE_ENDPOINT"
}

# start_relay RELAY_ARGS...: a relay.py on the storage host in front of both servers;
# the workers then reach the servers only through it.
start_relay() {
    local database_relay=15432 store_relay=18333
    nsenter --net="/run/netns/$SERVERS_NETNS" setsid python3 "$E2E_DIR/relay.py" \
        --pair "$STORAGE_ADDRESS:$database_relay=$STORAGE_ADDRESS:$DATABASE_PORT" \
        --pair "$STORAGE_ADDRESS:$store_relay=$STORAGE_ADDRESS:$STORE_PORT" \
        --stats "$WORK/relay.stats" "$@" >"$WORK/relay.log" 2>&1 </dev/null &
    HOSTS_RELAY_PID=$!
    relay_ready() { grep -q "relay: ready" "$WORK/relay.log"; }
    wait_until 30 relay_ready
    log "$(head -n 1 "$WORK/relay.log") ($*)"
    DATABASE_ADDRESS=$STORAGE_ADDRESS:$database_relay
    STORE_ENDPOINT=http://$STORAGE_ADDRESS:$store_relay
}

# relay_count WHAT: connections or resets the relay has seen so far.
relay_count() { awk -v what="$1" '$1 == what { print $2 }' "$WORK/relay.stats"; }

# expect_faults_injected: on a flaky link, the relay did reset connections (a run that
# injected no fault would prove nothing).
expect_faults_injected() {
    [[ $HOSTS_LINK == flaky ]] || return 0
    local resets
    resets=$(relay_count resets)
    ((resets > 0)) || fail "the flaky relay reset no connection ($(relay_count connections) connections)"
    log "the relay reset $resets of $(relay_count connections) connections"
}

# mount_on HOST [MOUNT_ARGS...]: mounts $VOLUME on HOST (mount_volume's MNT, MNT_PID).
mount_on() {
    local host=$1
    shift
    E2E_HOST=$host mount_volume "$VOLUME" "$@"
}

# mount_workers [MOUNT_ARGS...]: mounts $VOLUME on every worker, in the order hosts_up
# named them; sets A, B, C to their mountpoints and A_PID, B_PID, C_PID to their daemons.
mount_workers() {
    local letters=(A B C D E) i
    for i in "${!HOSTS[@]}"; do
        mount_on "${HOSTS[i]}" "$@"
        printf -v "${letters[i]}" '%s' "$MNT"
        printf -v "${letters[i]}_PID" '%s' "$MNT_PID"
    done
}

# two_workers [MOUNT_ARGS...]: the usual stage of a failure scenario: workers A and B,
# the storage host, a 2 GiB volume of 1 MiB chunks, mounted on both.
two_workers() {
    hosts_up worker-a worker-b
    start_storage
    make_volume --size 2G --chunk-size 1M
    mount_workers "$@"
}

# status_on HOST: `netvol status --json` as HOST sees it.
status_on() { E2E_HOST=$1 netvol status "$VOLUME" --json; }

cut_link() {
    ip -n "$HOSTS_PREFIX-switch" link set dev "port-$1" down
    HOSTS_CUT[$1]=1
}

heal_link() {
    ip -n "$HOSTS_PREFIX-switch" link set dev "port-$1" up
    unset "HOSTS_CUT[$1]"
}

# freeze PID / thaw PID: SIGSTOP and SIGCONT a daemon.
freeze() {
    kill -STOP "$1"
    HOSTS_FROZEN[$1]=1
}

thaw() {
    kill -CONT "$1"
    unset "HOSTS_FROZEN[$1]"
}

# pause_database [immediate]: PostgreSQL stops (immediate: as a crash would); the
# cluster stays for resume_database.
pause_database() {
    pause_postgres "${1:-fast}" || fail "cannot stop PostgreSQL"
    HOSTS_DATABASE_DOWN=1
}

resume_database() {
    resume_postgres || fail "PostgreSQL did not start again"
    HOSTS_DATABASE_DOWN=0
}

stop_object_store() {
    stop_seaweedfs
    HOSTS_STORE_DOWN=1
}

start_object_store() {
    start_seaweedfs "$WORK/seaweedfs" "$STORE_PORT" "$STORAGE_ADDRESS" || fail "SeaweedFS did not start again"
    HOSTS_STORE_DOWN=0
}

# write_within SECONDS SINCE FILE TEXT WHAT: writes TEXT into FILE (through a mount that
# may have to take the lease first), retrying every 0.1 s; fails the test unless it
# succeeds within SECONDS of SINCE (an ${EPOCHREALTIME/./} reading). WHAT names the
# moment SINCE marks, for the messages.
write_within() {
    local seconds=$1 since=$2 file=$3 text=$4 what=$5
    until sh -c "printf '%s' '$text' > '$file'" 2>/dev/null; do
        ((${EPOCHREALTIME/./} - since <= seconds * 1000000)) || fail "no write to $file possible ${seconds} s after $what"
        sleep 0.1
    done
    log "wrote $file $(((${EPOCHREALTIME/./} - since) / 1000)) ms after $what"
}

# within SECONDS COMMAND...: COMMAND returns (whatever its status) within SECONDS;
# leaves its status in $WITHIN_STATUS and its stderr in $WITHIN_ERR.
within() {
    local seconds=$1
    shift
    local start=${EPOCHREALTIME/./}
    WITHIN_STATUS=0
    timeout -k 5 120 "$@" 2>"$WORK/within.err" >/dev/null || WITHIN_STATUS=$?
    WITHIN_ERR=$(cat "$WORK/within.err")
    local took=$(((${EPOCHREALTIME/./} - start) / 1000))
    ((took <= seconds * 1000)) || fail "'$*' took ${took} ms, more than ${seconds} s"
    log "'$*' ended with status $WITHIN_STATUS after $took ms"
}

# expect_eio_within SECONDS COMMAND...: COMMAND fails with EIO within SECONDS. (dash's
# printf names EIO "I/O error" when its write or close gets it: a create the writer
# answers without the database fails there.)
expect_eio_within() {
    within "$@"
    shift
    ((WITHIN_STATUS != 0)) || fail "'$*' succeeded; expected EIO"
    [[ $WITHIN_ERR == *"Input/output error"* || $WITHIN_ERR == *"I/O error"* ]] || fail "'$*': expected EIO, got: $WITHIN_ERR"
}

# The trap's first step: everything a test broke is mended, so the daemons can commit
# what they hold and exit cleanly when unmounted.
hosts_heal() {
    local host pid
    for host in "${!HOSTS_CUT[@]}"; do heal_link "$host" || true; done
    for pid in "${!HOSTS_FROZEN[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    HOSTS_FROZEN=()
    if ((HOSTS_DATABASE_DOWN)); then resume_postgres || true; fi
    if ((HOSTS_STORE_DOWN)); then
        start_seaweedfs "$WORK/seaweedfs" "$STORE_PORT" "$STORAGE_ADDRESS" || true
    fi
}

# The trap's last step, after every mount is gone: servers, relay and network.
hosts_down() {
    if [[ -n $HOSTS_RELAY_PID ]]; then
        kill -TERM "$HOSTS_RELAY_PID" 2>/dev/null
        wait "$HOSTS_RELAY_PID" 2>/dev/null
    fi
    stop_seaweedfs
    stop_postgres
    local netns
    for netns in /run/netns/"$HOSTS_PREFIX"-*; do
        [[ -e $netns ]] && ip netns delete "${netns##*/}"
    done
    if ((HOSTS_NETNS_MOUNTED)); then umount /run/netns; fi
    return 0
}
