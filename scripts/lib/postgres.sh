# Sourced by test scripts, after deps.sh: a private PostgreSQL cluster for the metadata tests.
#
#   install_postgres                 installs the server if initdb/pg_ctl are missing
#   start_postgres DIR PORT [ADDRESS]  a cluster in DIR on ADDRESS:PORT (default
#                                    127.0.0.1), in the network namespace SERVERS_NETNS
#                                    when that is set, with the postgresql.conf lines of
#                                    POSTGRES_SETTINGS (';' between them) added; exports
#                                    NETVOL_TEST_PG_URL and PGPASSWORD
#   pause_postgres [immediate]       stops the server and keeps the cluster (immediate:
#                                    as a crash would, without a checkpoint)
#   resume_postgres                  starts the paused cluster again
#   stop_postgres                    stops the cluster start_postgres started
#   free_port FROM                   the first port from FROM on where nothing listens

# Finds pg_ctl's directory: on PATH, or Debian's versioned one.
postgres_bindir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

install_postgres() {
  if [ -z "$(postgres_bindir)" ]; then
    install_packages postgresql
  fi
  if [ -z "$(postgres_bindir)" ]; then
    echo "error: no initdb/pg_ctl after installing postgresql" >&2
    return 1
  fi
}

# Runs a command as the postgres user: initdb and the server refuse to run as root.
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@"; fi
}

start_postgres() {
  local dir=$1 port=$2 address=${3:-127.0.0.1} bindir
  bindir=$(postgres_bindir)
  POSTGRES_DIR=$dir
  POSTGRES_BINDIR=$bindir
  POSTGRES_NETNS=${SERVERS_NETNS:-}
  mkdir -p "$dir/data" "$dir/socket"
  as_root chown -R postgres:postgres "$dir"
  chmod 700 "$dir/data"
  as_postgres "$bindir/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '$address'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 200
fsync = off
EOF
  tr ';' '\n' <<<"${POSTGRES_SETTINGS:-}" >>"$dir/data/postgresql.conf"
  # Local socket for the admin, passwords over TCP; samenet lets test hosts in network
  # namespaces of this machine connect.
  cat >"$dir/data/pg_hba.conf" <<EOF
local   all   postgres                 trust
local   all   all                      scram-sha-256
host    all   all        127.0.0.1/32  scram-sha-256
host    all   all        samenet       scram-sha-256
EOF
  resume_postgres || return 1
  local password
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  local psql="$bindir/psql"
  [ -x "$psql" ] || psql=psql
  as_postgres "$psql" -h "$dir/socket" -p "$port" -U postgres -v ON_ERROR_STOP=1 -q >/dev/null <<EOF
CREATE ROLE netvol LOGIN PASSWORD '$password';
CREATE DATABASE netvol OWNER netvol;
EOF
  export NETVOL_TEST_PG_URL="postgres://netvol@$address:$port/netvol"
  export PGPASSWORD=$password
}

resume_postgres() {
  local start=("$POSTGRES_BINDIR/pg_ctl" -D "$POSTGRES_DIR/data" -l "$POSTGRES_DIR/server.log" -w -t 60 start)
  if [ -n "$POSTGRES_NETNS" ]; then
    # The server's sockets are the storage host's: it starts inside that namespace.
    as_root nsenter --net="/run/netns/$POSTGRES_NETNS" runuser -u postgres -- "${start[@]}" >"$POSTGRES_DIR/pg_ctl.log" 2>&1
  else
    as_postgres "${start[@]}" >"$POSTGRES_DIR/pg_ctl.log" 2>&1
  fi || { cat "$POSTGRES_DIR/pg_ctl.log" "$POSTGRES_DIR/server.log" >&2; return 1; }
}

pause_postgres() {
  as_postgres timeout 60 "$POSTGRES_BINDIR/pg_ctl" -D "$POSTGRES_DIR/data" -m "${1:-fast}" -t 50 stop >/dev/null
}

stop_postgres() {
  [ -n "${POSTGRES_DIR:-}" ] || return 0
  as_postgres timeout 60 "$POSTGRES_BINDIR/pg_ctl" -D "$POSTGRES_DIR/data" -m fast -t 50 stop >/dev/null 2>&1 || true
  POSTGRES_DIR=
}
