#!/usr/bin/env bash
# Check the deployment artefacts with the tools that will consume them.
#
# Runs, and reports each by name:
#   promtool check config   prometheus/prometheus.yml (and the rule files it names)
#   promtool check rules    prometheus/alerts.yml
#   promtool test rules     prometheus/alerts_test.yml
#   systemd-analyze verify  archipelago.service
#   bash -n                 install.sh
#   JSON parse              grafana/archipelago.json
# Every check runs even after one fails; the exit status is 1 if any failed.
# Installs nothing: CI installs Debian's `prometheus` package for promtool.
#
# Why the unit is verified through a copy: `systemd-analyze verify` refuses a
# unit whose ExecStart binary does not exist, and on a build machine
# /opt/archipelago/venv/bin/archipelago does not. The check copies the unit
# into a temporary directory with ExecStart pointed at a real `archipelago`
# console script (ARCHIPELAGO_BIN, else the checkout's .venv, else PATH), so
# everything else in the unit is verified exactly as shipped. verify exits 0
# on mere warnings such as a misspelt key ("Unknown key ... ignoring"), so
# any message naming the unit also counts as a failure.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: deploy/check.sh [DEPLOY_DIR]

Check the systemd unit, Prometheus config, alert rules and their unit tests,
the install script's syntax and the Grafana dashboard's JSON in DEPLOY_DIR
(default: the directory holding this script). Exit 0 when all pass, 1 when
any fails, 2 on bad usage.

Environment:
  ARCHIPELAGO_BIN  the archipelago executable to put in the verified unit's
                   ExecStart (default: <checkout>/.venv/bin/archipelago, then
                   `archipelago` on PATH)
  PROMTOOL         promtool to use (default: promtool on PATH)
  SYSTEMD_ANALYZE  systemd-analyze to use (default: systemd-analyze on PATH)
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; exit 2 ;;
esac
if [ "$#" -gt 1 ]; then
    usage >&2
    exit 2
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
deploy_dir="$(cd "${1:-$script_dir}" && pwd)"
checkout_dir="$(dirname "$script_dir")"
promtool="${PROMTOOL:-promtool}"
systemd_analyze="${SYSTEMD_ANALYZE:-systemd-analyze}"
# The path install.sh puts the console script at, and the unit names.
installed_bin=/opt/archipelago/venv/bin/archipelago

failures=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# run NAME COMMAND...: run one check, print its output and its verdict.
run() {
    local name="$1"
    shift
    echo "==> $name"
    if "$@" 2>&1; then
        echo "ok: $name"
    else
        echo "FAILED: $name"
        failures+=("$name")
    fi
    echo
}

need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$1 not found on PATH ($2)"
        return 1
    fi
}

promtool_in() {
    need "$promtool" "install Debian package prometheus" || return 1
    (cd "$deploy_dir/prometheus" && "$promtool" "$@")
}

find_archipelago() {
    if [ -n "${ARCHIPELAGO_BIN:-}" ]; then
        echo "$ARCHIPELAGO_BIN"
    elif [ -x "$checkout_dir/.venv/bin/archipelago" ]; then
        echo "$checkout_dir/.venv/bin/archipelago"
    else
        command -v archipelago || true
    fi
}

verify_unit() {
    local unit="$deploy_dir/archipelago.service"
    local copy="$work/archipelago.service"
    local bin
    need "$systemd_analyze" "part of systemd" || return 1
    bin="$(find_archipelago)"
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        echo "no archipelago executable found: set ARCHIPELAGO_BIN or run make"
        return 1
    fi
    if [ "$(grep -c "^ExecStart=$installed_bin " "$unit")" != 1 ]; then
        echo "$unit: expected exactly one 'ExecStart=$installed_bin ...' line"
        return 1
    fi
    sed "s#^ExecStart=$installed_bin #ExecStart=$bin #" "$unit" >"$copy"
    echo "verifying a copy with ExecStart=$bin"
    local output status=0
    output="$("$systemd_analyze" verify --man=no "$copy" 2>&1)" || status=$?
    if [ -n "$output" ]; then
        echo "$output"
    fi
    if [ "$status" -ne 0 ]; then
        echo "systemd-analyze verify exited with $status"
        return 1
    fi
    if grep -q "archipelago.service" <<<"$output"; then
        echo "systemd-analyze verify reported problems in the unit"
        return 1
    fi
}

parse_json() {
    need python3 "to parse the dashboard" || return 1
    python3 -m json.tool "$1" >/dev/null
}

echo "Checking deployment artefacts in $deploy_dir"
echo
run "promtool check config prometheus/prometheus.yml" promtool_in check config prometheus.yml
run "promtool check rules prometheus/alerts.yml" promtool_in check rules alerts.yml
run "promtool test rules prometheus/alerts_test.yml" promtool_in test rules alerts_test.yml
run "systemd-analyze verify archipelago.service" verify_unit
run "bash -n install.sh" bash -n "$deploy_dir/install.sh"
run "JSON parse grafana/archipelago.json" parse_json "$deploy_dir/grafana/archipelago.json"

if [ "${#failures[@]}" -ne 0 ]; then
    echo "deploy checks FAILED (${#failures[@]}):"
    printf '  %s\n' "${failures[@]}"
    exit 1
fi
echo "deploy checks passed"
