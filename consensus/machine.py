"""The Tendermint consensus state machine: Algorithm 1 as `step(event) -> list[Action]`.

"The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic 2018),
Algorithm 1, with the paper's names: height, round, step, locked_value,
locked_round, valid_value, valid_round. The machine is pure so that the
daemon and the seeded simulator run the same code, and so that a node can
rebuild its state after a crash by replaying the events its write-ahead log
recorded (`replay`).

Each `step` checks a message as `screen` does, stores it, then re-evaluates
the "upon" rules until none applies. Rules that the paper marks
"for the first time" keep a per-round flag. Where the paper runs an action
inline the machine asks the node instead (sign, build, validate, schedule),
and the node feeds the results back as events; two deliberate deviations
follow from that and are stated where they happen: a block is voted for only
once the validation core has reported it valid (`valid(v)` is asynchronous),
and the proposer also schedules timeout_propose, so that a proposal it could
not sign (its sign state refused) cannot leave it waiting forever.

Every message accepted for the first time, ours or a peer's, comes back as
a Broadcast action: Algorithm 1 assumes that what one correct process
receives, all eventually receive, and that includes a Byzantine validator's
votes, which may otherwise reach only some of us. Votes are counted per block
as the paper counts them (consensus/votes.py), so a polka that needed an
equivocator's vote is visible to everyone it is gossiped to.

The node screens every peer message with `screen` (known validator, the
round's proposer, signature, the block's body against its header, height
and round within bounds) before it logs it to the write-ahead log and
steps: only a message that would change this height's state is logged, and
one no correct node would have relayed is a `Fault` of its sender. Verified
signatures are remembered for the height, so `step` does not check them
again. Each height runs on its own machine, built by the node from the chain
state after the previous block.

A validator may run the machine without signing (`own_address` None: a
restarted validator watching for another instance of its key). The machine
still follows every rule and remembers the votes it would have cast in the
current round; `start_signing` then casts them and does the proposer's part
if the round is still at its propose step, so that turning signing on never
skips a step the round needs.

Limits: messages for rounds more than `ROUNDS_AHEAD_MAX` above ours are
ignored (peers re-send them); a validator's votes in one (round, type) are
counted for at most `VOTE_HASHES_PER_VALIDATOR_MAX` blocks, and a conflicting
one only if it is nil or for a block we hold; one proposal per round, from
that round's proposer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consensus.config import ConsensusConfig
from consensus.crypto import verify
from consensus.events import (
    Action,
    BlockBuilt,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitReceived,
    Decide,
    Event,
    Fault,
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
)
from consensus.proposer import ProposerSchedule
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Proposal,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
)
from consensus.votes import HeightVotes

__all__ = [
    "ROUNDS_AHEAD_MAX",
    "VOTE_HASHES_PER_VALIDATOR_MAX",
    "ConsensusMachine",
    "MachineState",
]

# Votes and proposals for rounds beyond round + this are dropped: it bounds the
# rounds a peer can make us store, while leaving room for the f + 1 round skip.
ROUNDS_AHEAD_MAX = 32
# Blocks (nil counts as one) a validator's votes of one type in one round are
# counted for: an honest validator needs one; an equivocator gets nil and two
# held blocks, enough for every polka a correct process could have seen.
VOTE_HASHES_PER_VALIDATOR_MAX = 3
_NOT_VOTING = (Step.NEW_HEIGHT, Step.COMMIT)  # steps with no vote to cast


@dataclass(frozen=True, slots=True)
class MachineState:
    """A snapshot for logs, status pages and simulator failure reports."""

    height: int
    round: int
    step: Step
    locked_round: int
    valid_round: int
    locked_hash: bytes
    valid_hash: bytes


class ConsensusMachine:
    """One validator's (or full node's) Tendermint state for one height.

    Construct it at the height the node is about to run, with that height's
    validator set and proposer schedule; feed `StartHeight(height)` to begin.
    `own_address` is None on a node that does not (yet) sign.
    """

    def __init__(
        self,
        *,
        chain_id: str,
        height: int,
        validators: ValidatorSet,
        schedule: ProposerSchedule,
        own_address: bytes | None,
        config: ConsensusConfig = ConsensusConfig(),
    ) -> None:
        assert schedule.validators == validators
        self.chain_id = chain_id
        self.config = config
        self.own_address = own_address
        self.height = height
        self.validators = validators
        self.schedule = schedule
        self.round = 0
        self.current_step = Step.NEW_HEIGHT
        self.locked_value: Block | None = None
        self.locked_round = -1
        self.valid_value: Block | None = None
        self.valid_round = -1
        self.decision: Block | None = None
        self.votes = HeightVotes(validators, VOTE_HASHES_PER_VALIDATOR_MAX)
        self.proposals: dict[int, ProposalReceived] = {}
        self.blocks: dict[bytes, Block] = {}
        self.validity: dict[bytes, bool] = {}
        self._validation_asked: set[bytes] = set()
        self._proposers: list[Validator] = []
        self._build_asked: set[int] = set()
        self._proposal_asked: set[int] = set()
        self._prevote_timeout_rounds: set[int] = set()  # line 34 "for the first time"
        self._precommit_timeout_rounds: set[int] = set()  # line 47
        self._polka_rounds: set[int] = set()  # line 36
        self._evidence_reported: set[tuple[bytes, int, VoteType]] = set()
        # (public key, signed bytes, signature) verified at this height: each
        # message's signature is checked once, and only for exactly what it signs.
        self._verified: set[tuple[bytes, bytes, bytes]] = set()
        # Votes of the current round decided while not signing: (round, type) -> hash.
        self._unsigned: dict[tuple[int, VoteType], bytes] = {}

    # ------------------------------------------------------------ queries

    def state(self) -> MachineState:
        return MachineState(
            self.height,
            self.round,
            self.current_step,
            self.locked_round,
            self.valid_round,
            b"" if self.locked_value is None else self.locked_value.hash,
            b"" if self.valid_value is None else self.valid_value.hash,
        )

    def proposer(self, round: int) -> Validator:
        """The proposer of `round` at the current height (weighted round robin)."""
        if round >= len(self._proposers):
            self._proposers = self.schedule.proposers(max(round + 1, 2 * len(self._proposers)))
        return self._proposers[round]

    def has_vote(self, vote: Vote) -> bool:
        """Whether this very vote (signature included) is counted at this height."""
        rv = self.votes.get(vote.round) if vote.height == self.height else None
        return rv is not None and rv.of(vote.type).has(vote)

    def _quorum(self, power: int) -> bool:
        """2f + 1 in the paper: more than two thirds of the voting power."""
        return self.validators.has_quorum(power)

    def _one_honest(self, power: int) -> bool:
        """f + 1 in the paper: more than one third of the voting power."""
        return self.validators.has_one_honest(power)

    def _lock_allows(self, block_hash: bytes, pol_round: int) -> bool:
        """Lines 23 and 29: lockedRound <= vr (-1 for a fresh proposal) or lockedValue = v."""
        if self.locked_round <= pol_round:
            return True
        return self.locked_value is not None and self.locked_value.hash == block_hash

    # ------------------------------------------------------------ stepping

    def step(self, event: Event) -> list[Action]:
        """Handle one event; returns what the node must do, in order."""
        actions: list[Action] = []
        if isinstance(event, VoteReceived):
            self._on_vote(event, actions)
        elif isinstance(event, ProposalReceived):
            self._on_proposal(event, actions)
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event, actions)
        elif isinstance(event, BlockValidated):
            self._on_validated(event)
        elif isinstance(event, BlockBuilt):
            self._on_built(event, actions)
        elif isinstance(event, CommitReceived):
            self._on_commit(event, actions)
        else:
            self._on_start(event, actions)
        self._apply_rules(actions)
        return actions

    def replay(self, events: Iterable[Event]) -> list[Action]:
        """Re-run this height's logged events after a restart; returns the actions, all due.

        Replay is deterministic, so the state afterwards is the state before
        the crash; the node performs the actions again: timers and validations
        lost with the process, and signing requests, which its sign state
        answers with what it signed before or refuses if they conflict.
        """
        return [action for event in events for action in self.step(event)]

    def start_signing(self, address: bytes) -> list[Action]:
        """Sign from now on, and do what this round still needs from us.

        The votes the rules decided in this round while we did not sign are
        cast now (a vote sent late is still that step's vote), and a proposer
        still in the propose step proposes; else a round could stay short of
        the 2f + 1 votes that start its timeouts, and never end.
        """
        self.own_address = address
        actions: list[Action] = []
        if self.validators.index_of(address) is None or self.current_step in _NOT_VOTING:
            return actions
        r = self.round
        proposing = self.current_step == Step.PROPOSE and self.proposer(r).address == address
        if proposing and r not in self._build_asked and r not in self._proposal_asked:
            self._propose(r, actions)
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            block_hash = self._unsigned.pop((r, vote_type), None)
            if block_hash is not None:
                actions.append(SignVote(vote_type, self.height, r, block_hash))
        self._apply_rules(actions)
        return actions

    # ------------------------------------------------------------ edge checks

    def screen(self, event: ProposalReceived | VoteReceived | CommitReceived) -> Fault | bool:
        """Whether a peer's message would change this height's state, before it is logged.

        True: step it (log it first). False: nothing to do (another height, a
        round too far ahead, a duplicate, a vote that would not be counted).
        A `Fault`: the message is invalid in a way its sender could have
        checked, so its sender is faulty. Pure but for remembering verified
        signatures.
        """
        if isinstance(event, VoteReceived):
            return self._check_vote(event.vote)
        if isinstance(event, ProposalReceived):
            return self._check_proposal(event)
        return self._check_commit(event)

    def _verify(self, public_key: bytes, sign_bytes: bytes, signature: bytes) -> bool:
        key = (public_key, sign_bytes, signature)
        ok = key in self._verified or verify(public_key, sign_bytes, signature)
        if ok:
            self._verified.add(key)
        return ok

    def _check_vote(self, vote: Vote) -> Fault | bool:
        if vote.height != self.height or self.decision is not None:
            return False
        if vote.round > self.round + ROUNDS_AHEAD_MAX:
            return False
        index = self.validators.index_of(vote.validator_address)
        if index is None or index != vote.validator_index:
            return Fault.NOT_A_VALIDATOR
        rv = self.votes.get(vote.round)
        held = not vote.block_hash or vote.block_hash in self.blocks
        if rv is not None:
            vote_set = rv.of(vote.type)
            if vote_set.has(vote):
                return False  # a duplicate delivery, or our own vote fed back twice
            key = (vote.validator_address, vote.round, vote.type)
            if not vote_set.counts(vote, conflicting_ok=held) and key in self._evidence_reported:
                return False  # neither counted nor new evidence: an equivocator's surplus
        validator = self.validators[index]
        if not self._verify(validator.public_key, vote.sign_bytes(self.chain_id), vote.signature):
            return Fault.BAD_SIGNATURE
        return True

    def screen_proposal(self, proposal: Proposal) -> Fault | bool:
        """`screen` of a proposal without its block: a node calls it before decoding one."""
        if proposal.height != self.height or self.decision is not None:
            return False
        if proposal.round > self.round + ROUNDS_AHEAD_MAX:
            return False
        existing = self.proposals.get(proposal.round)
        if existing is not None and existing.proposal == proposal:
            return False
        proposer = self.proposer(proposal.round)
        sign_bytes = proposal.sign_bytes(self.chain_id)
        if not self._verify(proposer.public_key, sign_bytes, proposal.signature):
            return Fault.BAD_SIGNATURE
        return True

    def _check_proposal(self, event: ProposalReceived) -> Fault | bool:
        proposal, block = event.proposal, event.block
        verdict = self.screen_proposal(proposal)
        if verdict is not True:
            return verdict
        if block.hash != proposal.block_hash or block.body_error() is not None:
            return Fault.BLOCK_MISMATCH
        if not self._built_by_proposer(block, proposal.round):
            return Fault.WRONG_BUILDER
        # A second, validly signed proposal for a round is the proposer's fault;
        # whoever relayed it saw it first.
        return proposal.round not in self.proposals

    def _built_by_proposer(self, block: Block, round: int) -> bool:
        """Whether the header names the proposer of a round up to `round`.

        A block is built by the proposer of the round it is first proposed in,
        and keeps that header when it is proposed again in a later round (with
        or without a POL round), so its builder is the proposer of some round up
        to the one it is proposed in. `round` is bounded by `screen_proposal`.
        """
        builder = block.header.proposer_address
        return any(self.proposer(r).address == builder for r in range(round + 1))

    def _check_commit(self, event: CommitReceived) -> Fault | bool:
        commit, block = event.commit, event.block
        if commit.height != self.height or self.decision is not None:
            return False
        if block.hash != commit.block_hash or block.height != self.height:
            return Fault.BLOCK_MISMATCH
        if block.body_error() is not None:
            return Fault.BLOCK_MISMATCH
        items = commit.sign_items(self.chain_id, self.validators)
        if isinstance(items, str):
            return Fault.INVALID_COMMIT
        for public_key, message, signature in items:
            if not self._verify(public_key, message, signature):
                return Fault.INVALID_COMMIT
        return True

    # ------------------------------------------------------------ events

    def _on_vote(self, event: VoteReceived, actions: list[Action]) -> None:
        vote = event.vote
        if self._check_vote(vote) is not True:
            return
        index = vote.validator_index
        power = self.validators[index].power
        held = not vote.block_hash or vote.block_hash in self.blocks
        result = self.votes.add(vote, power, conflicting_ok=held)
        if result.evidence is not None:
            key = (vote.validator_address, vote.round, vote.type)
            if key not in self._evidence_reported:
                self._evidence_reported.add(key)
                actions.append(ReportEvidence(result.evidence))
        if result.added:
            actions.append(Broadcast(event))

    def _on_proposal(self, event: ProposalReceived, actions: list[Action]) -> None:
        if self._check_proposal(event) is not True:
            return
        proposal, block = event.proposal, event.block
        self.proposals[proposal.round] = event
        self.blocks[block.hash] = block
        proposer = self.proposer(proposal.round)
        index = self.validators.index_of(proposer.address)
        assert index is not None
        self.votes.round(proposal.round).note_sender(index, proposer.power)
        if block.hash not in self._validation_asked:
            self._validation_asked.add(block.hash)
            actions.append(ValidateBlock(block))
        actions.append(Broadcast(event))

    def _on_validated(self, event: BlockValidated) -> None:
        if event.block_hash in self._validation_asked and event.block_hash not in self.validity:
            self.validity[event.block_hash] = event.valid

    def _on_built(self, event: BlockBuilt, actions: list[Action]) -> None:
        """Line 19 (getValue()): the node built our block; propose it if still in time."""
        r = event.round
        if (
            event.height == self.height
            and r == self.round
            and self.current_step == Step.PROPOSE
            and r in self._build_asked
            and r not in self._proposal_asked
            and event.block.height == self.height
        ):
            self._proposal_asked.add(r)
            actions.append(SignProposal(self.height, r, -1, event.block))

    def _on_commit(self, event: CommitReceived, actions: list[Action]) -> None:
        """Catch-up: a peer's certificate of +2/3 precommits decides our height (line 49)."""
        if self._check_commit(event) is True:
            self._decide(event.block, event.commit, actions)

    def _on_start(self, event: StartHeight, actions: list[Action]) -> None:
        if event.height == self.height and self.current_step == Step.NEW_HEIGHT:
            self._start_round(0, actions)

    # ------------------------------------------------------------ Algorithm 1

    def _start_round(self, round: int, actions: list[Action]) -> None:
        """Lines 11-21: StartRound. The proposer re-proposes valid_value or builds a block.

        Deviation: the proposer schedules timeout_propose too (the paper has
        only the others do it), so a refused signature cannot stall it.
        """
        self.round = round
        self.current_step = Step.PROPOSE
        self._unsigned.clear()
        if self.own_address is not None and self.proposer(round).address == self.own_address:
            self._propose(round, actions)
        actions.append(
            ScheduleTimeout(self.height, round, Step.PROPOSE, self.config.propose_ms(round))
        )

    def _propose(self, round: int, actions: list[Action]) -> None:
        """Lines 15-19: propose valid_value if there is one, else ask the node for a block."""
        if self.valid_value is not None:
            self._proposal_asked.add(round)
            actions.append(SignProposal(self.height, round, self.valid_round, self.valid_value))
        else:
            self._build_asked.add(round)
            actions.append(BuildBlock(self.height, round))

    def _vote(self, vote_type: VoteType, block_hash: bytes, actions: list[Action]) -> None:
        if self.own_address is not None:
            if self.validators.index_of(self.own_address) is not None:
                actions.append(SignVote(vote_type, self.height, self.round, block_hash))
        else:
            self._unsigned[(self.round, vote_type)] = block_hash

    def _on_timeout(self, event: TimeoutFired, actions: list[Action]) -> None:
        if event.height != self.height or self.decision is not None:
            return
        if event.round != self.round:
            return
        if event.step == Step.PROPOSE and self.current_step == Step.PROPOSE:
            # Lines 57-60: OnTimeoutPropose.
            self._vote(VoteType.PREVOTE, b"", actions)
            self.current_step = Step.PREVOTE
        elif event.step == Step.PREVOTE and self.current_step == Step.PREVOTE:
            # Lines 61-64: OnTimeoutPrevote.
            self._vote(VoteType.PRECOMMIT, b"", actions)
            self.current_step = Step.PRECOMMIT
        elif event.step == Step.PRECOMMIT:
            # Lines 65-67: OnTimeoutPrecommit.
            self._start_round(self.round + 1, actions)

    def _decide(self, block: Block, commit: Commit, actions: list[Action]) -> None:
        self.decision = block
        self.current_step = Step.COMMIT
        actions.append(Decide(block, commit))

    def _try_decide(self, actions: list[Action]) -> bool:
        """Lines 49-54: a block we hold, valid, with 2f + 1 precommits in any round."""
        for r in sorted(self.votes.rounds):
            precommits = self.votes.rounds[r].precommits
            if not self._quorum(precommits.power_any):
                continue
            for block_hash, power in precommits.power_by_block.items():
                if not block_hash or not self._quorum(power):
                    continue
                block = self.blocks.get(block_hash)
                if block is None or self.validity.get(block_hash) is not True:
                    continue
                sigs = tuple(
                    CommitSig(v.validator_index, v.signature)
                    for v in precommits.for_block(block_hash)
                )
                self._decide(block, Commit(self.height, r, block_hash, sigs), actions)
                return True
        return False

    def _try_skip_round(self, actions: list[Action]) -> bool:
        """Lines 55-56: f + 1 validators sent messages for a higher round: go there."""
        for r in sorted(self.votes.rounds, reverse=True):
            if r <= self.round:
                break
            if self._one_honest(self.votes.rounds[r].sender_power):
                self._start_round(r, actions)
                return True
        return False

    def _try_prevote(self, actions: list[Action]) -> bool:
        """Lines 22-33: prevote on the round's proposal once its validity is known."""
        received = self.proposals.get(self.round)
        if self.current_step != Step.PROPOSE or received is None:
            return False
        block_hash = received.block.hash
        valid = self.validity.get(block_hash)
        if valid is None:
            return False  # valid(v) is still being computed by the node
        vr = received.proposal.pol_round
        if vr >= 0:
            # Lines 28-33 need 2f + 1 prevotes for v in round vr (vr < round by decoding).
            rv = self.votes.get(vr)
            if rv is None or not self._quorum(rv.prevotes.power_for(block_hash)):
                return False
        if valid and self._lock_allows(block_hash, vr):
            self._vote(VoteType.PREVOTE, block_hash, actions)
        else:
            self._vote(VoteType.PREVOTE, b"", actions)
        self.current_step = Step.PREVOTE
        return True

    def _try_polka(self, actions: list[Action]) -> bool:
        """Lines 36-43: a polka for the proposal: lock (if prevoting) and set the valid value."""
        if self.round in self._polka_rounds or self.current_step < Step.PREVOTE:
            return False
        received = self.proposals.get(self.round)
        rv = self.votes.get(self.round)
        if received is None or rv is None:
            return False
        block = received.block
        if self.validity.get(block.hash) is not True:
            return False
        if not self._quorum(rv.prevotes.power_for(block.hash)):
            return False
        self._polka_rounds.add(self.round)
        if self.current_step == Step.PREVOTE:
            self.locked_value = block
            self.locked_round = self.round
            self._vote(VoteType.PRECOMMIT, block.hash, actions)
            self.current_step = Step.PRECOMMIT
        self.valid_value = block
        self.valid_round = self.round
        return True

    def _apply_rules(self, actions: list[Action]) -> None:
        """Evaluate the upon rules until none fires; each firing changes state or a flag."""
        while self.current_step not in _NOT_VOTING:
            if self._try_decide(actions) or self._try_skip_round(actions):
                continue
            if self._try_prevote(actions) or self._try_polka(actions):
                continue
            rv = self.votes.get(self.round)
            if rv is None:
                return
            if (
                self.current_step == Step.PREVOTE
                and self.round not in self._prevote_timeout_rounds
                and self._quorum(rv.prevotes.power_any)
            ):
                # Lines 34-35: 2f + 1 prevotes of any kind, first time: timeout_prevote.
                self._prevote_timeout_rounds.add(self.round)
                duration = self.config.prevote_ms(self.round)
                actions.append(ScheduleTimeout(self.height, self.round, Step.PREVOTE, duration))
                continue
            if self.current_step == Step.PREVOTE and self._quorum(rv.prevotes.power_for(b"")):
                # Lines 44-46: 2f + 1 nil prevotes: precommit nil.
                self._vote(VoteType.PRECOMMIT, b"", actions)
                self.current_step = Step.PRECOMMIT
                continue
            if self.round not in self._precommit_timeout_rounds and self._quorum(
                rv.precommits.power_any
            ):
                # Lines 47-48: 2f + 1 precommits of any kind, first time: timeout_precommit.
                self._precommit_timeout_rounds.add(self.round)
                duration = self.config.precommit_ms(self.round)
                actions.append(ScheduleTimeout(self.height, self.round, Step.PRECOMMIT, duration))
                continue
            return
