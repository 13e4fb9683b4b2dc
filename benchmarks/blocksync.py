"""Block sync speed: how fast a new full node catches up, against the chain's own block rate.

Why: a node that was down, or is new, must catch up from peers "at a rate
well above the network's block rate", or it never does. This measures both
in one run on one machine:

    .venv/bin/python benchmarks/blocksync.py [--heights 2000] [--rate-tps 100]
        [--profile-s 20]

1. A 4-validator testnet (`devnet/`'s machinery, consensus timeouts
   as fast as the integration tests use) under paced ledger transfers from
   `LoadGenerator` until the chain reaches `--heights`: the chain's blocks/s
   and tx/s are measured over that build.
2. A fresh non-validator full node (`archipelago init`, the testnet's genesis,
   the validators as persistent peers) starts from genesis while the chain
   and the load go on. Its /status is polled: from its first applied block to
   the moment it leaves block sync (caught up), blocks/s and tx/s applied;
   the chain's own rate over the same interval is measured on a validator.
   With `--profile-s`, py-spy samples the syncing node for that many seconds
   of the sync and the heaviest functions are printed.

Ratio: sync blocks/s over the chain's blocks/s (during the build). Readable
lines and a table on stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import trio

from devnet import (
    LoadGenerator,
    NodeProcess,
    check_ports_free,
    load_accounts,
    make_testnet,
    start_node,
    start_nodes,
    stop_nodes,
    wait_ready,
)
from node.config import Address, ConsensusConfig, Peer, load_config, save_config
from node.home import DEFAULT_TESTNET_CHAIN_ID, NodeHome, init_home

VALIDATORS = 4
POLL_INTERVAL_S = 0.2  # /status polling while measuring (resolution of the timings)
HTTP_TIMEOUT_S = 10.0
BUILD_TIMEOUT_S_PER_HEIGHT = 2.0  # give up building the chain after this much per height
SYNC_TIMEOUT_S = 1800.0
PROFILE_RATE_HZ = 100
PROFILE_TOP = 15
# As the integration tests' FAST_CONSENSUS: several blocks a second on loopback, while a
# round still has time on a loaded machine.
FAST_TIMEOUTS = ConsensusConfig(
    timeout_propose_ms=1500,
    timeout_propose_delta_ms=250,
    timeout_prevote_ms=300,
    timeout_prevote_delta_ms=200,
    timeout_precommit_ms=300,
    timeout_precommit_delta_ms=200,
    timeout_commit_ms=100,
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Rate:
    """Blocks and transactions over an interval."""

    seconds: float
    blocks: int
    txs: int

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds if self.seconds > 0 else 0.0

    @property
    def txs_per_s(self) -> float:
        return self.txs / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Point:
    """One node's committed height and committed transactions at a moment."""

    at: float
    height: int
    txs: int
    mode: str


def _between(a: Point, b: Point) -> Rate:
    return Rate(b.at - a.at, b.height - a.height, b.txs - a.txs)


def set_fast_timeouts(home: NodeHome) -> NodeHome:
    config = load_config(home.paths.config)
    config = replace(config, consensus=FAST_TIMEOUTS)
    save_config(home.paths.config, config)
    return replace(home, config=config)


def make_full_node(folder: Path, homes: list[NodeHome], base_port: int) -> NodeHome:
    """`archipelago init` a non-validator with the testnet's genesis and validators as peers."""
    home = init_home(folder / "fullnode", chain_id=DEFAULT_TESTNET_CHAIN_ID, moniker="fullnode")
    shutil.copyfile(homes[0].paths.genesis, home.paths.genesis)
    peers = tuple(Peer(h.node_id, h.config.p2p.listen) for h in homes)
    config = load_config(home.paths.config)
    config = replace(
        config,
        p2p=replace(config.p2p, listen=Address("127.0.0.1", base_port), persistent_peers=peers),
        rpc=replace(config.rpc, listen=Address("127.0.0.1", base_port + 1)),
        metrics=replace(config.metrics, listen=Address("127.0.0.1", base_port + 2)),
        consensus=homes[0].config.consensus,
        log=replace(config.log, format="json"),
    )
    save_config(home.paths.config, config)
    return replace(home, config=config)


async def point(http: httpx.AsyncClient, node: NodeProcess, metrics_url: str) -> Point | None:
    """Height (from /status) and committed transactions (from its metrics), or None if down."""
    try:
        status = (await http.get(node.url + "/status")).json()
        text = (await http.get(metrics_url)).text
    except (httpx.HTTPError, ValueError):
        return None
    txs = 0
    for line in text.splitlines():
        if line.startswith("archipelago_consensus_committed_txs_total "):
            txs = int(float(line.split()[1]))
    return Point(time.monotonic(), int(status["latest_height"]), txs, status["sync"]["mode"])


def metrics_url(home: NodeHome) -> str:
    return f"http://{home.config.metrics.listen}/metrics"


async def build_chain(
    http: httpx.AsyncClient, validator: NodeProcess, metrics: str, heights: int
) -> tuple[Point, Point]:
    """Wait (polling) until the chain reaches `heights`; its first and last points."""
    first = await point(http, validator, metrics)
    assert first is not None, "the validator stopped answering"
    last = first
    deadline = time.monotonic() + BUILD_TIMEOUT_S_PER_HEIGHT * heights
    reported = 0.0
    while last.height < heights:
        if time.monotonic() > deadline:
            raise SystemExit(f"the chain reached only {last.height} of {heights} heights in time")
        await trio.sleep(POLL_INTERVAL_S)
        now = await point(http, validator, metrics)
        if now is None:
            raise SystemExit(f"{validator.name} stopped answering while building the chain")
        last = now
        if last.at - reported >= 10:
            reported = last.at
            rate = _between(first, last)
            log(
                f"  building: height {last.height}/{heights}, "
                f"{rate.blocks_per_s:.2f} blocks/s, {rate.txs_per_s:.0f} tx/s"
            )
    return first, last


async def follow_sync(
    http: httpx.AsyncClient,
    full: NodeProcess,
    full_metrics: str,
    validator: NodeProcess,
    validator_metrics: str,
) -> dict[str, Point]:
    """Poll the full node from its start until it leaves block sync; the points that matter."""
    started = time.monotonic()
    chain_start = await point(http, validator, validator_metrics)
    assert chain_start is not None
    first: Point | None = None  # the first poll that shows an applied block
    while True:
        if time.monotonic() - started > SYNC_TIMEOUT_S:
            raise SystemExit(f"the full node did not catch up within {SYNC_TIMEOUT_S} s")
        if full.process.returncode is not None:
            raise SystemExit("the full node exited:\n" + "\n".join(full.log_tail()))
        now = await point(http, full, full_metrics)
        if now is not None and now.height > 0 and first is None:
            first = now
        if first is not None and now is not None and now.mode == "consensus":
            chain_end = await point(http, validator, validator_metrics)
            assert chain_end is not None
            return {
                "first": first,
                "caught_up": now,
                "chain_start": chain_start,
                "chain_end": chain_end,
                "started": Point(started, 0, 0, "blocksync"),
            }
        await trio.sleep(POLL_INTERVAL_S)


def profile(pid: int, seconds: int, out: Path) -> list[str]:
    """py-spy the process for `seconds`; lines naming where its samples went."""
    py_spy = Path(sys.executable).parent / "py-spy"
    result = subprocess.run(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(PROFILE_RATE_HZ),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not out.exists():
        return [f"py-spy failed: {result.stderr.strip()[-300:]}"]
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if total == 0:
        return ["py-spy recorded no samples"]
    lines = [f"py-spy: {total} samples over {seconds} s (all threads, idle excluded)"]
    lines.append("  own time:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(PROFILE_TOP)]
    lines.append("  inclusive time:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(PROFILE_TOP)]
    return lines


def _short(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)'; line numbers merged."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if parts else file
    return f"{name} ({short})"


async def benchmark(ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    check_ports_free(ns.base_port, VALIDATORS + 1)
    homes = make_testnet(
        folder, validators=VALIDATORS, base_port=ns.base_port, accounts=ns.accounts
    )
    homes = [set_fast_timeouts(h) for h in homes]
    full_home = make_full_node(folder, homes, ns.base_port + 10 * VALIDATORS)
    validators = await start_nodes(homes, folder)
    full: NodeProcess | None = None
    try:
        await wait_ready(validators)
        load = LoadGenerator(
            load_accounts(folder),
            DEFAULT_TESTNET_CHAIN_ID,
            [(n.rpc_host, n.rpc_port) for n in validators],
            ns.rate_tps,
        )
        async with (
            httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(load.run)
            log(f"building {ns.heights} heights at {ns.rate_tps} offered tx/s")
            v_metrics = metrics_url(homes[0])
            build_first, build_last = await build_chain(http, validators[0], v_metrics, ns.heights)
            build = _between(build_first, build_last)
            log(f"  built: {build.blocks} blocks in {build.seconds:.1f} s")

            full = await start_node(VALIDATORS, full_home, folder / "fullnode.log")
            log(f"full node started at chain height {build_last.height}; syncing")
            profile_lines: list[str] = []
            if ns.profile_s:
                pid = full.pid

                async def run_profile() -> None:
                    lines = await trio.to_thread.run_sync(
                        profile, pid, ns.profile_s, folder / "pyspy.txt"
                    )
                    profile_lines.extend(lines)

                nursery.start_soon(run_profile)
            points = await follow_sync(http, full, metrics_url(full_home), validators[0], v_metrics)
            if ns.profile_s:
                while not profile_lines:
                    await trio.sleep(POLL_INTERVAL_S)  # py-spy's fixed duration ends by itself
            nursery.cancel_scope.cancel()
        if load.errors:
            log(f"  load generator errors: {load.errors} (last: {load.last_error})")
    finally:
        await stop_nodes([*validators, *([full] if full is not None else [])])

    sync = _between(points["first"], points["caught_up"])
    chain_during_sync = _between(points["chain_start"], points["chain_end"])
    startup_s = points["first"].at - points["started"].at
    ratio = sync.blocks_per_s / build.blocks_per_s if build.blocks_per_s else 0.0
    for line in profile_lines:
        log(line)
    rows = [
        ("chain while building", build),
        ("chain during the sync", chain_during_sync),
        ("full node syncing", sync),
    ]
    log("")
    log(
        f"| {'':24} | {'seconds':>8} | {'blocks':>7} | {'blocks/s':>9} | {'txs':>8} | {'tx/s':>7} |"
    )
    log(f"|{'-' * 26}|{'-' * 10}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 9}|")
    for name, r in rows:
        log(
            f"| {name:24} | {r.seconds:8.1f} | {r.blocks:7d} | {r.blocks_per_s:9.2f} "
            f"| {r.txs:8d} | {r.txs_per_s:7.0f} |"
        )
    log(
        f"sync blocks/s over chain blocks/s: {ratio:.2f} (startup to first block {startup_s:.1f} s)"
    )
    return {
        "benchmark": "blocksync",
        "heights": ns.heights,
        "rate_tps": ns.rate_tps,
        "chain_blocks_per_s": round(build.blocks_per_s, 2),
        "chain_txs_per_s": round(build.txs_per_s, 1),
        "chain_blocks_per_s_during_sync": round(chain_during_sync.blocks_per_s, 2),
        "sync_blocks": sync.blocks,
        "sync_seconds": round(sync.seconds, 1),
        "sync_blocks_per_s": round(sync.blocks_per_s, 2),
        "sync_txs": sync.txs,
        "sync_txs_per_s": round(sync.txs_per_s, 1),
        "startup_s": round(startup_s, 1),
        "caught_up_height": points["caught_up"].height,
        "sync_over_chain_blocks_per_s": round(ratio, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heights", type=int, default=2000, help="chain length before the sync")
    parser.add_argument(
        "--rate-tps", type=float, default=100.0, help="offered transfers per second"
    )
    parser.add_argument("--accounts", type=int, default=64, help="funded accounts for the load")
    parser.add_argument("--base-port", type=int, default=28700)
    parser.add_argument(
        "--profile-s", type=int, default=0, help="py-spy the syncing node this many seconds"
    )
    parser.add_argument("--keep", action="store_true", help="keep the testnet folder")
    ns = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="archipelago-blocksync-"))
    try:
        result = trio.run(benchmark, ns, folder)
    finally:
        if ns.keep:
            log(f"testnet kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
