"""`archipelago localnet`: a whole validator network on this machine, with load and live progress.

Why it exists: a newcomer runs `make run` and sees a 4-validator network
commit transactions, with one command and nothing to configure. Its pieces
are also what `benchmarks/cluster.py` and `benchmarks/blocksync.py` measure
the cluster with, so the demo and the benchmarks start, load and watch
nodes the same way.

What it does, in order: create a testnet in a temporary folder and start
one process per validator (devnet/processes.py); wait until every node
answers and has committed a block; optionally drive ledger transfers at a
fixed offered rate (devnet/load.py); and redraw a table of every node's
progress about once a second (devnet/display.py). Ctrl-C or SIGTERM stops
the load, SIGTERMs every node, kills any still running after
`NODE_STOP_TIMEOUT_S`, and prints a summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from consensus.crypto import DEFAULT_SUITE, SUITES
from devnet.display import Display, NodeView, poll_status, progress_line, render_table, watch_stream
from devnet.load import LoadGenerator
from devnet.processes import (
    DEFAULT_LOCALNET_ACCOUNTS,
    LocalnetError,
    NodeProcess,
    check_ports_free,
    death_report,
    load_accounts,
    make_testnet,
    start_nodes,
    stop_nodes,
    wait_ready,
)
from node.home import DEFAULT_TESTNET_CHAIN_ID, TESTNET_VALIDATORS_MAX, HomeError

PROG = "archipelago localnet"
EXIT_OK, EXIT_FAILURE = 0, 1
DEFAULT_VALIDATORS = 4
DEFAULT_LOCALNET_BASE_PORT = 26800
DISPLAY_INTERVAL_S = 1.0


@dataclass(slots=True)
class Localnet:
    """A started local network: its folder, processes, per-node views and optional load."""

    folder: Path
    chain_id: str
    nodes: list[NodeProcess]
    views: list[NodeView]
    load: LoadGenerator | None
    died: list[str] = field(default_factory=list)

    async def watch(self, nursery: trio.Nursery) -> None:
        """Start the stream, status and process watchers for every node."""
        for node, view in zip(self.nodes, self.views, strict=True):
            senders = self.load.sample_senders(node.index) if self.load is not None else []
            nursery.start_soon(watch_stream, node, view, self.load, senders)
            nursery.start_soon(poll_status, node, view)
            nursery.start_soon(self._watch_process, node, view)

    async def _watch_process(self, node: NodeProcess, view: NodeView) -> None:
        code = await node.process.wait()
        view.state = f"exited({code})"
        if not node.stopping:
            self.died.append(death_report(node))


@contextmanager
def localnet_folder(output: Path | None, keep: bool) -> Iterator[tuple[Path, list[bool]]]:
    """The folder to build the testnet in; a temporary one is removed unless kept.

    Yields the folder and a one-element flag list a caller sets to keep it anyway
    (a node died: its log is the evidence).
    """
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        yield output, [True]
        return
    tmp = tempfile.TemporaryDirectory(prefix="archipelago-localnet-")
    keep_flag = [keep]
    try:
        yield Path(tmp.name), keep_flag
    finally:
        if keep_flag[0]:
            tmp._finalizer.detach()  # type: ignore[attr-defined]
        else:
            tmp.cleanup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a local network of validators, one process each, in a temporary "
        "folder; optionally drive ledger transfers; show each node's progress live. "
        "Ctrl-C stops everything cleanly.",
    )
    parser.add_argument(
        "--validators",
        type=int,
        default=DEFAULT_VALIDATORS,
        help=f"validators to run (default {DEFAULT_VALIDATORS})",
    )
    parser.add_argument(
        "--load",
        type=float,
        default=0.0,
        metavar="TPS",
        help="offered load in transfers per second (default 0: none)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after this many seconds of running (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_LOCALNET_BASE_PORT,
        help=f"node i uses base+10i (p2p), +1 (rpc), +2 (metrics) "
        f"(default {DEFAULT_LOCALNET_BASE_PORT})",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=DEFAULT_LOCALNET_ACCOUNTS,
        help=f"funded accounts to spread the load over (default {DEFAULT_LOCALNET_ACCOUNTS})",
    )
    parser.add_argument(
        "--crypto",
        choices=tuple(SUITES),
        default=DEFAULT_SUITE.name,
        help="the chain's signatures and hashes (default %(default)s)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (homes and logs)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the testnet in DIR instead of a temporary folder (kept)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run `archipelago localnet`; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not 1 <= ns.validators <= TESTNET_VALIDATORS_MAX:
        parser.error(f"--validators: expected 1..{TESTNET_VALIDATORS_MAX}")
    if ns.load < 0 or (ns.duration is not None and ns.duration <= 0):
        parser.error("--load must be >= 0 and --duration > 0")
    if ns.accounts < 1:
        parser.error("--accounts must be at least 1")
    try:
        check_ports_free(ns.base_port, ns.validators)
        with localnet_folder(ns.output, ns.keep) as (folder, keep):
            return trio.run(_run, ns, folder, keep)
    except (LocalnetError, HomeError) as e:
        print(f"archipelago: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


async def _run(ns: argparse.Namespace, folder: Path, keep: list[bool]) -> int:
    display = Display(sys.stdout)
    homes = make_testnet(
        folder,
        validators=ns.validators,
        base_port=ns.base_port,
        accounts=ns.accounts,
        crypto=ns.crypto,
    )
    chain_id = DEFAULT_TESTNET_CHAIN_ID
    display.message(
        f"localnet: {ns.validators} validators, chain {chain_id} ({ns.crypto}), folder {folder}"
    )
    started = trio.current_time()
    nodes = await start_nodes(homes, folder)
    net: Localnet | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_on_signal, signals, nursery.cancel_scope)
                net = await _bring_up(ns, folder, chain_id, nodes, display)
                await net.watch(nursery)
                if net.load is not None:
                    nursery.start_soon(net.load.run)
                nursery.start_soon(_refresh, ns, net, display, nursery.cancel_scope)
    except LocalnetError as e:
        display.message(f"localnet: {e}")
        keep[0] = True
        return EXIT_FAILURE
    finally:
        display.message("localnet: stopping the nodes (SIGTERM)")
        await stop_nodes(nodes)
    if net is None:
        display.message("localnet: interrupted before the network was up")
        return EXIT_OK
    if net.died:
        keep[0] = True
    _print_summary(net, display, trio.current_time() - started, keep[0])
    return EXIT_FAILURE if net.died else EXIT_OK


async def _bring_up(
    ns: argparse.Namespace,
    folder: Path,
    chain_id: str,
    nodes: list[NodeProcess],
    display: Display,
) -> Localnet:
    await wait_ready(nodes)
    display.message("localnet: every node is up and has committed a block")
    for n in nodes:
        display.message(f"  {n.name}: API {n.url} (try {n.url}/status), home {n.home}")
    display.message(f"  genesis: {nodes[0].home / 'genesis.json'}")
    if not ns.keep and ns.output is None:
        display.message(
            "  the folder is removed at exit: pass --keep (or --output DIR) to keep the homes"
        )
    load = None
    if ns.load > 0:
        targets = [(n.rpc_host, n.rpc_port) for n in nodes]
        load = LoadGenerator(load_accounts(folder), chain_id, targets, ns.load)
    views = [NodeView(n.name, state="up") for n in nodes]
    return Localnet(folder, chain_id, nodes, views, load)


async def _on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _refresh(
    ns: argparse.Namespace, net: Localnet, display: Display, scope: trio.CancelScope
) -> None:
    started = trio.current_time()
    reported = 0
    while True:
        await trio.sleep(DISPLAY_INTERVAL_S)
        now = trio.current_time()
        for report in net.died[reported:]:
            display.message(report)
        reported = len(net.died)
        header = (
            f"localnet: {len(net.nodes)} validators, up {now - started:.0f} s, "
            f"folder {net.folder} (Ctrl-C stops)"
        )
        table = render_table(net.views, net.load, now, header)
        display.show(table, progress_line(net.views, net.load, now, now - started))
        if ns.duration is not None and now - started >= ns.duration:
            scope.cancel()
            return


def _print_summary(net: Localnet, display: Display, elapsed_s: float, kept: bool) -> None:
    display.message(f"localnet: stopped after {elapsed_s:.1f} s")
    for node, view in zip(net.nodes, net.views, strict=True):
        display.message(
            f"  {node.name}: height {view.height}, committed {view.committed_txs} txs, "
            f"exit code {node.exit_code}, log {node.log_path}"
        )
    best = max(net.views, key=lambda v: v.height)
    display.message(f"summary: height {best.height}, committed {best.committed_txs} transactions")
    if net.load is not None:
        stats = net.load.statistics()
        rejected = ", ".join(f"{k} {n}" for k, n in sorted(stats.rejected.items())) or "none"
        latency = (
            "no samples"
            if stats.latency_p50_s is None
            else f"p50 {stats.latency_p50_s:.2f} s, p99 {stats.latency_p99_s:.2f} s "
            f"({stats.latency_samples} samples)"
        )
        display.message(
            f"load: {stats.submitted} submitted, {stats.admitted} admitted, rejected {rejected}, "
            f"{stats.errors} connection errors; submit-to-commit latency {latency}"
        )
    for report in net.died:
        display.message(report)
    where = "kept" if kept else "removed (pass --keep to keep them)"
    display.message(f"logs and homes in {net.folder}: {where}")
