"""Vote tallies by voting power for one height, and equivocation detection.

Algorithm 1 asks "are there 2f + 1 prevotes for v in round r?", "2f + 1 of
any kind?", "f + 1 messages of round r?" many times per step; this module
answers each in O(1) from running sums kept as votes arrive. It accepts at
most one vote per validator per (round, type): a second vote for a different
block is equivocation, returned as `DuplicateVoteEvidence` and never counted,
so a Byzantine validator's power is counted once however many votes it signs.

Signatures are checked by the caller (the state machine) before a vote gets
here; this module only counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import DuplicateVoteEvidence, ValidatorSet, Vote, VoteType

__all__ = ["AddResult", "HeightVotes", "RoundVotes", "VoteSet"]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding one vote did: counted it, ignored a duplicate, or found equivocation."""

    added: bool
    evidence: DuplicateVoteEvidence | None = None


@dataclass(slots=True)
class VoteSet:
    """The votes of one type in one round: at most one per validator (Algorithm 1's counts)."""

    validators: ValidatorSet
    votes: dict[int, Vote] = field(default_factory=dict)  # by validator index
    power_by_block: dict[bytes, int] = field(default_factory=dict)  # b"" is nil
    power_any: int = 0

    def add(self, vote: Vote, power: int) -> AddResult:
        existing = self.votes.get(vote.validator_index)
        if existing is not None:
            if existing.block_hash == vote.block_hash:
                return AddResult(added=False)
            a, b = sorted((existing, vote), key=lambda v: v.block_hash)
            return AddResult(added=False, evidence=DuplicateVoteEvidence(a, b))
        self.votes[vote.validator_index] = vote
        self.power_by_block[vote.block_hash] = self.power_by_block.get(vote.block_hash, 0) + power
        self.power_any += power
        return AddResult(added=True)

    def power_for(self, block_hash: bytes) -> int:
        return self.power_by_block.get(block_hash, 0)

    def has(self, validator_index: int, block_hash: bytes) -> bool:
        vote = self.votes.get(validator_index)
        return vote is not None and vote.block_hash == block_hash

    def for_block(self, block_hash: bytes) -> list[Vote]:
        """The votes for `block_hash`, by validator index (the order a Commit needs)."""
        return [self.votes[i] for i in sorted(self.votes) if self.votes[i].block_hash == block_hash]


@dataclass(slots=True)
class RoundVotes:
    """Prevotes and precommits of one round, and who sent anything in it (line 55)."""

    prevotes: VoteSet
    precommits: VoteSet
    senders: set[int] = field(default_factory=set)
    sender_power: int = 0

    def note_sender(self, validator_index: int, power: int) -> None:
        if validator_index not in self.senders:
            self.senders.add(validator_index)
            self.sender_power += power

    def of(self, vote_type: VoteType) -> VoteSet:
        return self.prevotes if vote_type == VoteType.PREVOTE else self.precommits


@dataclass(slots=True)
class HeightVotes:
    """All rounds' votes of one height, created on first use."""

    validators: ValidatorSet
    rounds: dict[int, RoundVotes] = field(default_factory=dict)

    def round(self, round: int) -> RoundVotes:
        rv = self.rounds.get(round)
        if rv is None:
            rv = RoundVotes(VoteSet(self.validators), VoteSet(self.validators))
            self.rounds[round] = rv
        return rv

    def get(self, round: int) -> RoundVotes | None:
        return self.rounds.get(round)

    def add(self, vote: Vote, power: int) -> AddResult:
        rv = self.round(vote.round)
        result = rv.of(vote.type).add(vote, power)
        if result.added:
            rv.note_sender(vote.validator_index, power)
        return result
