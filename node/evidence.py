"""The pool of verified evidence waiting for a block: duplicate votes and light-client attacks.

Shared by the node and the simulator (pure: no trio, no I/O), so both put the
same evidence into blocks: includable at the block's height (consensus/attack.py,
`includable`), young enough for the chain's evidence age, each item once.
Nothing enters unverified: the driver checks each item against the chain
before `add`, and the validation core checks it again in every block.
"""

from __future__ import annotations

from collections import OrderedDict

from consensus.attack import conflict_key, includable
from consensus.state import ChainState
from consensus.types import BLOCK_EVIDENCE_MAX, Evidence, LightClientAttackEvidence

EVIDENCE_PENDING_MAX = 1_000  # verified, not yet committed; policy when full: drop new
# The bytes of that pending evidence: a light-client attack on a set of 1,000
# validators is 167 KB, a duplicate vote under 512 bytes; 16 MiB holds a hundred
# of the largest. Policy when full: drop new (another copy comes by gossip).
EVIDENCE_PENDING_BYTES_MAX = 16 * 1024 * 1024
EVIDENCE_COMMITTED_MAX = 10_000  # hashes remembered so committed evidence is not re-proposed
# Hashes of evidence refused for good (a bad signature, a failed check that no
# later block changes) with the refusal, so posting or gossiping it again costs
# a hash lookup, not the signature checks. Policy when full: forget the oldest.
EVIDENCE_REFUSED_MAX = 10_000
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
        # Light-client attacks by conflicting header (consensus/attack.py,
        # conflict_key): pending ones to the hash of their item, committed ones
        # remembered as the hashes are (committed_max, oldest forgotten).
        self._attacks_pending: dict[tuple[int, bytes], bytes] = {}
        self._attacks_committed: OrderedDict[tuple[int, bytes], None] = OrderedDict()
        self._refused: OrderedDict[bytes, str] = OrderedDict()

    def known(self, key: bytes) -> bool:
        """Whether evidence of this hash is pending or committed (checked before verifying)."""
        return key in self._pending or key in self._committed

    def known_item(self, evidence: Evidence) -> bool:
        """Whether this evidence, or another item of the same attack, is pending or committed."""
        if self.known(evidence.hash):
            return True
        if isinstance(evidence, LightClientAttackEvidence):
            attack = conflict_key(evidence)
            return attack in self._attacks_pending or attack in self._attacks_committed
        return False

    def refuse(self, key: bytes, reason: str) -> None:
        """Remember that evidence of this hash was refused for good, and why."""
        self._refused[key] = reason
        self._refused.move_to_end(key)
        while len(self._refused) > EVIDENCE_REFUSED_MAX:
            self._refused.popitem(last=False)

    def refusal(self, key: bytes) -> str | None:
        """Why evidence of this hash was refused, if it was (and is still remembered)."""
        return self._refused.get(key)

    def add(self, evidence: Evidence) -> bool:
        key = evidence.hash
        if self.known_item(evidence):
            return False
        size = len(evidence.encode())
        if len(self._pending) >= self.pending_max:
            return False
        if self.pending_bytes + size > self.pending_bytes_max:
            return False
        self._pending[key] = evidence
        self.pending_bytes += size
        if isinstance(evidence, LightClientAttackEvidence):
            self._attacks_pending[conflict_key(evidence)] = key
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
            if isinstance(e, LightClientAttackEvidence):
                attack = conflict_key(e)
                # Another item of the same attack, pending here, is moot now.
                other = self._attacks_pending.get(attack)
                if other is not None:
                    self._drop(other)
                self._attacks_committed[attack] = None
        while len(self._committed) > self.committed_max:
            self._committed.popitem(last=False)
        while len(self._attacks_committed) > self.committed_max:
            self._attacks_committed.popitem(last=False)

    def forget_pending(self) -> None:
        """Drop what is not committed (a restart loses the in-memory pool, not the chain)."""
        self._pending.clear()
        self._attacks_pending.clear()
        self.pending_bytes = 0

    def _drop(self, key: bytes) -> None:
        evidence = self._pending.pop(key)
        self.pending_bytes -= len(evidence.encode())
        if isinstance(evidence, LightClientAttackEvidence):
            self._attacks_pending.pop(conflict_key(evidence), None)

    def __len__(self) -> int:
        return len(self._pending)
