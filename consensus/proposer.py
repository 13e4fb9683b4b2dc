"""Who proposes at (height, round), and the block a proposer builds.

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
CometBFT, so joining does not grant an immediate turn).

`build_block` lives here too so that the node and the simulator assemble
identical headers from the same chain state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Header,
    Validator,
    ValidatorSet,
    data_hash,
    evidence_hash,
)

__all__ = ["BlockContext", "ProposerSchedule", "build_block", "header_link_error"]

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


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What the chain state fixes about the next block's header.

    `last_block_hash`, `last_commit` and `last_block_time_ms` describe block
    `height - 1` (empty, None and the genesis time at height 1); `app_hash` and
    `last_results_hash` are the application's after executing it.
    """

    chain_id: str
    height: int
    last_block_hash: bytes
    last_commit: Commit | None
    last_block_time_ms: int
    validators: ValidatorSet
    next_validators: ValidatorSet
    last_validators: ValidatorSet  # signed `last_commit`; unused at height 1
    app_hash: bytes
    last_results_hash: bytes


def build_block(
    context: BlockContext,
    *,
    time_ms: int,
    txs: Iterable[bytes],
    evidence: Iterable[DuplicateVoteEvidence],
    proposer_address: bytes,
) -> Block:
    """The block a proposer proposes: header fields from `context`, body as given.

    The block time is at least one millisecond after the previous block's, so
    block times strictly increase even when a proposer's clock lags.
    """
    tx_list = tuple(txs)
    evidence_list = tuple(evidence)
    header = Header(
        chain_id=context.chain_id,
        height=context.height,
        time_ms=max(time_ms, context.last_block_time_ms + 1),
        last_block_hash=context.last_block_hash,
        last_commit_hash=b"" if context.last_commit is None else context.last_commit.hash,
        data_hash=data_hash(tx_list),
        validators_hash=context.validators.hash,
        next_validators_hash=context.next_validators.hash,
        app_hash=context.app_hash,
        last_results_hash=context.last_results_hash,
        evidence_hash=evidence_hash(evidence_list),
        proposer_address=proposer_address,
    )
    return Block(header, tx_list, context.last_commit, evidence_list)


def header_link_error(block: Block, context: BlockContext) -> str | None:
    """None if `block`'s header follows from `context`, else the first mismatch.

    The pure part of block validation: everything checkable from the previous
    block and the current validator sets, without executing transactions. The
    previous block's commit certificate is verified (signatures included).
    """
    h = block.header
    if h.chain_id != context.chain_id:
        return "wrong chain id"
    if h.height != context.height:
        return f"height {h.height}, expected {context.height}"
    if h.time_ms <= context.last_block_time_ms:
        return "time does not increase"
    if h.last_block_hash != context.last_block_hash:
        return "last_block_hash does not link to the previous block"
    if context.height == 1:
        if block.last_commit is not None or h.last_commit_hash:
            return "a first block carries no last commit"
    else:
        if block.last_commit is None:
            return "missing last commit"
        if h.last_commit_hash != block.last_commit.hash:
            return "last_commit_hash mismatch"
        lc = block.last_commit
        if lc.height != context.height - 1 or lc.block_hash != context.last_block_hash:
            return "last commit is not for the previous block"
        reason = lc.verify(context.chain_id, context.last_validators)
        if reason:
            return f"last commit: {reason}"
    if h.data_hash != data_hash(block.txs):
        return "data_hash mismatch"
    if h.evidence_hash != evidence_hash(block.evidence):
        return "evidence_hash mismatch"
    if h.validators_hash != context.validators.hash:
        return "validators_hash mismatch"
    if h.next_validators_hash != context.next_validators.hash:
        return "next_validators_hash mismatch"
    if h.app_hash != context.app_hash:
        return "app_hash mismatch"
    if h.last_results_hash != context.last_results_hash:
        return "last_results_hash mismatch"
    if context.validators.index_of(h.proposer_address) is None:
        return "proposer is not a validator"
    return None
