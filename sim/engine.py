"""The simulator's engine: a virtual clock and network driving the node's own code.

The main test of the node (TigerBeetle's habit). Every simulated node is the
daemon minus its trio shell: the consensus driver (node/driver.py) with its
machine, sync planner and evidence pool, the real chain (node/chain.py:
validation core, kvstore application, LMDB store), the real write-ahead log
and the real durable sign state, each in its own home folder. Only the
clock and the network are virtual: a message is a payload of bytes that a
node decodes with node/messages.py at the edge, as the reactor does, and
hands to its driver; the driver's effects are performed here the way
node/consensus_service.py performs them. A crash drops the process (driver
and pending work) and a restart reopens the same files, so recovery is the
daemon's own.

Every choice comes from one `random.Random(seed)`, so a seed reproduces a run
byte for byte. The faults a seed draws are sim/faults.py's: the network
delays, reorders, drops and duplicates messages, partitions and heals, and
gossip is deduplicated per node as the network's seen-cache does; honest
nodes crash and restart, alone or several (up to all validators) at once,
which makes restarted validators run their doppelganger watch; up to f
Byzantine validators equivocate (each peer gets one of two signed versions)
or run as twins (two nodes with one key). The adversaries that follow a
script or attack from outside (sim/scenarios.py) plug in as a `Script` and
an `Outsider`; sim/checks.py's checker watches every decision. In idle mode
every driver runs with create_empty_blocks = false and bursts of client
transactions reach each node's mempool model (sim/idle.py's `Mempools`,
drawing from its own random stream).

Over the house's 600 lines, because `Simulation` is one event loop whose
parts (the queue, the virtual network, and each node's shell performing its
driver's effects) all read and advance the same clock, random stream and
checker at every step: split apart, each part would need all of the others.
What runs beside the loop lives in its own module (checks, faults, scenarios,
workload, run).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from consensus import crypto
from consensus.codec import DecodeError
from consensus.config import ConsensusConfig
from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisValidator
from consensus.proposer import ProposerSchedule
from consensus.sigverify import SignatureVerifier
from consensus.types import (
    Block,
    Commit,
    Proposal,
    Validator,
    ValidatorSet,
    Vote,
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
    ProposalMsg,
    VoteMsg,
    VoterStateMsg,
    decode_message,
    encode_message,
    stored_block_message,
    voter_state_sign_bytes,
)
from node.signstate import DoubleSignRefused, SignState, SignStateError
from node.storage import open_store
from node.wal import open_wal
from sim.checks import LIVENESS_BOUND_MS, Checker, NodeReport, RunResult, liveness_failure
from sim.faults import SCRIPTED_MODES, Faults
from sim.idle import Mempools
from sim.workload import CHAIN_ID, POWER_MAX, Workload, corrupted, validator_keys

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
SIM_IDLE_DRIVER = dataclasses.replace(SIM_DRIVER, create_empty_blocks=False)
VALIDATION_DELAY_MS_MAX = 5
SEEN_ENTRIES_MAX = 4096  # per node, as the network's seen-cache (oldest evicted)
HEIGHTS_AFTER_HEAL = 2  # heights every honest node must commit after the last fault healed
ATTACK_INTERVAL_MS = 300  # a hostile peer acts this often during the fault window
STORE_MAP_BYTES = 64 * 1024 * 1024  # per node; a run stores a few dozen small blocks


@dataclass(slots=True)
class SimNode:
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


# What a queue entry is: its kind.
DELIVER, TIMER, RESULT, CRASH, RESTART, PARTITION, SCRIPT, ATTACK, TXS = range(9)


class Script(Protocol):
    """A scripted Byzantine validator (its node has no driver) and its keyless "liar" peer."""

    armed: bool  # the scenario's premise held (reported as RunResult.attack_armed)

    def plan(self) -> None:
        """Schedule the script's moves and partitions, before any node starts."""

    def receive(self, payload: bytes) -> None:
        """A message reached the scripted validator."""

    def answer_liar(self, to: SimNode, payload: bytes) -> None:
        """`to` sent a direct message to the peer named "liar"."""


class Outsider(Protocol):
    """A hostile peer without a key, connected to every node."""

    @property
    def peer_id(self) -> str: ...

    def observe(self, payload: bytes) -> None:
        """A payload some node gossiped (the outsider is one of its peers)."""

    def act(self) -> None:
        """One round of its attack, every ATTACK_INTERVAL_MS within the fault window."""


class Simulation:
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
        make_script: Callable[[Simulation, bool], Script],
        make_outsider: Callable[[Simulation, str], Outsider],
        *,
        idle: bool = False,
    ) -> None:
        """`make_script(sim, amnesia)` plays a scripted mode's Byzantine validator;
        `make_outsider(sim, attack)` runs the seed's hostile-peer attack; `idle`:
        drivers with create_empty_blocks = false and bursts of transactions
        (sim/idle.py)."""
        assert 0 <= 3 * byzantine < validators or validators == 1
        self.seed = seed
        self.rng = random.Random(seed)
        self.heights = heights
        self.driver_class = driver_class
        self.root = root
        self.keys = validator_keys(validators)
        self.mempools: Mempools | None = None
        if idle:
            self.mempools = Mempools(seed, validators + byzantine)  # twins add up to f nodes
        self.byzantine_mode = byzantine_mode or self.rng.choice(("equivocate", "twins"))
        if byzantine == 0:
            self.byzantine_mode = "none"
        scripted = self.byzantine_mode in SCRIPTED_MODES
        if scripted:
            assert validators == 4 and byzantine == 1
            faults, equal_power = Faults.scripted(self.byzantine_mode), True
        self.faults = faults
        self.attack_kind = self.rng.choice(faults.attacks) if faults.attacks else ""
        self.bad = self._pick_byzantine(byzantine, scripted)
        self.workload = Workload(self.rng, self.keys, self.bad)
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
            crypto=crypto.active().name,
        )
        self.nodes: list[SimNode] = []
        for i, key in enumerate(self.keys):
            honest = i not in self.bad
            equivocates = not honest and self.byzantine_mode == "equivocate"
            self._add_node(f"v{i}", key, honest, equivocates, scripted=not honest and scripted)
        if self.byzantine_mode == "twins":
            for i in sorted(self.bad):
                self._add_node(f"v{i}-twin", self.keys[i], False, False, scripted=False)
        self.honest_ids = {n.name for n in self.nodes if n.honest}
        self.checker = Checker(self.honest_ids, {self.keys[i].address for i in self.bad})
        self.partition: list[set[str]] | None = None
        self.heal_ms = 0
        self._heal_target: int | None = None
        self.messages = 0
        self.restarts = 0
        self.synced_blocks = 0
        self.penalties = 0
        self.script: Script | None = None
        if scripted:
            self.script = make_script(self, self.byzantine_mode == "amnesia-attack")
        self.attacker = make_outsider(self, self.attack_kind) if self.attack_kind else None

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
        node = SimNode(len(self.nodes), name, key, honest, equivocates, home, scripted=scripted)
        SignState.create(home / "sign_state.json")
        self.nodes.append(node)
        self._open(node)

    # ------------------------------------------------------------ processes

    def _open(self, node: SimNode) -> None:
        """Start the node's process over its home: what `archipelago start` does, minus trio."""
        store = open_store(node.home / "store", map_bytes=STORE_MAP_BYTES)
        node.chain = Chain(self.genesis, store, SignatureVerifier(threads=0))
        node.committed = self._stored_hashes(node)
        if node.scripted:
            return
        node.wal = open_wal(node.home / "wal")
        node.sign_state = SignState.load(node.home / "sign_state.json")
        mempools = self.mempools
        node.driver = self.driver_class(
            state=node.chain.state,
            validator_address=node.key.address,
            can_sign=True,
            last_signed=node.sign_state.last,
            wal=node.wal,
            config=SIM_DRIVER if mempools is None else SIM_IDLE_DRIVER,
            validators_at=store.load_validators,
            now=self.now / 1000,
            txs_waiting=(lambda: True)
            if mempools is None
            else (lambda: mempools.holds(node.index)),
        )

    def _stored_hashes(self, node: SimNode) -> list[bytes]:
        assert node.chain is not None
        store = node.chain.store
        out: list[bytes] = []
        for h in range(1, store.latest_height() + 1):
            block = store.load_block(h)
            assert block is not None
            out.append(block.hash)
        return out

    def _close(self, node: SimNode) -> None:
        if node.wal is not None:
            node.wal.close()
        if node.chain is not None:
            node.chain.verifier.close()
            node.chain.store.close()
        node.wal = node.chain = node.driver = node.sign_state = None

    def _peer_ids(self, node: SimNode) -> list[str]:
        """Who `node` is connected to: everyone up, but the peers it banned."""
        ids = [n.name for n in self.nodes if n is not node and not n.crashed]
        if self.attacker is not None:
            ids.append(self.attacker.peer_id)
        return [i for i in ids if i not in node.banned]

    def announce_peers(self) -> None:
        for n in self.nodes:
            if n.driver is not None:
                n.driver.on_peers(self._peer_ids(n), self.now / 1000)

    def _start(self, node: SimNode) -> None:
        assert node.driver is not None
        node.driver.on_peers(self._peer_ids(node), self.now / 1000)
        self._perform(node, node.driver.start(self.now / 1000))

    def _crash(self, node: SimNode) -> None:
        if node.crashed or node.scripted:
            return
        node.crashed = True
        node.epoch += 1  # timers and pending results die with the process
        node.timer_at = -1
        node.seen.clear()
        node.alternates.clear()
        self._close(node)
        self.announce_peers()

    def _restart(self, node: SimNode) -> None:
        if not node.crashed:
            return
        node.crashed = False
        self.restarts += 1
        self._open(node)
        self._start(node)
        self.announce_peers()

    # ------------------------------------------------------------ scheduling

    def push(self, at: int, kind: int, node: int, epoch: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, epoch, payload))

    def _later(self, node: SimNode, delay_ms: int, work: Callable[[], list[Effect]]) -> None:
        """A result the shell would get back from a worker thread, after `delay_ms`."""
        self.push(self.now + delay_ms, RESULT, node.index, node.epoch, work)

    def _arm_timer(self, node: SimNode) -> None:
        driver = node.driver
        if driver is None:
            return
        deadline = driver.next_deadline()
        if deadline == float("inf"):
            return
        at = max(self.now, math.ceil(deadline * 1000))
        if node.timer_at < self.now or at < node.timer_at:
            node.timer_at = at
            self.push(at, TIMER, node.index, node.epoch, at)

    def _in_fault_window(self) -> bool:
        return self.now < self.faults.window_ms

    def _connected(self, a: str, b: str) -> bool:
        if self.partition is None or not self._in_fault_window():
            return True
        return any(a in g and b in g for g in self.partition)

    def transmit(
        self, sender: str, to: SimNode, payload: bytes, *, gossip: bool, delay: int = -1
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
            self.push(self.now + d, DELIVER, to.index, -1, (sender, payload, gossip))

    def _send_from(
        self, node: SimNode, payload: bytes, targets: Sequence[SimNode], gossip: bool
    ) -> None:
        for to in targets:
            data = payload
            alternate = node.alternates.get(payload)
            if alternate is not None and self.rng.random() < 0.5:
                data = alternate
            self.transmit(node.name, to, data, gossip=gossip)

    # ------------------------------------------------------------ a node's shell

    def _deliver(self, node: SimNode, sender: str, payload: bytes, gossip: bool) -> None:
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
            digest = crypto.digest(payload)
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

    def _perform(self, node: SimNode, effects: Sequence[Effect]) -> None:
        """Perform effects in order, as the trio shell does (answers first, then the rest)."""
        queue = list(reversed(effects))
        while queue:
            if node.crashed or node.driver is None:
                return
            more = self._perform_one(node, queue.pop())
            queue.extend(reversed(more))
        self._arm_timer(node)

    def _perform_one(self, node: SimNode, effect: Effect) -> list[Effect]:
        driver = node.driver
        chain = node.chain
        assert driver is not None and chain is not None
        now_s = self.now / 1000
        if isinstance(effect, Send):
            self._to_outsiders(node, effect.peer, effect.payload)
            targets = self._targets(node, effect.peer)
            self._send_from(node, effect.payload, targets, gossip=False)
        elif isinstance(effect, Gossip):
            digest = crypto.digest(effect.payload)
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

    def _targets(self, node: SimNode, peer: str | None) -> list[SimNode]:
        if peer is not None:
            return [n for n in self.nodes if n.name == peer and not n.crashed]
        return [n for n in self.nodes if n is not node and not n.crashed]

    def _to_outsiders(self, node: SimNode, peer: str | None, payload: bytes) -> None:
        """A direct message to the hostile peer or a script's keyless liar."""
        if self.script is not None and peer == "liar":
            self.script.answer_liar(node, payload)

    def _penalise(self, node: SimNode, peer: str, fault: PeerFault, detail: str) -> None:
        self.checker.on_penalise(node.name, node.honest, peer, fault, detail)
        self.penalties += 1
        node.banned.add(peer)  # a ban closes the connection: the driver forgets the peer
        if node.driver is not None:
            node.driver.on_peers(self._peer_ids(node), self.now / 1000)

    def _sign(self, node: SimNode, request: Sign) -> list[Effect]:
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
            self.checker.note_proposal(
                request.height, request.round, request.block_hash, node.key.address
            )
        effects = driver.on_signed(request, signature, None, now_s)
        if node.equivocates:
            self._equivocate(node, request, signature)
        return effects

    def _equivocate(self, node: SimNode, request: Sign, signature: bytes) -> None:
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
            other = b"" if request.block_hash else crypto.digest(self.rng.randbytes(8))
            alt_vote = Vote.create(
                node.key, CHAIN_ID, request.vote_type, request.height, request.round, other, index
            )
            node.alternates[encode_message(VoteMsg(vote))] = encode_message(VoteMsg(alt_vote))
        else:
            assert request.block is not None
            signed = Proposal(
                request.height, request.round, request.pol_round, request.block_hash, signature
            )
            alt_block = self.build_block(node, request.height, corrupt=self.rng.random() < 0.3)
            alt = Proposal.create(
                node.key, CHAIN_ID, request.height, request.round, request.pol_round, alt_block.hash
            )
            self.checker.note_proposal(
                request.height, request.round, alt_block.hash, node.key.address
            )
            genuine = encode_message(ProposalMsg(signed, request.block))
            node.alternates[genuine] = encode_message(ProposalMsg(alt, alt_block))

    def _validate(self, node: SimNode, block: Block) -> list[Effect]:
        assert node.chain is not None and node.driver is not None
        try:
            node.chain.validate(block, now=self.now)
            valid, reason = True, ""
        except BlockInvalid as e:
            valid, reason = False, e.reason.value
        return node.driver.on_validated(block.hash, valid, reason, self.now / 1000)

    def _apply(self, node: SimNode, block: Block, commit: Commit) -> list[Effect]:
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
                    self.checker.on_apply_failed(node.name, block.height, e)
                driver.on_apply_failed(block.height)
                return []
            if self.mempools is not None:
                self.mempools.committed(node.index, block, self.now, self.heal_ms, node.honest)
            if node.honest:
                self.checker.on_commit(node.name, block, commit, state_before, applied.validated)
                if driver.mode == "blocksync" or not _decided_here(driver, block):
                    self.synced_blocks += 1
            chain.finish(applied)
            node.wal.mark_height_end(block.height)
            node.committed.append(block.hash)
            done = block
        return driver.on_applied(done, chain.state, self.now / 1000)

    def _serve(self, node: SimNode, peer: str, height: int, count: int, tag: int) -> None:
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

    # ------------------------------------------------------------ blocks

    def _build(self, node: SimNode, request: Build) -> Block:
        """The proposer's block: seed-chosen transactions, or (idle mode) its mempool's."""
        assert node.chain is not None
        chain = node.chain
        mempools = self.mempools
        ids: tuple[int, ...] = ()
        if mempools is None:
            txs = self.workload.txs(chain, 0)
        else:
            ids = mempools.take(node.index)
            txs = self.workload.txs(chain, len(ids), len(ids)) if ids else []
        block = chain.build(
            txs=txs,
            evidence=request.evidence,
            time_ms=self.now,
            proposer_address=node.key.address,
            last_commit=request.last_commit,
        )
        if mempools is not None:
            mempools.carry(block, ids)
        return block

    def build_block(self, node: SimNode, height: int, *, corrupt: bool = False) -> Block:
        """A block of the node's next height outside its driver (Byzantine variants, scripts)."""
        assert node.chain is not None and node.chain.state.height == height
        block = node.chain.build(
            txs=self.workload.txs(node.chain, 1),
            evidence=(),
            time_ms=self.now,
            proposer_address=node.key.address,
        )
        return corrupted(block, self.rng) if corrupt else block

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
            self.push(start, PARTITION, 0, 0, groups)
            self.push(end, PARTITION, 0, 0, None)
        honest = [n.index for n in self.nodes if n.honest]
        for _ in range(f.crashes):
            victim = self.rng.choice(honest)
            start = self.rng.randint(0, f.window_ms // 2)
            end = start + self.rng.randint(500, 4_000)
            self.push(start, CRASH, victim, 0, None)
            self.push(end, RESTART, victim, 0, None)
            self.heal_ms = max(self.heal_ms, end)
        for _ in range(f.mass_restarts if len(honest) > 1 else 0):
            group = self.rng.sample(honest, self.rng.randint(2, len(honest)))
            start = self.rng.randint(1_000, f.window_ms // 2)
            end = start + self.rng.randint(200, 2_000)
            for victim in group:
                self.push(start, CRASH, victim, 0, None)
                self.push(end, RESTART, victim, 0, None)
            self.heal_ms = max(self.heal_ms, end)
        if self.attacker is not None:
            self.push(self.rng.randint(0, 500), ATTACK, 0, 0, None)
        self.heal_ms = max(self.heal_ms, f.window_ms)

    def _plan_bursts(self) -> None:
        """Idle mode: enough bursts for the target height, the last one after the heal."""
        if self.mempools is None:
            return
        honest = [n.index for n in self.nodes if n.honest]
        arrivals = self.mempools.plan(
            honest, len(self.nodes), self.heal_ms, max(2, (self.heights + 1) // 2)
        )
        for at, node, burst in arrivals:
            self.push(at, TXS, node, 0, burst)

    def _txs_arrive(self, node: SimNode, burst: int) -> None:
        """A burst reached the node's mempool, as the mempool reactor would hand it on."""
        assert self.mempools is not None
        if self.mempools.arrive(node.index, burst) and node.driver is not None:
            self._perform(node, node.driver.on_txs(self.now / 1000))

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
        if self.mempools is not None and not self.mempools.all_committed(self.now):
            return False
        return all(len(n.committed) >= target for n in self.nodes if n.honest)

    def run(self) -> RunResult:
        self._plan_faults()
        self._plan_bursts()
        if self.script is not None:
            self.script.plan()
        for node in self.nodes:
            if not node.scripted:
                self._start(node)
        deadline = self.heal_ms + LIVENESS_BOUND_MS
        if self.mempools is not None:
            deadline = max(self.heal_ms, self.mempools.bursts[-1].at_ms) + LIVENESS_BOUND_MS
        while (
            self.queue and not self._violated() and not (self.now >= self.heal_ms and self._done())
        ):
            at, _, kind, index, epoch, payload = heapq.heappop(self.queue)
            if at > deadline:
                break
            self.now = at
            node = self.nodes[index]
            if kind == PARTITION:
                self.partition = payload
            elif kind == CRASH:
                self._crash(node)
            elif kind == RESTART:
                self._restart(node)
            elif kind == SCRIPT:
                payload()
            elif kind == ATTACK:
                assert self.attacker is not None
                if self._in_fault_window():
                    self.attacker.act()
                    self.push(self.now + ATTACK_INTERVAL_MS, ATTACK, 0, 0, None)
            elif kind == DELIVER:
                sender, data, gossip = payload
                self._deliver(node, sender, data, gossip)
            elif kind == TXS:
                self._txs_arrive(node, payload)
            elif epoch != node.epoch or node.driver is None:
                continue  # a timer or result from before a crash
            elif kind == TIMER:
                if payload == node.timer_at:
                    node.timer_at = -1
                    # The timer is due now; the driver's float deadline may sit a hair
                    # above this millisecond.
                    due = max(self.now / 1000, min(node.driver.next_deadline(), (at + 1) / 1000))
                    self._perform(node, node.driver.on_time(due))
            else:
                self._perform(node, payload())
        return self._result()

    def _violated(self) -> bool:
        """A safety violation, or an idle mode one: either ends the run at once."""
        idle = self.mempools is not None and self.mempools.violation is not None
        return idle or bool(self.checker.violations)

    def _result(self) -> RunResult:
        liveness = None
        target = self._target()
        behind = [n for n in self.nodes if n.honest and len(n.committed) < target]
        checker = self.checker
        ended_early = self._violated()
        if behind and not ended_early:
            liveness = liveness_failure([n.name for n in behind], target, self.heal_ms)
        idle = None
        if self.mempools is not None:
            idle = self.mempools.report(self.heal_ms)
            late = None if ended_early else self.mempools.late(self.heal_ms)
            if late is not None:
                liveness = late if liveness is None else f"{liveness}; {late}"
        honest_blocks = min((len(n.committed) for n in self.nodes if n.honest), default=0)
        return RunResult(
            self.seed,
            self.byzantine_mode,
            self.attack_kind,
            tuple(checker.violations),
            liveness,
            honest_blocks,
            self.now,
            self.heal_ms,
            self.messages,
            checker.evidence_committed,
            checker.txs_committed,
            checker.validator_changes,
            self.restarts,
            self.synced_blocks,
            self.penalties,
            self.script is not None and self.script.armed,
            crypto.digest(b"".join(h for n in self.nodes if n.honest for h in n.committed)),
            tuple(_report(n) for n in self.nodes),
            idle,
        )

    def close(self) -> None:
        for node in self.nodes:
            self._close(node)


def _decided_here(driver: Driver, block: Block) -> bool:
    machine = driver.machine
    return (
        machine is not None and machine.decision is not None and machine.decision.hash == block.hash
    )


def _report(n: SimNode) -> NodeReport:
    d = n.driver
    m = None if d is None else d.machine
    power = 0
    if n.chain is not None:
        member = n.chain.state.validators.index_of(n.key.address)
        power = 0 if member is None else n.chain.state.validators[member].power
    return NodeReport(
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


def _initial_proposer(keys: Sequence[PrivateKey]) -> bytes:
    """Round 0's proposer at height 1 when every key has power 1."""
    genesis_set = ValidatorSet.of(Validator(k.public_key, 1) for k in keys)
    return ProposerSchedule.initial(genesis_set).proposer(0).address
