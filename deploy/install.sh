#!/usr/bin/env bash
# Install an Archipelago node as a systemd service on a Debian-like host.
#
# Idempotent: running it again upgrades the package in the venv, reinstalls
# the unit and leaves an existing home (config, keys, chain data) untouched.
# Paths are fixed because deploy/archipelago.service names them:
#   /opt/archipelago/venv        the package and its `archipelago` console script
#   /opt/archipelago/docs        the operator documentation (source installs)
#   /var/lib/archipelago         the node's home, mode 0700, owned by `archipelago`
#   /etc/systemd/system/archipelago.service
set -euo pipefail

prefix=/opt/archipelago
venv="$prefix/venv"
user=archipelago
home=/var/lib/archipelago
unit_dir=/etc/systemd/system
unit_name=archipelago.service
python_min_minor=11

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<USAGE
Usage: deploy/install.sh [options]

Install Archipelago into $venv, create the system user '$user' with home
$home (mode 0700), initialise the home if it has no config.toml, and install
and enable $unit_name. Run as root. Safe to run again to upgrade.

Options:
  --source DIR      install the package from this source checkout
                    (default: $(dirname "$script_dir"))
  --wheel FILE      install the package from this wheel instead
  --chain-id ID     chain id for 'archipelago init' (needed only when the home
                    has no config.toml yet)
  --moniker NAME    node name for 'archipelago init' (default: short host name)
  --python PYTHON   interpreter for the venv, 3.$python_min_minor or newer (default: python3)
  --start           (re)start the service after installing; without it the
                    unit is enabled and starts at the next boot
  --dry-run         print the commands that would change the system, run none
  -h, --help        show this help

Joining an existing network: install, then replace $home/genesis.json with the
network's genesis, set [p2p] persistent_peers in $home/config.toml, and start.
USAGE
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

source_dir="$(dirname "$script_dir")"
wheel=""
chain_id=""
moniker="$(hostname -s 2>/dev/null || echo archipelago)"
python=python3
start=false
dry_run=false

while [ "$#" -gt 0 ]; do
    case "$1" in
        --source) source_dir="${2:?--source needs a directory}"; shift 2 ;;
        --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
        --chain-id) chain_id="${2:?--chain-id needs a value}"; shift 2 ;;
        --moniker) moniker="${2:?--moniker needs a value}"; shift 2 ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --start) start=true; shift ;;
        --dry-run) dry_run=true; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

# step CMD...: change the system (or, with --dry-run, say how it would).
step() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [ "$dry_run" = false ]; then
        "$@"
    fi
}

if [ "$dry_run" = false ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or with --dry-run to see what it would do)"
fi
if [ -n "$wheel" ]; then
    [ -f "$wheel" ] || die "no such wheel: $wheel"
    package="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
else
    [ -f "$source_dir/pyproject.toml" ] || die "$source_dir is not a source checkout (no pyproject.toml)"
    package="$(cd "$source_dir" && pwd)"
fi
[ -f "$script_dir/$unit_name" ] || die "missing $script_dir/$unit_name"
command -v "$python" >/dev/null || die "$python not found"
"$python" -c "import sys; sys.exit(sys.version_info < (3, $python_min_minor))" \
    || die "$python is older than 3.$python_min_minor"
for tool in systemctl useradd groupadd runuser; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# 1. The system user and group, without a login shell.
if ! getent group "$user" >/dev/null; then
    step groupadd --system "$user"
fi
if ! getent passwd "$user" >/dev/null; then
    step useradd --system --gid "$user" --home-dir "$home" --no-create-home \
        --shell /usr/sbin/nologin --comment "Archipelago node" "$user"
fi

# 2. The package in its own venv (root-owned: the service cannot modify its code).
step install -d -m 0755 "$prefix"
if [ ! -x "$venv/bin/python" ]; then
    step "$python" -m venv "$venv"
fi
step "$venv/bin/python" -m pip install --quiet --upgrade "$package"
if [ "$dry_run" = false ]; then
    "$venv/bin/archipelago" --help >/dev/null || die "the installed archipelago does not run"
fi
if [ -z "$wheel" ] && [ -d "$package/docs" ]; then
    step install -d -m 0755 "$prefix/docs"
    step install -m 0644 "$package"/docs/*.md "$prefix/docs/"
fi

# 3. The home: private to the service user; initialised only once.
step install -d -m 0700 -o "$user" -g "$user" "$home"
if [ -e "$home/config.toml" ]; then
    echo "$home/config.toml exists: keeping the existing home"
else
    [ -n "$chain_id" ] || die "$home has no config.toml: pass --chain-id (and --moniker) to initialise it"
    step runuser -u "$user" -- "$venv/bin/archipelago" init --home "$home" \
        --chain-id "$chain_id" --moniker "$moniker"
fi

# 4. The unit.
step install -m 0644 "$script_dir/$unit_name" "$unit_dir/$unit_name"
step systemctl daemon-reload
step systemctl enable "$unit_name"
if [ "$start" = true ]; then
    step systemctl restart "$unit_name"
    echo "started: follow it with journalctl -u archipelago -f"
else
    echo "enabled: start it with systemctl start archipelago"
fi
