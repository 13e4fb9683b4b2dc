"""The pool of verified equivocation evidence waiting for a block.

Shared by the node and the simulator (pure: no trio, no I/O), so both put the
same evidence into blocks: from earlier heights only, young enough for the
chain's evidence age, each item once.
"""

from __future__ import annotations

from collections import OrderedDict

from consensus.state import ChainState
from consensus.types import BLOCK_EVIDENCE_MAX, DuplicateVoteEvidence

EVIDENCE_PENDING_MAX = 1_000  # verified, not yet committed; policy when full: drop new
EVIDENCE_COMMITTED_MAX = 10_000  # hashes remembered so committed evidence is not re-proposed


class EvidencePool:
    """Verified equivocation evidence waiting for a block, bounded and deduplicated."""

    def __init__(
        self,
        pending_max: int = EVIDENCE_PENDING_MAX,
        committed_max: int = EVIDENCE_COMMITTED_MAX,
    ) -> None:
        self.pending_max = pending_max
        self.committed_max = committed_max
        self._pending: OrderedDict[bytes, DuplicateVoteEvidence] = OrderedDict()
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    def add(self, evidence: DuplicateVoteEvidence) -> bool:
        key = evidence.hash
        if key in self._pending or key in self._committed:
            return False
        if len(self._pending) >= self.pending_max:
            return False
        self._pending[key] = evidence
        return True

    def pending(self, state: ChainState) -> list[DuplicateVoteEvidence]:
        """Evidence a block at `state.height` may include: from earlier heights, young enough.

        Expired items are dropped here, so stale evidence never fills the pool.
        """
        oldest = state.height - state.params.evidence_age_blocks_max
        for key in [k for k, e in self._pending.items() if e.height < oldest]:
            del self._pending[key]
        out = [e for e in self._pending.values() if e.height < state.height]
        return out[:BLOCK_EVIDENCE_MAX]

    def committed(self, evidence: tuple[DuplicateVoteEvidence, ...]) -> None:
        for e in evidence:
            key = e.hash
            self._pending.pop(key, None)
            self._committed[key] = None
        while len(self._committed) > self.committed_max:
            self._committed.popitem(last=False)

    def forget_pending(self) -> None:
        """Drop what is not committed (a restart loses the in-memory pool, not the chain)."""
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
