"""Hostile peers: what one attacker costs a node, attack by attack, against a quiet baseline.

Why: issue 11 asks for a table, before and after the edge fixes, with one row
per attack: the target's memory growth, the longest event-loop stall one
attacker causes (node/loopwatch.py's probe, ticking every 10 ms), and whether
consensus kept committing. Targets: a stall of at most 10 ms per attacker
frame; the memory held for peers bounded whatever they send.

    .venv/bin/python benchmarks/hostile.py [--attacks none,decode-bomb,...]

Each attack runs once, as its own process (tests/integration/hostile_peer.py),
against a fresh testnet of 4 validators with the default consensus timeouts
under light transfer load (10 tx/s), for `--duration` seconds (floods) or
until the target has answered (single frames). The first row, `none`, is the
same observation without an attacker: the stall a loaded node shows anyway,
so the ratio of each row to it is visible.

It measures the tree of the Python that runs it (the editable install of its
virtualenv), not the tree this file is in, so one script measures before and
after:

    /work/wt-before/.venv/bin/python benchmarks/hostile.py   # b186c6b plus the probe
    .venv/bin/python benchmarks/hostile.py                   # this tree

A tree without the probe shows "-" for the stall. Readable lines and a
Markdown table on stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# This folder has a network.py of its own; the project's `network` package
# must win, and it must be the installed tree's (see the docstring).
sys.path.remove(str(Path(__file__).resolve().parent))

import trio

from node.config import ConsensusConfig


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


INTEGRATION = Path(__file__).resolve().parents[1] / "tests" / "integration"
nodes = _load("archipelago_itest_nodes", INTEGRATION / "nodes.py")
hostile = _load("archipelago_itest_hostile_peer", INTEGRATION / "hostile_peer.py")

# Attack name -> (hostile_peer.py attack, its arguments, targets as validator indexes).
# Counts as in the issues' reports: 30 slow frames, 60 garbage handshakes.
ATTACKS: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {
    "none": ("none", (), (0,)),
    "decode-bomb": ("decode-bomb", ("--variant", "frame"), (0,)),
    "decode-bomb-payload": ("decode-bomb", ("--variant", "payload"), (0,)),
    "slow-frames": ("slow-frames", ("--connections", "30"), (0,)),
    "ping-flood": ("ping-flood", (), (0,)),
    "sync-flood": ("sync-flood", (), (0,)),
    "handshake-garbage": ("handshake-garbage", ("--connections", "60"), (0,)),
    "false-height-1": ("false-height", (), (1,)),
    "false-height-2": ("false-height", (), (1, 2)),
    "forged-flood": ("forged-flood", (), (0,)),
    "body-swap": ("body-swap", (), (0, 1, 2, 3)),
}
SINGLE_FRAME = ("decode-bomb", "decode-bomb-payload")
# Slow frames are held past the frame deadline (frame_timeout_s, 20 s) and
# short of the idle timeout (30 s), as in the test.
HOLD_S = {"slow-frames": 25.0}
# As tests/integration/test_hostile_peer.py: heights a node may trail the others by.
PACE_HEIGHTS_MAX = 2


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def one(name: str, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    attack, args, indexes = ATTACKS[name]
    net = nodes.create_testnet(folder, validators=4, accounts=4, consensus=ConsensusConfig())
    hostile.open_network(net)
    duration_s = 0.0 if name in SINGLE_FRAME else HOLD_S.get(name, ns.duration)
    after: Callable[[], Awaitable[dict[str, Any]]] | None = None
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 2, nodes.START_TIMEOUT_S)
        if attack == "handshake-garbage":

            async def restart() -> dict[str, Any]:
                result: dict[str, Any] = await hostile.restart_on_new_port(
                    api, net.validators[3], net.validators[0]
                )
                return result

            after = restart
        async with hostile.transfer_load(api, net):
            outcome = await hostile.run_attack(
                net,
                api,
                attack,
                targets=[net.validators[i] for i in indexes],
                duration_s=duration_s,
                args=args,
                after=after,
            )
    log(outcome.summary())
    r = outcome.report
    end, after_h = outcome.heights_end, outcome.heights_after
    return {
        "attack": name,
        "rss_growth_mb": round(outcome.rss_growth_mb, 1),
        "rss_baseline_mb": round(outcome.rss_baseline_mb, 1),
        "stall_ms": round(outcome.lag_max_s * 1000, 1) if outcome.lag_probe else None,
        "commit_gap_s": round(outcome.commit_gap_max_s, 1),
        "failed_rounds": outcome.round_changes,
        "wal_growth_mb": round(outcome.wal_growth_mb, 1),
        "heights_start": min(outcome.heights_start.values()),
        "heights_end": [min(end.values(), default=0), max(end.values(), default=0)],
        "heights_after": min(after_h.values(), default=0),
        "kept_committing": outcome.committed_during and outcome.committed_after,
        "behind_max": max(end.values(), default=0) - min(end.values(), default=0),
        "left_consensus": outcome.left_consensus,
        "hashes_agree": outcome.hashes_agree,
        "exited": outcome.exited,
        "connections": r.connections,
        "closed_by_target": r.closed_by_target,
        "refused": r.refused,
        "cut_off": r.cut_off,
        "frames_sent": r.frames_sent,
        "bytes_sent": r.bytes_sent,
        "notes": r.notes,
        "extra": outcome.extra,
    }


def verdict(r: dict[str, Any]) -> str:
    """Whether every honest node kept committing, and if not, how it failed."""
    problems = []
    if r["exited"]:
        problems.append(f"exited: {', '.join(r['exited'])}")
    if not r["kept_committing"]:
        problems.append("halted")
    if r["behind_max"] > PACE_HEIGHTS_MAX:
        problems.append(f"a node fell {r['behind_max']} behind")
    if r["left_consensus"]:
        problems.append(f"{', '.join(r['left_consensus'])} left consensus")
    if not r["hashes_agree"]:
        problems.append("hashes differ")
    return "yes" if not problems else "**no**: " + ", ".join(problems)


def table(rows: list[dict[str, Any]]) -> str:
    base = next((r for r in rows if r["attack"] == "none"), None)
    base_stall = base["stall_ms"] if base and base["stall_ms"] else None
    lines = [
        "| attack | target RSS growth (MB) | longest stall (ms) | x baseline | "
        "longest commit gap (s) | heights start -> end -> after | consensus kept committing "
        "| attacker cut off |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        stall = "-" if r["stall_ms"] is None else f"{r['stall_ms']:.0f}"
        ratio = "-"
        if r["stall_ms"] is not None and base_stall:
            ratio = f"{r['stall_ms'] / base_stall:.1f}"
        lo, hi = r["heights_end"]
        end = f"{lo}" if lo == hi else f"{lo}..{hi}"
        if r["attack"] == "none":
            cut = "-"
        else:
            cut = "yes" if r["cut_off"] else "**no**"
            cut += f" ({r['closed_by_target']}/{r['connections']} closed"
            cut += f", {r['refused']} refused)" if r["refused"] else ")"
        if "rejoined" in r["extra"]:
            cut += "; restarted peer let back in: " + (
                "yes" if r["extra"]["rejoined"] else "**no**"
            )
        lines.append(
            f"| {r['attack']} | {r['rss_growth_mb']:.0f} | {stall} | {ratio} | "
            f"{r['commit_gap_s']:.1f} | {r['heights_start']} -> {end} -> {r['heights_after']} | "
            f"{verdict(r)} | {cut} |"
        )
    return "\n".join(lines)


async def benchmark(ns: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in ns.attacks:
        folder = Path(tempfile.mkdtemp(prefix=f"hostile-{name}-"))
        started = time.monotonic()
        try:
            rows.append(await one(name, ns, folder / "net"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log(f"{name}: {time.monotonic() - started:.0f} s")
    return rows


def rerender(path: Path) -> str:
    """The table of an earlier run, from its JSON line."""
    lines = path.read_text().strip().splitlines()
    return table(json.loads(lines[-1])["rows"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        type=lambda text: [a for a in text.split(",") if a],
        help="comma-separated, from: " + ", ".join(ATTACKS),
    )
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per flood or hold")
    parser.add_argument("--table", type=Path, help="only print the table of this run's stdout")
    ns = parser.parse_args()
    if ns.table:
        print(rerender(ns.table))
        return 0
    unknown = [a for a in ns.attacks if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown attacks: {unknown}")
    import node

    log(f"tree under test: {Path(node.__file__).resolve().parents[1]}")
    rows = trio.run(benchmark, ns)
    log("\n" + table(rows) + "\n")
    print(json.dumps({"benchmark": "hostile", "duration_s": ns.duration, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
