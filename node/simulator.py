"""A deterministic whole-cluster simulator: real consensus machines, virtual network and clock.

The main test of the consensus core (TigerBeetle's habit): N validators'
`ConsensusMachine`s run in one process and one thread, on a virtual clock and
a virtual network that delays, reorders, drops and duplicates messages,
partitions and heals, and crashes and restarts nodes, while up to f Byzantine
validators equivocate as proposers and voters or run as "twins" (two nodes
with one key, after "Twins: BFT Systems Made Robust"). Every choice comes from
one `random.Random(seed)`, so a seed reproduces a run byte for byte; there is
no trio, socket or wall clock here.

The simulator performs the machine's actions as the node does: it signs with
real Ed25519 keys behind an in-memory sign state that refuses a conflicting
signature, writes every input event to a per-node log (encoded, as the WAL
is) before stepping, and rebuilds a restarted node by replaying that log.
Blocks are the node's: each node keeps its own `ChainState` and its own
`kvstore` application (both survive a crash, as the store does), builds with
`consensus.validation.build_block` from real signed client transactions (a few
simulated clients, each proposer reading their next nonce from its own
application through its query interface) and its evidence pool, and checks
every proposed and every decided block with the real validation core
(`validate_block`, a deterministic `SignatureVerifier(threads=0)`, the
virtual clock as `now_ms`, earlier validator sets from the node's history).
Validators have seed-chosen unequal voting power, and client transactions
["val", public_key, power] change the set (from height h + 2, as the
application returns them) while keeping the Byzantine power below a third.

After each run it checks agreement (no two honest nodes commit different
blocks at one height), validity (each committed block was proposed, signed,
by the proposer of its commit round, passes the validation core, carries a
valid commit certificate and no evidence against an honest validator, and
each machine's proposer rotation equals its ChainState's) and liveness
(every honest node reaches the target height within `LIVENESS_BOUND_MS` of
virtual time after the last fault healed). A gossip layer stands in for
CometBFT's reactor: a node sends each message its machine accepted to every
peer at once, and every `GOSSIP_INTERVAL_MS` sends again, to each peer, those
of its current height the peer's machine has not accepted (CometBFT learns
that from HasVote messages; the simulator reads it from the peer directly),
and to a peer at a lower height the decided block and commit certificate of
that height. Evidence a machine reports goes into its node's pool and to every
peer once, which verifies it before pooling it, as the node's evidence channel.

Besides the random faults there is one targeted scenario, "lock-attack": a
scripted Byzantine proposer and voter plus a partition schedule under which
an honest validator that ignored its lock would commit a block conflicting
with one another honest validator committed (see `_LockAttack`). The real
machine stays safe under it; a broken one is caught with its seed.

Run it as `archipelago simulate ...` or `python -m node.simulator ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consensus.apps.kvstore import KVStore, set_tx
from consensus.codec import encode
from consensus.crypto import PrivateKey, sha256
from consensus.events import (
    Action,
    BlockBuilt,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitReceived,
    Decide,
    Event,
    HeightCommitted,
    Misbehaviour,
    ProposalReceived,
    ReportEvidence,
    ScheduleTimeout,
    SignProposal,
    SignVote,
    StartHeight,
    Step,
    TimeoutFired,
    ValidateBlock,
    VoteReceived,
    decode_event,
    encode_event,
)
from consensus.machine import ConsensusConfig, ConsensusMachine
from consensus.proposer import ProposerSchedule
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
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
from consensus.validation import (
    BlockInvalid,
    ValidatedBlock,
    build_block,
    next_chain_state,
    validate_block,
)
from node.evidence import EvidencePool

__all__ = [
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
MODES = ("equivocate", "twins", "lock-attack")
# Fast timeouts keep virtual runs short; they still grow per round, as in production.
SIM_CONFIG = ConsensusConfig(
    timeout_propose_ms=1000,
    timeout_propose_delta_ms=200,
    timeout_prevote_ms=500,
    timeout_prevote_delta_ms=100,
    timeout_precommit_ms=500,
    timeout_precommit_delta_ms=100,
    timeout_commit_ms=0,
    skip_timeout_commit=True,
)
GOSSIP_INTERVAL_MS = 400
# Accepted messages of the current height a node keeps for re-sending; oldest
# dropped when full (the bound is far above what a simulated height produces).
GOSSIP_POOL_MESSAGES_MAX = 4096
BLOCK_TXS_MAX = 4  # client transactions per block (a validator change adds one)
CLIENTS = 3  # simulated client keys signing kvstore transactions
VALUE_BYTES = 16  # random bytes after the 8-byte nonce record in each written value
POWER_MAX = 10  # seed-chosen voting power per validator is 1..POWER_MAX
VALIDATOR_CHANGE_PROBABILITY = 0.2  # per built block: try one ["val", pk, power]
# Verified evidence a node holds until a block carries it; when full, new
# evidence is dropped (the node's EvidencePool policy; a run makes a few).
EVIDENCE_PENDING_MAX = 64
# Validation results a node keeps for the current height (the machine asks once
# per block; the decision re-uses it); the oldest is evicted when full.
VALIDATED_CACHE_BLOCKS_MAX = 16
VALIDATION_DELAY_MS_MAX = 5
LIVENESS_BOUND_MS = 120_000

# The lock-attack scenario's script, in virtual ms (see _LockAttack).
ATTACK_PROPOSE_MS = 100
ATTACK_NIL_PRECOMMIT_MS = 200
ATTACK_SPLIT_MS = 600
ATTACK_DECIDE_MS = 650
ATTACK_HEAL_MS = 4_000


@dataclass(frozen=True, slots=True)
class Faults:
    """What the network and the nodes do wrong, and until when (virtual ms)."""

    drop_probability: float = 0.1
    duplicate_probability: float = 0.05
    delay_ms_min: int = 1
    delay_ms_max: int = 150
    partitions: int = 1  # partition episodes within the window
    crashes: int = 1  # honest node crash/restart episodes within the window
    window_ms: int = 8_000

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1, 50, 0, 0, 0)

    @classmethod
    def lock_attack(cls) -> Faults:
        """The lock-attack scenario's network: short delays, its own partitions until the heal."""
        return cls(0.0, 0.0, 1, 20, 0, 0, ATTACK_HEAL_MS)


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

    def __str__(self) -> str:
        kind = "honest" if self.honest else "byzantine"
        down = " crashed" if self.crashed else ""
        return (
            f"{self.name}({kind}{down}): committed={self.committed} power={self.power} "
            f"height={self.height} round={self.round} step={self.step} "
            f"locked_round={self.locked_round}"
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    byzantine_mode: str
    safety_violations: tuple[str, ...]
    liveness_failure: str | None
    blocks: int  # heights every honest node committed
    virtual_ms: int
    heal_ms: int
    steps: int
    signatures: int  # consensus signatures made (votes and proposals)
    messages: int
    accepted: int  # messages machines accepted (each after one signature check)
    evidence: int  # ReportEvidence actions by honest nodes
    evidence_committed: int  # evidence in decided blocks (all against Byzantine validators)
    txs_committed: int  # client transactions in decided blocks
    validator_changes: int  # validator updates the application returned in decided blocks
    tx_signatures: int  # client transactions signed
    verifications: int  # signatures the validation core checked (txs, certificates, evidence)
    restarts: int
    attack_armed: bool  # lock-attack: the premise held when d proposed (see _LockAttack)
    chain_digest: bytes  # SHA-256 over every honest node's committed block hashes
    nodes: tuple[NodeReport, ...]

    @property
    def ok(self) -> bool:
        return not self.safety_violations and self.liveness_failure is None

    def describe(self) -> str:
        lines = [f"seed {self.seed} ({self.byzantine_mode}):"]
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
            f"virtual_s={sum(r.virtual_ms for r in rs) / 1000:.1f}"
        )
        failed = [r for r in rs if not r.ok]
        return "\n".join([line, *(r.describe() for r in failed)])


# ---------------------------------------------------------------- nodes


def validator_keys(count: int) -> list[PrivateKey]:
    return [PrivateKey(sha256(b"sim-validator-%d" % i)) for i in range(count)]


def client_keys() -> list[PrivateKey]:
    return [PrivateKey(sha256(b"sim-client-%d" % i)) for i in range(CLIENTS)]


def _client_record(client: int) -> bytes:
    """The kvstore key each client's writes go to: its next nonce, then random bytes."""
    return b"client/%d" % client


@dataclass(slots=True)
class _Node:
    """One simulated process. `app`, `state`, `states`, `chain` and the WAL stand for its store."""

    index: int
    name: str
    key: PrivateKey
    honest: bool
    equivocates: bool
    app: KVStore
    state: ChainState
    verifier: SignatureVerifier
    scripted: bool = False  # a Byzantine node driven by a scenario script, no machine
    machine: ConsensusMachine | None = None
    crashed: bool = False
    epoch: int = 0
    wal: list[bytes] = field(default_factory=list)
    sign_state: dict[tuple[int, int, int], bytes] = field(default_factory=dict)
    chain: list[tuple[Block, Commit]] = field(default_factory=list)
    states: list[ChainState] = field(default_factory=list)  # states[h]: after height h
    # Committed hashes survive a crash (they stand for the store); pending ones do not.
    evidence: EvidencePool = field(
        default_factory=lambda: EvidencePool(pending_max=EVIDENCE_PENDING_MAX)
    )
    # In memory only (lost on a crash):
    validated: dict[bytes, ValidatedBlock | BlockInvalid] = field(default_factory=dict)
    pool: list[ProposalReceived | VoteReceived] = field(default_factory=list)
    accepted: set[bytes] = field(default_factory=set)  # signatures its machine accepted
    alternates: dict[Any, ProposalReceived | VoteReceived] = field(default_factory=dict)

    def validators_at(self, height: int) -> ValidatorSet | None:
        """The set that signed (or signs) `height`, from this node's history."""
        if 1 <= height <= len(self.states):
            return self.states[height - 1].validators
        return None


_INPUT, _GOSSIP, _CRASH, _RESTART, _PARTITION, _SCRIPT, _EVIDENCE = range(7)


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
        machine_class: type[ConsensusMachine],
        equal_power: bool,
    ) -> None:
        assert 0 <= 3 * byzantine < validators or validators == 1
        self.seed = seed
        self.rng = random.Random(seed)
        self.heights = heights
        self.machine_class = machine_class
        self.keys = validator_keys(validators)
        self.clients = client_keys()
        self.byzantine_mode = byzantine_mode or self.rng.choice(("equivocate", "twins"))
        if byzantine == 0:
            self.byzantine_mode = "none"
        attack = self.byzantine_mode == "lock-attack"
        if attack:
            assert validators == 4 and byzantine == 1
            faults, equal_power = Faults.lock_attack(), True
        self.faults = faults
        self.bad = self._pick_byzantine(byzantine, attack)
        self.bad_addresses = {self.keys[i].address for i in self.bad}
        powers = self._powers(equal_power)
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
            self._add_node(f"v{i}", key, honest, equivocates, scripted=not honest and attack)
        if self.byzantine_mode == "twins":
            for i in sorted(self.bad):
                self._add_node(f"v{i}-twin", self.keys[i], False, False, scripted=False)
        self.queue: list[tuple[int, int, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0
        self.partition: list[set[int]] | None = None
        self.heal_ms = 0
        self.decided: dict[int, bytes] = {}
        self._first_committer: dict[int, str] = {}  # height -> the honest node counted for it
        self.proposed: dict[tuple[int, int], dict[bytes, bytes]] = {}  # (h, r) -> hash -> signer
        self.violations: list[str] = []
        self.steps = 0
        self.evidence = 0
        self.evidence_committed = 0
        self.txs_committed = 0
        self.validator_changes = 0
        self.tx_signatures = 0
        self.verifications = 0
        self.accepted = 0
        self.restarts = 0
        self.signatures = 0
        self.messages = 0
        self.attack = _LockAttack(self) if attack else None

    def _pick_byzantine(self, byzantine: int, attack: bool) -> set[int]:
        """Indexes of the Byzantine validators: by seed, or the one the lock-attack script needs."""
        if attack:
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
        app = KVStore.from_genesis(self.genesis)
        state = ChainState.from_genesis(self.genesis, app.app_hash)
        node = _Node(
            len(self.nodes),
            name,
            key,
            honest,
            equivocates,
            app,
            state,
            SignatureVerifier(threads=0),
            scripted=scripted,
        )
        node.states.append(state)
        self.nodes.append(node)

    # ------------------------------------------------------------ scheduling

    def _push(self, at: int, kind: int, node: int, epoch: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, epoch, payload))

    def _local(self, node: _Node, event: Event, delay_ms: int = 0) -> None:
        self._push(self.now + delay_ms, _INPUT, node.index, node.epoch, (event, -1))

    def _in_fault_window(self) -> bool:
        return self.now < self.faults.window_ms

    def _send(
        self, sender: _Node, to: _Node, message: Event | DuplicateVoteEvidence, kind: int = _INPUT
    ) -> None:
        f = self.faults
        faulty = self._in_fault_window()
        if faulty and self.partition is not None:
            if not any(sender.index in g and to.index in g for g in self.partition):
                return
        if faulty and self.rng.random() < f.drop_probability:
            return
        copies = 2 if faulty and self.rng.random() < f.duplicate_probability else 1
        for _ in range(copies):
            delay = self.rng.randint(f.delay_ms_min, max(f.delay_ms_min, f.delay_ms_max))
            self.messages += 1
            self._push(self.now + delay, kind, to.index, -1, (message, sender.index))

    def _send_message(
        self, sender: _Node, to: _Node, message: ProposalReceived | VoteReceived
    ) -> None:
        """Send, except that an equivocator sends each peer one of its two versions."""
        key = message.proposal if isinstance(message, ProposalReceived) else message.vote
        alternate = sender.alternates.get(key)
        if alternate is not None and self.rng.random() < 0.5:
            self._send(sender, to, alternate)
        else:
            self._send(sender, to, message)

    def _broadcast(self, sender: _Node, message: ProposalReceived | VoteReceived) -> None:
        for to in self.nodes:
            if to is not sender:
                self._send_message(sender, to, message)

    # ------------------------------------------------------------ the node

    def _new_machine(self, node: _Node) -> ConsensusMachine:
        validators = self.genesis.validator_set
        return self.machine_class(
            chain_id=CHAIN_ID,
            height=1,
            validators=validators,
            schedule=ProposerSchedule.initial(validators),
            own_address=node.key.address,
            config=SIM_CONFIG,
        )

    def _input(self, node: _Node, event: Event, sender: int) -> None:
        if node.scripted:
            assert self.attack is not None
            self.attack.receive(event)
            return
        machine = node.machine
        if node.crashed or machine is None:
            return
        node.wal.append(encode_event(event))
        self.steps += 1
        self._perform(node, machine.step(event))
        if isinstance(event, HeightCommitted):
            self._check_schedule(node, machine)

    def _perform(self, node: _Node, actions: Sequence[Action]) -> None:
        for action in actions:
            self._perform_one(node, action)

    def _perform_one(self, node: _Node, action: Action) -> None:
        if isinstance(action, Broadcast):
            message = action.message
            node.accepted.add(_signature(message))
            self.accepted += 1
            node.pool.append(message)
            del node.pool[:-GOSSIP_POOL_MESSAGES_MAX]
            self._broadcast(node, message)
        elif isinstance(action, SignVote):
            self._sign_vote(node, action)
        elif isinstance(action, SignProposal):
            self._sign_proposal(node, action)
        elif isinstance(action, ScheduleTimeout):
            event = TimeoutFired(action.height, action.round, action.step)
            self._local(node, event, action.duration_ms)
        elif isinstance(action, ValidateBlock):
            valid, reason = self._verdict(node, action.block)
            verdict = BlockValidated(action.block.hash, valid, reason)
            self._local(node, verdict, self.rng.randint(1, VALIDATION_DELAY_MS_MAX))
        elif isinstance(action, BuildBlock):
            if action.height == node.state.height:
                block = self._build(node, action.height)
                self._local(node, BlockBuilt(action.height, action.round, block), 1)
            # Else a replayed request of a height committed before a crash: the
            # machine has decided it and would ignore any block built now.
        elif isinstance(action, Decide):
            self._apply(node, action.block, action.commit)
        elif isinstance(action, ReportEvidence):
            if node.evidence.add(action.evidence):
                for to in self.nodes:
                    if to is not node:
                        self._send(node, to, action.evidence, _EVIDENCE)
            self.evidence += 1 if node.honest else 0
            if action.evidence.validator_address not in self.bad_addresses and node.honest:
                self.violations.append(
                    f"{node.name} reported evidence against honest validator "
                    f"{action.evidence.validator_address.hex()[:8]}"
                )
        else:
            assert isinstance(action, Misbehaviour)

    def _sign_vote(self, node: _Node, a: SignVote) -> None:
        key = (a.height, a.round, int(a.type))
        signed = node.sign_state.get(key)
        if signed is not None and signed != a.block_hash:
            return  # the sign state refuses: the machine moves on by its timeouts
        node.sign_state[key] = a.block_hash
        assert node.machine is not None
        index = node.machine.validators.index_of(node.key.address)
        assert index is not None
        vote = Vote.create(node.key, CHAIN_ID, a.type, a.height, a.round, a.block_hash, index)
        self.signatures += 1
        if node.equivocates:
            other = b"" if a.block_hash else sha256(self.rng.randbytes(8))
            alt = Vote.create(node.key, CHAIN_ID, a.type, a.height, a.round, other, index)
            self.signatures += 1
            node.alternates[vote] = VoteReceived(alt)
        self._local(node, VoteReceived(vote))

    def _sign_proposal(self, node: _Node, a: SignProposal) -> None:
        key = (a.height, a.round, 0)
        signed = node.sign_state.get(key)
        if signed is not None and signed != a.block.hash:
            return
        node.sign_state[key] = a.block.hash
        proposal = Proposal.create(node.key, CHAIN_ID, a.height, a.round, a.pol_round, a.block.hash)
        self._note_proposal(proposal, node.key.address)
        self.signatures += 1
        if node.equivocates:
            corrupt = self.rng.random() < 0.3
            alt_block = self._build(node, a.height, corrupt=corrupt, txs_min=1)
            alt = Proposal.create(
                node.key, CHAIN_ID, a.height, a.round, a.pol_round, alt_block.hash
            )
            self._note_proposal(alt, node.key.address)
            self.signatures += 1
            node.alternates[proposal] = ProposalReceived(alt, alt_block)
        self._local(node, ProposalReceived(proposal, a.block))

    def _note_proposal(self, proposal: Proposal, signer: bytes) -> None:
        key = (proposal.height, proposal.round)
        self.proposed.setdefault(key, {})[proposal.block_hash] = signer

    # ------------------------------------------------------------ blocks and the app

    def _next_nonce(self, node: _Node, client: int) -> int:
        """The client's next nonce in the node's committed state (its own nonce record)."""
        result = node.app.query("key", _client_record(client))
        return int.from_bytes(result.value[:8], "big") if result.ok else 0

    def _workload(self, node: _Node, txs_min: int) -> list[bytes]:
        """Signed client transactions for the next block on `node`'s committed state.

        Each client's writes go to its own record, holding its next nonce, so
        the proposer learns the nonces from its application; a validator
        change, when drawn, is followed by a write of the same client.
        """
        rng = self.rng
        count = rng.randint(txs_min, BLOCK_TXS_MAX)
        change = None
        if count and rng.random() < VALIDATOR_CHANGE_PROBABILITY:
            change = self._validator_change(node.state)
        nonces: dict[int, int] = {}
        txs: list[bytes] = []
        for _ in range(count):
            client = rng.randrange(CLIENTS)
            key = self.clients[client]
            nonce = nonces.get(client)
            if nonce is None:
                nonce = self._next_nonce(node, client)
            if change is not None:
                payload = encode(["val", change[0], change[1]])
                txs.append(Transaction.create(key, CHAIN_ID, nonce, payload).encode())
                self.tx_signatures += 1
                nonce += 1
                change = None
            value = (nonce + 1).to_bytes(8, "big") + rng.randbytes(VALUE_BYTES)
            txs.append(set_tx(key, CHAIN_ID, nonce, _client_record(client), value).encode())
            self.tx_signatures += 1
            nonces[client] = nonce + 1
        return txs

    def _validator_change(self, state: ChainState) -> tuple[bytes, int] | None:
        """One seed-chosen power change for height + 2 that keeps Byzantine power below 1/3."""
        key = self.rng.choice(self.keys)
        power = self.rng.randint(0, POWER_MAX)
        powers = {v.public_key: v.power for v in state.next_validators}
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

    def _build(self, node: _Node, height: int, *, corrupt: bool = False, txs_min: int = 0) -> Block:
        state = node.state
        assert state.height == height, "the machine builds on the committed state"
        block = build_block(
            state,
            self._workload(node, txs_min),
            time_ms=max(self.now, state.last_block_time_ms + 1),
            proposer_address=node.key.address,
            last_commit=node.chain[-1][1] if node.chain else None,
            evidence=node.evidence.pending(state),
        )
        if corrupt:
            block = self._corrupt(block)
        return block

    def _corrupt(self, block: Block) -> Block:
        """An invalid variant: a wrong app hash, or a transaction with a broken signature."""
        if block.txs and self.rng.random() < 0.5:
            tx = Transaction.decode(block.txs[0])
            signature = bytes([tx.signature[0] ^ 1]) + tx.signature[1:]
            broken = dataclasses.replace(tx, signature=signature).encode()
            header = dataclasses.replace(
                block.header, data_hash=data_hash((broken, *block.txs[1:]))
            )
            return Block(header, (broken, *block.txs[1:]), block.last_commit, block.evidence)
        header = dataclasses.replace(block.header, app_hash=sha256(b"not the state"))
        return Block(header, block.txs, block.last_commit, block.evidence)

    def _validate(self, node: _Node, block: Block) -> ValidatedBlock | BlockInvalid:
        """The validation core's verdict on the next block, cached for the current height."""
        cached = node.validated.get(block.hash)
        if cached is not None:
            return cached
        state = node.state
        proposer = block.header.proposer_address
        # As the node: a re-proposed block keeps its builder, who must be a
        # validator of this height; the proposal's signer is the machine's check.
        expected = proposer if state.validators.index_of(proposer) is not None else b""
        result: ValidatedBlock | BlockInvalid
        try:
            result = validate_block(
                block,
                state,
                node.app,
                node.verifier,
                now_ms=self.now,
                expected_proposer=expected,
                validators_at=node.validators_at,
            )
        except BlockInvalid as e:
            result = e
        commit_sigs = 0 if block.last_commit is None else len(block.last_commit.signatures)
        self.verifications += len(block.txs) + commit_sigs + 2 * len(block.evidence)
        if len(node.validated) >= VALIDATED_CACHE_BLOCKS_MAX:
            node.validated.pop(next(iter(node.validated)))
        node.validated[block.hash] = result
        return result

    def _verdict(self, node: _Node, block: Block) -> tuple[bool, str]:
        if block.height < node.state.height:
            # A replayed request for a height this node has since committed.
            return node.chain[block.height - 1][0].hash == block.hash, "already committed"
        result = self._validate(node, block)
        if isinstance(result, BlockInvalid):
            return False, result.reason.value
        return True, ""

    def _apply(self, node: _Node, block: Block, commit: Commit) -> None:
        height = block.height
        if len(node.chain) >= height:
            assert node.chain[height - 1][0].hash == block.hash  # replayed decision
        else:
            assert len(node.chain) == height - 1
            result = self._validate(node, block)
            if isinstance(result, BlockInvalid):
                # The node stops rather than fork (node/consensus_service.py).
                if node.honest:
                    self.violations.append(
                        f"validity: {node.name} decided an invalid block at height {height}: "
                        f"{result}"
                    )
                return
            if node.honest:
                self._check_commit(node, block, commit, result)
            node.app.commit(result.execution)
            node.state = next_chain_state(node.state, result)
            node.states.append(node.state)
            node.chain.append((block, commit))
            node.validated.clear()
            node.evidence.committed(block.evidence)
        self._local(node, HeightCommitted(height, node.states[height].validators), 1)

    def _check_commit(
        self, node: _Node, block: Block, commit: Commit, validated: ValidatedBlock
    ) -> None:
        height = block.height
        state = node.state  # before this block
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

    def _check_schedule(self, node: _Node, machine: ConsensusMachine) -> None:
        """The machine's rotation and set must be the ChainState's (the node builds from it)."""
        if machine.height != node.state.height:
            return
        if machine.schedule != node.state.schedule:
            self.violations.append(
                f"validity: {node.name}'s machine at height {machine.height} has another "
                f"proposer schedule than its chain state"
            )

    # ------------------------------------------------------------ faults

    def _plan_faults(self) -> None:
        f = self.faults
        if f.window_ms <= 0:
            return
        for _ in range(f.partitions if len(self.nodes) > 1 else 0):
            start = self.rng.randint(0, f.window_ms // 2)
            end = min(f.window_ms, start + self.rng.randint(1_000, 5_000))
            members = list(range(len(self.nodes)))
            self.rng.shuffle(members)
            cut = self.rng.randint(1, len(members) - 1)
            groups = [set(members[:cut]), set(members[cut:])]
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
        self.heal_ms = max(self.heal_ms, f.window_ms)

    def _crash(self, node: _Node) -> None:
        if node.crashed:
            return
        node.crashed = True
        node.machine = None
        node.epoch += 1  # timers and pending local events die with the process
        node.pool.clear()
        node.accepted.clear()
        node.evidence.forget_pending()
        node.validated.clear()

    def _restart(self, node: _Node) -> None:
        if not node.crashed:
            return
        node.crashed = False
        self.restarts += 1
        machine = self._new_machine(node)
        node.machine = machine
        due = machine.replay(decode_event(b) for b in node.wal)
        self._check_schedule(node, machine)
        self._perform(node, due)
        if machine.current_step == Step.NEW_HEIGHT:
            # As the node after its replay: a height not started yet (the crash
            # came before StartHeight was logged) is started now.
            self._local(node, StartHeight(machine.height))
        self._push(self.now + GOSSIP_INTERVAL_MS, _GOSSIP, node.index, node.epoch, None)

    def _receive_evidence(self, node: _Node, evidence: DuplicateVoteEvidence) -> None:
        """A peer's evidence joins the pool once verified against the set of its height."""
        if node.crashed or node.scripted:
            return
        validators = node.validators_at(evidence.height)
        if validators is None:
            return  # a height this node has not reached: the reporter will propose it
        self.verifications += 2
        if evidence.verify(CHAIN_ID, validators) is None:
            node.evidence.add(evidence)

    def _gossip(self, node: _Node) -> None:
        """Re-send what each peer lacks: its height's decision if behind, else missing messages."""
        machine = node.machine
        if machine is not None:
            node.pool = [m for m in node.pool if m.height == machine.height]
            for peer in self.nodes:
                if peer is node or peer.machine is None:
                    continue
                peer_height = peer.machine.height
                if peer_height < machine.height and peer_height <= len(node.chain):
                    block, commit = node.chain[peer_height - 1]
                    self._send(node, peer, CommitReceived(block, commit))
                elif peer_height == machine.height:
                    for message in node.pool:
                        if _signature(message) not in peer.accepted:
                            self._send_message(node, peer, message)
        self._push(self.now + GOSSIP_INTERVAL_MS, _GOSSIP, node.index, node.epoch, None)

    # ------------------------------------------------------------ the run

    def _done(self) -> bool:
        return all(len(n.chain) >= self.heights for n in self.nodes if n.honest)

    def run(self) -> RunResult:
        self._plan_faults()
        if self.attack is not None:
            self.attack.plan()
        for node in self.nodes:
            if node.scripted:
                continue
            node.machine = self._new_machine(node)
            self._local(node, StartHeight(1), self.rng.randint(0, 50))
            self._push(self.rng.randint(1, GOSSIP_INTERVAL_MS), _GOSSIP, node.index, 0, None)
        deadline = self.heal_ms + LIVENESS_BOUND_MS
        try:
            while (
                self.queue
                and not self.violations
                and not (self._done() and self.now >= self.heal_ms)
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
                elif epoch != -1 and epoch != node.epoch:
                    continue  # a timer or local result from before a crash
                elif kind == _GOSSIP:
                    self._gossip(node)
                elif kind == _EVIDENCE:
                    self._receive_evidence(node, payload[0])
                else:
                    event, sender = payload
                    self._input(node, event, sender)
        finally:
            for node in self.nodes:
                node.verifier.close()
        return self._result()

    def _result(self) -> RunResult:
        liveness = None
        behind = [n for n in self.nodes if n.honest and len(n.chain) < self.heights]
        if behind and not self.violations:  # a safety violation ends the run early
            liveness = (
                f"{', '.join(n.name for n in behind)} below height {self.heights} "
                f"{LIVENESS_BOUND_MS} ms after the last fault healed at {self.heal_ms} ms"
            )
        reports = []
        for n in self.nodes:
            m = n.machine
            member = n.state.validators.index_of(n.key.address)
            reports.append(
                NodeReport(
                    n.name,
                    n.honest,
                    n.crashed,
                    len(n.chain),
                    0 if member is None else n.state.validators[member].power,
                    m.height if m else 0,
                    m.round if m else 0,
                    m.current_step.name if m else "-",
                    m.locked_round if m else -1,
                )
            )
        honest_blocks = min((len(n.chain) for n in self.nodes if n.honest), default=0)
        return RunResult(
            self.seed,
            self.byzantine_mode,
            tuple(self.violations),
            liveness,
            honest_blocks,
            self.now,
            self.heal_ms,
            self.steps,
            self.signatures,
            self.messages,
            self.accepted,
            self.evidence,
            self.evidence_committed,
            self.txs_committed,
            self.validator_changes,
            self.tx_signatures,
            self.verifications,
            self.restarts,
            self.attack is not None and self.attack.armed,
            sha256(b"".join(b.hash for n in self.nodes if n.honest for b, _ in n.chain)),
            tuple(reports),
        )


def _initial_proposer(keys: Sequence[PrivateKey]) -> bytes:
    """Round 0's proposer at height 1 when every key has power 1."""
    genesis_set = ValidatorSet.of(Validator(k.public_key, 1) for k in keys)
    return ProposerSchedule.initial(genesis_set).proposer(0).address


class _LockAttack:
    """A scripted Byzantine proposer and voter, x, and partitions that put the lock to work.

    Roles at height 1 (power 1 each, quorum 3 of 4): x proposes round 0, d
    proposes round 1, b and c are the other two (in seed order).

    - Until ATTACK_SPLIT_MS the honest nodes are split {b, c} | {d}; x reaches
      everyone. At ATTACK_PROPOSE_MS x proposes block A to b and c and block
      A2 to d, and prevotes for each its block: b and c see a polka for A,
      lock on A and precommit it (Algorithm 1, lines 36-43); d prevotes A2 and
      never holds A (one proposal per round), so it sets no valid value.
    - At ATTACK_NIL_PRECOMMIT_MS x precommits nil to all: b and c hold 2f + 1
      precommits and go to round 1 (lines 47-48, 65-67) without deciding.
    - From ATTACK_SPLIT_MS the split is {b} | {c, d}. Gossip from c takes d out
      of round 0, and d, round 1's proposer with no valid value, proposes a
      new block B. At ATTACK_DECIDE_MS x sends b its precommit for A: b holds
      x's, b's and c's precommits for A and decides A (lines 49-54).
    - On d's proposal x prevotes and precommits B to c and d. c is locked on
      A, so line 23 makes it prevote nil and B gets x's and d's votes only. A
      machine that ignores its lock prevotes B; x, c and d then commit B, and
      the checker reports two honest nodes committing different blocks.
    - At ATTACK_HEAL_MS the network heals; x stays silent from then on, which
      the three honest validators' 3 of 4 power tolerates.
    """

    def __init__(self, sim: _Simulation) -> None:
        self.sim = sim
        schedule = sim.nodes[0].state.schedule
        by_address = {n.key.address: n for n in sim.nodes}
        self.x = by_address[schedule.proposer(0).address]
        self.d = by_address[schedule.proposer(1).address]
        others = [n for n in sim.nodes if n is not self.x and n is not self.d]
        sim.rng.shuffle(others)
        self.b, self.c = others
        self.block_a: Block | None = None
        self.answered = False
        self.armed = False  # the premise held when x answered d's proposal

    def plan(self) -> None:
        sim = self.sim
        x, b, c, d = (n.index for n in (self.x, self.b, self.c, self.d))
        sim._push(0, _PARTITION, 0, 0, [{x, b, c}, {x, d}])
        sim._push(ATTACK_SPLIT_MS, _PARTITION, 0, 0, [{x, c, d}, {x, b}])
        sim._push(ATTACK_HEAL_MS, _PARTITION, 0, 0, None)
        sim.heal_ms = max(sim.heal_ms, ATTACK_HEAL_MS)
        sim._push(ATTACK_PROPOSE_MS, _SCRIPT, x, 0, self._propose)
        sim._push(ATTACK_NIL_PRECOMMIT_MS, _SCRIPT, x, 0, self._precommit_nil)
        sim._push(ATTACK_DECIDE_MS, _SCRIPT, x, 0, self._precommit_a)

    def _vote(self, vote_type: VoteType, round: int, block_hash: bytes) -> VoteReceived:
        x = self.x
        index = x.state.validators.index_of(x.key.address)
        assert index is not None
        self.sim.signatures += 1
        return VoteReceived(Vote.create(x.key, CHAIN_ID, vote_type, 1, round, block_hash, index))

    def _send(self, targets: Sequence[_Node], *messages: Event) -> None:
        for to in targets:
            for message in messages:
                self.sim._send(self.x, to, message)

    def _propose(self) -> None:
        sim, x = self.sim, self.x
        block_a = sim._build(x, 1, txs_min=1)
        block_a2 = sim._build(x, 1, txs_min=1)
        assert block_a.hash != block_a2.hash
        self.block_a = block_a
        for block, targets in ((block_a, (self.b, self.c)), (block_a2, (self.d,))):
            proposal = Proposal.create(x.key, CHAIN_ID, 1, 0, -1, block.hash)
            sim._note_proposal(proposal, x.key.address)
            sim.signatures += 1
            prevote = self._vote(VoteType.PREVOTE, 0, block.hash)
            self._send(targets, ProposalReceived(proposal, block), prevote)

    def _precommit_nil(self) -> None:
        self._send((self.b, self.c, self.d), self._vote(VoteType.PRECOMMIT, 0, b""))

    def _precommit_a(self) -> None:
        assert self.block_a is not None
        self._send((self.b,), self._vote(VoteType.PRECOMMIT, 0, self.block_a.hash))

    def _premise_holds(self, block_b: bytes) -> bool:
        """b committed A, c is locked on A in round 0, and d proposed another block."""
        a = self.block_a
        c = self.c.machine
        return (
            a is not None
            and block_b != a.hash
            and bool(self.b.chain)
            and self.b.chain[0][0].hash == a.hash
            and c is not None
            and c.height == 1
            and c.locked_round == 0
            and c.locked_value is not None
            and c.locked_value.hash == a.hash
        )

    def receive(self, event: Event) -> None:
        """x's only reaction: vote for round 1's fresh proposal, to c and d."""
        if self.answered or not isinstance(event, ProposalReceived):
            return
        proposal = event.proposal
        if (proposal.height, proposal.round) != (1, 1):
            return
        if event.block.header.proposer_address != self.d.key.address:
            return
        self.answered = True
        block_hash = proposal.block_hash
        self.armed = self._premise_holds(block_hash)
        self._send(
            (self.c, self.d),
            self._vote(VoteType.PREVOTE, 1, block_hash),
            self._vote(VoteType.PRECOMMIT, 1, block_hash),
        )


def _signature(message: ProposalReceived | VoteReceived) -> bytes:
    if isinstance(message, ProposalReceived):
        return message.proposal.signature
    return message.vote.signature


def simulate(
    seed: int,
    *,
    validators: int = 4,
    byzantine: int = 1,
    heights: int = 5,
    faults: Faults | None = None,
    byzantine_mode: str | None = None,
    machine_class: type[ConsensusMachine] = ConsensusMachine,
    equal_power: bool = False,
) -> RunResult:
    """One run.

    `byzantine_mode` is one of MODES (None: "equivocate" or "twins", chosen by
    the seed); "lock-attack" needs 4 validators and 1 Byzantine and brings
    its own faults and equal powers. `equal_power` gives every validator power
    1 instead of seed-chosen powers. Raises ValueError for a cluster that
    breaks n > 3f or an unknown mode.
    """
    if validators < 1 or not (0 <= 3 * byzantine < validators or validators == 1):
        raise ValueError("need validators >= 1 and 3 * byzantine < validators")
    if byzantine_mode is not None and byzantine_mode not in MODES:
        raise ValueError(f"unknown mode {byzantine_mode!r}, expected one of {', '.join(MODES)}")
    if byzantine_mode == "lock-attack" and (validators, byzantine) != (4, 1):
        raise ValueError("lock-attack runs 4 validators with 1 Byzantine")
    sim = _Simulation(
        seed,
        validators,
        byzantine,
        heights,
        Faults() if faults is None else faults,
        byzantine_mode,
        machine_class,
        equal_power,
    )
    return sim.run()


def run_batch(
    validators: int,
    byzantine: int,
    seeds: range,
    heights: int,
    faults: Faults | None = None,
    *,
    byzantine_mode: str | None = None,
    machine_class: type[ConsensusMachine] = ConsensusMachine,
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
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--equal-power", action="store_true", help="power 1 for every validator")
    args = parser.parse_args(argv)
    if args.validators < 1 or not 0 <= 3 * args.byzantine < args.validators:
        parser.error("need validators >= 1 and 3 * byzantine < validators")
    if args.mode == "lock-attack" and (args.validators, args.byzantine) != (4, 1):
        parser.error("--mode lock-attack needs --validators 4 --byzantine 1")
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    batch = run_batch(
        args.validators,
        args.byzantine,
        seeds,
        args.heights,
        Faults.none() if args.no_faults else Faults(),
        byzantine_mode=args.mode,
        equal_power=args.equal_power,
    )
    print(batch.summary())
    return 0 if batch.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
