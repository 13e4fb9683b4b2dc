"""The shipped alert rules, evaluated by a real Prometheus against a live healthy network.

Rule unit tests (deploy/prometheus/alerts_test.yml) check the rules against
series written by hand; this checks them against what nodes really export. At
b186c6b every stored certificate of a healthy 4-validator network lacked one
signature (a block's last commit held only the first two thirds of the
precommits), `archipelago_consensus_missing_validators` read 1 at every scrape
and `ArchipelagoValidatorsMissing` sat pending on a healthy chain, firing after
15 minutes everywhere. Nodes now gather the precommits that arrive during
timeout_commit into the certificate they propose.

Needs the `prometheus` server from Debian's `prometheus` package (the one that
brings promtool): skipped with that reason when missing, a failure in CI
(ARCHIPELAGO_REQUIRE_PROMTOOL=1, set by .ci/run). It runs with the default
crypto suite: what it checks is the shipped rules against the metrics, which
no suite changes (test_metrics.py scrapes a network of each suite).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.config import ConsensusConfig, load_config
from tests.integration import nodes

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and os.environ.get("ARCHIPELAGO_REQUIRE_PROMTOOL") == "1":
    raise RuntimeError("ARCHIPELAGO_REQUIRE_PROMTOOL=1 but the prometheus server is not on PATH")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (apt-get install prometheus); CI runs this test",
)
OBSERVE_S = 30.0  # evaluations every second: a pending alert would show within a few
TIMEOUT_S = 90
# The default timeouts (timeout_commit 1 s): the late precommits have a production-like
# window to arrive in.
CONSENSUS = ConsensusConfig()


def _config(targets: list[str]) -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: archipelago
    metrics_path: /metrics
    static_configs:
      - targets: [{listed}]
"""


async def _query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/query", params={"query": expr})
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


async def test_validators_missing_stays_silent_on_a_healthy_network(tmp_path: Path) -> None:
    """A healthy 4-validator network scraped every second for 30 s by Prometheus with the
    shipped rules: every node's certificates carry all four signatures (the metric's maximum
    over the window is 0 on every node) and ArchipelagoValidatorsMissing is neither pending
    nor firing."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, consensus=CONSENSUS)
    targets = [str(load_config(v.config_path).metrics.listen) for v in net.validators]
    prometheus = f"127.0.0.1:{nodes.free_ports(1)}"
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    shutil.copy(RULES, prom_dir / "alerts.yml")
    (prom_dir / "prometheus.yml").write_text(_config(targets))
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 3, TIMEOUT_S)
        assert PROMETHEUS is not None
        server = await trio.lowlevel.open_process(
            [
                PROMETHEUS,
                f"--config.file={prom_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={prom_dir / 'data'}",
                f"--web.listen-address={prometheus}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://{prometheus}", timeout=10) as client:

                async def up() -> list[dict[str, Any]] | None:
                    try:
                        return await _query(client, 'up{job="archipelago"} == 1')
                    except httpx.HTTPError:
                        return None

                await nodes.wait_for(
                    up, lambda r: r is not None and len(r) == 4, TIMEOUT_S, "4 targets up"
                )
                start = await api.wait_height(net.validators, 1, TIMEOUT_S)
                await trio.sleep(OBSERVE_S)  # the observation window itself, not a wait
                end = await api.wait_height(net.validators, 1, TIMEOUT_S)
                assert min(end.values()) >= max(start.values()) + 5, (start, end)
                window = int(OBSERVE_S)
                worst = await _query(
                    client,
                    f'max_over_time(archipelago_consensus_missing_validators{{job="archipelago"}}[{window}s])',
                )
                assert len(worst) == 4, worst
                assert {s["value"][1] for s in worst} == {"0"}, worst
                r = await client.get("/api/v1/alerts")
                alerts = [a["labels"]["alertname"] for a in r.json()["data"]["alerts"]]
                assert "ArchipelagoValidatorsMissing" not in alerts, alerts
        finally:
            server.kill()
            await server.wait()
