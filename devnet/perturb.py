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
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from consensus.types import tx_id
from devnet.load import SINK_ADDRESS, TRANSFER_AMOUNT, LoadGenerator
from devnet.perturb_checks import (
    AckedTx,
    CheckResult,
    NodeHistory,
    block_record,
    check_acked_txs,
    check_block_hashes,
    check_votes,
    commit_votes,
)
from devnet.processes import (
    LocalnetError,
    NodeProcess,
    check_ports_free,
    death_report,
    load_accounts,
    make_testnet,
    start_node,
    stop_nodes,
    wait_ready,
)
from node.clock import CLOCK_OFFSET_ENV
from node.config import Address, load_config, save_config
from node.home import DEFAULT_TESTNET_CHAIN_ID, TESTNET_VALIDATORS_MAX, HomeError, NodeHome

PROG = "archipelago perturb"
EXIT_OK, EXIT_FAILURE = 0, 1
KINDS = ("kill", "paused-kill", "pause", "restart", "disconnect", "clock-skew", "disk-full")
DEFAULT_VALIDATORS = 4
DEFAULT_BASE_PORT = 27800
DEFAULT_LOAD_TPS = 40.0
DEFAULT_TIMEOUT_COMMIT_MS = 500  # shorter heights: more blocks under each perturbation
STALL_BLOCK_INTERVALS = 3
POLL_INTERVAL_S = 0.25  # between /status polls of one node
STATUS_TIMEOUT_S = 1.0  # a paused node does not answer: give up on this poll after this long
GAP_S = (0.3, 1.5)  # from a settled network to the perturbation: the seed picks in this range
DOWN_S = (0.3, 2.5)  # a killed node stays down this long
HOLD_S = (2.0, 6.0)  # a pause, partition, skew or full disk lasts this long
CLOCK_SKEW_MS = (1000, 5000)  # magnitude; the seed picks the sign (the drift bound is 10 s)
SETTLE_TIMEOUT_S = 120.0  # every node back within SETTLE_LAG_BLOCKS of the tip
SETTLE_LAG_BLOCKS = 1
CATCH_UP_TIMEOUT_S = 120.0
FINAL_BLOCKS = 3  # after the last round, every node must reach the tip plus this many
TERM_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
PROBE_ACCOUNTS = 4  # accounts reserved for the committed-ack prober, one task each
PROBE_INTERVAL_S = 0.5
PROBE_HTTP_TIMEOUT_S = 15.0  # above the node's tx_wait_timeout_ms (10 s)
FETCH_HTTP_TIMEOUT_S = 30.0
# The disk-full node's data/: measured 3.5 MiB after 166 s at 40 tx/s, so about 40 MiB
# for 30 minutes; a full tmpfs holds this much memory until the round deletes the filler.
DISK_TMPFS_BYTES = 128 * 1024 * 1024
FILL_CHUNK_BYTES = 1024 * 1024


@dataclass(slots=True)
class Perturbation:
    kind: str
    nodes: tuple[int, ...]
    started_s: float
    detail: str = ""
    ended_s: float | None = None

    def describe(self) -> str:
        names = "+".join(f"node{i}" for i in self.nodes)
        return f"{self.kind} {names}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True)
class CatchUp:
    node: int
    kind: str
    seconds: float | None  # None: not within CATCH_UP_TIMEOUT_S


@dataclass(slots=True)
class Stall:
    started_s: float  # when the last block before it was first seen
    seconds: float
    causes: list[str]
    affected: set[int]
    affected_max: int
    open: bool = True


@dataclass(slots=True)
class Outcome:
    perturbations: list[Perturbation] = field(default_factory=list)
    catch_ups: list[CatchUp] = field(default_factory=list)
    stalls: list[Stall] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # events that fail the run by themselves
    notes: list[str] = field(default_factory=list)  # skipped rounds and other remarks
    acked: list[AckedTx] = field(default_factory=list)


# ---------------------------------------------------------------- the schedule


def schedule(rng: random.Random, counts: dict[str, int]) -> list[str]:
    """Every round's kind, in a seed-chosen order."""
    rounds = [kind for kind in KINDS for _ in range(counts.get(kind, 0))]
    rng.shuffle(rounds)
    return rounds


def fault_tolerance(validators: int) -> int:
    """f: how many of `validators` equal-power validators may fail (n >= 3f + 1)."""
    return (validators - 1) // 3


# ---------------------------------------------------------------- the network


class Network:
    """The node processes, what each last answered, and which are affected by a perturbation."""

    def __init__(self, folder: Path, homes: list[NodeHome], nodes: list[NodeProcess]) -> None:
        self.folder = folder
        self.homes = homes
        self.nodes = nodes
        self.heights = [0] * len(nodes)
        self.signing = [False] * len(nodes)
        self.answered_s = [float("-inf")] * len(nodes)
        self.affected: dict[int, str] = {}
        self.active: list[Perturbation] = []
        self.last_ended: Perturbation | None = None
        self.tip = 0
        self.tip_at_s = trio.current_time()

    @property
    def size(self) -> int:
        return len(self.nodes)

    async def poll(self, i: int) -> None:
        """Keep heights[i] and answered_s[i] current, until cancelled."""
        async with httpx.AsyncClient(timeout=STATUS_TIMEOUT_S) as http:
            while True:
                try:
                    r = await http.get(self.nodes[i].url + "/status")
                    if r.status_code == 200:
                        status = r.json()
                        self.heights[i] = int(status["latest_height"])
                        self.signing[i] = bool(status["validator"]["signing"])
                        self.answered_s[i] = trio.current_time()
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    pass  # down, paused or starting: the stall watcher sees no progress
                await trio.sleep(POLL_INTERVAL_S)

    def others_tip(self, i: int) -> int:
        return max((h for j, h in enumerate(self.heights) if j != i), default=0)

    def begin(self, p: Perturbation, affected: dict[int, str]) -> None:
        self.active.append(p)
        self.affected.update(affected)

    def end(self, p: Perturbation) -> None:
        p.ended_s = trio.current_time()
        self.active.remove(p)
        for i in p.nodes:
            self.affected.pop(i, None)
        self.last_ended = p

    async def kill(self, i: int) -> None:
        node = self.nodes[i]
        node.stopping = True
        if node.process.returncode is None:
            node.process.kill()
        await node.process.wait()
        node.exit_code = node.process.returncode
        node.log_file.close()

    async def terminate(self, i: int) -> None:
        node = self.nodes[i]
        node.stopping = True
        if node.process.returncode is None:
            node.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(TERM_TIMEOUT_S):
            await node.process.wait()
        await self.kill(i)

    async def start(self, i: int, env: dict[str, str] | None = None) -> None:
        log = self.folder / f"node{i}.log"
        self.nodes[i] = await start_node(i, self.homes[i], log, env)

    def signal(self, i: int, sig: signal.Signals) -> None:
        self.nodes[i].process.send_signal(sig)


# ---------------------------------------------------------------- the runner


class Runner:
    def __init__(
        self,
        net: Network,
        rng: random.Random,
        stall_threshold_s: float,
        disk_node: int | None,
        disk_mount: Path | None,
    ) -> None:
        self.net = net
        self.rng = rng
        self.f = fault_tolerance(net.size)
        self.stall_threshold_s = stall_threshold_s
        self.disk_node = disk_node
        self.disk_mount = disk_mount
        self.out = Outcome()
        self.started_s = trio.current_time()

    def _t(self) -> str:
        return f"{trio.current_time() - self.started_s:7.1f}s"

    def say(self, text: str) -> None:
        print(f"perturb {self._t()}: {text}", flush=True)

    # ------------------------------------------------------------ watching

    async def watch_stalls(self) -> None:
        """Open a stall when no node has a new block for the threshold; close it on the next one."""
        net = self.net
        current: Stall | None = None
        while True:
            await trio.sleep(POLL_INTERVAL_S)
            now = trio.current_time()
            tip = max(net.heights)
            if tip > net.tip:
                if current is not None:
                    current.seconds = now - current.started_s
                    current.open = False
                    self._report_stall(current)
                    current = None
                net.tip, net.tip_at_s = tip, now
                continue
            if current is None and now - net.tip_at_s > self.stall_threshold_s:
                current = Stall(net.tip_at_s, now - net.tip_at_s, [], set(), 0)
                self.out.stalls.append(current)
            if current is not None:
                current.seconds = now - current.started_s
                current.affected |= set(net.affected)
                current.affected_max = max(current.affected_max, len(net.affected))
                causes = [p.describe() for p in net.active]
                if not causes and net.last_ended is not None:
                    causes = [f"none active, after {net.last_ended.describe()}"]
                for c in causes:
                    if c not in current.causes:
                        current.causes.append(c)

    def _report_stall(self, s: Stall) -> None:
        self.say(
            f"STALL of {s.seconds:.1f} s at height {self.net.tip} "
            f"(threshold {self.stall_threshold_s:.1f} s): {'; '.join(s.causes) or 'no cause'}; "
            f"affected {sorted(s.affected)} (at most {s.affected_max} at once)"
        )

    # ------------------------------------------------------------ waiting

    def _check_alive(self, exempt: Sequence[int] = ()) -> None:
        for node in self.net.nodes:
            if node.index not in exempt and node.process.poll() is not None and not node.stopping:
                raise LocalnetError(death_report(node))

    async def settle(self) -> None:
        """Until every node is within SETTLE_LAG_BLOCKS of the tip, signing, and answered recently.

        Signing matters: a restarted validator watches DOPPELGANGER heights for
        its own key before it signs again, and until then it is as good as down
        for liveness; perturbing another node meanwhile would exceed f.
        """
        net = self.net
        with trio.move_on_after(SETTLE_TIMEOUT_S):
            while True:
                self._check_alive()
                now = trio.current_time()
                tip = max(net.heights)
                if all(
                    h >= tip - SETTLE_LAG_BLOCKS and signing and now - a < 2 * STATUS_TIMEOUT_S
                    for h, signing, a in zip(net.heights, net.signing, net.answered_s, strict=True)
                ):
                    return
                await trio.sleep(POLL_INTERVAL_S)
        lagging = [
            f"node{i}@{h}{'' if signing else ' (not signing)'}"
            for i, (h, signing) in enumerate(zip(net.heights, net.signing, strict=True))
        ]
        raise LocalnetError(f"the network did not settle in {SETTLE_TIMEOUT_S:.0f} s: {lagging}")

    async def catch_up(self, i: int, kind: str, since_s: float) -> None:
        """Record how long node i took from `since_s` to reach the others' tip of now and sign.

        The node stays affected (counted against f) until then: see `settle`.
        """
        net = self.net
        target = net.others_tip(i)
        with trio.move_on_after(CATCH_UP_TIMEOUT_S):
            while True:
                node = net.nodes[i]
                if node.process.poll() is not None:
                    self.out.failures.append(f"{kind}: {death_report(node)}")
                    self.out.catch_ups.append(CatchUp(i, kind, None))
                    return
                if net.heights[i] >= target and net.signing[i] and net.answered_s[i] > since_s:
                    seconds = net.answered_s[i] - since_s
                    self.out.catch_ups.append(CatchUp(i, kind, seconds))
                    self.say(f"node{i} caught up to {target} in {seconds:.1f} s after {kind}")
                    return
                await trio.sleep(POLL_INTERVAL_S / 2)
        self.out.catch_ups.append(CatchUp(i, kind, None))
        self.out.failures.append(
            f"{kind}: node{i} did not reach height {target} within {CATCH_UP_TIMEOUT_S:.0f} s "
            f"(at {net.heights[i]})"
        )

    # ------------------------------------------------------------ the rounds

    async def run_round(self, kind: str) -> None:
        await self.settle()
        await trio.sleep(self.rng.uniform(*GAP_S))
        await getattr(self, "_" + kind.replace("-", "_"))()

    def _pick(self, count: int = 1) -> list[int]:
        return self.rng.sample(range(self.net.size), count)

    def _begin(self, kind: str, nodes: Sequence[int], what: str, detail: str = "") -> Perturbation:
        assert len(self.net.affected) + len(nodes) <= self.f, "more than f affected"
        p = Perturbation(kind, tuple(nodes), trio.current_time(), detail)
        self.net.begin(p, {i: what for i in nodes})
        self.out.perturbations.append(p)
        self.say(p.describe())
        return p

    async def _kill(self) -> None:
        (i,) = self._pick()
        down_s = self.rng.uniform(*DOWN_S)
        p = self._begin("kill", [i], "killed", f"down {down_s:.1f} s")
        await self.net.kill(i)
        await trio.sleep(down_s)
        await self.net.start(i)
        restarted = trio.current_time()
        await self.catch_up(i, "kill", restarted)
        self.net.end(p)

    async def _paused_kill(self) -> None:
        a, b = self._pick(2)
        down_s = self.rng.uniform(*DOWN_S)
        pause = self._begin("pause", [a], "paused", "for a kill")
        self.net.signal(a, signal.SIGSTOP)
        kill = self._begin("kill", [b], "killed", f"down {down_s:.1f} s while node{a} is paused")
        try:
            await self.net.kill(b)
            await trio.sleep(down_s)
            await self.net.start(b)
            restarted = trio.current_time()
            await self.catch_up(b, "paused-kill", restarted)
            self.net.end(kill)
        finally:
            self.net.signal(a, signal.SIGCONT)
        resumed = trio.current_time()
        await self.catch_up(a, "pause", resumed)
        self.net.end(pause)

    async def _pause(self) -> None:
        (i,) = self._pick()
        hold_s = self.rng.uniform(*HOLD_S)
        p = self._begin("pause", [i], "paused", f"{hold_s:.1f} s")
        self.net.signal(i, signal.SIGSTOP)
        try:
            await trio.sleep(hold_s)
        finally:
            self.net.signal(i, signal.SIGCONT)
        resumed = trio.current_time()
        await self.catch_up(i, "pause", resumed)
        self.net.end(p)

    async def _restart(self) -> None:
        (i,) = self._pick()
        p = self._begin("restart", [i], "restarting", "SIGTERM")
        await self.net.terminate(i)
        code = self.net.nodes[i].exit_code
        if code != 0:
            self.out.failures.append(f"restart: node{i} exited with {code} on SIGTERM")
        await self.net.start(i)
        restarted = trio.current_time()
        await self.catch_up(i, "restart", restarted)
        self.net.end(p)

    async def _disconnect(self) -> None:
        (i,) = self._pick()
        hold_s = self.rng.uniform(*HOLD_S)
        path = self.net.homes[i].paths.config
        original = path.read_text()
        config = load_config(path)
        port = _unused_port()
        isolated = replace(
            config,
            p2p=replace(
                config.p2p, listen=Address("127.0.0.1", port), persistent_peers=(), pex=False
            ),
        )
        p = self._begin("disconnect", [i], "isolated", f"{hold_s:.1f} s, p2p on :{port}, no peers")
        await self.net.terminate(i)
        save_config(path, isolated)
        try:
            await self.net.start(i)
            await trio.sleep(hold_s)
            await self.net.terminate(i)
        finally:
            path.write_text(original)
        await self.net.start(i)
        restarted = trio.current_time()
        await self.catch_up(i, "disconnect", restarted)
        self.net.end(p)

    async def _clock_skew(self) -> None:
        (i,) = self._pick()
        hold_s = self.rng.uniform(*HOLD_S)
        skew_ms = self.rng.choice((-1, 1)) * self.rng.randint(*CLOCK_SKEW_MS)
        p = self._begin("clock-skew", [i], "skewed", f"{skew_ms:+d} ms for {hold_s:.1f} s")
        await self.net.terminate(i)
        await self.net.start(i, {CLOCK_OFFSET_ENV: str(skew_ms)})
        skewed = trio.current_time()
        await trio.sleep(hold_s)
        await self.catch_up(i, "clock-skew (skewed)", skewed)
        await self.net.terminate(i)
        await self.net.start(i)
        restarted = trio.current_time()
        await self.catch_up(i, "clock-skew", restarted)
        self.net.end(p)

    async def _disk_full(self) -> None:
        if self.disk_node is None or self.disk_mount is None:
            self.out.notes.append("disk-full round skipped: needs root to mount a tmpfs")
            return
        i = self.disk_node
        hold_s = self.rng.uniform(*HOLD_S)
        filler = self.disk_mount / "perturb-filler"
        p = self._begin("disk-full", [i], "disk full", f"{hold_s:.1f} s")
        written = await trio.to_thread.run_sync(_fill, filler)
        p.detail += f", {written // 1024} KiB written to fill it"
        await trio.sleep(hold_s)
        filler.unlink()
        node = self.net.nodes[i]
        if node.process.poll() is not None:
            tail = " | ".join(node.log_tail(3))
            self.out.notes.append(
                f"disk-full: node{i} exited with {node.process.returncode} (last log: {tail})"
            )
            self.say(f"node{i} exited with {node.process.returncode} on the full disk")
            await self.net.kill(i)  # reaps it and closes its log
            await self.net.start(i)
        freed = trio.current_time()
        await self.catch_up(i, "disk-full", freed)
        self.net.end(p)


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fill(path: Path) -> int:
    """Write to `path` until the file system is full; returns the bytes written."""
    chunk = b"\0" * FILL_CHUNK_BYTES
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError:
                break
        # The last partial chunk: byte runs until not even one fits.
        size = FILL_CHUNK_BYTES // 2
        while size:
            try:
                written += f.write(chunk[:size]) or 0
            except OSError:
                size //= 2
    return written


# ---------------------------------------------------------------- committed-ack prober


class Prober:
    """Transfers with `wait=commit`; records each one an API answer says is committed.

    One task per account, one transaction at a time: a transaction whose fate
    is unknown (a timeout, a node killed mid-request) is submitted again as
    it is, to another node, until an answer says where it committed, so one
    account's nonces never skip.
    """

    def __init__(
        self, net: Network, keys: Sequence[PrivateKey], chain_id: str, out: Outcome, seed: int
    ) -> None:
        self.net = net
        self.keys = list(keys)
        self.chain_id = chain_id
        self.out = out
        self.rng = random.Random(seed)  # apart from the schedule's: timing decides its draws

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=PROBE_HTTP_TIMEOUT_S) as http:
            async with trio.open_nursery() as nursery:
                for key in self.keys:
                    nursery.start_soon(self._account, http, key)

    def _target(self) -> NodeProcess:
        healthy = [n for n in self.net.nodes if n.index not in self.net.affected]
        return self.rng.choice(healthy or self.net.nodes)

    async def _account(self, http: httpx.AsyncClient, key: PrivateKey) -> None:
        nonce = 0
        while True:
            raw = transfer_tx(key, self.chain_id, nonce, SINK_ADDRESS, TRANSFER_AMOUNT).encode()
            while not await self._submit(http, raw):
                await trio.sleep(PROBE_INTERVAL_S)
            nonce += 1
            await trio.sleep(PROBE_INTERVAL_S)

    async def _submit(self, http: httpx.AsyncClient, raw: bytes) -> bool:
        """True once an answer says where `raw` committed (recorded); False to try again.

        Any answer but 200 (a timeout, "duplicate", "committed", a refused nonce
        because an earlier attempt committed) is followed by GET /tx on the same
        node, whose "committed" answer with its height is an acknowledgement too.
        """
        node = self._target()
        txid = tx_id(raw).hex()
        try:
            r = await http.post(
                node.url + "/tx?wait=commit",
                content=raw,
                headers={"content-type": "application/octet-stream"},
            )
            if r.status_code == 200:
                self.out.acked.append(AckedTx(txid, int(r.json()["height"]), node.name))
                return True
            r = await http.get(f"{node.url}/tx/{txid}")
            tx: dict[str, Any] = r.json()
            if r.status_code == 200 and tx.get("status") == "committed":
                self.out.acked.append(AckedTx(txid, int(tx["height"]), node.name))
                return True
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass  # killed or paused mid-request: the same transaction goes again
        return False


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
