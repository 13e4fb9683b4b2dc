"""Soak: 4 validators under steady load for half an hour; does anything grow or stall?

Why: the other benchmarks run for seconds to minutes, too short to see a
leak of a few kilobytes per block, a file descriptor per reconnect or a task
per request. This one keeps a cluster busy at 80 % of the rate it saturates
at, samples every node every SAMPLE_INTERVAL_S and fails on growth or on a
stall of the chain.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--fraction 0.8] [--rate TPS]

It runs the cluster the way benchmarks/cluster.py does (devnet/: a testnet
in a temporary folder, one `archipelago start` per validator, the paced load
generator in this process) and first finds the saturated rate with that
benchmark's steps, shortened (SEARCH_STEP_S per rate; `--rate` skips the
search). Then, for `--minutes`, every SAMPLE_INTERVAL_S and for each node:
resident memory (VmRSS), open file descriptors (/proc/PID/fd), trio tasks
(`archipelago_trio_tasks` on its metrics endpoint) and height. Each block's
header time comes from every node's block stream.

Verdict:

- growth, per node and per figure, over the samples after the warm-up
  (caches, the mempool and connections fill first): WARMUP_S, or longer
  while the mempool's memory of committed ids (COMMITTED_IDS_MAX, the
  largest of the node's bounded memories that fills with the chain) has
  not reached its steady size, i.e. until every node committed
  COMMITTED_IDS_SETTLED_TXS transactions (5 minutes at 286 tx/s). Never
  more than half the soak: a soak too slow for that says so and is judged
  with it filling. The least-squares slope, as % of
  the first third's mean per hour, above GROWTH_PCT_PER_HOUR_MAX, and the
  last third's mean above the first third's by more than
  THIRDS_GROWTH_PCT_MAX % and by more than the figure's GROWTH_ABS_MIN (a
  real leak shows in all three; noise or one cache filling in one);
- a stall, over the whole soak: two consecutive blocks whose header times
  are more than STALL_INTERVALS block intervals apart. A block interval is
  the node's own (`block_interval_ms`: the commit timeout plus one round's
  timeouts, the time a height takes when its first round fails only by
  timeouts), as for the perturbation runner (devnet/perturb.py) and
  GET /health. Gaps above SLOW_MEDIANS times the median gap are reported
  (count, largest, where) but do not fail: near saturation a backlog makes
  bigger blocks and the interval climbs with them for a while;
- a node that died.

Any of them makes the exit code 1. Writes benchmarks/results/soak.csv (one
row per node per sample, appended as it goes), soak.json (settings, the
search, the analysis, the samples) and soak.png (with matplotlib); readable
lines on stderr; the last stdout line is the analysis as JSON.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import trio

from benchmarks.cluster import TIMEOUT_COMMIT_MS, Step, describe, log, run_step, saturated
from devnet import (
    WORKERS_PER_NODE,
    LoadGenerator,
    Localnet,
    NodeProcess,
    NodeView,
    check_ports_free,
    load_accounts,
    make_testnet,
    start_nodes,
    stop_nodes,
    wait_ready,
)
from node.config import load_config
from node.home import DEFAULT_TESTNET_CHAIN_ID
from node.mempool import COMMITTED_IDS_MAX

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_INTERVAL_S = 10.0
DEFAULT_MINUTES = 30.0
DEFAULT_FRACTION = 0.8  # of the saturated committed rate
# The search: cluster.py's steps, shorter; it stops once two steps did not gain.
SEARCH_RATES = (500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000)
SEARCH_STEP_S = 20.0  # long enough for a rate the cluster sustains, not a burst
SEARCH_WARMUP_S = 3.0
# Transactions signed before the soak starts (the rest are signed as they are
# sent, in the load generator: signing all of 30 minutes ahead would take
# minutes and hundreds of MB in this process).
PRESIGN_S = 30.0
WARMUP_S = 120.0  # samples before this are left out of the trend
# The committed-ids memory (an OrderedDict, oldest popped) reaches its steady
# size only after ~1.75 x COMMITTED_IDS_MAX insertions, not at COMMITTED_IDS_MAX:
# CPython sizes a dict's table for 2/3 use, so with the churn the table for
# 50,000 ids (131,072 slots from 43,691 on) is compacted into 262,144 slots at
# the 87,381st insertion, +3.5 MiB at once, and stays that size (measured on
# 3.11: 8.1 MiB with the ids before it, 11.6 MiB from then on, to 400,000).
COMMITTED_IDS_SETTLED_TXS = 2 * COMMITTED_IDS_MAX
GROWTH_PCT_PER_HOUR_MAX = 10.0
THIRDS_GROWTH_PCT_MAX = 5.0
# Below these absolute changes (last third's mean minus the first's) a figure
# has not grown, whatever the percentages: small counts are jumpy (a client
# connection opening is one fd and a few tasks).
GROWTH_ABS_MIN = {"rss_mb": 5.0, "anon_mb": 5.0, "fds": 5.0, "tasks": 20.0}
STALL_INTERVALS = 3.0
SLOW_MEDIANS = 3.0
METRICS_TIMEOUT_S = 5.0
# What the verdict looks at. Memory is judged on anonymous resident memory (the
# heap: where a leak lands); total RSS also counts the pages of the LMDB store's
# map that the node touched, which grow with the chain by design, and is
# reported and plotted beside it.
FIGURES = ("anon_mb", "fds", "tasks")
REPORTED = ("rss_mb", *FIGURES, "seen")


@dataclass(slots=True)
class SoakView(NodeView):
    """A node's view that also keeps every block's header time, for the stall check."""

    block_times: list[tuple[int, int]] = field(default_factory=list)  # (height, time_ms)

    def on_block(self, height: int, time_ms: int, tx_count: int, arrived: float) -> None:
        NodeView.on_block(self, height, time_ms, tx_count, arrived)
        self.block_times.append((height, time_ms))


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # seconds since the soak started
    node: str
    rss_mb: float | None
    anon_mb: float | None
    fds: int | None
    tasks: int | None
    seen: int | None  # gossip seen-cache entries (archipelago_p2p_seen_cache_entries)
    height: int
    # The machine's pressure (/proc/pressure, "some avg10": % of the last 10 s in which
    # some task waited for a CPU, or for I/O), the same in each node's row.
    cpu_psi: float | None
    io_psi: float | None


@dataclass(frozen=True, slots=True)
class Trend:
    node: str
    figure: str
    first_third: float
    last_third: float
    thirds_growth_pct: float
    slope_per_hour: float
    slope_pct_per_hour: float
    grows: bool


def anon_mb(pid: int) -> float | None:
    """RssAnon from /proc/PID/status in MB; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return round(int(line.split()[1]) / 1024, 1)  # reported in kB
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# Unlabelled gauges read from each node's metrics endpoint, by Sample field.
GAUGES = {"tasks": "archipelago_trio_tasks", "seen": "archipelago_p2p_seen_cache_entries"}


async def gauges(http: httpx.AsyncClient, url: str) -> dict[str, int | None]:
    """The node's GAUGES, by Sample field; None for one that cannot be read."""
    out: dict[str, int | None] = dict.fromkeys(GAUGES)
    try:
        r = await http.get(url)
    except httpx.HTTPError:
        return out
    wanted = {name: field for field, name in GAUGES.items()}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = int(float(value))
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points or one x)."""
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def trend(node: str, figure: str, points: list[tuple[float, float]]) -> Trend:
    """The growth of one figure of one node over (t_s, value) points."""
    third = max(1, len(points) // 3)
    first = statistics.fmean(v for _, v in points[:third])
    last = statistics.fmean(v for _, v in points[-third:])
    per_hour = slope([t for t, _ in points], [v for _, v in points]) * 3600
    base = first if first > 0 else 1.0
    thirds_pct = 100 * (last - first) / base
    slope_pct = 100 * per_hour / base
    grows = (
        figure in FIGURES
        and slope_pct > GROWTH_PCT_PER_HOUR_MAX
        and thirds_pct > THIRDS_GROWTH_PCT_MAX
        and last - first > GROWTH_ABS_MIN[figure]
    )
    return Trend(
        node,
        figure,
        round(first, 2),
        round(last, 2),
        round(thirds_pct, 2),
        round(per_hour, 3),
        round(slope_pct, 2),
        grows,
    )


def stalls(
    views: list[SoakView], start_ms: int, end_ms: int, block_interval_ms: int
) -> dict[str, object]:
    """Gaps between consecutive blocks' header times in [start_ms, end_ms] (the chain's:
    each node sees the same), against STALL_INTERVALS x `block_interval_ms` (stalls) and
    SLOW_MEDIANS x their median (slow blocks, reported)."""
    chain: dict[int, int] = {}
    for view in views:
        for height, time_ms in view.block_times:
            chain.setdefault(height, time_ms)
    times = [chain[h] for h in sorted(chain) if start_ms <= chain[h] <= end_ms]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if not gaps:
        return {"blocks": len(times), "median_interval_ms": None, "stalls": ["no blocks"]}
    median = statistics.median(gaps)
    limit = STALL_INTERVALS * block_interval_ms
    heights = [h for h in sorted(chain) if start_ms <= chain[h] <= end_ms]

    def over(bound: float) -> list[dict[str, object]]:
        return [
            {
                "height": heights[i + 1],
                "gap_ms": gap,
                "at_s": round((times[i] - start_ms) / 1000, 1),
            }
            for i, gap in enumerate(gaps)
            if gap > bound
        ]

    ordered = sorted(gaps)
    return {
        "blocks": len(times),
        "median_interval_ms": median,
        "p99_interval_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_interval_ms": ordered[-1],
        "block_interval_ms": block_interval_ms,
        "stall_limit_ms": limit,
        "stalls": over(limit),
        "slow_limit_ms": SLOW_MEDIANS * median,
        "slow": over(SLOW_MEDIANS * median),
        "gaps_ms": gaps,
    }


async def find_saturation(
    ns: argparse.Namespace, net: Localnet, load: LoadGenerator
) -> tuple[float, list[Step]]:
    steps: list[Step] = []
    for rate in SEARCH_RATES:
        log(f"search: offering {rate} tx/s")
        step = await run_step(net, load, rate, SEARCH_WARMUP_S, ns.search_step_s)
        log("  " + describe(step))
        steps.append(step)
        if saturated(steps):
            break
    return max(s.committed_tps for s in steps), steps


def pressure(kind: str) -> float | None:
    """The machine's "some avg10" for `kind` (cpu, io), or None without PSI."""
    try:
        first = Path(f"/proc/pressure/{kind}").read_text().split("\n", 1)[0]
    except OSError:
        return None
    fields = dict(f.split("=", 1) for f in first.split()[1:])
    return float(fields["avg10"])


def with_pressure(gaps: list[dict[str, object]], samples: list[Sample]) -> None:
    """Give each gap the machine's pressure from the first sample after it ended."""
    for gap in gaps:
        end_s = float(gap["at_s"]) + float(gap["gap_ms"]) / 1000  # type: ignore[arg-type]
        after = next((s for s in samples if s.t_s >= end_s), None)
        if after is not None:
            gap["cpu_psi"], gap["io_psi"] = after.cpu_psi, after.io_psi


async def sample_nodes(
    http: httpx.AsyncClient,
    nodes: list[NodeProcess],
    views: list[SoakView],
    metrics_urls: list[str],
    t_s: float,
) -> list[Sample]:
    out = []
    cpu_psi, io_psi = pressure("cpu"), pressure("io")
    for node, view, url in zip(nodes, views, metrics_urls, strict=True):
        rss = node.rss_bytes()
        read = await gauges(http, url)
        out.append(
            Sample(
                round(t_s, 1),
                node.name,
                None if rss is None else round(rss / 2**20, 1),
                anon_mb(node.pid),
                open_fds(node.pid),
                read["tasks"],
                read["seen"],
                view.height,
                cpu_psi,
                io_psi,
            )
        )
    return out


async def soak(
    ns: argparse.Namespace,
    net: Localnet,
    load: LoadGenerator,
    rate: float,
    metrics_urls: list[str],
) -> tuple[list[Sample], int, int, dict[str, float], float | None]:
    """Offer `rate` for ns.minutes, sampling; returns the samples, the soak's start and end
    (ms, as block header times count), the load's counters over it, and when (s into the
    soak) every node had committed COMMITTED_IDS_SETTLED_TXS transactions (None: not yet)."""
    views: list[SoakView] = net.views  # type: ignore[assignment]
    csv_path = ns.results / "soak.csv"
    load.presign(int(rate * PRESIGN_S))
    load.set_rate(rate)
    samples: list[Sample] = []
    submitted0, admitted0, full0, errors0 = (
        load.submitted,
        load.admitted,
        load.rejected.get("full", 0),
        load.errors,
    )
    start = trio.current_time()
    start_ms = int(time.time() * 1000)
    committed0 = [v.committed_txs for v in views]
    # Counted since the streams connected, so the search's transactions count too.
    ids_settled_at: float | None = 0.0 if min(committed0) >= COMMITTED_IDS_SETTLED_TXS else None
    duration_s = ns.minutes * 60
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(Sample.__slots__)
        async with httpx.AsyncClient(timeout=METRICS_TIMEOUT_S) as http:
            tick = 0
            while True:
                t_s = trio.current_time() - start
                batch = await sample_nodes(http, net.nodes, views, metrics_urls, t_s)
                samples += batch
                if ids_settled_at is None and (
                    min(v.committed_txs for v in views) >= COMMITTED_IDS_SETTLED_TXS
                ):
                    ids_settled_at = t_s
                writer.writerows([[getattr(s, k) for k in Sample.__slots__] for s in batch])
                f.flush()
                if tick % 6 == 0:
                    committed = min(
                        v.committed_txs - c for v, c in zip(views, committed0, strict=True)
                    )
                    log(
                        f"soak {t_s / 60:5.1f} min: heights {[s.height for s in batch]} "
                        f"rss MB {[s.rss_mb for s in batch]} anon MB {[s.anon_mb for s in batch]} "
                        f"fds {[s.fds for s in batch]} "
                        f"tasks {[s.tasks for s in batch]} seen {[s.seen for s in batch]} "
                        f"committed {committed / max(t_s, 1):.0f} "
                        f"tx/s load {os.getloadavg()[0]:.2f} "
                        f"pressure cpu {batch[0].cpu_psi} io {batch[0].io_psi} %"
                    )
                if net.died or t_s >= duration_s:
                    break
                tick += 1
                await trio.sleep_until(start + tick * SAMPLE_INTERVAL_S)
    elapsed = trio.current_time() - start
    end_ms = int(time.time() * 1000)
    load.set_rate(0)
    committed = min(v.committed_txs - c for v, c in zip(views, committed0, strict=True))
    counters = {
        "offered_tps": round((load.submitted - submitted0) / elapsed, 1),
        "admitted_tps": round((load.admitted - admitted0) / elapsed, 1),
        "committed_tps": round(committed / elapsed, 1),
        "rejected_full": load.rejected.get("full", 0) - full0,
        "errors": load.errors - errors0,
    }
    return samples, start_ms, end_ms, counters, ids_settled_at


def warmup(ns: argparse.Namespace, ids_settled_at: float | None) -> tuple[float, str]:
    """The warm-up the trends leave out, and why that long."""
    half_s = ns.minutes * 60 / 2
    if ids_settled_at is None or ids_settled_at > half_s:
        return max(ns.warmup_s, half_s), (
            f"the committed-ids memory ({COMMITTED_IDS_MAX} ids) did not settle in half the "
            f"soak ({COMMITTED_IDS_SETTLED_TXS} transactions): its filling (to ~12 MB) is in "
            "the trend"
        )
    if ids_settled_at > ns.warmup_s:
        return ids_settled_at, f"the committed-ids memory settled at {ids_settled_at:.0f} s"
    return ns.warmup_s, "--warmup-s"


def analyse(samples: list[Sample], warmup_s: float) -> list[Trend]:
    trends = []
    for node in sorted({s.node for s in samples}):
        mine = [s for s in samples if s.node == node and s.t_s >= warmup_s]
        for figure in REPORTED:
            points = [(s.t_s, float(v)) for s in mine if (v := getattr(s, figure)) is not None]
            if len(points) >= 3:
                trends.append(trend(node, figure, points))
    return trends


async def run(ns: argparse.Namespace, folder: Path) -> dict[str, object]:
    homes = make_testnet(
        folder,
        validators=ns.validators,
        base_port=ns.base_port,
        accounts=ns.accounts,
        timeout_commit_ms=ns.timeout_commit_ms,
    )
    metrics_urls = [f"http://{h.config.metrics.listen}/metrics" for h in homes]
    nodes = await start_nodes(homes, folder)
    try:
        await wait_ready(nodes)
        load = LoadGenerator(
            load_accounts(folder),
            DEFAULT_TESTNET_CHAIN_ID,
            [(n.rpc_host, n.rpc_port) for n in nodes],
            workers_per_node=WORKERS_PER_NODE,
        )
        views: list[NodeView] = [SoakView(n.name, state="up") for n in nodes]
        net = Localnet(folder, DEFAULT_TESTNET_CHAIN_ID, nodes, views, load)
        async with trio.open_nursery() as nursery:
            await net.watch(nursery)
            nursery.start_soon(load.run)
            search: list[Step] = []
            if ns.rate is None:
                saturated_tps, search = await find_saturation(ns, net, load)
                rate = round(ns.fraction * saturated_tps)
            else:
                saturated_tps, rate = float("nan"), ns.rate
            log(f"soak: {ns.minutes} min at {rate} tx/s (saturated: {saturated_tps} tx/s)")
            samples, start_ms, end_ms, counters, ids_settled_at = await soak(
                ns, net, load, rate, metrics_urls
            )
            nursery.cancel_scope.cancel()
        warmup_s, why = warmup(ns, ids_settled_at)
        log(f"warm-up: {warmup_s:.0f} s ({why})")
        trends = analyse(samples, warmup_s)
        # Stalls count from the soak's first second: a warm-up is no excuse for a halt.
        chain = stalls(
            [v for v in net.views if isinstance(v, SoakView)],
            start_ms,
            end_ms,
            # From the file: make_testnet wrote the commit timeout there after
            # `homes` were made.
            load_config(homes[0].paths.config).consensus.block_interval_ms(),
        )
        with_pressure(chain["stalls"], samples)  # type: ignore[arg-type]
        with_pressure(chain.get("slow", []), samples)  # type: ignore[arg-type]
        return {
            "saturated_tps": saturated_tps,
            "soak_tps": rate,
            "warmup_s": warmup_s,
            "warmup_reason": why,
            "search": [asdict(s) for s in search],
            "load": counters,
            "trends": [asdict(t) for t in trends],
            "chain": chain,
            "died": list(net.died),
            "samples": [asdict(s) for s in samples],
        }
    finally:
        await stop_nodes(nodes)


def verdict(result: dict[str, object]) -> list[str]:
    """What failed: growth, stalls, deaths (empty: the soak passed)."""
    failures = [
        f"{t['node']} {t['figure']} grows: {t['slope_pct_per_hour']} %/h, "
        f"thirds {t['first_third']} -> {t['last_third']}"
        for t in result["trends"]  # type: ignore[attr-defined]
        if t["grows"]
    ]
    chain: dict[str, object] = result["chain"]  # type: ignore[assignment]
    for stall in chain["stalls"]:  # type: ignore[attr-defined]
        failures.append(f"stall: {stall}")
    failures += [f"died: {d}" for d in result["died"]]  # type: ignore[attr-defined]
    return failures


def write_plot(path: Path, result: dict[str, object]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return False
    samples: list[dict[str, object]] = result["samples"]  # type: ignore[assignment]
    chain: dict[str, object] = result["chain"]  # type: ignore[assignment]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    panels = (
        (("rss_mb", "anon_mb"), "memory (MB): RSS solid, anonymous dashed"),
        (("fds",), "open file descriptors"),
        (("tasks",), "trio tasks"),
    )
    nodes = sorted({str(s["node"]) for s in samples})
    for ax, (figures, title) in zip(axes.flat, panels, strict=False):
        for figure, style in zip(figures, ("-", "--"), strict=False):
            for i, node in enumerate(nodes):
                pts = [
                    (float(s["t_s"]) / 60, s[figure])  # type: ignore[arg-type]
                    for s in samples
                    if s["node"] == node and s[figure] is not None
                ]
                ax.plot(
                    [t for t, _ in pts],
                    [v for _, v in pts],
                    style,
                    color=f"C{i}",
                    label=node if style == "-" else None,
                )
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.axvline(float(result["warmup_s"]) / 60, color="grey", ls=":", lw=1)  # type: ignore[arg-type]
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[3]
    gaps: list[int] = chain.get("gaps_ms", [])  # type: ignore[assignment]
    ax.plot(range(len(gaps)), gaps, lw=0.6)
    if chain.get("stall_limit_ms"):
        ax.axhline(float(chain["stall_limit_ms"]), color="red", ls="--", lw=1, label="stall limit")  # type: ignore[arg-type]
    if chain.get("slow_limit_ms"):
        ax.axhline(float(chain["slow_limit_ms"]), color="orange", ls=":", lw=1, label="3 x median")  # type: ignore[arg-type]
    ax.set_yscale("log")
    ax.set_title(f"block interval (ms), median {chain.get('median_interval_ms')}")
    ax.set_xlabel("block")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"Soak: {result['validators']} validators, {result['soak_tps']} tx/s "
        f"({result['fraction']} of {result['saturated_tps']} saturated), {result['minutes']} min"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION)
    parser.add_argument("--rate", type=float, default=None, help="soak tx/s (skips the search)")
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=1024)
    parser.add_argument("--search-step-s", type=float, default=SEARCH_STEP_S)
    parser.add_argument("--warmup-s", type=float, default=WARMUP_S)
    parser.add_argument("--timeout-commit-ms", type=int, default=TIMEOUT_COMMIT_MS)
    parser.add_argument("--base-port", type=int, default=29800)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write")
    ns = parser.parse_args()
    if ns.minutes <= 0 or not 0 < ns.fraction <= 1 or ns.warmup_s >= ns.minutes * 60:
        parser.error("need --minutes > 0, 0 < --fraction <= 1 and --warmup-s below the soak")
    check_ports_free(ns.base_port, ns.validators)
    results: Path = ns.results
    results.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M")
    loadavg = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="archipelago-soak-") as tmp:
        result = trio.run(run, ns, Path(tmp))
    result.update(
        command="python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        date=started,
        loadavg_start=loadavg,
        loadavg_end=round(os.getloadavg()[0], 2),
        cpus=os.cpu_count(),
        validators=ns.validators,
        minutes=ns.minutes,
        fraction=ns.fraction,
        sample_interval_s=SAMPLE_INTERVAL_S,
        thresholds={
            "growth_pct_per_hour_max": GROWTH_PCT_PER_HOUR_MAX,
            "thirds_growth_pct_max": THIRDS_GROWTH_PCT_MAX,
            "growth_abs_min": GROWTH_ABS_MIN,
            "stall_block_intervals": STALL_INTERVALS,
            "slow_medians": SLOW_MEDIANS,
        },
    )
    failures = verdict(result)
    result["failures"] = failures
    (results / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    if write_plot(results / "soak.png", result):
        log(f"wrote {results / 'soak.png'}")
    for t in result["trends"]:  # type: ignore[attr-defined]
        log(
            f"{t['node']} {t['figure']:>6}: {t['first_third']} -> {t['last_third']} "
            f"({t['thirds_growth_pct']:+.1f} %), slope {t['slope_per_hour']:+.2f}/h "
            f"({t['slope_pct_per_hour']:+.1f} %/h){'  GROWS' if t['grows'] else ''}"
        )
    chain: dict[str, object] = result["chain"]  # type: ignore[assignment]
    log(
        f"chain: {chain['blocks']} blocks, median interval {chain.get('median_interval_ms')} ms, "
        f"max {chain.get('max_interval_ms')} ms; stall limit {chain.get('stall_limit_ms')} ms "
        f"(3 block intervals): {len(chain['stalls'])} stalls; "  # type: ignore[arg-type]
        f"over {chain.get('slow_limit_ms')} ms (3 x the median): "
        f"{len(chain.get('slow', []))} slow blocks"  # type: ignore[arg-type]
    )
    log("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
    summary = {k: v for k, v in result.items() if k not in ("samples", "search")}
    summary["chain"] = {k: v for k, v in chain.items() if k != "gaps_ms"}
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
