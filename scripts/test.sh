#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: store and metadata unit tests,
# VolumeFS against its model, real mounts from Swift, then the end-to-end shell scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh
. scripts/lib/postgres.sh
. scripts/lib/seaweedfs.sh

install_build_dependencies
# The tests also use the shell tools people use on a volume; the multi-host scenarios
# build their network with iproute2 and enter it with util-linux's nsenter; the unit
# file is checked with systemd-analyze (nothing is started under systemd).
install_packages attr python3 tar diffutils util-linux procps psmisc iproute2 curl systemd
# The metrics test parses /metrics with the Prometheus project's own parser.
install_python_module prometheus_client prometheus-client

swift build --build-tests
swift build --product netvol
# The release build is what scripts/run.sh installs: it must build too (the optimizer
# meets code the debug build never shows it).
swift build -c release --product netvol

# The PostgreSQL and S3 backends are tested against real servers: a private PostgreSQL
# cluster and a SeaweedFS S3 server, both on loopback, gone when the run ends. A server
# that cannot start fails the run; no test of a backend is skipped.
install_postgres
install_seaweedfs
postgres_dir=$(mktemp -d /tmp/netvol-pg.XXXXXX)
seaweedfs_dir=$(mktemp -d /tmp/netvol-s3.XXXXXX)
stop_servers() { stop_seaweedfs; stop_postgres; rm -rf "$postgres_dir" "$seaweedfs_dir"; }
trap stop_servers EXIT
start_postgres "$postgres_dir" "$(free_port 54329)"
start_seaweedfs "$seaweedfs_dir" "$(pick_seaweedfs_port)"
# The end-to-end scenarios that run on network volumes as well keep their chunks here.
make_bucket netvol-e2e
export NETVOL_E2E_BUCKET=netvol-e2e
export NETVOL_REQUIRE_SERVERS=1

# Mounts that were there before (a volume mounted by scripts/run.sh, say) are not ours.
netvol_mounts() { awk '$3 ~ /^fuse/ && $1 ~ /netvol/ {print $2}' /proc/mounts | sort; }
before=$(netvol_mounts)

# A hung mount must fail the run, not hang it: every layer is bounded in time.
status=0
timeout --kill-after=30 1800 swift test --skip-build || status=$?
NETVOL="$PWD/.build/debug/netvol" timeout --kill-after=30 3600 scripts/e2e/run-all.sh || status=$?

left=$(comm -13 <(printf '%s\n' "$before") <(netvol_mounts) | sed '/^$/d')
if [ -n "$left" ]; then
  echo "error: tests left netvol mounts behind: $left" >&2
  for mountpoint in $left; do fusermount3 -uz "$mountpoint" || true; done
  status=1
fi
exit $status
