"""The perturbation runner's moving parts: the rounds, the network they act on, the prober.

devnet/perturb.py is the command (its docstring describes each round and
check); this module holds what runs during the rounds: `Network` (the node
processes, what each last answered, which are affected), `Runner` (settling,
one method per kind of round, catch-up timing, the stall watcher) and
`Prober` (transfers submitted with `wait=commit`, each acknowledgement
recorded with its height).
"""

from __future__ import annotations

import random
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from consensus.types import tx_id
from devnet.load import SINK_ADDRESS, TRANSFER_AMOUNT
from devnet.perturb_checks import (
    AckedTx,
)
from devnet.processes import (
    LocalnetError,
    NodeProcess,
    death_report,
    start_node,
)
from node.clock import CLOCK_OFFSET_ENV
from node.config import Address, load_config, save_config
from node.home import NodeHome

KINDS = ("kill", "paused-kill", "pause", "restart", "disconnect", "clock-skew", "disk-full")
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
TERM_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
PROBE_INTERVAL_S = 0.5
PROBE_HTTP_TIMEOUT_S = 15.0  # above the node's tx_wait_timeout_ms (10 s)
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
        self.nodes[i] = await start_node(i, self.homes[i], log, env_extra=env)

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
            lines = node.log_tail(40)  # the traceback's last "...Error: ..." line says why
            tail = next((x.strip(" |") for x in reversed(lines) if "Error" in x), "no log")
            self.out.notes.append(
                f"disk-full: node{i} exited with {node.process.returncode} (log: {tail})"
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
