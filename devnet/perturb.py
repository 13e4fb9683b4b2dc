"""`archipelago perturb`: seeded faults on a real local network under load, then checks.

Why it exists: the fault tests elsewhere are single scenarios. This runner,
in the spirit of CometBFT's e2e runner, starts a testnet of real node
processes on loopback (devnet/processes.py), drives ledger transfers at them
(devnet/load.py), and applies a seeded schedule of perturbations one round
at a time, never with more than f validators affected at once:

- kill: SIGKILL, down for a seed-chosen while, then started again;
- paused-kill: SIGSTOP one validator, kill another, restart it, SIGCONT the first
  (needs f >= 2, i.e. 7 validators or more);
- pause: SIGSTOP, a hold, SIGCONT;
- restart: SIGTERM (a clean stop), then started again;
- disconnect: the node is restarted with no persistent peers, PEX off and its
  p2p listener on another port, so nobody can reach it and it dials nobody
  (a real partition of one node without root or a firewall); after the hold
  it is restarted with its own config and must rejoin;
- clock-skew: the node is restarted with ARCHIPELAGO_TEST_CLOCK_OFFSET_MS
  (node/clock.py, a test-only knob) a few seconds ahead or behind, held, and
  restarted with a true clock;
- disk-full: one seed-chosen node's data folder is a small tmpfs (when run as
  root; skipped with the reason printed otherwise); the round fills it with a
  file to the last byte, holds, deletes the file and restarts the node if it
  exited.

Meanwhile every node's /status is polled: a stretch with no new block on any
node longer than STALL_BLOCK_INTERVALS block intervals (the config's
`block_interval_ms`: commit timeout plus one round's timeouts) is a stall,
reported with the perturbations active and the nodes affected; with at most
f affected (always, by construction) it is a failure. A prober submits
transfers with `wait=commit` and records every transaction the API
acknowledged as committed, and at which height. After the last round every
node must catch up; then every block and commit of every node is read and
judged by devnet/perturb_checks.py. The exit code is 1 when any check fails.
The rounds, the network they act on and the prober are devnet/perturb_rounds.py.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import trio

from devnet.load import LoadGenerator
from devnet.perturb_checks import (
    CheckResult,
    NodeHistory,
    block_record,
    check_acked_txs,
    check_block_hashes,
    check_votes,
    commit_votes,
)
from devnet.perturb_rounds import (
    CATCH_UP_TIMEOUT_S,
    POLL_INTERVAL_S,
    STALL_BLOCK_INTERVALS,
    Network,
    Prober,
    Runner,
    fault_tolerance,
    schedule,
)
from devnet.processes import (
    LocalnetError,
    NodeProcess,
    check_ports_free,
    load_accounts,
    make_testnet,
    start_node,
    stop_nodes,
    wait_ready,
)
from node.config import load_config
from node.home import DEFAULT_TESTNET_CHAIN_ID, TESTNET_VALIDATORS_MAX, HomeError, NodeHome

PROG = "archipelago perturb"
EXIT_OK, EXIT_FAILURE = 0, 1
DEFAULT_VALIDATORS = 4
DEFAULT_BASE_PORT = 27800
DEFAULT_LOAD_TPS = 40.0
DEFAULT_TIMEOUT_COMMIT_MS = 500  # shorter heights: more blocks under each perturbation
FINAL_BLOCKS = 3  # after the last round, every node must reach the tip plus this many
FETCH_HTTP_TIMEOUT_S = 30.0
PROBE_ACCOUNTS = 4  # accounts reserved for the committed-ack prober, one task each
# The disk-full node's data/: measured 3.5 MiB after 166 s at 40 tx/s, so about 40 MiB
# for 30 minutes; a full tmpfs holds this much memory until the round deletes the filler.
DISK_TMPFS_BYTES = 128 * 1024 * 1024


# ---------------------------------------------------------------- reading the histories


async def read_history(node: NodeProcess, height_max: int) -> NodeHistory:
    blocks = {}
    commits = {}
    async with httpx.AsyncClient(timeout=FETCH_HTTP_TIMEOUT_S) as http:
        for h in range(1, height_max + 1):
            r = await http.get(f"{node.url}/block/{h}")
            if r.status_code == 200:
                blocks[h] = block_record(r.json(), node.name)
            r = await http.get(f"{node.url}/commit/{h}")
            if r.status_code == 200:
                commits[h] = commit_votes(r.json()["commit"], f"{node.name} commit {h}")
    return NodeHistory(node.name, blocks, commits)


async def read_public_keys(node: NodeProcess) -> list[bytes]:
    async with httpx.AsyncClient(timeout=FETCH_HTTP_TIMEOUT_S) as http:
        r = await http.get(f"{node.url}/validators?height=1")
        r.raise_for_status()
        return [bytes.fromhex(v["public_key"]) for v in r.json()["validators"]]


# ---------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a local validator network under load, apply kills, pauses, partitions, "
        "restarts, clock skew and a full disk at seed-chosen moments (at most f validators "
        "at a time), then check every node's blocks, votes and acknowledged transactions.",
    )
    p.add_argument("--validators", type=int, default=DEFAULT_VALIDATORS)
    p.add_argument(
        "--seed", type=int, default=None, help="schedule seed (default: random; printed)"
    )
    p.add_argument("--kills", type=int, default=4, help="kill -9 and restart rounds (default 4)")
    p.add_argument(
        "--paused-kills",
        type=int,
        default=None,
        help="rounds killing one validator while another is paused; needs f >= 2 "
        "(default 1 with 7+ validators, else 0)",
    )
    for kind in ("pause", "restart", "disconnect", "clock-skew", "disk-full"):
        p.add_argument(f"--{kind}s", type=int, default=1, help=f"{kind} rounds (default 1)")
    p.add_argument(
        "--load",
        type=float,
        default=DEFAULT_LOAD_TPS,
        metavar="TPS",
        help=f"offered transfers per second (default {DEFAULT_LOAD_TPS:g})",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="start no round after this many seconds (the checks still run)",
    )
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the testnet in DIR and keep it (default: a temporary folder, "
        "kept only when a check fails)",
    )
    p.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"node i uses base+10i..+2 (default {DEFAULT_BASE_PORT})",
    )
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not 1 <= ns.validators <= TESTNET_VALIDATORS_MAX:
        parser.error(f"--validators: expected 1..{TESTNET_VALIDATORS_MAX}")
    f = fault_tolerance(ns.validators)
    if ns.paused_kills is None:
        ns.paused_kills = 1 if f >= 2 else 0
    counts = {
        "kill": ns.kills,
        "paused-kill": ns.paused_kills,
        "pause": ns.pauses,
        "restart": ns.restarts,
        "disconnect": ns.disconnects,
        "clock-skew": ns.clock_skews,
        "disk-full": ns.disk_fulls,
    }
    if any(c < 0 for c in counts.values()) or ns.load < 0:
        parser.error("round counts and --load must be >= 0")
    if f < 1 and sum(counts.values()):
        parser.error(f"{ns.validators} validators tolerate no fault (f = 0); use 4 or more")
    if f < 2 and ns.paused_kills:
        parser.error(
            f"--paused-kills affects 2 validators at once; {ns.validators} tolerate "
            f"f = {f}: use --validators 7 or more"
        )
    if ns.seed is None:
        ns.seed = random.SystemRandom().randrange(2**32)
    try:
        check_ports_free(ns.base_port, ns.validators)
        if ns.home is not None:
            ns.home.mkdir(parents=True, exist_ok=True)
            return trio.run(_run, ns, counts, ns.home)
        folder = Path(tempfile.mkdtemp(prefix="archipelago-perturb-"))
        code = trio.run(_run, ns, counts, folder)
        if code == EXIT_OK:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"perturb: homes and logs kept in {folder}")
        return code
    except (LocalnetError, HomeError) as e:
        print(f"archipelago: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


def _mount_disk(home: NodeHome) -> tuple[Path | None, str]:
    """Put the node's data/ on a DISK_TMPFS_BYTES tmpfs; (mount point, or None and why not)."""
    if os.geteuid() != 0:
        return None, "not root: cannot mount a tmpfs"
    data = home.paths.data
    saved = data.with_name("data.before-tmpfs")
    data.rename(saved)
    data.mkdir(mode=0o700)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_TMPFS_BYTES},mode=0700", "tmpfs", str(data)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        data.rmdir()
        saved.rename(data)
        return None, f"mount -t tmpfs failed: {r.stderr.strip()}"
    for entry in saved.iterdir():
        shutil.move(str(entry), data / entry.name)
    saved.rmdir()
    return data, ""


def _unmount_disk(mount: Path) -> None:
    """Copy the data back to disk (the kept home stays usable), then unmount."""
    copy = mount.with_name("data.from-tmpfs")
    shutil.copytree(mount, copy, symlinks=True)
    r = subprocess.run(["umount", str(mount)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"perturb: umount {mount} failed ({r.stderr.strip()}); a copy is in {copy}")
        return
    shutil.rmtree(mount)
    copy.rename(mount)


async def _run(ns: argparse.Namespace, counts: dict[str, int], folder: Path) -> int:
    rng = random.Random(ns.seed)
    rounds = schedule(rng, counts)
    homes = make_testnet(
        folder,
        validators=ns.validators,
        base_port=ns.base_port,
        timeout_commit_ms=DEFAULT_TIMEOUT_COMMIT_MS,
    )
    interval_s = load_config(homes[0].paths.config).consensus.block_interval_ms() / 1000
    threshold_s = STALL_BLOCK_INTERVALS * interval_s
    disk_node, disk_mount = None, None
    if counts["disk-full"]:
        disk_node = rng.randrange(ns.validators)
        disk_mount, why = _mount_disk(homes[disk_node])
        if disk_mount is None:
            disk_node = None
            print(f"perturb: disk-full rounds will be skipped: {why}")
    print(
        f"perturb: seed {ns.seed}, {ns.validators} validators "
        f"(f = {fault_tolerance(ns.validators)}), load {ns.load:g} tx/s, {len(rounds)} rounds, "
        f"stall threshold {threshold_s:.1f} s "
        f"({STALL_BLOCK_INTERVALS} block intervals of {interval_s:.1f} s), folder {folder}",
        flush=True,
    )
    started: list[NodeProcess] = []
    net: Network | None = None
    try:
        for i, home in enumerate(homes):
            started.append(await start_node(i, home, folder / f"node{i}.log"))
        net = Network(folder, homes, started)
        await wait_ready(started)
        runner = Runner(net, rng, threshold_s, disk_node, disk_mount)
        results = await _drive(ns, runner, rounds, folder)
        _print_summary(ns, runner, results)
        failed = runner.out.failures or not all(r.passed for r in results)
        return EXIT_FAILURE if failed else EXIT_OK
    finally:
        # A restart replaces a node's entry in net.nodes: stop what runs now.
        await stop_nodes(net.nodes if net is not None else started)
        if disk_mount is not None:
            _unmount_disk(disk_mount)


async def _drive(
    ns: argparse.Namespace, runner: Runner, rounds: list[str], folder: Path
) -> list[CheckResult]:
    net = runner.net
    accounts = load_accounts(folder)
    load_keys, probe_keys = accounts[:-PROBE_ACCOUNTS], accounts[-PROBE_ACCOUNTS:]
    targets = [(n.rpc_host, n.rpc_port) for n in net.nodes]
    load = LoadGenerator(load_keys, DEFAULT_TESTNET_CHAIN_ID, targets, ns.load)
    prober = Prober(net, probe_keys, DEFAULT_TESTNET_CHAIN_ID, runner.out, ns.seed + 1)
    async with trio.open_nursery() as watchers:
        for i in range(net.size):
            watchers.start_soon(net.poll, i)
        watchers.start_soon(runner.watch_stalls)
        async with trio.open_nursery() as traffic:
            if ns.load > 0:
                traffic.start_soon(load.run)
            traffic.start_soon(prober.run)
            aborted = False
            try:
                for n, kind in enumerate(rounds, 1):
                    elapsed = trio.current_time() - runner.started_s
                    if ns.duration is not None and elapsed >= ns.duration:
                        runner.out.notes.append(
                            f"--duration {ns.duration:g} s reached: {len(rounds) - n + 1} "
                            "rounds not run"
                        )
                        break
                    runner.say(f"round {n}/{len(rounds)}: {kind}")
                    await runner.run_round(kind)
                await runner.settle()
                await _wait_all_at(runner, net.tip + FINAL_BLOCKS)
            except LocalnetError as e:
                runner.out.failures.append(str(e))
                aborted = True
            traffic.cancel_scope.cancel()
        if not aborted:
            # The prober is stopped; every height it recorded must be reached everywhere
            # (the node that answered may have been a block ahead of the others).
            try:
                await _wait_all_at(runner, max((a.height for a in runner.out.acked), default=0))
            except LocalnetError as e:
                runner.out.failures.append(str(e))
        # A node that died is a failure already; the chain is read from the others.
        alive = [n for n in net.nodes if n.process.poll() is None]
        height_max = min((net.heights[n.index] for n in alive), default=0)
        watchers.cancel_scope.cancel()
    if not alive:
        return [CheckResult("read the chain", False, "no node is running")]
    runner.say(f"reading heights 1..{height_max} from {len(alive)} nodes")
    read: dict[int, NodeHistory] = {}

    async def read_one(node: NodeProcess) -> None:
        read[node.index] = await read_history(node, height_max)

    async with trio.open_nursery() as readers:
        for node in alive:
            readers.start_soon(read_one, node)
    histories = [read[n.index] for n in alive]
    keys = await read_public_keys(alive[0])
    load_stats = load.statistics()
    runner.out.notes.append(
        f"load: {load_stats.submitted} submitted, {load_stats.admitted} admitted, "
        f"{load_stats.errors} connection errors"
    )
    return [
        check_block_hashes(histories, height_max),
        check_votes(histories, DEFAULT_TESTNET_CHAIN_ID, keys),
        check_acked_txs(histories, runner.out.acked, height_max),
    ]


async def _wait_all_at(runner: Runner, height: int) -> None:
    with trio.move_on_after(CATCH_UP_TIMEOUT_S):
        while min(runner.net.heights) < height:
            runner._check_alive()
            await trio.sleep(POLL_INTERVAL_S)
        return
    raise LocalnetError(f"not every node reached height {height}: {runner.net.heights}")


def _print_summary(ns: argparse.Namespace, runner: Runner, results: list[CheckResult]) -> None:
    out = runner.out
    elapsed = trio.current_time() - runner.started_s
    kinds: dict[str, int] = {}
    for p in out.perturbations:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    print(f"perturb summary: seed {ns.seed}, {runner.net.size} validators, {elapsed:.0f} s")
    print("  perturbations: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    for label, wanted in (("after kill -9", ("kill", "paused-kill")), ("after any", None)):
        times = sorted(
            c.seconds
            for c in out.catch_ups
            if c.seconds is not None and (wanted is None or c.kind in wanted)
        )
        if times:
            print(
                f"  catch-up {label}: n {len(times)}, median {statistics.median(times):.1f} s, "
                f"max {times[-1]:.1f} s"
            )
    failed_stalls = [s for s in out.stalls if s.affected_max <= runner.f]
    print(f"  stalls over {runner.stall_threshold_s:.1f} s: {len(out.stalls)}")
    for s in out.stalls:
        print(
            f"    {s.seconds:.1f} s from t={s.started_s - runner.started_s:.1f} s: "
            f"{'; '.join(s.causes) or 'no perturbation'}; affected {sorted(s.affected)}"
        )
    print(f"  transactions acknowledged as committed: {len(out.acked)}")
    for note in out.notes:
        print(f"  note: {note}")
    checks = [
        *results,
        CheckResult(
            "no stall with at most f affected", not failed_stalls, f"{len(failed_stalls)} stalls"
        ),
        CheckResult(
            "every perturbed node caught up, none died",
            not out.failures,
            "; ".join(out.failures) or f"{len(out.catch_ups)} catch-ups",
        ),
    ]
    for c in checks:
        print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
    passed = sum(c.passed for c in checks)
    print(f"perturb: {passed}/{len(checks)} checks passed", flush=True)
