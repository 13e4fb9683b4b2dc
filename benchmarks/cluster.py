"""End-to-end cluster throughput and latency: 4 validators in processes on this machine.

Why: the validation, storage and network benchmarks each measure one part;
this one measures what a client sees from the whole node, consensus and
gossip included: committed transactions per second at saturation and the
submit-to-commit latency below it, with each node's peak memory.

    .venv/bin/python benchmarks/cluster.py [--rates 250,500,1000,...] [--step-s 15]
    .venv/bin/python benchmarks/cluster.py --crypto sm2-sm3 --rates 0,25,50,100,200

It uses `archipelago localnet`'s machinery (devnet/): a testnet in a
temporary folder, one `archipelago start` process per validator, the paced
load generator (in this process, never in a node) and each node's block
stream. For each offered rate, in increasing order: sign the step's
transactions ahead (outside the timed part), offer them for a warm-up then a
measured interval, then stop the load and let the sampled transactions land.
Per step: offered and committed tx/s, p50/p99 submit-to-commit latency (from
the sampled accounts), CPU used by the load generator and by the nodes, and
the peak RSS (VmHWM) of each node. Steps stop once committed tx/s has not
grown by SATURATION_GAIN_MIN for two steps; a last step then offers half the
saturated rate to measure latency there.

The bound: every node verifies every transaction's signature once (at
admission), so the cluster cannot commit more than the machine's all-core
verification rate of the chain's suite (`--crypto`) divided by the number of
nodes. That ceiling is measured in the same run (benchmarks/validation.py's
loops on every core: for Ed25519 the compiled chunk loop, else the suite's
batch call; best of a few rounds), before the nodes start and after they
stop; the larger of the two counts, so the ratio is not flattered by a busy
minute.

Writes benchmarks/results/cluster.md (table) and cluster.png (plot, with
matplotlib); readable lines on stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from benchmarks.validation import Item, _loop_chunk, _loop_detached, _loop_suite, threads_rate
from consensus.crypto import DEFAULT_SUITE, ED25519_SHA256, SUITES, PrivateKey, Suite
from consensus.ed25519 import _verify_chunk
from devnet import (
    WORKERS_PER_NODE,
    LoadGenerator,
    Localnet,
    NodeProcess,
    NodeView,
    check_ports_free,
    load_accounts,
    make_testnet,
    percentile,
    start_nodes,
    stop_nodes,
    wait_ready,
)
from node.config import ConsensusConfig, MempoolConfig
from node.home import DEFAULT_TESTNET_CHAIN_ID

RESULTS = Path(__file__).resolve().parent / "results"
# 0 first: what the idle nodes cost (timers, empty blocks, status gossip).
DEFAULT_RATES = (0, 250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000)
SATURATION_GAIN_MIN = 0.05  # committed tx/s must grow this much over the best to count
DRAIN_TIMEOUT_S = 15.0  # after a step, how long sampled transactions may take to land
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# The pause after a commit: the node ships 1,000 ms (room for late precommits on
# WAN links); on loopback 100 ms gathers them all, and a client's latency is
# about 1.5 block intervals (issue 12: p50 0.36 s instead of 1.0 s at half load).
TIMEOUT_COMMIT_MS = 100
CEILING_SIGNATURES = 20_000  # per round: about half a second of verification on 2 cores
CEILING_ROUNDS = 3


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Step:
    target_tps: float
    offered_tps: float  # transactions actually submitted per second
    admitted_tps: float
    committed_tps: float
    rejected_full: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    latency_samples: int
    loadgen_cpu_pct: float  # of one core
    nodes_cpu_pct: float  # all nodes together, of one core
    peak_rss_mb_max: float  # the largest VmHWM among the nodes
    peak_rss_mb: tuple[float, ...]
    loadavg_1m: float


def verify_ceiling(suite: Suite, signatures: int) -> float:
    """All-core verifications per second of `suite` on this machine now (best of the rounds)."""
    keys = [PrivateKey(bytes([i + 1]) * 32, suite) for i in range(16)]
    items: list[Item] = []
    for i in range(signatures):
        key = keys[i % len(keys)]
        msg = i.to_bytes(8, "big") * 16
        items.append((key.public_key, msg, key.sign(msg)))
    if suite != ED25519_SHA256:
        loop = partial(_loop_suite, suite)
    else:
        loop = _loop_chunk if _verify_chunk is not None else _loop_detached
    cores = len(os.sched_getaffinity(0))
    return max(threads_rate(items, cores, loop) for _ in range(CEILING_ROUNDS))


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime + stime


def nodes_cpu(nodes: list[NodeProcess]) -> float:
    return sum(cpu_seconds(n.pid) for n in nodes)


async def run_step(
    net: Localnet, load: LoadGenerator, rate: float, warmup_s: float, step_s: float
) -> Step:
    views: list[NodeView] = net.views
    started = time.perf_counter()
    load.presign(int(rate * (warmup_s + step_s) * 1.1))
    log(f"  signed ahead in {time.perf_counter() - started:.1f} s")
    load.set_rate(rate)
    await trio.sleep(warmup_s)
    before = (load.submitted, load.admitted, load.rejected.get("full", 0))
    cpu_load0, cpu_nodes0 = time.process_time(), nodes_cpu(net.nodes)
    t0 = trio.current_time()
    await trio.sleep(step_s)
    t1 = trio.current_time()
    cpu_load1, cpu_nodes1 = time.process_time(), nodes_cpu(net.nodes)
    after = (load.submitted, load.admitted, load.rejected.get("full", 0))
    load.set_rate(0)
    await _drain(load)
    committed = [v.txs_between(t0, t1) for v in views]
    stats = load.statistics(since=t0)
    in_window = sorted(lat for sent, lat in load.latencies if t0 <= sent < t1)
    rss = tuple(round((n.peak_rss_bytes() or 0) / 2**20, 1) for n in net.nodes)
    elapsed = t1 - t0
    return Step(
        target_tps=rate,
        offered_tps=round((after[0] - before[0]) / elapsed, 1),
        admitted_tps=round((after[1] - before[1]) / elapsed, 1),
        committed_tps=round(sum(committed) / len(committed) / elapsed, 1),
        rejected_full=after[2] - before[2],
        latency_p50_s=_round(percentile(in_window, 50)),
        latency_p99_s=_round(percentile(in_window, 99)),
        latency_samples=len(in_window) if in_window else stats.latency_samples,
        loadgen_cpu_pct=round(100 * (cpu_load1 - cpu_load0) / elapsed, 1),
        nodes_cpu_pct=round(100 * (cpu_nodes1 - cpu_nodes0) / elapsed, 1),
        peak_rss_mb_max=max(rss),
        peak_rss_mb=rss,
        loadavg_1m=round(os.getloadavg()[0], 2),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def _drain(load: LoadGenerator) -> None:
    """Until every sampled transaction has landed (or DRAIN_TIMEOUT_S)."""
    with trio.move_on_after(DRAIN_TIMEOUT_S):
        while load.awaiting_commit():
            await trio.sleep(0.2)


def describe(step: Step) -> str:
    lat = (
        "-"
        if step.latency_p50_s is None
        else f"p50 {step.latency_p50_s:.2f} s p99 {step.latency_p99_s:.2f} s"
    )
    return (
        f"target {step.target_tps:>6.0f}  offered {step.offered_tps:>7.1f}  "
        f"committed {step.committed_tps:>7.1f} tx/s  latency {lat}  "
        f"full {step.rejected_full}  cpu loadgen {step.loadgen_cpu_pct:.0f}% "
        f"nodes {step.nodes_cpu_pct:.0f}%  peak rss {step.peak_rss_mb_max:.0f} MB  "
        f"load {step.loadavg_1m}"
    )


def saturated(steps: list[Step]) -> bool:
    """True once the last two steps did not beat the best before them by the gain."""
    if len(steps) < 3:
        return False
    best_before = max(s.committed_tps for s in steps[:-2])
    return all(s.committed_tps < best_before * (1 + SATURATION_GAIN_MIN) for s in steps[-2:])


async def benchmark(ns: argparse.Namespace, folder: Path) -> dict[str, object]:
    homes = make_testnet(
        folder,
        validators=ns.validators,
        base_port=ns.base_port,
        accounts=ns.accounts,
        timeout_commit_ms=ns.timeout_commit_ms,
        mempool_txs_max=ns.mempool_txs_max,
        crypto=ns.crypto,
    )
    nodes = await start_nodes(homes, folder)
    try:
        await wait_ready(nodes)
        targets = [(n.rpc_host, n.rpc_port) for n in nodes]
        load = LoadGenerator(
            load_accounts(folder),
            DEFAULT_TESTNET_CHAIN_ID,
            targets,
            workers_per_node=ns.workers_per_node,
        )
        views = [NodeView(n.name, state="up") for n in nodes]
        net = Localnet(folder, DEFAULT_TESTNET_CHAIN_ID, nodes, views, load)
        async with trio.open_nursery() as nursery:
            await net.watch(nursery)
            nursery.start_soon(load.run)
            result = await _steps(ns, net, load)
            nursery.cancel_scope.cancel()
        if net.died:
            raise SystemExit("a node died during the benchmark:\n" + "\n".join(net.died))
        return result
    finally:
        await stop_nodes(nodes)


async def _steps(ns: argparse.Namespace, net: Localnet, load: LoadGenerator) -> dict[str, object]:
    steps: list[Step] = []
    for rate in ns.rates:
        log(f"step: offering {rate} tx/s")
        step = await run_step(net, load, rate, ns.warmup_s, ns.step_s)
        log("  " + describe(step))
        steps.append(step)
        if saturated(steps):
            break
    best = max(steps, key=lambda s: s.committed_tps)
    half_rate = round(best.committed_tps / 2)
    log(f"step: half the saturated rate, {half_rate} tx/s")
    half = await run_step(net, load, half_rate, ns.warmup_s, ns.step_s)
    log("  " + describe(half))
    return {
        "steps": steps,
        "saturation": best,
        "half": half,
    }


def write_table(path: Path, result: dict[str, object], meta: dict[str, object]) -> None:
    steps: list[Step] = result["steps"]  # type: ignore[assignment]
    half: Step = result["half"]  # type: ignore[assignment]
    lines = [
        "# Cluster benchmark",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['cpus']} cores (shared), load average at start {meta['loadavg_start']}; "
        f"{meta['validators']} validators ({meta['crypto']}), {meta['accounts']} accounts, "
        f"timeout_commit_ms {meta['timeout_commit_ms']}, "
        f"mempool txs_max {meta['mempool_txs_max']}, "
        f"{meta['step_s']} s measured per step after {meta['warmup_s']} s warm-up. {meta['date']}.",
        "",
        f"Signature ceiling (all cores, before and after): {meta['ceiling_sig_per_s']} sig/s; "
        f"bound (ceiling / validators): {meta['bound_tps']} tx/s.",
        "",
        "| offered target tx/s | offered tx/s | committed tx/s | p50 latency s | p99 latency s "
        "| samples | rejected (full) | load gen CPU % | nodes CPU % | peak RSS MB (max node) "
        "| load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in [*steps, half]:
        lines.append(
            f"| {s.target_tps:.0f} | {s.offered_tps} | {s.committed_tps} | "
            f"{_cell(s.latency_p50_s)} | {_cell(s.latency_p99_s)} | {s.latency_samples} | "
            f"{s.rejected_full} | {s.loadgen_cpu_pct} | {s.nodes_cpu_pct} | "
            f"{s.peak_rss_mb_max} | {s.loadavg_1m} |"
        )
    lines += ["", "The last row is the half-saturation step.", ""]
    path.write_text("\n".join(lines))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_plot(path: Path, result: dict[str, object]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    steps: list[Step] = result["steps"]  # type: ignore[assignment]
    offered = [s.offered_tps for s in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(offered, [s.committed_tps for s in steps], "o-", label="committed")
    top = max(offered + [s.committed_tps for s in steps])
    ax1.plot([0, top], [0, top], ":", color="grey", label="committed = offered")
    ax1.set_xlabel("offered tx/s")
    ax1.set_ylabel("committed tx/s")
    ax1.set_title("Throughput, 4 validators on one 2-core machine")
    ax1.legend()
    ax1.grid(alpha=0.3)
    with_lat = [s for s in steps if s.latency_p50_s is not None]
    ax2.plot(
        [s.offered_tps for s in with_lat], [s.latency_p50_s for s in with_lat], "o-", label="p50"
    )
    ax2.plot(
        [s.offered_tps for s in with_lat], [s.latency_p99_s for s in with_lat], "s--", label="p99"
    )
    ax2.set_xlabel("offered tx/s")
    ax2.set_ylabel("submit-to-commit latency (s)")
    ax2.set_title("Latency")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=list(DEFAULT_RATES),
        help="offered tx/s per step, increasing (comma-separated)",
    )
    parser.add_argument("--step-s", type=float, default=15.0, help="measured seconds per step")
    parser.add_argument("--warmup-s", type=float, default=4.0, help="seconds before measuring")
    parser.add_argument("--accounts", type=int, default=1024)
    parser.add_argument("--workers-per-node", type=int, default=WORKERS_PER_NODE)
    parser.add_argument(
        "--timeout-commit-ms",
        type=int,
        default=TIMEOUT_COMMIT_MS,
        help=f"the nodes' pause after a commit (default {TIMEOUT_COMMIT_MS}; "
        f"the node ships {ConsensusConfig().timeout_commit_ms})",
    )
    parser.add_argument("--mempool-txs-max", type=int, default=None, help="default: the node's")
    parser.add_argument("--base-port", type=int, default=28800)
    parser.add_argument("--no-write", action="store_true", help="do not write results/")
    parser.add_argument(
        "--crypto",
        choices=tuple(SUITES),
        default=DEFAULT_SUITE.name,
        help="the chain's crypto suite (default %(default)s; results go to cluster-SUITE.md "
        "for another suite)",
    )
    ns = parser.parse_args()
    suite = SUITES[ns.crypto]
    # About half a second of verification on 2 cores per round, whatever the suite.
    signatures = CEILING_SIGNATURES if suite == ED25519_SHA256 else CEILING_SIGNATURES // 25
    check_ports_free(ns.base_port, ns.validators)
    meta: dict[str, object] = {
        "command": "python benchmarks/cluster.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(),
        "loadavg_start": round(os.getloadavg()[0], 2),
        "crypto": suite.name,
        "validators": ns.validators,
        "accounts": ns.accounts,
        "timeout_commit_ms": ns.timeout_commit_ms,
        "mempool_txs_max": ns.mempool_txs_max or f"default ({MempoolConfig().txs_max})",
        "step_s": ns.step_s,
        "warmup_s": ns.warmup_s,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    log(f"cluster benchmark: {meta}")
    ceilings = [verify_ceiling(suite, signatures)]
    log(f"signature ceiling before the nodes start: {ceilings[0]:.0f} sig/s")
    with tempfile.TemporaryDirectory(prefix="archipelago-cluster-") as tmp:
        result = trio.run(benchmark, ns, Path(tmp))
    ceilings.append(verify_ceiling(suite, signatures))
    log(f"signature ceiling after the nodes stop: {ceilings[1]:.0f} sig/s")
    sat: Step = result["saturation"]  # type: ignore[assignment]
    half: Step = result["half"]  # type: ignore[assignment]
    bound = max(ceilings) / ns.validators
    log(
        f"bound (ceiling / {ns.validators} nodes): {bound:.0f} tx/s; saturation "
        f"{sat.committed_tps:.0f} tx/s = {sat.committed_tps / bound:.2f} of it"
    )
    meta["ceiling_sig_per_s"] = [round(c) for c in ceilings]
    meta["bound_tps"] = round(bound)
    if not ns.no_write:
        RESULTS.mkdir(exist_ok=True)
        stem = "cluster" if suite == DEFAULT_SUITE else f"cluster-{suite.name}"
        write_table(RESULTS / f"{stem}.md", result, meta)
        if write_plot(RESULTS / f"{stem}.png", result):
            log(f"wrote {RESULTS / f'{stem}.md'} and {RESULTS / f'{stem}.png'}")
    steps: list[Step] = result["steps"]  # type: ignore[assignment]
    summary = {
        "benchmark": "cluster",
        "crypto": suite.name,
        "validators": ns.validators,
        "saturation_committed_tps": sat.committed_tps,
        "saturation_offered_tps": sat.offered_tps,
        "ceiling_sig_per_s": meta["ceiling_sig_per_s"],
        "bound_tps": round(bound),
        "saturation_over_bound": round(sat.committed_tps / bound, 3),
        "half_load_tps": half.target_tps,
        "half_load_p50_s": half.latency_p50_s,
        "half_load_p99_s": half.latency_p99_s,
        "peak_rss_mb_max": max(s.peak_rss_mb_max for s in [*steps, half]),
        "loadavg_start": meta["loadavg_start"],
        "steps": [asdict(s) for s in steps],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
