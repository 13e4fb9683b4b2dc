"""A deterministic whole-cluster simulator that runs the node's own consensus code.

The main test of the node (TigerBeetle's habit). Every simulated node is the
daemon minus its trio shell: the consensus driver (node/driver.py) with its
machine, sync planner and evidence pool, the real chain (node/chain.py:
validation core, kvstore application, LMDB store), the real write-ahead log
and the real durable sign state, each in its own home folder under a
temporary directory (on /dev/shm when there is one). Only the clock and the
network are virtual: a message is a payload of bytes that a node decodes with
node/messages.py at the edge, as the reactor does, and hands to its driver;
the driver's effects are performed here the way node/consensus_service.py
performs them. A crash drops the process (driver and pending work) and a
restart reopens the same files, so recovery is the daemon's own.

Every choice comes from one `random.Random(seed)`, so a seed reproduces a run
byte for byte. Faults, all seed-chosen within a window:

- the network delays, reorders, drops and duplicates messages, partitions and
  heals; gossip is deduplicated per node as the network's seen-cache does;
- honest nodes crash and restart, alone or several (up to all validators) at
  once, which makes restarted validators run their doppelganger watch;
- up to f Byzantine validators equivocate (each peer gets one of two signed
  versions) or run as twins (two nodes with one key), or follow a script
  ("lock-attack", "amnesia-attack");
- a hostile peer without a key, connected to every node, runs one attack:
  false height claims to one or several nodes ("claims"), proposals whose body
  is not their header's before the genuine one ("body-swap") or after it
  ("overwrite"), forged next-height proposals and votes ("next-flood"), copies
  of real votes in direct batches ("dup-flood"), forged decided blocks
  ("forged-decided"), forged votes carrying a validator's address ("victim").

After each run the checker asserts agreement (no two honest nodes commit
different blocks at a height), validity (each committed block was proposed,
signed, by the proposer of its commit round, carries a valid certificate and
no evidence against an honest validator), that no honest node blamed another
honest node (a false `Penalise`), and liveness (every honest node reaches the
target height within `LIVENESS_BOUND_MS` of virtual time after the last fault
healed).

Run it as `archipelago simulate ...` or `python -m node.simulator ...`.

Over the house's 600 lines: the engine, the checker, the hostile peer and the
scripted scenarios share the simulation's state; they become modules of
their own when the simulator moves to its own package (issue 12, `sim/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.apps.kvstore import set_tx
from consensus.codec import DecodeError, encode
from consensus.crypto import PrivateKey, sha256
from consensus.machine import ConsensusConfig, ConsensusMachine
from consensus.proposer import ProposerSchedule
from consensus.sigverify import SignatureVerifier
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Genesis,
    GenesisValidator,
    Proposal,
    Transaction,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    data_hash,
)
from consensus.validation import BlockInvalid
from network import Misbehaviour as PeerFault
from node.chain import Chain
from node.driver import Driver
from node.effects import (
    AnnounceVoterState,
    Apply,
    Build,
    DriverConfig,
    Effect,
    Gossip,
    Log,
    Penalise,
    Send,
    ServeBlocks,
    ServeDecided,
    Sign,
    StopSigning,
    Validate,
    VerifySynced,
)
from node.messages import (
    TAG_DECIDED,
    TAG_SYNC_BLOCK,
    DecidedMsg,
    ProposalMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    VoteMsg,
    VoterStateMsg,
    decode_message,
    encode_message,
    stored_block_message,
    voter_state_sign_bytes,
)
from node.signstate import DoubleSignRefused, SignState, SignStateError
from node.storage import open_store
from node.wal import open as open_wal

__all__ = [
    "ATTACKS",
    "MODES",
    "BatchResult",
    "Faults",
    "NodeReport",
    "RunResult",
    "main",
    "run_batch",
    "simulate",
]

CHAIN_ID = "archipelago-sim"
MODES = ("equivocate", "twins", "lock-attack", "amnesia-attack")
ATTACKS = (
    "claims",
    "body-swap",
    "overwrite",
    "next-flood",
    "dup-flood",
    "forged-decided",
    "victim",
)
# Fast timeouts keep virtual runs short; they still grow per round, as in production.
SIM_CONSENSUS = ConsensusConfig(
    timeout_propose_ms=1000,
    timeout_propose_delta_ms=200,
    timeout_prevote_ms=500,
    timeout_prevote_delta_ms=100,
    timeout_precommit_ms=500,
    timeout_precommit_delta_ms=100,
    timeout_commit_ms=0,
    skip_timeout_commit=True,
)
# Small lags so that a short run exercises block sync and mode switches.
SIM_DRIVER = DriverConfig(
    consensus=SIM_CONSENSUS,
    watch_heights=2,
    watch_halt_s=5.0,
    blocksync=True,
    fallback_lag_heights=3,
    decided_heights_behind_max=2,
)
BLOCK_TXS_MAX = 4  # client transactions per block (a validator change adds one)
CLIENTS = 3  # simulated client keys signing kvstore transactions
VALUE_BYTES = 16  # random bytes after the 8-byte nonce record in each written value
POWER_MAX = 10  # seed-chosen voting power per validator is 1..POWER_MAX
VALIDATOR_CHANGE_PROBABILITY = 0.2  # per built block: try one ["val", pk, power]
VALIDATION_DELAY_MS_MAX = 5
SEEN_ENTRIES_MAX = 4096  # per node, as the network's seen-cache (oldest evicted)
LIVENESS_BOUND_MS = 120_000
HEIGHTS_AFTER_HEAL = 2  # heights every honest node must commit after the last fault healed
ATTACK_INTERVAL_MS = 300  # a hostile peer acts this often during the fault window
STORE_MAP_BYTES = 64 * 1024 * 1024  # per node; a run stores a few dozen small blocks

# The lock-attack scenario's script, in virtual ms (see _LockAttack).
ATTACK_PROPOSE_MS = 100
ATTACK_NIL_PRECOMMIT_MS = 200
ATTACK_SPLIT_MS = 600
ATTACK_DECIDE_MS = 650
ATTACK_CLAIM_MS = 700  # amnesia-attack: the false claim to c
ATTACK_HEAL_MS = 4_000
AMNESIA_HEAL_MS = 12_000


@dataclass(frozen=True, slots=True)
class Faults:
    """What the network, the nodes and a hostile peer do wrong, and until when (virtual ms)."""

    drop_probability: float = 0.1
    duplicate_probability: float = 0.05
    delay_ms_min: int = 1
    delay_ms_max: int = 150
    partitions: int = 1  # partition episodes within the window
    crashes: int = 1  # single honest node crash/restart episodes within the window
    mass_restarts: int = 0  # episodes restarting 2..all honest validators together
    attacks: tuple[str, ...] = ()  # hostile peer attacks; one is chosen by the seed
    window_ms: int = 8_000

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1, 50, 0, 0, 0, (), 0)

    @classmethod
    def everything(cls) -> Faults:
        """Network faults, crashes, a mass restart and one seed-chosen peer attack."""
        return cls(mass_restarts=1, attacks=ATTACKS)

    @classmethod
    def scripted(cls, heal_ms: int) -> Faults:
        """A scripted scenario's network: short delays, its own partitions until the heal."""
        return cls(0.0, 0.0, 1, 20, 0, 0, 0, (), heal_ms)


@dataclass(frozen=True, slots=True)
class NodeReport:
    name: str
    honest: bool
    crashed: bool
    committed: int
    power: int  # in the validator set of its next height (0: not a validator)
    height: int
    round: int
    step: str
    locked_round: int
    mode: str

    def __str__(self) -> str:
        kind = "honest" if self.honest else "byzantine"
        down = " crashed" if self.crashed else ""
        return (
            f"{self.name}({kind}{down}): committed={self.committed} power={self.power} "
            f"height={self.height} round={self.round} step={self.step} "
            f"locked_round={self.locked_round} mode={self.mode}"
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    byzantine_mode: str
    attack: str  # the hostile peer's attack ("" for none)
    safety_violations: tuple[str, ...]
    liveness_failure: str | None
    blocks: int  # heights every honest node committed
    virtual_ms: int
    heal_ms: int
    messages: int
    evidence_committed: int  # evidence in decided blocks (all against Byzantine validators)
    txs_committed: int  # client transactions in decided blocks
    validator_changes: int  # validator updates the application returned in decided blocks
    restarts: int
    synced_blocks: int  # blocks honest nodes applied through block sync
    penalties: int  # peers penalised by honest nodes (all Byzantine or hostile)
    attack_armed: bool  # scripted scenarios: their premise held (see _LockAttack)
    chain_digest: bytes  # SHA-256 over every honest node's committed block hashes
    nodes: tuple[NodeReport, ...]

    @property
    def ok(self) -> bool:
        return not self.safety_violations and self.liveness_failure is None

    def describe(self) -> str:
        attack = f", attack {self.attack}" if self.attack else ""
        lines = [f"seed {self.seed} ({self.byzantine_mode}{attack}):"]
        lines += [f"  safety: {v}" for v in self.safety_violations]
        if self.liveness_failure:
            lines.append(f"  liveness: {self.liveness_failure}")
        lines += [f"  {n}" for n in self.nodes]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BatchResult:
    seeds: range
    results: tuple[RunResult, ...]

    @property
    def safety_failures(self) -> list[RunResult]:
        return [r for r in self.results if r.safety_violations]

    @property
    def liveness_failures(self) -> list[RunResult]:
        return [r for r in self.results if r.liveness_failure is not None]

    @property
    def ok(self) -> bool:
        return not self.safety_failures and not self.liveness_failures

    def summary(self) -> str:
        s = self.seeds
        last = s.start + (len(s) - 1) * s.step if len(s) else s.start
        rs = self.results
        line = (
            f"runs={len(rs)} seeds={s.start}..{last} "
            f"safety_violations={len(self.safety_failures)} "
            f"liveness_failures={len(self.liveness_failures)} "
            f"blocks={sum(r.blocks for r in rs)} "
            f"txs={sum(r.txs_committed for r in rs)} "
            f"validator_changes={sum(r.validator_changes for r in rs)} "
            f"evidence_committed={sum(r.evidence_committed for r in rs)} "
            f"restarts={sum(r.restarts for r in rs)} "
            f"synced_blocks={sum(r.synced_blocks for r in rs)} "
            f"attacks={sum(1 for r in rs if r.attack)} "
            f"penalties={sum(r.penalties for r in rs)} "
            f"virtual_s={sum(r.virtual_ms for r in rs) / 1000:.1f}"
        )
        failed = [r for r in rs if not r.ok]
        return "\n".join([line, *(r.describe() for r in failed)])


# ---------------------------------------------------------------- keys


def validator_keys(count: int) -> list[PrivateKey]:
    return [PrivateKey(sha256(b"sim-validator-%d" % i)) for i in range(count)]


def client_keys() -> list[PrivateKey]:
    return [PrivateKey(sha256(b"sim-client-%d" % i)) for i in range(CLIENTS)]


def _client_record(client: int) -> bytes:
    """The kvstore key each client's writes go to: its next nonce, then random bytes."""
    return b"client/%d" % client


# ---------------------------------------------------------------- nodes


@dataclass(slots=True)
class _Node:
    """One simulated process over its home folder (store, WAL, sign state survive a crash)."""

    index: int
    name: str  # also its peer id
    key: PrivateKey
    honest: bool
    equivocates: bool
    home: Path
    scripted: bool = False  # a Byzantine node driven by a scenario script, no driver
    chain: Chain | None = None
    driver: Driver | None = None
    sign_state: SignState | None = None
    wal: Any = None
    crashed: bool = False
    epoch: int = 0
    timer_at: int = -1
    seen: OrderedDict[bytes, bool] = field(default_factory=OrderedDict)
    banned: set[str] = field(default_factory=set)
    alternates: dict[bytes, bytes] = field(default_factory=dict)  # equivocator: payload -> other
    committed: list[bytes] = field(default_factory=list)  # block hashes by height (store mirror)

    @property
    def height(self) -> int:
        return 0 if self.chain is None else self.chain.state.last_height


_DELIVER, _TIMER, _RESULT, _CRASH, _RESTART, _PARTITION, _SCRIPT, _ATTACK = range(8)


class _Simulation:
    """One seeded run: the nodes, the event queue ordered by virtual time, and the checker.

    Queue entries are (at_ms, seq, kind, node, epoch, payload); `seq` breaks
    ties in push order, so the run depends on nothing but the seed. A local
    entry carries the node's epoch and dies if the node crashed since.
    """

    def __init__(
        self,
        seed: int,
        validators: int,
        byzantine: int,
        heights: int,
        faults: Faults,
        byzantine_mode: str | None,
        driver_class: type[Driver],
        equal_power: bool,
        root: Path,
    ) -> None:
        assert 0 <= 3 * byzantine < validators or validators == 1
        self.seed = seed
        self.rng = random.Random(seed)
        self.heights = heights
        self.driver_class = driver_class
        self.root = root
        self.keys = validator_keys(validators)
        self.clients = client_keys()
        self.byzantine_mode = byzantine_mode or self.rng.choice(("equivocate", "twins"))
        if byzantine == 0:
            self.byzantine_mode = "none"
        scripted = self.byzantine_mode in ("lock-attack", "amnesia-attack")
        if scripted:
            assert validators == 4 and byzantine == 1
            heal = ATTACK_HEAL_MS if self.byzantine_mode == "lock-attack" else AMNESIA_HEAL_MS
            faults, equal_power = Faults.scripted(heal), True
        self.faults = faults
        self.attack_kind = self.rng.choice(faults.attacks) if faults.attacks else ""
        self.bad = self._pick_byzantine(byzantine, scripted)
        self.bad_addresses = {self.keys[i].address for i in self.bad}
        powers = self._powers(equal_power)
        self.queue: list[tuple[int, int, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0
        self.genesis = Genesis(
            chain_id=CHAIN_ID,
            genesis_time_ms=0,
            validators=tuple(
                GenesisValidator(f"v{i}", k.public_key, p)
                for i, (k, p) in enumerate(zip(self.keys, powers, strict=True))
            ),
            app="kvstore",
            app_state={},
        )
        self.nodes: list[_Node] = []
        for i, key in enumerate(self.keys):
            honest = i not in self.bad
            equivocates = not honest and self.byzantine_mode == "equivocate"
            self._add_node(f"v{i}", key, honest, equivocates, scripted=not honest and scripted)
        if self.byzantine_mode == "twins":
            for i in sorted(self.bad):
                self._add_node(f"v{i}-twin", self.keys[i], False, False, scripted=False)
        self.honest_ids = {n.name for n in self.nodes if n.honest}
        self.partition: list[set[str]] | None = None
        self.heal_ms = 0
        self.decided: dict[int, bytes] = {}
        self._first_committer: dict[int, str] = {}
        self.proposed: dict[tuple[int, int], dict[bytes, bytes]] = {}  # (h, r) -> hash -> signer
        self.violations: list[str] = []
        self._heal_target: int | None = None
        self.messages = 0
        self.evidence_committed = 0
        self.txs_committed = 0
        self.validator_changes = 0
        self.restarts = 0
        self.synced_blocks = 0
        self.penalties = 0
        self.script: _LockAttack | None = None
        if scripted:
            self.script = _LockAttack(self, amnesia=self.byzantine_mode == "amnesia-attack")
        self.attacker = _Attacker(self, self.attack_kind) if self.attack_kind else None

    def _pick_byzantine(self, byzantine: int, scripted: bool) -> set[int]:
        """Indexes of the Byzantine validators: by seed, or the one a script needs."""
        if scripted:
            # The script needs the Byzantine validator to propose round 0 at height 1.
            proposer0 = _initial_proposer(self.keys)
            return {i for i, k in enumerate(self.keys) if k.address == proposer0}
        return set(self.rng.sample(range(len(self.keys)), byzantine))

    def _powers(self, equal_power: bool) -> list[int]:
        """Every validator's power: 1, or seed-chosen with the Byzantine power below a third."""
        n = len(self.keys)
        if equal_power:
            return [1] * n
        powers = [self.rng.randint(1, POWER_MAX) for _ in range(n)]
        honest = [i for i in range(n) if i not in self.bad]
        while 3 * sum(powers[i] for i in self.bad) >= sum(powers):
            powers[self.rng.choice(honest)] += 1
        return powers

    def _add_node(
        self, name: str, key: PrivateKey, honest: bool, equivocates: bool, *, scripted: bool
    ) -> None:
        home = self.root / name
        home.mkdir()
        node = _Node(len(self.nodes), name, key, honest, equivocates, home, scripted=scripted)
        SignState.create(home / "sign_state.json")
        self.nodes.append(node)
        self._open(node)

    # ------------------------------------------------------------ processes

    def _open(self, node: _Node) -> None:
        """Start the node's process over its home: what `archipelago start` does, minus trio."""
        store = open_store(node.home / "store", map_bytes=STORE_MAP_BYTES)
        node.chain = Chain(self.genesis, store, SignatureVerifier(threads=0))
        node.committed = self._stored_hashes(node)
        if node.scripted:
            return
        node.wal = open_wal(node.home / "wal")
        node.sign_state = SignState.load(node.home / "sign_state.json")
        node.driver = self.driver_class(
            state=node.chain.state,
            validator_address=node.key.address,
            can_sign=True,
            last_signed=node.sign_state.last,
            wal=node.wal,
            config=SIM_DRIVER,
            validators_at=store.load_validators,
            now=self.now / 1000,
        )

    def _stored_hashes(self, node: _Node) -> list[bytes]:
        assert node.chain is not None
        store = node.chain.store
        out: list[bytes] = []
        for h in range(1, store.latest_height() + 1):
            block = store.load_block(h)
            assert block is not None
            out.append(block.hash)
        return out

    def _close(self, node: _Node) -> None:
        if node.wal is not None:
            node.wal.close()
        if node.chain is not None:
            node.chain.verifier.close()
            node.chain.store.close()
        node.wal = node.chain = node.driver = node.sign_state = None

    def _peer_ids(self, node: _Node) -> list[str]:
        """Who `node` is connected to: everyone up, but the peers it banned."""
        ids = [n.name for n in self.nodes if n is not node and not n.crashed]
        if self.attacker is not None:
            ids.append(self.attacker.peer_id)
        return [i for i in ids if i not in node.banned]

    def _announce_peers(self) -> None:
        for n in self.nodes:
            if n.driver is not None:
                n.driver.on_peers(self._peer_ids(n), self.now / 1000)

    def _start(self, node: _Node) -> None:
        assert node.driver is not None
        node.driver.on_peers(self._peer_ids(node), self.now / 1000)
        self._perform(node, node.driver.start(self.now / 1000))

    def _crash(self, node: _Node) -> None:
        if node.crashed or node.scripted:
            return
        node.crashed = True
        node.epoch += 1  # timers and pending results die with the process
        node.timer_at = -1
        node.seen.clear()
        node.alternates.clear()
        self._close(node)
        self._announce_peers()

    def _restart(self, node: _Node) -> None:
        if not node.crashed:
            return
        node.crashed = False
        self.restarts += 1
        self._open(node)
        self._start(node)
        self._announce_peers()

    # ------------------------------------------------------------ scheduling

    def _push(self, at: int, kind: int, node: int, epoch: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, epoch, payload))

    def _later(self, node: _Node, delay_ms: int, work: Callable[[], list[Effect]]) -> None:
        """A result the shell would get back from a worker thread, after `delay_ms`."""
        self._push(self.now + delay_ms, _RESULT, node.index, node.epoch, work)

    def _arm_timer(self, node: _Node) -> None:
        driver = node.driver
        if driver is None:
            return
        deadline = driver.next_deadline()
        if deadline == float("inf"):
            return
        at = max(self.now, math.ceil(deadline * 1000))
        if node.timer_at < self.now or at < node.timer_at:
            node.timer_at = at
            self._push(at, _TIMER, node.index, node.epoch, at)

    def _in_fault_window(self) -> bool:
        return self.now < self.faults.window_ms

    def _connected(self, a: str, b: str) -> bool:
        if self.partition is None or not self._in_fault_window():
            return True
        return any(a in g and b in g for g in self.partition)

    def transmit(
        self, sender: str, to: _Node, payload: bytes, *, gossip: bool, delay: int = -1
    ) -> None:
        """Put one message on the wire from `sender` (a node or the hostile peer) to `to`."""
        if not self._connected(sender, to.name):
            return
        f = self.faults
        faulty = self._in_fault_window()
        if faulty and self.rng.random() < f.drop_probability:
            return
        copies = 2 if faulty and self.rng.random() < f.duplicate_probability else 1
        for _ in range(copies):
            d = (
                delay
                if delay >= 0
                else self.rng.randint(f.delay_ms_min, max(f.delay_ms_min, f.delay_ms_max))
            )
            self.messages += 1
            self._push(self.now + d, _DELIVER, to.index, -1, (sender, payload, gossip))

    def _send_from(
        self, node: _Node, payload: bytes, targets: Sequence[_Node], gossip: bool
    ) -> None:
        for to in targets:
            data = payload
            alternate = node.alternates.get(payload)
            if alternate is not None and self.rng.random() < 0.5:
                data = alternate
            self.transmit(node.name, to, data, gossip=gossip)

    # ------------------------------------------------------------ a node's shell

    def _deliver(self, node: _Node, sender: str, payload: bytes, gossip: bool) -> None:
        """What the network and the reactor do with arriving bytes, then the driver."""
        if node.crashed:
            return
        if node.scripted:
            assert self.script is not None
            self.script.receive(payload)
            return
        if sender in node.banned:
            return
        if gossip:
            digest = sha256(payload)
            if digest in node.seen:
                return
            if len(node.seen) >= SEEN_ENTRIES_MAX:
                node.seen.popitem(last=False)
            node.seen[digest] = False
        try:
            msg = decode_message(payload)
        except DecodeError:
            self._penalise(node, sender, PeerFault.INVALID_MESSAGE, "malformed")
            return
        assert node.driver is not None
        self._perform(node, node.driver.on_message(sender, msg, payload, self.now / 1000))

    def _perform(self, node: _Node, effects: Sequence[Effect]) -> None:
        """Perform effects in order, as the trio shell does (answers first, then the rest)."""
        queue = list(reversed(effects))
        while queue:
            if node.crashed or node.driver is None:
                return
            more = self._perform_one(node, queue.pop())
            queue.extend(reversed(more))
        self._arm_timer(node)

    def _perform_one(self, node: _Node, effect: Effect) -> list[Effect]:
        driver = node.driver
        chain = node.chain
        assert driver is not None and chain is not None
        now_s = self.now / 1000
        if isinstance(effect, Send):
            self._to_outsiders(node, effect.peer, effect.payload)
            targets = self._targets(node, effect.peer)
            self._send_from(node, effect.payload, targets, gossip=False)
        elif isinstance(effect, Gossip):
            digest = sha256(effect.payload)
            if node.seen.get(digest) is True:
                return []
            node.seen[digest] = True
            if self.attacker is not None:
                self.attacker.observe(effect.payload)
            targets = [t for t in self._targets(node, None) if t.name != effect.exclude]
            self._send_from(node, effect.payload, targets, gossip=True)
        elif isinstance(effect, Penalise):
            self._penalise(node, effect.peer, effect.fault, effect.detail)
        elif isinstance(effect, Sign):
            return self._sign(node, effect)
        elif isinstance(effect, Validate):
            block = effect.block
            self._later(
                node,
                self.rng.randint(1, VALIDATION_DELAY_MS_MAX),
                lambda: self._validate(node, block),
            )
        elif isinstance(effect, Build):
            block = self._build(node, effect)
            return driver.on_built(effect.height, effect.round, block, now_s)
        elif isinstance(effect, Apply):
            return self._apply(node, effect.block, effect.commit)
        elif isinstance(effect, VerifySynced):
            error = effect.block.body_error()
            if error is None:
                try:
                    chain.verify_commit(effect.commit, effect.block)
                except BlockInvalid as e:
                    error = str(e)
            return driver.on_synced(effect.block, effect.commit, effect.peer, error, now_s)
        elif isinstance(effect, ServeBlocks):
            self._serve(node, effect.peer, effect.height, effect.count, TAG_SYNC_BLOCK)
        elif isinstance(effect, ServeDecided):
            self._serve(node, effect.peer, effect.height, 1, TAG_DECIDED)
        elif isinstance(effect, StopSigning):
            node.sign_state = None
        elif isinstance(effect, AnnounceVoterState):
            address = node.key.address
            sign_bytes = voter_state_sign_bytes(
                CHAIN_ID, address, effect.height, effect.state, effect.until_height
            )
            msg = VoterStateMsg(
                address, effect.height, effect.state, effect.until_height, node.key.sign(sign_bytes)
            )
            self._send_from(node, encode_message(msg), self._targets(node, None), gossip=False)
        else:
            assert isinstance(effect, Log)
        return []

    def _targets(self, node: _Node, peer: str | None) -> list[_Node]:
        if peer is not None:
            return [n for n in self.nodes if n.name == peer and not n.crashed]
        return [n for n in self.nodes if n is not node and not n.crashed]

    def _to_outsiders(self, node: _Node, peer: str | None, payload: bytes) -> None:
        """A direct message to the hostile peer or a script's keyless liar."""
        if self.script is not None and peer == "liar":
            self.script.answer_liar(node, payload)

    def _penalise(self, node: _Node, peer: str, fault: PeerFault, detail: str) -> None:
        if node.honest and peer in self.honest_ids:
            self.violations.append(
                f"false blame: {node.name} penalised honest {peer} ({fault.value}: {detail})"
            )
        self.penalties += 1
        node.banned.add(peer)  # a ban closes the connection: the driver forgets the peer
        if node.driver is not None:
            node.driver.on_peers(self._peer_ids(node), self.now / 1000)

    def _sign(self, node: _Node, request: Sign) -> list[Effect]:
        driver = node.driver
        assert driver is not None
        now_s = self.now / 1000
        sign_state = node.sign_state
        if sign_state is None:
            return []
        node.wal.sync()
        try:
            signature = sign_state.check_and_sign(
                request.height, request.round, request.step, request.sign_bytes, node.key.sign
            )
        except DoubleSignRefused:
            return driver.on_signed(request, None, sign_state.last, now_s)
        except SignStateError:
            node.sign_state = None
            driver.stop_signing()
            return []
        if request.vote_type is None:
            assert request.block is not None
            self._note_proposal(request.height, request.round, request.block_hash, node.key.address)
        effects = driver.on_signed(request, signature, None, now_s)
        if node.equivocates:
            self._equivocate(node, request, signature)
        return effects

    def _equivocate(self, node: _Node, request: Sign, signature: bytes) -> None:
        """A Byzantine node signs a second version; each peer gets one of the two."""
        assert node.driver is not None and node.driver.machine is not None
        machine = node.driver.machine
        if request.vote_type is not None:
            index = machine.validators.index_of(node.key.address)
            if index is None:
                return
            vote = Vote(
                request.vote_type,
                request.height,
                request.round,
                request.block_hash,
                node.key.address,
                index,
                signature,
            )
            other = b"" if request.block_hash else sha256(self.rng.randbytes(8))
            alt_vote = Vote.create(
                node.key, CHAIN_ID, request.vote_type, request.height, request.round, other, index
            )
            node.alternates[encode_message(VoteMsg(vote))] = encode_message(VoteMsg(alt_vote))
        else:
            assert request.block is not None
            signed = Proposal(
                request.height, request.round, request.pol_round, request.block_hash, signature
            )
            alt_block = self._build_block(node, request.height, corrupt=self.rng.random() < 0.3)
            alt = Proposal.create(
                node.key, CHAIN_ID, request.height, request.round, request.pol_round, alt_block.hash
            )
            self._note_proposal(request.height, request.round, alt_block.hash, node.key.address)
            genuine = encode_message(ProposalMsg(signed, request.block))
            node.alternates[genuine] = encode_message(ProposalMsg(alt, alt_block))

    def _note_proposal(self, height: int, round: int, block_hash: bytes, signer: bytes) -> None:
        self.proposed.setdefault((height, round), {})[block_hash] = signer

    def _validate(self, node: _Node, block: Block) -> list[Effect]:
        assert node.chain is not None and node.driver is not None
        try:
            node.chain.validate(block, now=self.now)
            valid, reason = True, ""
        except BlockInvalid as e:
            valid, reason = False, e.reason.value
        return node.driver.on_validated(block.hash, valid, reason, self.now / 1000)

    def _apply(self, node: _Node, block: Block, commit: Commit) -> list[Effect]:
        chain = node.chain
        driver = node.driver
        assert chain is not None and driver is not None
        done: Block | None = None
        if block.height == chain.state.last_height + 1:
            state_before = chain.state
            try:
                applied = chain.persist(block, commit)
            except BlockInvalid as e:
                if node.honest:
                    self.violations.append(
                        f"validity: {node.name} decided an invalid block at height "
                        f"{block.height}: {e}"
                    )
                driver.on_apply_failed(block.height)
                return []
            if node.honest:
                self._check_commit(node, block, commit, state_before, applied.validated)
                if driver.mode == "blocksync" or not _decided_here(driver, block):
                    self.synced_blocks += 1
            chain.finish(applied)
            node.wal.mark_height_end(block.height)
            node.committed.append(block.hash)
            done = block
        return driver.on_applied(done, chain.state, self.now / 1000)

    def _serve(self, node: _Node, peer: str, height: int, count: int, tag: int) -> None:
        assert node.chain is not None
        store = node.chain.store
        targets = self._targets(node, peer)
        for h in range(height, height + count):
            block_bytes = store.load_block_bytes(h)
            commit_bytes = store.load_seen_commit_bytes(h)
            if block_bytes is None or commit_bytes is None:
                return
            payload = stored_block_message(tag, block_bytes, commit_bytes)
            for to in targets:
                self.transmit(node.name, to, payload, gossip=False)

    # ------------------------------------------------------------ blocks and the app

    def _next_nonce(self, chain: Chain, client: int) -> int:
        result = chain.app.query("key", _client_record(client))
        return int.from_bytes(result.value[:8], "big") if result.ok else 0

    def _workload(self, chain: Chain, txs_min: int) -> list[bytes]:
        """Signed client transactions for the next block on a node's committed state."""
        rng = self.rng
        count = rng.randint(txs_min, BLOCK_TXS_MAX)
        change = None
        if count and rng.random() < VALIDATOR_CHANGE_PROBABILITY:
            change = self._validator_change(chain)
        nonces: dict[int, int] = {}
        txs: list[bytes] = []
        for _ in range(count):
            client = rng.randrange(CLIENTS)
            key = self.clients[client]
            nonce = nonces.get(client)
            if nonce is None:
                nonce = self._next_nonce(chain, client)
            if change is not None:
                payload = encode(["val", change[0], change[1]])
                txs.append(Transaction.create(key, CHAIN_ID, nonce, payload).encode())
                nonce += 1
                change = None
            value = (nonce + 1).to_bytes(8, "big") + rng.randbytes(VALUE_BYTES)
            txs.append(set_tx(key, CHAIN_ID, nonce, _client_record(client), value).encode())
            nonces[client] = nonce + 1
        return txs

    def _validator_change(self, chain: Chain) -> tuple[bytes, int] | None:
        """One seed-chosen power change for height + 2 that keeps Byzantine power below 1/3."""
        key = self.rng.choice(self.keys)
        power = self.rng.randint(0, POWER_MAX)
        powers = {v.public_key: v.power for v in chain.state.next_validators}
        if powers.get(key.public_key, 0) == power:
            return None
        if power == 0:
            del powers[key.public_key]
        else:
            powers[key.public_key] = power
        bad = sum(powers.get(self.keys[i].public_key, 0) for i in self.bad)
        if not powers or 3 * bad >= sum(powers.values()):
            return None
        return key.public_key, power

    def _build(self, node: _Node, request: Build) -> Block:
        assert node.chain is not None
        chain = node.chain
        return chain.build(
            txs=self._workload(chain, 0),
            evidence=request.evidence,
            time_ms=self.now,
            proposer_address=node.key.address,
            last_commit=request.last_commit,
        )

    def _build_block(self, node: _Node, height: int, *, corrupt: bool = False) -> Block:
        """A block of the node's next height outside its driver (Byzantine variants, scripts)."""
        assert node.chain is not None and node.chain.state.height == height
        block = node.chain.build(
            txs=self._workload(node.chain, 1),
            evidence=(),
            time_ms=self.now,
            proposer_address=node.key.address,
        )
        return _corrupt(block, self.rng) if corrupt else block

    # ------------------------------------------------------------ the checker

    def _check_commit(
        self, node: _Node, block: Block, commit: Commit, state: Any, validated: Any
    ) -> None:
        height = block.height
        first = self.decided.setdefault(height, block.hash)
        if first != block.hash:
            self.violations.append(
                f"agreement: {node.name} committed {block.hash.hex()[:8]} at height {height}, "
                f"another honest node committed {first.hex()[:8]}"
            )
        elif node.name == self._first_committer.setdefault(height, node.name):
            self.evidence_committed += len(block.evidence)
            self.txs_committed += len(block.txs)
            self.validator_changes += len(validated.execution.validator_updates)
        proposer = state.schedule.proposer(commit.round).address
        signer = self.proposed.get((height, commit.round), {}).get(block.hash)
        if signer != proposer:
            self.violations.append(
                f"validity: height {height} block {block.hash.hex()[:8]} was not proposed "
                f"by round {commit.round}'s proposer"
            )
        if commit.verify(CHAIN_ID, state.validators) is not None:
            self.violations.append(f"validity: height {height} commit certificate invalid")
        for ev in block.evidence:
            if ev.validator_address not in self.bad_addresses:
                self.violations.append(
                    f"validity: height {height} carries evidence against honest validator "
                    f"{ev.validator_address.hex()[:8]}"
                )

    # ------------------------------------------------------------ faults

    def _plan_faults(self) -> None:
        f = self.faults
        if f.window_ms <= 0:
            return
        names = [n.name for n in self.nodes]
        for _ in range(f.partitions if len(self.nodes) > 1 else 0):
            start = self.rng.randint(0, f.window_ms // 2)
            end = min(f.window_ms, start + self.rng.randint(1_000, 5_000))
            members = list(names)
            self.rng.shuffle(members)
            cut = self.rng.randint(1, len(members) - 1)
            groups = [set(members[:cut]), set(members[cut:])]
            if self.attacker is not None:
                groups[0].add(self.attacker.peer_id)
                groups[1].add(self.attacker.peer_id)
            self._push(start, _PARTITION, 0, 0, groups)
            self._push(end, _PARTITION, 0, 0, None)
        honest = [n.index for n in self.nodes if n.honest]
        for _ in range(f.crashes):
            victim = self.rng.choice(honest)
            start = self.rng.randint(0, f.window_ms // 2)
            end = start + self.rng.randint(500, 4_000)
            self._push(start, _CRASH, victim, 0, None)
            self._push(end, _RESTART, victim, 0, None)
            self.heal_ms = max(self.heal_ms, end)
        for _ in range(f.mass_restarts if len(honest) > 1 else 0):
            group = self.rng.sample(honest, self.rng.randint(2, len(honest)))
            start = self.rng.randint(1_000, f.window_ms // 2)
            end = start + self.rng.randint(200, 2_000)
            for victim in group:
                self._push(start, _CRASH, victim, 0, None)
                self._push(end, _RESTART, victim, 0, None)
            self.heal_ms = max(self.heal_ms, end)
        if self.attacker is not None:
            self._push(self.rng.randint(0, 500), _ATTACK, 0, 0, None)
        self.heal_ms = max(self.heal_ms, f.window_ms)

    # ------------------------------------------------------------ the run

    def _target(self) -> int:
        """The height every honest node must reach: the run's, and past what the heal found.

        Once the last fault healed, every honest node must commit
        `HEIGHTS_AFTER_HEAL` heights beyond the highest any had then: a chain
        that halted during the faults and stays halted is a liveness failure
        even if it had already passed the run's target height.
        """
        if self._heal_target is None and self.now >= self.heal_ms:
            top = max((len(n.committed) for n in self.nodes if n.honest), default=0)
            self._heal_target = top + HEIGHTS_AFTER_HEAL
        return max(self.heights, self._heal_target or 0)

    def _done(self) -> bool:
        target = self._target()
        return all(len(n.committed) >= target for n in self.nodes if n.honest)

    def run(self) -> RunResult:
        self._plan_faults()
        if self.script is not None:
            self.script.plan()
        for node in self.nodes:
            if not node.scripted:
                self._start(node)
        deadline = self.heal_ms + LIVENESS_BOUND_MS
        while (
            self.queue and not self.violations and not (self._done() and self.now >= self.heal_ms)
        ):
            at, _, kind, index, epoch, payload = heapq.heappop(self.queue)
            if at > deadline:
                break
            self.now = at
            node = self.nodes[index]
            if kind == _PARTITION:
                self.partition = payload
            elif kind == _CRASH:
                self._crash(node)
            elif kind == _RESTART:
                self._restart(node)
            elif kind == _SCRIPT:
                payload()
            elif kind == _ATTACK:
                assert self.attacker is not None
                if self._in_fault_window():
                    self.attacker.act()
                    self._push(self.now + ATTACK_INTERVAL_MS, _ATTACK, 0, 0, None)
            elif kind == _DELIVER:
                sender, data, gossip = payload
                self._deliver(node, sender, data, gossip)
            elif epoch != node.epoch or node.driver is None:
                continue  # a timer or result from before a crash
            elif kind == _TIMER:
                if payload == node.timer_at:
                    node.timer_at = -1
                    # The timer is due now; the driver's float deadline may sit a hair
                    # above this millisecond.
                    due = max(self.now / 1000, min(node.driver.next_deadline(), (at + 1) / 1000))
                    self._perform(node, node.driver.on_time(due))
            else:
                self._perform(node, payload())
        return self._result()

    def _result(self) -> RunResult:
        liveness = None
        target = self._target()
        behind = [n for n in self.nodes if n.honest and len(n.committed) < target]
        if behind and not self.violations:  # a safety violation ends the run early
            liveness = (
                f"{', '.join(n.name for n in behind)} below height {target} "
                f"{LIVENESS_BOUND_MS} ms after the last fault healed at {self.heal_ms} ms"
            )
        reports = []
        for n in self.nodes:
            d = n.driver
            m = None if d is None else d.machine
            power = 0
            if n.chain is not None:
                member = n.chain.state.validators.index_of(n.key.address)
                power = 0 if member is None else n.chain.state.validators[member].power
            reports.append(
                NodeReport(
                    n.name,
                    n.honest,
                    n.crashed,
                    len(n.committed),
                    power,
                    m.height if m else 0,
                    m.round if m else 0,
                    m.current_step.name if m else "-",
                    m.locked_round if m else -1,
                    "-" if d is None else d.mode,
                )
            )
        honest_blocks = min((len(n.committed) for n in self.nodes if n.honest), default=0)
        return RunResult(
            self.seed,
            self.byzantine_mode,
            self.attack_kind,
            tuple(self.violations),
            liveness,
            honest_blocks,
            self.now,
            self.heal_ms,
            self.messages,
            self.evidence_committed,
            self.txs_committed,
            self.validator_changes,
            self.restarts,
            self.synced_blocks,
            self.penalties,
            self.script is not None and self.script.armed,
            sha256(b"".join(h for n in self.nodes if n.honest for h in n.committed)),
            tuple(reports),
        )

    def close(self) -> None:
        for node in self.nodes:
            self._close(node)


def _decided_here(driver: Driver, block: Block) -> bool:
    machine = driver.machine
    return (
        machine is not None and machine.decision is not None and machine.decision.hash == block.hash
    )


def _corrupt(block: Block, rng: random.Random) -> Block:
    """An invalid variant: a wrong app hash, or a transaction with a broken signature."""
    if block.txs and rng.random() < 0.5:
        tx = Transaction.decode(block.txs[0])
        signature = bytes([tx.signature[0] ^ 1]) + tx.signature[1:]
        broken = dataclasses.replace(tx, signature=signature).encode()
        txs = (broken, *block.txs[1:])
        header = dataclasses.replace(block.header, data_hash=data_hash(txs))
        return Block(header, txs, block.last_commit, block.evidence)
    header = dataclasses.replace(block.header, app_hash=sha256(b"not the state"))
    return Block(header, block.txs, block.last_commit, block.evidence)


def _initial_proposer(keys: Sequence[PrivateKey]) -> bytes:
    """Round 0's proposer at height 1 when every key has power 1."""
    genesis_set = ValidatorSet.of(Validator(k.public_key, 1) for k in keys)
    return ProposerSchedule.initial(genesis_set).proposer(0).address


# ---------------------------------------------------------------- the hostile peer


class _Attacker:
    """A peer without a validator key, connected to every node, running one attack.

    It sees what the nodes gossip to their peers (it is one of them) and
    sends crafted payloads. Nothing it sends may change a safe outcome; every
    honest node must keep committing. When a node bans it, it comes back with
    a new identity (keys are free), so bans alone cannot be the defence.
    """

    def __init__(self, sim: _Simulation, kind: str) -> None:
        self.sim = sim
        self.kind = kind
        self.identity = 0
        self.victims = self._victims()
        self.observed: list[bytes] = []  # recent real payloads it saw
        self.proposals: list[tuple[Proposal, Block]] = []

    @property
    def peer_id(self) -> str:
        return f"attacker-{self.identity}"

    def _victims(self) -> list[_Node]:
        honest = [n for n in self.sim.nodes if n.honest]
        count = self.sim.rng.randint(1, min(2, len(honest)))
        return self.sim.rng.sample(honest, count)

    def _send(self, to: _Node, payload: bytes, *, fast: bool = False) -> None:
        if self.peer_id in to.banned:
            self.identity += 1  # a new key: a new peer
            self.sim._announce_peers()
        self.sim.transmit(self.peer_id, to, payload, gossip=False, delay=1 if fast else -1)

    def observe(self, payload: bytes) -> None:
        """A real payload gossiped in the network: remember some, react to proposals."""
        self.observed.append(payload)
        del self.observed[:-64]
        try:
            msg = decode_message(payload)
        except DecodeError:
            return
        if isinstance(msg, ProposalMsg):
            self.proposals.append((msg.proposal, msg.block))
            del self.proposals[:-8]
            if self.kind in ("body-swap", "overwrite"):
                swapped = _swap_body(msg.block, self.sim.rng)
                if swapped is not None:
                    bad = encode_message(ProposalMsg(msg.proposal, swapped))
                    for victim in self.victims:
                        self._send(victim, bad, fast=self.kind == "body-swap")

    def act(self) -> None:
        """One round of the attack (every ATTACK_INTERVAL_MS within the fault window)."""
        rng = self.sim.rng
        for victim in self.victims:
            if victim.crashed or victim.chain is None:
                continue
            height = victim.chain.state.last_height
            if self.kind == "claims":
                # A million heights ahead, and silent when asked for a block.
                self._send(victim, encode_message(SyncStatusMsg(1, height + 10**6)))
            elif self.kind == "next-flood":
                for payload in self._forged_next(victim, height + 2):
                    self._send(victim, payload)
            elif self.kind == "dup-flood":
                votes = [p for p in self.observed if p[1:2] == b"\x02"]
                for payload in votes[-16:]:
                    for _ in range(4):
                        self._send(victim, payload)
            elif self.kind == "forged-decided":
                decided = self._forged_decided(victim)
                if decided is not None:
                    self._send(victim, decided)
            elif self.kind == "victim":
                for payload in self._forged_votes(victim, height + 1):
                    self._send(victim, payload)
            elif self.kind == "overwrite":
                for proposal, block in self.proposals[-2:]:
                    swapped = _swap_body(block, rng)
                    if swapped is not None:
                        self._send(victim, encode_message(ProposalMsg(proposal, swapped)))

    def _forged_next(self, victim: _Node, height: int) -> list[bytes]:
        """Proposals and votes for the victim's next height signed with the wrong keys."""
        rng = self.sim.rng
        stranger = PrivateKey(sha256(b"stranger-%d" % rng.randrange(1 << 30)))
        out: list[bytes] = []
        for round_ in range(2):
            block_hash = sha256(rng.randbytes(8))
            proposal = Proposal.create(stranger, CHAIN_ID, height, round_, -1, block_hash)
            assert victim.chain is not None
            block = victim.chain.store.load_block(max(1, victim.chain.state.last_height))
            if block is not None:
                out.append(encode_message(ProposalMsg(proposal, block)))
        for index, validator in enumerate(self.sim.genesis.validator_set):
            vote = Vote(
                VoteType.PREVOTE,
                height,
                0,
                sha256(rng.randbytes(8)),
                validator.address,
                index,
                stranger.sign(b"forged"),
            )
            out.append(encode_message(VoteMsg(vote)))
        return out

    def _forged_decided(self, victim: _Node) -> bytes | None:
        """A decided message for the victim's height with a certificate nobody signed."""
        if not self.proposals or victim.chain is None:
            return None
        _, block = self.proposals[-1]
        if block.height != victim.chain.state.last_height + 1:
            return None
        fake = Commit(block.height, 0, block.hash, (CommitSig(0, b"\x01" * 64),))
        return encode_message(DecidedMsg(block, fake))

    def _forged_votes(self, victim: _Node, height: int) -> list[bytes]:
        """Votes carrying the victim's validator address but not its signature, and replays."""
        index = self.sim.genesis.validator_set.index_of(victim.key.address)
        if index is None:
            return []
        out = [
            encode_message(
                VoteMsg(
                    Vote(
                        VoteType.PRECOMMIT,
                        height,
                        r,
                        b"",
                        victim.key.address,
                        index,
                        sha256(b"forged-%d" % r) * 2,
                    )
                )
            )
            for r in range(3)
        ]
        out += [p for p in self.observed if p[1:2] == b"\x02"][-4:]
        return out


def _swap_body(block: Block, rng: random.Random) -> Block | None:
    """The same header (so the same hash) with other transactions: what a relayer could forge."""
    txs = tuple(rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(1, 3)))
    if txs == block.txs:
        return None
    return Block(block.header, txs, block.last_commit, block.evidence)


# ---------------------------------------------------------------- scripted scenarios


class _LockAttack:
    """A scripted Byzantine proposer and voter, x, and partitions that put the lock to work.

    Roles at height 1 (power 1 each, quorum 3 of 4): x proposes round 0, d
    proposes round 1, b and c are the other two (in seed order).

    - Until ATTACK_SPLIT_MS the honest nodes are split {b, c} | {d}; x reaches
      everyone. At ATTACK_PROPOSE_MS x proposes block A to b and c and block
      A2 to d, and prevotes for each its block: b and c see a polka for A,
      lock on A and precommit it (Algorithm 1, lines 36-43); d prevotes A2.
    - At ATTACK_NIL_PRECOMMIT_MS x precommits nil to all: b and c hold 2f + 1
      precommits and go to round 1 (lines 47-48, 65-67) without deciding.
    - From ATTACK_SPLIT_MS the split is {b} | {c, d}. Gossip from c takes d out
      of round 0, and d, round 1's proposer with no valid value, proposes a
      new block B. At ATTACK_DECIDE_MS x sends b its precommit for A: b holds
      x's, b's and c's precommits for A and decides A (lines 49-54).
    - On d's proposal x prevotes and precommits B to c and d (and repeats them
      until the heal). c is locked on A, so line 23 makes it prevote nil and B
      gets x's and d's votes only. A node that forgot c's lock prevotes B; x, c
      and d then commit B, and the checker reports two honest nodes
      committing different blocks.
    - "amnesia-attack" adds a peer without a key: at ATTACK_CLAIM_MS it tells
      c it is a million heights ahead and, asked for blocks, has none. A node
      that lets such a claim pull it out of consensus and rebuilds its
      machine without the WAL on return has forgotten its lock (issue 10,
      bug 1); the real driver changes nothing on a claim.
    - At the heal the network heals; x stays silent from then on, which the
      three honest validators' 3 of 4 power tolerates.
    """

    def __init__(self, sim: _Simulation, *, amnesia: bool) -> None:
        self.sim = sim
        self.amnesia = amnesia
        schedule = sim.nodes[0].chain.state.schedule if sim.nodes[0].chain else None
        assert schedule is not None
        by_address = {n.key.address: n for n in sim.nodes}
        self.x = by_address[schedule.proposer(0).address]
        self.d = by_address[schedule.proposer(1).address]
        others = [n for n in sim.nodes if n is not self.x and n is not self.d]
        sim.rng.shuffle(others)
        self.b, self.c = others
        self.block_a: Block | None = None
        self.b_votes: list[bytes] = []
        self.round0: list[bytes] = []  # honest votes of height 1, round 0 that x received
        self.armed = False  # the premise held when x answered d's proposal
        self.heal_ms = AMNESIA_HEAL_MS if amnesia else ATTACK_HEAL_MS

    def plan(self) -> None:
        sim = self.sim
        x, b, c, d = (n.name for n in (self.x, self.b, self.c, self.d))
        liar = "liar"
        sim._push(0, _PARTITION, 0, 0, [{x, b, c, liar}, {x, d, liar}])
        sim._push(ATTACK_SPLIT_MS, _PARTITION, 0, 0, [{x, c, d, liar}, {x, b, liar}])
        sim._push(self.heal_ms, _PARTITION, 0, 0, None)
        sim.heal_ms = max(sim.heal_ms, self.heal_ms)
        xi = self.x.index
        sim._push(ATTACK_PROPOSE_MS, _SCRIPT, xi, 0, self._propose)
        sim._push(ATTACK_NIL_PRECOMMIT_MS, _SCRIPT, xi, 0, self._precommit_nil)
        sim._push(ATTACK_DECIDE_MS, _SCRIPT, xi, 0, self._precommit_a)
        sim._push(ATTACK_SPLIT_MS + 20, _SCRIPT, xi, 0, self._relay_round0)
        if self.amnesia:
            sim._push(ATTACK_CLAIM_MS, _SCRIPT, xi, 0, self._claim)

    def _vote(self, vote_type: VoteType, round: int, block_hash: bytes) -> bytes:
        x = self.x
        assert x.chain is not None
        index = x.chain.state.validators.index_of(x.key.address)
        assert index is not None
        vote = Vote.create(x.key, CHAIN_ID, vote_type, 1, round, block_hash, index)
        return encode_message(VoteMsg(vote))

    def _send(self, targets: Sequence[_Node], *payloads: bytes) -> None:
        for to in targets:
            for payload in payloads:
                self.sim.transmit(self.x.name, to, payload, gossip=False)

    def _propose(self) -> None:
        sim, x = self.sim, self.x
        block_a = sim._build_block(x, 1)
        block_a2 = sim._build_block(x, 1)
        assert block_a.hash != block_a2.hash
        self.block_a = block_a
        for block, targets in ((block_a, (self.b, self.c)), (block_a2, (self.d,))):
            proposal = Proposal.create(x.key, CHAIN_ID, 1, 0, -1, block.hash)
            sim._note_proposal(1, 0, block.hash, x.key.address)
            prevote = self._vote(VoteType.PREVOTE, 0, block.hash)
            self._send(targets, encode_message(ProposalMsg(proposal, block)), prevote)

    def _precommit_nil(self) -> None:
        self._send((self.b, self.c, self.d), self._vote(VoteType.PRECOMMIT, 0, b""))

    def _precommit_a(self) -> None:
        assert self.block_a is not None
        self._send((self.b,), self._vote(VoteType.PRECOMMIT, 0, self.block_a.hash))

    def _relay_round0(self) -> None:
        """x hands d the honest round-0 votes it saw, so d leaves round 0 and proposes B."""
        self._send((self.d,), *self.round0)

    def _claim(self) -> None:
        """The keyless liar: c is told peers are far ahead, and gets no block when it asks."""
        c = self.c
        if c.crashed or c.chain is None or self.sim.now >= self.heal_ms:
            return
        height = c.chain.state.last_height
        self.sim.transmit("liar", c, encode_message(SyncStatusMsg(1, height + 10**6)), gossip=False)
        self.sim._push(self.sim.now + 200, _SCRIPT, self.x.index, 0, self._claim)

    def answer_liar(self, to: _Node, payload: bytes) -> None:
        """The liar answers c's block requests with "none", so its claim drops at once."""
        try:
            msg = decode_message(payload)
        except DecodeError:
            return
        if isinstance(msg, SyncRequestMsg):
            self.sim.transmit("liar", to, encode_message(SyncNoneMsg(msg.height)), gossip=False)

    def _premise_holds(self, block_b: bytes) -> bool:
        """b committed A, c is locked on A in round 0, and d proposed another block."""
        a = self.block_a
        c = self.c.driver.machine if self.c.driver is not None else None
        return (
            a is not None
            and block_b != a.hash
            and bool(self.b.committed)
            and self.b.committed[0] == a.hash
            and c is not None
            and c.height == 1
            and c.locked_round == 0
            and c.locked_value is not None
            and c.locked_value.hash == a.hash
        )

    def receive(self, payload: bytes) -> None:
        """x keeps the honest round-0 votes, and votes for round 1's fresh proposal, to c and d."""
        try:
            msg = decode_message(payload)
        except DecodeError:
            return
        if isinstance(msg, VoteMsg) and (msg.vote.height, msg.vote.round) == (1, 0):
            if len(self.round0) < 16:
                self.round0.append(payload)
            return
        if self.b_votes or not isinstance(msg, ProposalMsg):
            return
        proposal = msg.proposal
        if (proposal.height, proposal.round) != (1, 1):
            return
        if msg.block.header.proposer_address != self.d.key.address:
            return
        block_hash = proposal.block_hash
        self.armed = self._premise_holds(block_hash)
        self.b_votes = [
            self._vote(VoteType.PREVOTE, 1, block_hash),
            self._vote(VoteType.PRECOMMIT, 1, block_hash),
        ]
        self._repeat()

    def _repeat(self) -> None:
        if self.sim.now >= self.heal_ms:
            return
        self._send((self.c, self.d), *self.b_votes)
        if self.amnesia:
            self.sim._push(self.sim.now + 500, _SCRIPT, self.x.index, 0, self._repeat)


# ---------------------------------------------------------------- entry points


def simulate(
    seed: int,
    *,
    validators: int = 4,
    byzantine: int = 1,
    heights: int = 5,
    faults: Faults | None = None,
    byzantine_mode: str | None = None,
    driver_class: type[Driver] = Driver,
    machine_class: type[ConsensusMachine] | None = None,
    equal_power: bool = False,
) -> RunResult:
    """One run.

    `byzantine_mode` is one of MODES (None: "equivocate" or "twins", chosen by
    the seed); the scripted modes need 4 validators and 1 Byzantine and bring
    their own faults and equal powers. `driver_class` and `machine_class`
    plant other code in every node (the checker's own tests). Raises
    ValueError for a cluster that breaks n > 3f or an unknown mode.
    """
    if validators < 1 or not (0 <= 3 * byzantine < validators or validators == 1):
        raise ValueError("need validators >= 1 and 3 * byzantine < validators")
    if byzantine_mode is not None and byzantine_mode not in MODES:
        raise ValueError(f"unknown mode {byzantine_mode!r}, expected one of {', '.join(MODES)}")
    if byzantine_mode in ("lock-attack", "amnesia-attack") and (validators, byzantine) != (4, 1):
        raise ValueError(f"{byzantine_mode} runs 4 validators with 1 Byzantine")
    if machine_class is not None:
        driver_class = type("PlantedDriver", (driver_class,), {"machine_class": machine_class})
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(
        prefix="archipelago-sim-", dir=shm if shm.is_dir() else None
    ) as tmp:
        sim = _Simulation(
            seed,
            validators,
            byzantine,
            heights,
            Faults() if faults is None else faults,
            byzantine_mode,
            driver_class,
            equal_power,
            Path(tmp),
        )
        try:
            return sim.run()
        finally:
            sim.close()


def run_batch(
    validators: int,
    byzantine: int,
    seeds: range,
    heights: int,
    faults: Faults | None = None,
    *,
    byzantine_mode: str | None = None,
    driver_class: type[Driver] = Driver,
    machine_class: type[ConsensusMachine] | None = None,
    equal_power: bool = False,
) -> BatchResult:
    """One run per seed; see BatchResult.summary() for the one-line report."""
    results = tuple(
        simulate(
            seed,
            validators=validators,
            byzantine=byzantine,
            heights=heights,
            faults=faults,
            byzantine_mode=byzantine_mode,
            driver_class=driver_class,
            machine_class=machine_class,
            equal_power=equal_power,
        )
        for seed in seeds
    )
    return BatchResult(seeds, results)


def main(argv: list[str] | None = None) -> int:
    """`archipelago simulate`: exit 0 when no run violated safety or liveness, else 1."""
    parser = argparse.ArgumentParser(
        prog="archipelago simulate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--byzantine", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=100, help="number of runs")
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--heights", type=int, default=5, help="target height per run")
    parser.add_argument("--no-faults", action="store_true", help="no drops, partitions, crashes")
    parser.add_argument(
        "--no-peer-faults",
        action="store_true",
        help="no hostile peer and no mass restarts (network faults and crashes only)",
    )
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--equal-power", action="store_true", help="power 1 for every validator")
    args = parser.parse_args(argv)
    if args.validators < 1 or not 0 <= 3 * args.byzantine < args.validators:
        parser.error("need validators >= 1 and 3 * byzantine < validators")
    if args.mode in ("lock-attack", "amnesia-attack") and (args.validators, args.byzantine) != (
        4,
        1,
    ):
        parser.error(f"--mode {args.mode} needs --validators 4 --byzantine 1")
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    if args.no_faults:
        faults = Faults.none()
    elif args.no_peer_faults:
        faults = Faults()
    else:
        faults = Faults.everything()
    batch = run_batch(
        args.validators,
        args.byzantine,
        seeds,
        args.heights,
        faults,
        byzantine_mode=args.mode,
        equal_power=args.equal_power,
    )
    print(batch.summary())
    return 0 if batch.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
