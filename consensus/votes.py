"""Vote tallies by voting power for one height, and equivocation detection.

Algorithm 1 asks "are there 2f + 1 prevotes for v in round r?", "2f + 1 of
any kind?", "f + 1 messages of round r?" many times per step; this module
answers each in O(1) from running sums kept as votes arrive. A second vote by
one validator in one (round, type) for a different block is equivocation,
returned as `DuplicateVoteEvidence`; how it is counted is VoteSet's docstring.

Signatures are checked by the caller (the state machine) before a vote gets
here; this module only counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import DuplicateVoteEvidence, ValidatorSet, Vote, VoteType

__all__ = ["AddResult", "HeightVotes", "RoundVotes", "VoteSet"]


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding one vote did: counted it or not, and any equivocation it revealed."""

    added: bool
    evidence: DuplicateVoteEvidence | None = None


@dataclass(slots=True)
class VoteSet:
    """The votes of one type in one round, tallied per block as Algorithm 1 counts them.

    The paper counts, for each value, the distinct validators that sent a vote
    for it, so an equivocator's votes count toward each block it voted for
    (never twice toward one), while "2f + 1 of any kind" counts each validator
    once. Only the first vote of a validator counts toward "any". A conflicting
    vote is counted only when the caller says the block is one it holds (or
    nil), and at most `hashes_max` blocks per validator, which bounds what an
    equivocator can make us store.
    """

    validators: ValidatorSet
    hashes_max: int
    first: dict[int, Vote] = field(default_factory=dict)  # by validator index
    by_block: dict[bytes, dict[int, Vote]] = field(default_factory=dict)  # b"" is nil
    power_by_block: dict[bytes, int] = field(default_factory=dict)
    hashes_by_validator: dict[int, int] = field(default_factory=dict)
    power_any: int = 0

    def add(self, vote: Vote, power: int, *, conflicting_ok: bool) -> AddResult:
        index = vote.validator_index
        voters = self.by_block.get(vote.block_hash)
        if voters is not None and index in voters:
            return AddResult(added=False)
        existing = self.first.get(index)
        evidence = None
        if existing is None:
            self.first[index] = vote
            self.power_any += power
        else:
            a, b = sorted((existing, vote), key=lambda v: v.block_hash)
            evidence = DuplicateVoteEvidence(a, b)
            if not conflicting_ok or self.hashes_by_validator[index] >= self.hashes_max:
                return AddResult(added=False, evidence=evidence)
        self.hashes_by_validator[index] = self.hashes_by_validator.get(index, 0) + 1
        self.by_block.setdefault(vote.block_hash, {})[index] = vote
        self.power_by_block[vote.block_hash] = self.power_by_block.get(vote.block_hash, 0) + power
        return AddResult(added=True, evidence=evidence)

    def counts(self, vote: Vote, *, conflicting_ok: bool) -> bool:
        """Whether `add` would count this vote (without adding it)."""
        index = vote.validator_index
        voters = self.by_block.get(vote.block_hash)
        if voters is not None and index in voters:
            return False
        if index not in self.first:
            return True
        return conflicting_ok and self.hashes_by_validator[index] < self.hashes_max

    def power_for(self, block_hash: bytes) -> int:
        return self.power_by_block.get(block_hash, 0)

    def has(self, vote: Vote) -> bool:
        voters = self.by_block.get(vote.block_hash)
        return voters is not None and voters.get(vote.validator_index) == vote

    def for_block(self, block_hash: bytes) -> list[Vote]:
        """The votes for `block_hash`, by validator index (the order a Commit needs)."""
        voters = self.by_block.get(block_hash, {})
        return [voters[i] for i in sorted(voters)]


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
    hashes_max: int
    rounds: dict[int, RoundVotes] = field(default_factory=dict)

    def round(self, round: int) -> RoundVotes:
        rv = self.rounds.get(round)
        if rv is None:
            rv = RoundVotes(
                VoteSet(self.validators, self.hashes_max), VoteSet(self.validators, self.hashes_max)
            )
            self.rounds[round] = rv
        return rv

    def get(self, round: int) -> RoundVotes | None:
        return self.rounds.get(round)

    def add(self, vote: Vote, power: int, *, conflicting_ok: bool) -> AddResult:
        rv = self.round(vote.round)
        result = rv.of(vote.type).add(vote, power, conflicting_ok=conflicting_ok)
        if result.added:
            rv.note_sender(vote.validator_index, power)
        return result
