"""Who proposes at (height, round): weighted round robin over voting power.

Every node must pick the same proposer for every (height, round) without
talking to anyone, and over time each validator must propose in proportion to
its voting power. This is CometBFT's weighted round robin: each validator
holds a priority; one selection adds every validator's power to its priority,
picks the highest (ties go to the lower address) and subtracts the total power
from the winner. Priorities are kept centred on zero and within a window of
`PRIORITY_WINDOW_FACTOR * total_power`, so a validator that joins or leaves
cannot starve or flood the rotation.

The schedule of height h, `ProposerSchedule`, is the state before any
selection at h: round r's proposer is the winner of the (r + 1)-th selection
from it, and height h + 1's schedule is h's after one selection, updated to
the next validator set (new validators start at -1.125 * total power, as in
CometBFT, so joining does not grant an immediate turn). The chain state
(consensus/state.py) carries the priorities from height to height; blocks are
built and checked by the validation core (consensus/validation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.types import Validator, ValidatorSet

__all__ = ["ProposerSchedule"]

# Priorities are rescaled when their spread exceeds this many times the total
# power (CometBFT's PriorityWindowSizeFactor): it bounds how long a validator
# can wait for its turn after a change to the set.
PRIORITY_WINDOW_FACTOR = 2


def _truncating_div(value: int, divisor: int) -> int:
    """Division rounding toward zero, as Go's integer division does."""
    q = abs(value) // divisor
    return q if value >= 0 else -q


@dataclass(frozen=True, slots=True)
class ProposerSchedule:
    """Proposer priorities of one height, one per validator in `validators` order."""

    validators: ValidatorSet
    priorities: tuple[int, ...]

    def __post_init__(self) -> None:
        assert len(self.priorities) == len(self.validators)

    @classmethod
    def initial(cls, validators: ValidatorSet) -> ProposerSchedule:
        """The schedule of the first height: every priority zero."""
        return cls(validators, (0,) * len(validators))

    def _normalised(self) -> list[int]:
        """Rescale into the window, then centre on zero (CometBFT, before each selection run)."""
        total = self.validators.total_power
        prios = list(self.priorities)
        window = PRIORITY_WINDOW_FACTOR * total
        spread = max(prios) - min(prios)
        if spread > window:
            ratio = -(-spread // window)  # ceiling
            prios = [_truncating_div(p, ratio) for p in prios]
        average = sum(prios) // len(prios)
        return [p - average for p in prios]

    def _select(self, prios: list[int]) -> int:
        """One selection in place: returns the winner's index."""
        validators = self.validators
        for i, v in enumerate(validators):
            prios[i] += v.power
        best = 0
        for i in range(1, len(prios)):
            # Indexes follow ascending address, so the first maximum is the lower address.
            if prios[i] > prios[best]:
                best = i
        prios[best] -= validators.total_power
        return best

    def proposers(self, rounds: int) -> list[Validator]:
        """The proposers of rounds 0 .. rounds - 1 of this height."""
        prios = self._normalised()
        return [self.validators[self._select(prios)] for _ in range(rounds)]

    def proposer(self, round: int) -> Validator:
        """The proposer of `round` at this height."""
        return self.proposers(round + 1)[round]

    def advance(self, next_validators: ValidatorSet) -> ProposerSchedule:
        """The schedule of the next height, whose validator set is `next_validators`."""
        prios = self._normalised()
        self._select(prios)
        by_address = {v.address: p for v, p in zip(self.validators, prios, strict=True)}
        total = next_validators.total_power
        joining = -(total + (total >> 3))
        new = [by_address.get(v.address, joining) for v in next_validators]
        return ProposerSchedule(next_validators, tuple(new))._recentred()

    def _recentred(self) -> ProposerSchedule:
        return ProposerSchedule(self.validators, tuple(self._normalised()))
