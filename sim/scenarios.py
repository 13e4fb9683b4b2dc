"""The adversaries a seed can set on the cluster: a hostile peer, and scripted Byzantine attacks.

The hostile peer (`Attacker`) has no validator key and is connected to every
node; it runs one attack of sim/faults.py's `ATTACKS` for the whole fault
window. The scripted scenarios (`LockAttack`: "lock-attack" and
"amnesia-attack") play one Byzantine validator move by move against
partitions timed to put an honest node's lock to work. Both act on the run
only through what sim/engine.py's `Simulation` offers a peer: sending bytes,
scheduling their next move, and building a block as a node would.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from consensus.codec import DecodeError
from consensus.crypto import PrivateKey, digest
from consensus.types import Block, Commit, CommitSig, Proposal, Vote, VoteType
from node.messages import (
    DecidedMsg,
    ProposalMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    VoteMsg,
    decode_message,
    encode_message,
)
from sim.engine import PARTITION, SCRIPT, SimNode, Simulation
from sim.faults import AMNESIA_HEAL_MS, ATTACK_HEAL_MS
from sim.workload import CHAIN_ID

# The lock-attack scenario's script, in virtual ms (see LockAttack).
ATTACK_PROPOSE_MS = 100
ATTACK_NIL_PRECOMMIT_MS = 200
ATTACK_SPLIT_MS = 600
ATTACK_DECIDE_MS = 650
ATTACK_CLAIM_MS = 700  # amnesia-attack: the false claim to c


class Attacker:
    """A peer without a validator key, connected to every node, running one attack.

    It sees what the nodes gossip to their peers (it is one of them) and
    sends crafted payloads. Nothing it sends may change a safe outcome; every
    honest node must keep committing. When a node bans it, it comes back with
    a new identity (keys are free), so bans alone cannot be the defence.
    """

    def __init__(self, sim: Simulation, kind: str) -> None:
        self.sim = sim
        self.kind = kind
        self.identity = 0
        self.victims = self._victims()
        self.observed: list[bytes] = []  # recent real payloads it saw
        self.proposals: list[tuple[Proposal, Block]] = []

    @property
    def peer_id(self) -> str:
        return f"attacker-{self.identity}"

    def _victims(self) -> list[SimNode]:
        honest = [n for n in self.sim.nodes if n.honest]
        count = self.sim.rng.randint(1, min(2, len(honest)))
        return self.sim.rng.sample(honest, count)

    def _send(self, to: SimNode, payload: bytes, *, fast: bool = False) -> None:
        if self.peer_id in to.banned:
            self.identity += 1  # a new key: a new peer
            self.sim.announce_peers()
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
                swapped = swap_body(msg.block, self.sim.rng)
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
                    swapped = swap_body(block, rng)
                    if swapped is not None:
                        self._send(victim, encode_message(ProposalMsg(proposal, swapped)))

    def _forged_next(self, victim: SimNode, height: int) -> list[bytes]:
        """Proposals and votes for the victim's next height signed with the wrong keys."""
        rng = self.sim.rng
        stranger = PrivateKey(digest(b"stranger-%d" % rng.randrange(1 << 30)))
        out: list[bytes] = []
        for round_ in range(2):
            block_hash = digest(rng.randbytes(8))
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
                digest(rng.randbytes(8)),
                validator.address,
                index,
                stranger.sign(b"forged"),
            )
            out.append(encode_message(VoteMsg(vote)))
        return out

    def _forged_decided(self, victim: SimNode) -> bytes | None:
        """A decided message for the victim's height with a certificate nobody signed."""
        if not self.proposals or victim.chain is None:
            return None
        _, block = self.proposals[-1]
        if block.height != victim.chain.state.last_height + 1:
            return None
        fake = Commit(block.height, 0, block.hash, (CommitSig(0, b"\x01" * 64),))
        return encode_message(DecidedMsg(block, fake))

    def _forged_votes(self, victim: SimNode, height: int) -> list[bytes]:
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
                        digest(b"forged-%d" % r) * 2,
                    )
                )
            )
            for r in range(3)
        ]
        out += [p for p in self.observed if p[1:2] == b"\x02"][-4:]
        return out


def swap_body(block: Block, rng: random.Random) -> Block | None:
    """The same header (so the same hash) with other transactions: what a relayer could forge."""
    txs = tuple(rng.randbytes(rng.randint(1, 64)) for _ in range(rng.randint(1, 3)))
    if txs == block.txs:
        return None
    return Block(block.header, txs, block.last_commit, block.evidence)


class LockAttack:
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

    def __init__(self, sim: Simulation, amnesia: bool) -> None:
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
        sim.push(0, PARTITION, 0, 0, [{x, b, c, liar}, {x, d, liar}])
        sim.push(ATTACK_SPLIT_MS, PARTITION, 0, 0, [{x, c, d, liar}, {x, b, liar}])
        sim.push(self.heal_ms, PARTITION, 0, 0, None)
        sim.heal_ms = max(sim.heal_ms, self.heal_ms)
        xi = self.x.index
        sim.push(ATTACK_PROPOSE_MS, SCRIPT, xi, 0, self._propose)
        sim.push(ATTACK_NIL_PRECOMMIT_MS, SCRIPT, xi, 0, self._precommit_nil)
        sim.push(ATTACK_DECIDE_MS, SCRIPT, xi, 0, self._precommit_a)
        sim.push(ATTACK_SPLIT_MS + 20, SCRIPT, xi, 0, self._relay_round0)
        if self.amnesia:
            sim.push(ATTACK_CLAIM_MS, SCRIPT, xi, 0, self._claim)

    def _vote(self, vote_type: VoteType, round: int, block_hash: bytes) -> bytes:
        x = self.x
        assert x.chain is not None
        index = x.chain.state.validators.index_of(x.key.address)
        assert index is not None
        vote = Vote.create(x.key, CHAIN_ID, vote_type, 1, round, block_hash, index)
        return encode_message(VoteMsg(vote))

    def _send(self, targets: Sequence[SimNode], *payloads: bytes) -> None:
        for to in targets:
            for payload in payloads:
                self.sim.transmit(self.x.name, to, payload, gossip=False)

    def _propose(self) -> None:
        sim, x = self.sim, self.x
        block_a = sim.build_block(x, 1)
        block_a2 = sim.build_block(x, 1)
        assert block_a.hash != block_a2.hash
        self.block_a = block_a
        for block, targets in ((block_a, (self.b, self.c)), (block_a2, (self.d,))):
            proposal = Proposal.create(x.key, CHAIN_ID, 1, 0, -1, block.hash)
            sim.checker.note_proposal(1, 0, block.hash, x.key.address)
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
        self.sim.push(self.sim.now + 200, SCRIPT, self.x.index, 0, self._claim)

    def answer_liar(self, to: SimNode, payload: bytes) -> None:
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
            self.sim.push(self.sim.now + 500, SCRIPT, self.x.index, 0, self._repeat)
