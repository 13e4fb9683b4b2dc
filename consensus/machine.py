"""The Tendermint consensus state machine: Algorithm 1 as `step(event) -> list[Action]`.

"The latest gossip on BFT consensus" (Buchman, Kwon, Milosevic 2018),
Algorithm 1, with the paper's names: height, round, step, locked_value,
locked_round, valid_value, valid_round. The machine is pure so that the
daemon and the seeded simulator run the same code, and so that a node can
rebuild its state after a crash by replaying the events its write-ahead log
recorded (`replay`).

Each `step` first checks the message at the edge (known validator, proposer
of that round, signature, height and round within bounds), stores it, then
re-evaluates the "upon" rules until none applies. Rules that the paper marks
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

Limits: messages for rounds more than `ROUNDS_AHEAD_MAX` above ours are
dropped (peers re-gossip them); a validator's votes in one (round, type) are
counted for at most `VOTE_HASHES_PER_VALIDATOR_MAX` blocks, and a conflicting
one only if it is nil or for a block we hold (else dropped until gossip brings
it again); one proposal per round, from that round's proposer; messages for
the next height are kept up to `NEXT_HEIGHT_MESSAGES_MAX`, newer ones dropped
when full.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    action_height,
)
from consensus.proposer import ProposerSchedule
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Validator,
    ValidatorSet,
    VoteType,
)
from consensus.votes import HeightVotes

__all__ = [
    "NEXT_HEIGHT_MESSAGES_MAX",
    "NEXT_HEIGHT_PROPOSALS_MAX",
    "ROUNDS_AHEAD_MAX",
    "VOTE_HASHES_PER_VALIDATOR_MAX",
    "ConsensusConfig",
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
# Messages for height + 1 that arrive before we decide; when full, new ones are
# dropped (gossip re-sends them). 1024 covers two rounds of 250 validators.
NEXT_HEIGHT_MESSAGES_MAX = 1024
# Of those, proposals (each carries a block, not yet verified): a few rounds'
# worth, so early blocks cannot make us hold more than a few blocks' bytes.
NEXT_HEIGHT_PROPOSALS_MAX = 4


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Timeouts, growing linearly with the round so that rounds eventually last long enough."""

    timeout_propose_ms: int = 3000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 1000
    timeout_prevote_delta_ms: int = 500
    timeout_precommit_ms: int = 1000
    timeout_precommit_delta_ms: int = 500
    timeout_commit_ms: int = 1000
    # Start the next height as soon as the block is applied (simulator, benchmarks).
    skip_timeout_commit: bool = False

    def propose_ms(self, round: int) -> int:
        return self.timeout_propose_ms + round * self.timeout_propose_delta_ms

    def prevote_ms(self, round: int) -> int:
        return self.timeout_prevote_ms + round * self.timeout_prevote_delta_ms

    def precommit_ms(self, round: int) -> int:
        return self.timeout_precommit_ms + round * self.timeout_precommit_delta_ms


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
    """One validator's (or full node's) Tendermint state for the current height.

    Construct it at the height the node is about to run, with that height's
    validator set and proposer schedule; feed `StartHeight(height)` to begin.
    `own_address` is None on a node that does not validate.
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
        self._next_height: list[ProposalReceived | VoteReceived] = []
        self._reset_height()

    def _reset_height(self) -> None:
        self.round = 0
        self.current_step = Step.NEW_HEIGHT
        self.locked_value: Block | None = None
        self.locked_round = -1
        self.valid_value: Block | None = None
        self.valid_round = -1
        self.decision: Block | None = None
        self.votes = HeightVotes(self.validators, VOTE_HASHES_PER_VALIDATOR_MAX)
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
        elif isinstance(event, HeightCommitted):
            self._on_height_committed(event, actions)
        else:
            self._on_start(event, actions)
        self._apply_rules(actions)
        return actions

    def replay(self, events: Iterable[Event]) -> list[Action]:
        """Re-run logged events after a restart; returns the actions still due.

        Replay is deterministic, so the state afterwards is the state before
        the crash. Of the actions replay produced, those of the current height
        are returned for the node to perform again: timers and validations
        that were lost with the process, and signing requests, which the
        node's sign state answers with the message it already signed (fed back
        as a duplicate, ignored here) or refuses if they conflict.
        """
        produced: list[Action] = []
        for event in events:
            produced.extend(self.step(event))
        return [a for a in produced if action_height(a) >= self.height]

    # ------------------------------------------------------------ edge checks

    def _buffer_next_height(self, message: ProposalReceived | VoteReceived) -> None:
        if isinstance(message, ProposalReceived):
            proposals = sum(isinstance(m, ProposalReceived) for m in self._next_height)
            if proposals >= NEXT_HEIGHT_PROPOSALS_MAX:
                return
        if len(self._next_height) < NEXT_HEIGHT_MESSAGES_MAX:
            self._next_height.append(message)

    def _on_vote(self, event: VoteReceived, actions: list[Action]) -> None:
        vote = event.vote
        if vote.height == self.height + 1:
            self._buffer_next_height(event)
            return
        if vote.height != self.height or self.decision is not None:
            return
        if vote.round > self.round + ROUNDS_AHEAD_MAX:
            return
        index = self.validators.index_of(vote.validator_address)
        if index is None or index != vote.validator_index:
            return  # not a validator of this height: nothing to count
        vote_set = self.votes.round(vote.round).of(vote.type)
        if vote_set.has(vote):
            return  # duplicate delivery or our own vote fed back twice
        validator = self.validators[index]
        if not verify(validator.public_key, vote.sign_bytes(self.chain_id), vote.signature):
            actions.append(
                Misbehaviour(vote.validator_address, vote.height, vote.round, "bad vote signature")
            )
            return
        held = not vote.block_hash or vote.block_hash in self.blocks
        result = self.votes.add(vote, validator.power, conflicting_ok=held)
        if result.evidence is not None:
            key = (vote.validator_address, vote.round, vote.type)
            if key not in self._evidence_reported:
                self._evidence_reported.add(key)
                actions.append(ReportEvidence(result.evidence))
        if result.added:
            actions.append(Broadcast(event))

    def _on_proposal(self, event: ProposalReceived, actions: list[Action]) -> None:
        proposal, block = event.proposal, event.block
        if proposal.height == self.height + 1:
            self._buffer_next_height(event)
            return
        if proposal.height != self.height or self.decision is not None:
            return
        if proposal.round > self.round + ROUNDS_AHEAD_MAX:
            return
        existing = self.proposals.get(proposal.round)
        if existing is not None and existing.proposal == proposal:
            return
        proposer = self.proposer(proposal.round)
        if not verify(proposer.public_key, proposal.sign_bytes(self.chain_id), proposal.signature):
            actions.append(
                Misbehaviour(b"", proposal.height, proposal.round, "bad proposal signature")
            )
            return
        if block.hash != proposal.block_hash:
            actions.append(
                Misbehaviour(
                    proposer.address, proposal.height, proposal.round, "block is not the proposed"
                )
            )
            return
        if existing is not None:
            actions.append(
                Misbehaviour(
                    proposer.address, proposal.height, proposal.round, "two proposals in one round"
                )
            )
            return
        self.proposals[proposal.round] = event
        self.blocks[block.hash] = block
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
        commit, block = event.commit, event.block
        if commit.height != self.height or self.decision is not None:
            return
        if block.hash != commit.block_hash or block.height != self.height:
            return
        if commit.verify(self.chain_id, self.validators) is not None:
            actions.append(Misbehaviour(b"", commit.height, commit.round, "invalid commit"))
            return
        self._decide(block, commit, actions)

    def _on_height_committed(self, event: HeightCommitted, actions: list[Action]) -> None:
        """After line 54: height + 1, reset the per-height state, then wait timeout_commit."""
        if event.height != self.height or self.decision is None:
            return
        self.schedule = self.schedule.advance(event.next_validators)
        self.validators = event.next_validators
        self.height += 1
        self._reset_height()
        pending, self._next_height = self._next_height, []
        if self.config.skip_timeout_commit:
            self._start_round(0, actions)
        else:
            actions.append(
                ScheduleTimeout(self.height, 0, Step.NEW_HEIGHT, self.config.timeout_commit_ms)
            )
        for message in pending:
            if isinstance(message, VoteReceived):
                self._on_vote(message, actions)
            else:
                self._on_proposal(message, actions)

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
        if self.proposer(round).address == self.own_address:
            if self.valid_value is not None:
                self._proposal_asked.add(round)
                actions.append(SignProposal(self.height, round, self.valid_round, self.valid_value))
            else:
                self._build_asked.add(round)
                actions.append(BuildBlock(self.height, round))
        actions.append(
            ScheduleTimeout(self.height, round, Step.PROPOSE, self.config.propose_ms(round))
        )

    def _vote(self, vote_type: VoteType, block_hash: bytes, actions: list[Action]) -> None:
        if self.own_address is not None and self.validators.index_of(self.own_address) is not None:
            actions.append(SignVote(vote_type, self.height, self.round, block_hash))

    def _on_timeout(self, event: TimeoutFired, actions: list[Action]) -> None:
        if event.height != self.height or self.decision is not None:
            return
        if event.step == Step.NEW_HEIGHT:
            if self.current_step == Step.NEW_HEIGHT:
                self._start_round(0, actions)
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
        while self.current_step not in (Step.NEW_HEIGHT, Step.COMMIT):
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
