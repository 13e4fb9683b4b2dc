"""The pool of verified evidence waiting for a block: duplicate votes and light-client attacks.

Shared by the node and the simulator (pure: no trio, no I/O), so both put the
same evidence into blocks: includable at the block's height (consensus/attack.py,
`includable`), young enough for the chain's evidence age, each item once.
Nothing enters unverified: the driver checks each item against the chain
before `add`, and the validation core checks it again in every block.
"""

from __future__ import annotations

from collections import OrderedDict

from consensus.attack import includable
from consensus.state import ChainState
from consensus.types import BLOCK_EVIDENCE_MAX, Evidence

EVIDENCE_PENDING_MAX = 1_000  # verified, not yet committed; policy when full: drop new
# The bytes of that pending evidence: a light-client attack on a set of 1,000
# validators is 167 KB, a duplicate vote under 512 bytes; 16 MiB holds a hundred
# of the largest. Policy when full: drop new (another copy comes by gossip).
EVIDENCE_PENDING_BYTES_MAX = 16 * 1024 * 1024
EVIDENCE_COMMITTED_MAX = 10_000  # hashes remembered so committed evidence is not re-proposed
# The share of a block's byte limit its evidence may take; the rest waits for the
# next block (the proposer leaves the transactions the remainder).
EVIDENCE_BLOCK_SHARE_DIVISOR = 4


class EvidencePool:
    """Verified evidence waiting for a block, bounded by count and bytes, and deduplicated."""

    def __init__(
        self,
        pending_max: int = EVIDENCE_PENDING_MAX,
        committed_max: int = EVIDENCE_COMMITTED_MAX,
        pending_bytes_max: int = EVIDENCE_PENDING_BYTES_MAX,
    ) -> None:
        self.pending_max = pending_max
        self.committed_max = committed_max
        self.pending_bytes_max = pending_bytes_max
        self.pending_bytes = 0
        self._pending: OrderedDict[bytes, Evidence] = OrderedDict()
        self._committed: OrderedDict[bytes, None] = OrderedDict()

    def known(self, key: bytes) -> bool:
        """Whether evidence of this hash is pending or committed (checked before verifying)."""
        return key in self._pending or key in self._committed

    def add(self, evidence: Evidence) -> bool:
        key = evidence.hash
        if self.known(key):
            return False
        size = len(evidence.encode())
        if len(self._pending) >= self.pending_max:
            return False
        if self.pending_bytes + size > self.pending_bytes_max:
            return False
        self._pending[key] = evidence
        self.pending_bytes += size
        return True

    def pending(self, state: ChainState) -> list[Evidence]:
        """Evidence the block at `state.height` may include, within its share of the block.

        Expired items are dropped here, so stale evidence never fills the pool.
        """
        next_height = state.last_height + 1
        age_max = state.params.evidence_age_blocks_max
        for key in [k for k, e in self._pending.items() if next_height - e.age_height > age_max]:
            self._drop(key)
        budget = state.params.block_bytes_max // EVIDENCE_BLOCK_SHARE_DIVISOR
        out: list[Evidence] = []
        for e in self._pending.values():
            if len(out) >= BLOCK_EVIDENCE_MAX:
                break
            size = len(e.encode())
            if size <= budget and includable(e, next_height, age_max):
                out.append(e)
                budget -= size
        return out

    def committed(self, evidence: tuple[Evidence, ...]) -> None:
        for e in evidence:
            key = e.hash
            if key in self._pending:
                self._drop(key)
            self._committed[key] = None
        while len(self._committed) > self.committed_max:
            self._committed.popitem(last=False)

    def forget_pending(self) -> None:
        """Drop what is not committed (a restart loses the in-memory pool, not the chain)."""
        self._pending.clear()
        self.pending_bytes = 0

    def _drop(self, key: bytes) -> None:
        self.pending_bytes -= len(self._pending.pop(key).encode())

    def __len__(self) -> int:
        return len(self._pending)
