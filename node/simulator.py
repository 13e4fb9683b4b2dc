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
is) before stepping, and rebuilds a restarted node by replaying that log. The
"application" is a hash chain over each block's transactions, and blocks are
checked with the real header-link checks (consensus.proposer.header_link_error,
which verifies the previous block's commit certificate).

After each run it checks agreement (no two honest nodes commit different
blocks at one height), validity (each committed block was proposed, signed,
by the proposer of its commit round and passes the block checks) and liveness
(every honest node reaches the target height within `liveness_bound_ms` of
virtual time after the last fault healed). A gossip layer stands in for
CometBFT's reactor: a node sends each message its machine accepted to every
peer at once, and every `GOSSIP_INTERVAL_MS` sends again, to each peer, those
of its current height the peer's machine has not accepted (CometBFT learns
that from HasVote messages; the simulator reads it from the peer directly),
and to a peer at a lower height the decided block and commit certificate of
that height.

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
    TimeoutFired,
    ValidateBlock,
    VoteReceived,
    decode_event,
    encode_event,
)
from consensus.machine import ConsensusConfig, ConsensusMachine
from consensus.proposer import BlockContext, ProposerSchedule, build_block, header_link_error
from consensus.types import Block, Commit, Proposal, Validator, ValidatorSet, Vote

__all__ = ["BatchResult", "Faults", "NodeReport", "RunResult", "main", "run_batch", "simulate"]

CHAIN_ID = "archipelago-sim"
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
BLOCK_TXS_MAX = 4
TX_BYTES = 24
VALIDATION_DELAY_MS_MAX = 5
LIVENESS_BOUND_MS = 120_000
RESULTS_HASH = sha256(b"")


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


@dataclass(frozen=True, slots=True)
class NodeReport:
    name: str
    honest: bool
    crashed: bool
    committed: int
    height: int
    round: int
    step: str
    locked_round: int

    def __str__(self) -> str:
        kind = "honest" if self.honest else "byzantine"
        down = " crashed" if self.crashed else ""
        return (
            f"{self.name}({kind}{down}): committed={self.committed} height={self.height} "
            f"round={self.round} step={self.step} locked_round={self.locked_round}"
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
    signatures: int
    messages: int
    accepted: int  # messages machines accepted (each after one signature check)
    evidence: int  # ReportEvidence actions by honest nodes
    restarts: int
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
        line = (
            f"runs={len(self.results)} seeds={s.start}..{last} "
            f"safety_violations={len(self.safety_failures)} "
            f"liveness_failures={len(self.liveness_failures)} "
            f"blocks={sum(r.blocks for r in self.results)} "
            f"virtual_s={sum(r.virtual_ms for r in self.results) / 1000:.1f}"
        )
        failed = [r for r in self.results if not r.ok]
        return "\n".join([line, *(r.describe() for r in failed)])


# ---------------------------------------------------------------- nodes


def validator_keys(count: int) -> list[PrivateKey]:
    return [PrivateKey(sha256(b"sim-validator-%d" % i)) for i in range(count)]


@dataclass(slots=True)
class _Node:
    index: int
    name: str
    key: PrivateKey
    honest: bool
    equivocates: bool
    machine: ConsensusMachine | None = None
    crashed: bool = False
    epoch: int = 0
    wal: list[bytes] = field(default_factory=list)
    sign_state: dict[tuple[int, int, int], bytes] = field(default_factory=dict)
    chain: list[tuple[Block, Commit]] = field(default_factory=list)
    app_hashes: list[bytes] = field(default_factory=lambda: [b""])  # after block i
    pool: list[ProposalReceived | VoteReceived] = field(default_factory=list)
    accepted: set[bytes] = field(default_factory=set)  # signatures its machine accepted
    alternates: dict[Any, ProposalReceived | VoteReceived] = field(default_factory=dict)


_INPUT, _GOSSIP, _CRASH, _RESTART, _PARTITION = range(5)


class _Simulation:
    def __init__(
        self,
        seed: int,
        validators: int,
        byzantine: int,
        heights: int,
        faults: Faults,
        byzantine_mode: str | None,
        machine_class: type[ConsensusMachine],
    ) -> None:
        assert 0 <= 3 * byzantine < validators or validators == 1
        self.seed = seed
        self.rng = random.Random(seed)
        self.heights = heights
        self.faults = faults
        self.machine_class = machine_class
        self.keys = validator_keys(validators)
        self.validators = ValidatorSet.of(Validator(k.public_key, 1) for k in self.keys)
        self.byzantine_mode = byzantine_mode or self.rng.choice(("equivocate", "twins"))
        if byzantine == 0:
            self.byzantine_mode = "none"
        bad = set(self.rng.sample(range(validators), byzantine))
        self.bad_addresses = {self.keys[i].address for i in bad}
        self.nodes: list[_Node] = []
        for i, key in enumerate(self.keys):
            equivocates = i in bad and self.byzantine_mode == "equivocate"
            self.nodes.append(_Node(i, f"v{i}", key, i not in bad, equivocates))
        if self.byzantine_mode == "twins":
            for i in sorted(bad):
                self.nodes.append(_Node(len(self.nodes), f"v{i}-twin", self.keys[i], False, False))
        self.queue: list[tuple[int, int, int, int, int, Any]] = []
        self.seq = 0
        self.now = 0
        self.partition: list[set[int]] | None = None
        self.heal_ms = 0
        self.decided: dict[int, bytes] = {}
        self.proposed: dict[tuple[int, int], dict[bytes, bytes]] = {}  # (h, r) -> hash -> signer
        self.violations: list[str] = []
        self.steps = 0
        self.evidence = 0
        self.accepted = 0
        self.restarts = 0
        self.signatures = 0
        self.messages = 0
        self.schedules = [ProposerSchedule.initial(self.validators)]

    # ------------------------------------------------------------ scheduling

    def _push(self, at: int, kind: int, node: int, epoch: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, node, epoch, payload))

    def _local(self, node: _Node, event: Event, delay_ms: int = 0) -> None:
        self._push(self.now + delay_ms, _INPUT, node.index, node.epoch, (event, -1))

    def _in_fault_window(self) -> bool:
        return self.now < self.faults.window_ms

    def _send(self, sender: _Node, to: _Node, message: Event) -> None:
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
            self._push(self.now + delay, _INPUT, to.index, -1, (message, sender.index))

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
        return self.machine_class(
            chain_id=CHAIN_ID,
            height=1,
            validators=self.validators,
            schedule=self.schedules[0],
            own_address=node.key.address,
            config=SIM_CONFIG,
        )

    def _input(self, node: _Node, event: Event, sender: int) -> None:
        machine = node.machine
        if node.crashed or machine is None:
            return
        node.wal.append(encode_event(event))
        self.steps += 1
        self._perform(node, machine.step(event))

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
            reason = self._block_error(node, action.block)
            verdict = BlockValidated(action.block.hash, reason is None, reason or "")
            self._local(node, verdict, self.rng.randint(1, VALIDATION_DELAY_MS_MAX))
        elif isinstance(action, BuildBlock):
            block = self._build(node, action.height)
            self._local(node, BlockBuilt(action.height, action.round, block), 1)
        elif isinstance(action, Decide):
            self._apply(node, action.block, action.commit)
        elif isinstance(action, ReportEvidence):
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
        index = self.validators.index_of(node.key.address)
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
            alt_block = self._build(node, a.height, corrupt=self.rng.random() < 0.3)
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

    def _context(self, node: _Node) -> BlockContext:
        height = len(node.chain) + 1
        last = node.chain[-1] if node.chain else None
        return BlockContext(
            chain_id=CHAIN_ID,
            height=height,
            last_block_hash=b"" if last is None else last[0].hash,
            last_commit=None if last is None else last[1],
            last_block_time_ms=0 if last is None else last[0].header.time_ms,
            validators=self.validators,
            next_validators=self.validators,
            last_validators=self.validators,
            app_hash=node.app_hashes[-1],
            last_results_hash=RESULTS_HASH,
        )

    def _build(self, node: _Node, height: int, corrupt: bool = False) -> Block:
        context = self._context(node)
        assert context.height == height
        txs = [self.rng.randbytes(TX_BYTES) for _ in range(self.rng.randint(0, BLOCK_TXS_MAX))]
        block = build_block(
            context, time_ms=self.now, txs=txs, evidence=(), proposer_address=node.key.address
        )
        if corrupt:
            header = dataclasses.replace(block.header, app_hash=sha256(b"not the state"))
            block = Block(header, block.txs, block.last_commit, block.evidence)
        return block

    def _block_error(self, node: _Node, block: Block) -> str | None:
        return header_link_error(block, self._context(node))

    def _apply(self, node: _Node, block: Block, commit: Commit) -> None:
        height = block.height
        if len(node.chain) >= height:
            assert node.chain[height - 1][0].hash == block.hash  # replayed decision
        else:
            assert len(node.chain) == height - 1
            if node.honest:
                self._check_commit(node, block, commit)
            node.chain.append((block, commit))
            node.app_hashes.append(sha256(node.app_hashes[-1] + block.header.data_hash))
        self._local(node, HeightCommitted(height, self.validators), 1)

    def _schedule_at(self, height: int) -> ProposerSchedule:
        while len(self.schedules) < height:
            self.schedules.append(self.schedules[-1].advance(self.validators))
        return self.schedules[height - 1]

    def _check_commit(self, node: _Node, block: Block, commit: Commit) -> None:
        height = block.height
        first = self.decided.setdefault(height, block.hash)
        if first != block.hash:
            self.violations.append(
                f"agreement: {node.name} committed {block.hash.hex()[:8]} at height {height}, "
                f"another honest node committed {first.hex()[:8]}"
            )
        proposer = self._schedule_at(height).proposer(commit.round).address
        signer = self.proposed.get((height, commit.round), {}).get(block.hash)
        if signer != proposer:
            self.violations.append(
                f"validity: height {height} block {block.hash.hex()[:8]} was not proposed "
                f"by round {commit.round}'s proposer"
            )
        reason = self._block_error(node, block)
        if reason is not None:
            self.violations.append(f"validity: height {height} committed invalid block: {reason}")
        if commit.verify(CHAIN_ID, self.validators) is not None:
            self.violations.append(f"validity: height {height} commit certificate invalid")

    # ------------------------------------------------------------ faults

    def _plan_faults(self) -> None:
        f = self.faults
        if f.window_ms <= 0:
            return
        for _ in range(f.partitions):
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

    def _restart(self, node: _Node) -> None:
        if not node.crashed:
            return
        node.crashed = False
        self.restarts += 1
        machine = self._new_machine(node)
        node.machine = machine
        due = machine.replay(decode_event(b) for b in node.wal)
        self._perform(node, due)
        self._push(self.now + GOSSIP_INTERVAL_MS, _GOSSIP, node.index, node.epoch, None)

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
        for node in self.nodes:
            node.machine = self._new_machine(node)
            self._local(node, StartHeight(1), self.rng.randint(0, 50))
            self._push(self.rng.randint(1, GOSSIP_INTERVAL_MS), _GOSSIP, node.index, 0, None)
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
            elif epoch != -1 and epoch != node.epoch:
                continue  # a timer or local result from before a crash
            elif kind == _GOSSIP:
                self._gossip(node)
            else:
                event, sender = payload
                self._input(node, event, sender)
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
            reports.append(
                NodeReport(
                    n.name,
                    n.honest,
                    n.crashed,
                    len(n.chain),
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
            self.restarts,
            sha256(b"".join(b.hash for n in self.nodes if n.honest for b, _ in n.chain)),
            tuple(reports),
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
) -> RunResult:
    """One run. `byzantine_mode` is "equivocate" or "twins" (None: chosen by the seed)."""
    sim = _Simulation(
        seed,
        validators,
        byzantine,
        heights,
        Faults() if faults is None else faults,
        byzantine_mode,
        machine_class,
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
    parser.add_argument("--mode", choices=("equivocate", "twins"), default=None)
    args = parser.parse_args(argv)
    if args.validators < 1 or not 0 <= 3 * args.byzantine < args.validators:
        parser.error("need validators >= 1 and 3 * byzantine < validators")
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    batch = run_batch(
        args.validators,
        args.byzantine,
        seeds,
        args.heights,
        Faults.none() if args.no_faults else Faults(),
        byzantine_mode=args.mode,
    )
    print(batch.summary())
    return 0 if batch.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
