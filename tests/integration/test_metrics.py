"""The Prometheus endpoint of a running validator in a 4-node testnet (issue 6).

Scraped over HTTP from `[metrics] listen` like Prometheus would, parsed with
prometheus_client's own exposition parser: the names and help texts follow
the conventions dashboards and alert rules (deploy/) rely on, and the values
move with the chain.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from tests.integration import nodes

TIMEOUT_S = 60  # generous for a loaded 2-core machine; healthy runs take a few seconds
DEFAULT_PREFIXES = ("process_", "python_")  # prometheus_client's own collectors
TRANSFERS = 6


async def _scrape(api: Any, node: Any) -> str:
    r = await api.client.get(node.metrics)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    text: str = r.text
    return text


def _values(text: str) -> dict[str, float]:
    """Sample name (with its labels, sorted) -> value."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _sum(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


async def test_metrics_follow_the_naming_conventions(tmp_path: Path, crypto: str) -> None:
    """Every family has HELP text and a TYPE; names start with archipelago_ (besides the
    process_/python_ defaults); every counter's exposed name ends in _total."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=0, crypto=crypto)
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height(net.nodes, 2, TIMEOUT_S)
        text = await _scrape(api, node)

    families = list(text_string_to_metric_families(text))
    assert len(families) > 20
    ours = [f for f in families if f.name.startswith("archipelago_")]
    assert ours
    for family in families:
        assert family.documentation.strip(), f"{family.name} has no HELP text"
        assert family.name.startswith(("archipelago_", *DEFAULT_PREFIXES)), family.name
    # The parser strips _total from a counter's family name, so read the raw TYPE lines.
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", text, flags=re.M))
    assert set(types) == set(helps)
    counters = [name for name, kind in types.items() if kind == "counter"]
    assert len(counters) >= 5
    for name in counters:
        assert name.endswith("_total"), f"counter {name} does not end in _total"
    for expected in (
        "archipelago_consensus_height",
        "archipelago_consensus_committed_txs_total",
        "archipelago_consensus_byzantine_evidence_total",
        "archipelago_p2p_peers",
        "archipelago_mempool_txs",
        "archipelago_blocksync_syncing",
    ):
        assert expected in types, expected


async def test_metric_values_move_as_blocks_commit(tmp_path: Path, crypto: str) -> None:
    """Between two scrapes the height gauge grows with /status, the committed-transactions
    counter grows by the transfers committed, the peers gauge says 3 (the other validators),
    this node is a validator of a set of 4, and no equivocation evidence was seen."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=2, crypto=crypto)
    to = PrivateKey(b"\x0c" * 32).address
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height(net.nodes, 2, TIMEOUT_S)

        async def peers() -> dict[str, float]:
            return _values(await _scrape(api, node))

        before = await nodes.wait_for(
            peers, lambda v: _sum(v, "archipelago_p2p_peers") == 3, TIMEOUT_S, "3 peers"
        )
        status_before = await api.status(node)
        assert before["archipelago_consensus_height"] >= 2
        assert before["archipelago_consensus_validators"] == 4
        assert before["archipelago_consensus_is_validator"] == 1

        hashes = []
        for n in range(TRANSFERS):
            raw = transfer_tx(net.accounts[n % 2], net.chain_id, n // 2, to, 1).encode()
            r = await api.submit(net.nodes[n % 2], raw)  # one node per sender: nonces in order
            assert r.status_code == 202, r.text
            hashes.append(r.json()["hash"])
        for h in hashes:
            await nodes.wait_for(
                lambda h=h: api.try_get(node, f"/tx/{h}"),
                lambda body: body is not None and body["status"] == "committed",
                TIMEOUT_S,
                f"transfer {h} committed on {node.name}",
            )
        await api.wait_height([node], status_before["latest_height"] + 3, TIMEOUT_S)

        after = _values(await _scrape(api, node))
        status_after = await api.status(node)
        # Each scrape came before its /status read, and a block may commit in between.
        assert (
            before["archipelago_consensus_height"]
            <= status_before["latest_height"]
            < after["archipelago_consensus_height"]
            <= status_after["latest_height"]
        )
        committed = "archipelago_consensus_committed_txs_total"
        assert after[committed] - before[committed] == TRANSFERS
        assert after[committed] == TRANSFERS  # these are the chain's only transactions
        assert _sum(after, "archipelago_p2p_peers") == 3
        assert after["archipelago_consensus_byzantine_evidence_total"] == 0
        assert after["archipelago_blocksync_syncing"] == 0
        assert _sum(after, "archipelago_p2p_sent_bytes_total") > _sum(
            before, "archipelago_p2p_sent_bytes_total"
        )
        interval_count = "archipelago_consensus_block_interval_seconds_count"
        assert after[interval_count] > before[interval_count]
