#!/usr/bin/env bash
# Installs what is missing, builds netvol (release), creates an embedded volume if there
# is none, and mounts it at /runpod-volume.
#
#   scripts/run.sh [MOUNTPOINT]
#   NETVOL_VOLUME=/var/lib/netvol/default NETVOL_SIZE=50G scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/deps.sh

volume=${NETVOL_VOLUME:-/var/lib/netvol/default}
size=${NETVOL_SIZE:-50G}
mountpoint=${1:-/runpod-volume}

install_build_dependencies
swift build -c release --product netvol
as_root install -m 0755 .build/release/netvol /usr/local/bin/netvol
# mount(8) runs /sbin/mount.<type> for `mount -t fuse.netvol` (and fstab lines of that
# type) and for `-t netvol`: netvol answers to both names.
for helper in mount.fuse.netvol mount.netvol; do
  as_root ln -sf /usr/local/bin/netvol "/sbin/$helper"
done

if [ ! -e "$volume/volume.db" ]; then
  as_root netvol create "$volume" --size "$size"
fi
if awk -v m="$mountpoint" '$2 == m {found=1} END {exit !found}' /proc/mounts; then
  echo "$mountpoint is already mounted"
else
  as_root netvol mount "$volume" "$mountpoint"
fi

cat <<INFO

netvol volume $volume is mounted at $mountpoint.
  ls -l $mountpoint              use it like any directory
  df -h $mountpoint              size limit and usage
  netvol status $volume          size, usage, files, the mount
  netvol unmount $mountpoint     commit everything and unmount
  log: $volume/netvol.log
INFO
