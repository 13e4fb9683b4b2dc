"""The cluster with 50 ms round trips between its hosts, next to the same cluster at 0 ms.

Four validators, each in its own network namespace (tests/integration/netns.py),
made by `archipelago testnet --hosts`; the load generator of `archipelago
localnet` (devnet/load.py) offers ledger transfers at a few rates from the
root namespace, and each step is measured as benchmarks/cluster.py measures
one (committed tx/s, submit-to-commit p50 and p99). The baseline is the same
cluster, in the same run, with the delay set to 0: for each rate the step runs
once at 0 ms and once at the WAN delay, back to back, so a neighbour's load
on this shared machine hits both alike. Both go through the same wire, so
the ratio is the delay's cost and nothing else.

Needs root and `ip`. Prints one line per step on stderr and one JSON line on
stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from benchmarks.cluster import TIMEOUT_COMMIT_MS, Step, cpu_seconds, describe, run_step
from devnet import (
    LoadGenerator,
    Localnet,
    NodeView,
    load_accounts,
    make_testnet,
    start_node,
    stop_nodes,
    wait_ready,
)
from node.home import DEFAULT_BASE_PORT, DEFAULT_TESTNET_CHAIN_ID
from tests.integration import netns

VALIDATORS = 4
DEFAULT_RATES = (100, 400, 1000)
DEFAULT_DELAY_MS = 25.0  # one way, per host: 50 ms between two hosts


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ratio(wan: float | None, base: float | None) -> float | None:
    return None if wan is None or not base else round(wan / base, 2)


async def benchmark(
    ns: argparse.Namespace, hosts: netns.Hosts, folder: Path
) -> list[dict[str, object]]:
    homes = make_testnet(
        folder,
        validators=VALIDATORS,
        base_port=DEFAULT_BASE_PORT,
        accounts=ns.accounts,
        timeout_commit_ms=ns.timeout_commit_ms,
        hosts=hosts.addresses,
    )
    nodes = [
        await start_node(i, home, folder / f"node{i}.log", hosts.wrapper(i))
        for i, home in enumerate(homes)
    ]
    try:
        await wait_ready(nodes)
        load = LoadGenerator(
            load_accounts(folder),
            DEFAULT_TESTNET_CHAIN_ID,
            [(n.rpc_host, n.rpc_port) for n in nodes],
        )
        views = [NodeView(n.name, state="up") for n in nodes]
        net = Localnet(folder, DEFAULT_TESTNET_CHAIN_ID, nodes, views, load)
        rows: list[dict[str, object]] = []
        async with trio.open_nursery() as nursery:
            await net.watch(nursery)
            nursery.start_soon(load.run)
            for rate in ns.rates:
                row: dict[str, object] = {"target_tps": rate}
                wan_shape = netns.LinkShape(ns.delay_ms, ns.loss_pct, ns.reorder_pct)
                for name, shape in (("base", netns.LinkShape()), ("wan", wan_shape)):
                    hosts.shape(shape)
                    wire0 = cpu_seconds(hosts.wire_pid)
                    t0 = time.perf_counter()
                    step = await run_step(net, load, rate, ns.warmup_s, ns.step_s)
                    wire_pct = (
                        100 * (cpu_seconds(hosts.wire_pid) - wire0) / (time.perf_counter() - t0)
                    )
                    log(
                        f"  {name} ({2 * shape.delay_ms:.0f} ms RTT): {describe(step)}  "
                        f"wire cpu {wire_pct:.0f}%"
                    )
                    row[name] = step
                    row[f"{name}_wire_cpu_pct"] = round(wire_pct, 1)
                base: Step = row["base"]  # type: ignore[assignment]
                wan: Step = row["wan"]  # type: ignore[assignment]
                row["committed_ratio"] = ratio(wan.committed_tps, base.committed_tps)
                row["p50_ratio"] = ratio(wan.latency_p50_s, base.latency_p50_s)
                row["p99_ratio"] = ratio(wan.latency_p99_s, base.latency_p99_s)
                log(
                    f"rate {rate:.0f}: committed {wan.committed_tps} vs {base.committed_tps} tx/s "
                    f"(x{row['committed_ratio']}), p50 {wan.latency_p50_s} vs "
                    f"{base.latency_p50_s} s (x{row['p50_ratio']}), p99 {wan.latency_p99_s} vs "
                    f"{base.latency_p99_s} s (x{row['p99_ratio']})"
                )
                rows.append(row)
            nursery.cancel_scope.cancel()
        if net.died:
            raise SystemExit("a node died during the benchmark:\n" + "\n".join(net.died))
        return rows
    finally:
        await stop_nodes(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(DEFAULT_RATES),
        help="offered tx/s per step (comma-separated)",
    )
    parser.add_argument(
        "--delay-ms", type=float, default=DEFAULT_DELAY_MS, help="one way, per host"
    )
    parser.add_argument("--loss-pct", type=float, default=0.0, help="of frames, per host")
    parser.add_argument(
        "--reorder-pct", type=float, default=0.0, help="of frames sent without the delay"
    )
    parser.add_argument("--step-s", type=float, default=10.0, help="measured seconds per step")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--accounts", type=int, default=256)
    parser.add_argument("--timeout-commit-ms", type=int, default=TIMEOUT_COMMIT_MS)
    ns = parser.parse_args()
    reason = netns.unavailable()
    if reason is not None:
        sys.exit(f"netns benchmark: {reason}")
    log(
        f"netns benchmark: {VALIDATORS} validators, rates {ns.rates}, delay {ns.delay_ms} ms "
        f"one way per host, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="archipelago-netns-") as tmp:
        with netns.open_hosts(VALIDATORS, seed=1) as hosts:
            rows = trio.run(benchmark, ns, hosts, Path(tmp))
    summary = {
        "benchmark": "netns",
        "validators": VALIDATORS,
        "rtt_ms": 2 * ns.delay_ms,
        "loss_pct": ns.loss_pct,
        "reorder_pct": ns.reorder_pct,
        "timeout_commit_ms": ns.timeout_commit_ms,
        "steps": [
            {k: asdict(v) if isinstance(v, Step) else v for k, v in row.items()} for row in rows
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
