"""The deployment artefacts in deploy/ pass the tools that consume them.

deploy/check.sh runs promtool (config, rules, rule unit tests) and
systemd-analyze on the shipped files; CI runs it through these tests. The
tests also show the checks have teeth (a broken rule or unit fails the
script, on a copy in a temp dir) and that the dashboard and alerts only name
metrics the node actually exports, so a renamed metric breaks the build
rather than an operator's graphs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric

from node.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "check.sh"
INSTALL = DEPLOY / "install.sh"
DASHBOARD = DEPLOY / "grafana" / "archipelago.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

# Read by node/metrics.py from the network layer's statistics at scrape time,
# so they are not declared there.
NETWORK_METRICS = {
    "archipelago_p2p_peers": "gauge",
    "archipelago_p2p_sent_bytes_total": "counter",
    "archipelago_p2p_received_bytes_total": "counter",
    "archipelago_p2p_dropped_messages_total": "counter",
    "archipelago_p2p_banned_peers_total": "counter",
}
CHECK_NAMES = (
    "promtool check config prometheus/prometheus.yml",
    "promtool check rules prometheus/alerts.yml",
    "promtool test rules prometheus/alerts_test.yml",
    "systemd-analyze verify archipelago.service",
    "bash -n install.sh",
    "JSON parse grafana/archipelago.json",
)
_METRIC_NAME = re.compile(r"\barchipelago_[a-z0-9_]+")

# promtool comes with Debian's `prometheus` package, which a developer's machine
# need not have (the README promises only Python and pip). CI installs it and
# sets ARCHIPELAGO_REQUIRE_PROMTOOL=1 (.ci/run), so there a missing promtool
# fails these tests instead of skipping them.
_PROMTOOL_MISSING = shutil.which(os.environ.get("PROMTOOL", "promtool")) is None
if _PROMTOOL_MISSING and os.environ.get("ARCHIPELAGO_REQUIRE_PROMTOOL") == "1":
    raise RuntimeError("ARCHIPELAGO_REQUIRE_PROMTOOL=1 but promtool is not on PATH")
needs_promtool = pytest.mark.skipif(
    _PROMTOOL_MISSING,
    reason="promtool not installed (apt-get install prometheus); CI runs these checks",
)
# deploy/check.sh and deploy/install.sh are bash scripts, for the systemd hosts
# they install on; a minimal Python image may have no bash. CI has it.
# They are run through bash, not by their execute bit, which a checkout made
# without file modes (an archive, a copy) does not have.
BASH = shutil.which("bash") or "bash"
_BASH_MISSING = shutil.which("bash") is None
if _BASH_MISSING and os.environ.get("ARCHIPELAGO_REQUIRE_PROMTOOL") == "1":
    raise RuntimeError("ARCHIPELAGO_REQUIRE_PROMTOOL=1 but bash is not on PATH")
needs_bash = pytest.mark.skipif(
    _BASH_MISSING, reason="bash not installed (the deploy scripts are bash); CI runs these checks"
)
# check.sh verifies the unit with systemd-analyze; install.sh, even with --dry-run,
# wants the tools it runs on a systemd host. A container or minimal image may lack them.
_SYSTEMD_ANALYZE_MISSING = (
    shutil.which(os.environ.get("SYSTEMD_ANALYZE", "systemd-analyze")) is None
)
_SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # as the dry-run test's PATH
_INSTALL_TOOLS_MISSING = [
    tool
    for tool in ("systemctl", "useradd", "groupadd", "runuser")
    if shutil.which(tool, path=_SBIN_PATH) is None
]
if (_SYSTEMD_ANALYZE_MISSING or _INSTALL_TOOLS_MISSING) and os.environ.get(
    "ARCHIPELAGO_REQUIRE_PROMTOOL"
) == "1":
    raise RuntimeError(
        "ARCHIPELAGO_REQUIRE_PROMTOOL=1 but systemd's or the account tools are missing"
    )
needs_systemd_analyze = pytest.mark.skipif(
    _SYSTEMD_ANALYZE_MISSING,
    reason="systemd-analyze not installed (package systemd); CI runs this check",
)
needs_install_tools = pytest.mark.skipif(
    bool(_INSTALL_TOOLS_MISSING),
    reason=f"{', '.join(_INSTALL_TOOLS_MISSING)} not installed (a systemd host's tools, which "
    "install.sh checks for); CI runs this check",
)


def run_check(deploy_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [BASH, str(CHECK)] + ([] if deploy_dir is None else [str(deploy_dir)])
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def exported_sample_names() -> set[str]:
    """Every series name a node's /metrics can carry, from a live registry."""
    names: set[str] = set()
    families: Iterable[Metric] = Metrics().registry.collect()
    for family in families:
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
        else:
            names.add(family.name)
    return names | set(NETWORK_METRICS)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs(data: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in data["templating"]["list"]]
    return exprs


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    return copy


@needs_promtool
@needs_systemd_analyze
def test_shipped_artefacts_pass_every_check() -> None:
    """check.sh accepts the shipped unit, scrape config, rules, rule tests, installer, dashboard."""
    result = run_check()
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CHECK_NAMES:
        assert f"ok: {name}" in result.stdout
    assert "deploy checks passed" in result.stdout


@needs_promtool
def test_invalid_rule_expression_fails_the_check(deploy_copy: Path) -> None:
    """A rules file with unparsable PromQL fails `promtool check rules` and the script."""
    alerts = deploy_copy / "prometheus" / "alerts.yml"
    text = alerts.read_text()
    broken = text.replace(
        'expr: up{job="archipelago"} == 0', 'expr: rate(up{job="archipelago"}[5m] == 0'
    )
    assert broken != text
    alerts.write_text(broken)
    result = run_check(deploy_copy)
    assert result.returncode == 1
    assert "FAILED: promtool check rules prometheus/alerts.yml" in result.stdout
    assert "FAILED: promtool check config prometheus/prometheus.yml" in result.stdout


@needs_promtool
def test_changed_alert_threshold_fails_the_rule_unit_tests(deploy_copy: Path) -> None:
    """A valid rule whose behaviour changed (lag 20 -> 40 blocks) fails `promtool test rules`."""
    alerts = deploy_copy / "prometheus" / "alerts.yml"
    text = alerts.read_text()
    changed = text.replace(
        'archipelago_blocksync_lag_blocks{job="archipelago"} > 20',
        'archipelago_blocksync_lag_blocks{job="archipelago"} > 40',
    )
    assert changed != text
    alerts.write_text(changed)
    result = run_check(deploy_copy)
    assert result.returncode == 1
    assert "ok: promtool check rules prometheus/alerts.yml" in result.stdout
    assert "FAILED: promtool test rules prometheus/alerts_test.yml" in result.stdout
    assert "ArchipelagoHeightLagging" in result.stdout


@needs_promtool
@needs_systemd_analyze
@pytest.mark.parametrize(
    ("original", "broken"),
    [
        # systemd only warns about these and exits 0: the script must still fail.
        ("Restart=on-failure", "Restrat=on-failure"),
        ("Type=notify", "Type=notfy"),
        # systemd-analyze exits non-zero on this one.
        ("[Service]", "[Servic]"),
    ],
)
def test_broken_unit_fails_the_check(deploy_copy: Path, original: str, broken: str) -> None:
    """A misspelt key, a bad value or a lost section in the unit fails `systemd-analyze verify`."""
    unit = deploy_copy / "archipelago.service"
    text = unit.read_text()
    assert f"\n{original}\n" in text
    unit.write_text(text.replace(f"\n{original}\n", f"\n{broken}\n"))
    result = run_check(deploy_copy)
    assert result.returncode == 1
    assert "FAILED: systemd-analyze verify archipelago.service" in result.stdout
    assert "ok: promtool test rules prometheus/alerts_test.yml" in result.stdout


@needs_bash
@needs_systemd_analyze
def test_unit_with_moved_execstart_fails_the_check(deploy_copy: Path) -> None:
    """A unit whose ExecStart no longer names the path install.sh installs to is refused."""
    unit = deploy_copy / "archipelago.service"
    unit.write_text(
        unit.read_text().replace("/opt/archipelago/venv/bin/archipelago", "/usr/bin/archipelago")
    )
    result = run_check(deploy_copy)
    assert result.returncode == 1
    assert "FAILED: systemd-analyze verify archipelago.service" in result.stdout


def test_unit_runs_hardened_notify_service() -> None:
    """The unit is Type=notify with a watchdog, restarts on failure, outwaits a 5 s stop."""
    lines = set((DEPLOY / "archipelago.service").read_text().splitlines())
    for line in (
        "Type=notify",
        "User=archipelago",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/archipelago",
        "ExecStart=/opt/archipelago/venv/bin/archipelago start --home /var/lib/archipelago",
    ):
        assert line in lines
    settings = dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")
    assert int(settings["TimeoutStopSec"]) > 5
    assert int(settings["WatchdogSec"]) > 0
    assert int(settings["LimitNOFILE"]) > 40 + 10


def test_dashboard_names_only_exported_metrics() -> None:
    """Every metric the dashboard queries is exported by node/metrics.py or the network layer."""
    exported = exported_sample_names()
    used = {m for expr in dashboard_exprs(dashboard()) for m in _METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no archipelago metrics"
    assert used - exported == set()
    # The network names are spelled here by hand: check them against the
    # dashboard so a typo in either place shows up.
    assert set(NETWORK_METRICS) <= used


def test_alert_rules_name_only_exported_metrics() -> None:
    """Every metric the alert rules and their tests name is exported by the node or network."""
    exported = exported_sample_names()
    for path in (ALERTS, DEPLOY / "prometheus" / "alerts_test.yml"):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        used = set(_METRIC_NAME.findall(code))
        assert used, path
        assert used - exported == set(), path


def test_dashboard_is_importable_with_a_datasource_input() -> None:
    """The dashboard has a DS_PROMETHEUS input all queries use, the required panels, a sane grid."""
    data = dashboard()
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    assert data["__inputs"][0]["pluginId"] == "prometheus"
    panels = data["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'job="archipelago"' in target["expr"]
    titles = {p["title"] for p in panels}
    for title in (
        "Height",
        "Block interval p50 / p99",
        "Committed tx/s",
        "Mempool",
        "Peers",
        "Round changes",
        "Block validation time p50 / p99",
        "Missing validators",
        "Equivocation evidence",
    ):
        assert title in titles
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine


@needs_bash
@needs_install_tools
def test_install_script_help_and_dry_run() -> None:
    """install.sh has --help and, dry-run, plans user, venv, 0700 home, init and unit steps."""
    help_text = subprocess.run(
        [BASH, str(INSTALL), "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert "Usage: deploy/install.sh" in help_text
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    # The interpreter running the tests: a machine with only Python 3.11 may have no
    # `python3` (install.sh's default) on PATH, or an older one.
    result = subprocess.run(
        [
            BASH,
            str(INSTALL),
            "--dry-run",
            "--chain-id",
            "test-chain",
            "--moniker",
            "n0",
            "--python",
            sys.executable,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    plan = result.stdout
    # The plan prints each argument as bash's `printf %q` quotes it: a checkout whose
    # path holds a space or a comma appears escaped.
    quoted_root = subprocess.run(
        [BASH, "-c", 'printf %q "$1"', "quote", str(ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert f"pip install --quiet --upgrade {quoted_root}\n" in plan
    assert "+ install -d -m 0700 -o archipelago -g archipelago /var/lib/archipelago" in plan
    assert "+ systemctl enable archipelago.service" in plan
    assert "restart" not in plan.replace("systemctl restart archipelago", "")
    # As the script's `[ -e ]` sees it: a home this user may not enter counts as absent
    # (Path.exists raises on EACCES).
    if os.path.exists("/var/lib/archipelago/config.toml"):
        assert "keeping the existing home" in plan
    else:
        assert "archipelago init --home /var/lib/archipelago --chain-id test-chain" in plan
