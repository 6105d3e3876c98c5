# Sourced by run.sh, test.sh and bench.sh: installs the system packages netvol needs.

# Runs a command as root (through sudo when we are not root).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Installs the Debian packages given that are not installed yet; `apt-get update` runs
# once, and only when something is missing.
install_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# What building and mounting netvol needs.
install_build_dependencies() {
  install_packages libfuse3-dev fuse3 libsqlite3-dev libxxhash-dev libpq-dev pkg-config
  if ! command -v swift >/dev/null 2>&1; then
    for candidate in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
      [ -x "$candidate/swift" ] && export PATH="$candidate:$PATH" && break
    done
  fi
  if ! command -v swift >/dev/null 2>&1; then
    echo "error: no Swift toolchain found (Swift 6 is needed; see https://www.swift.org/install/linux/)" >&2
    exit 1
  fi
}

# Runs a command in the network namespace SERVERS_NETNS names (a simulated storage host
# of the multi-host tests), or here when it is unset.
in_servers_netns() {
  if [ -n "${SERVERS_NETNS:-}" ]; then
    nsenter --net="/run/netns/$SERVERS_NETNS" "$@"
  else
    "$@"
  fi
}

# install_python_module MODULE PACKAGE: pip-installs PACKAGE from PyPI when python3
# cannot import MODULE.
install_python_module() {
  python3 -c "import $1" 2>/dev/null && return 0
  command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || install_packages python3-pip
  local pip
  pip=$(command -v pip3 || command -v pip)
  # Debian's own Python refuses installs into it without this (PEP 668).
  "$pip" install --quiet "$2" 2>/dev/null || "$pip" install --quiet --break-system-packages "$2"
}
