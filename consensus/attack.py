"""How a full node judges light-client-attack evidence with nothing but its own chain.

A `LightClientAttackEvidence` (consensus/types.py) carries a header that
conflicts with the chain, its certificate and validator set, the common
height and the validators it accuses. A full node checks it against what it
stored (docs/PROTOCOL.md section 9.7), in an order that bounds the work a
hostile sender can cause per byte: everything but the signatures first
(sizes, chain id, heights, the sets' hashes, the signers' power, the accused
list), each a lookup or one hash; then the signatures, at most one per
validator of the conflicting set, which the caller verifies (the validation
core in its parallel pass, the node off its event loop).

The checks, each failing with `AttackInvalid` naming its `AttackCheck`:

1. the certificate is of the header's height, the header of this chain,
   at a height h the node has the canonical certificate of (h below the last
   committed height: the certificate of h is in block h + 1), at or above
   the common height, and the evidence is young enough: the block including
   it is at most `evidence_age_blocks_max` above the common height, as for
   duplicate votes;
2. the certificate is for the header's block hash and the set hashes to
   the header's `validators_hash`;
3. the node's block at h is another one (the canonical certificate names
   another block hash);
4. the certificate holds more than 2/3 of the conflicting set's power;
5. equivocation, when the header names the node's own set at h: the common
   height is h, and the accused are the validators that signed both the
   conflicting and the canonical certificate if both are of one round (each
   signed two blocks in that round), nobody otherwise (amnesia: the rounds
   differ, and no single validator's signatures prove it broke its lock);
   lunatic, when it names another set: the common height is below h and its
   set is known, the conflicting certificate's signers that are in that set
   hold more than 1/3 of its power (so a light client trusting the common
   height would have skipped to the header), and they are the accused;
6. `byzantine_validators` is exactly that list;
7. every signature verifies (`AttackCheck.SIGNATURE`), the accused validators'
   first: their keys are the node's, so a forger cannot make them, while it
   can make any number of valid ones by keys of its own in a lunatic set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from consensus.crypto import verify
from consensus.light import signers_in
from consensus.types import (
    Commit,
    Evidence,
    LightClientAttackEvidence,
    ValidatorSet,
    precommit_sign_bytes,
)

__all__ = [
    "AttackCheck",
    "AttackInvalid",
    "ChainView",
    "Screened",
    "conflict_key",
    "includable",
    "screen_light_attack",
    "verify_light_attack",
]


class AttackCheck(Enum):
    """The check light-client-attack evidence failed; its value is what a client is told."""

    CHAIN_ID = "chain id"
    COMMIT_HEIGHT = "certificate height"
    COMMIT_BLOCK = "certificate block hash"
    VALIDATORS_HASH = "conflicting validator set hash"
    HEIGHT = "height (below the last committed height)"
    TOO_OLD = "evidence age"
    COMMON_HEIGHT = "common height"
    NOT_CONFLICTING = "conflicting header (differs from the chain's)"
    SIGNERS = "certificate signers"
    QUORUM = "certificate power (more than 2/3 of the conflicting set)"
    TRUST_LEVEL = "common set power (more than 1/3 of the common height's set)"
    BYZANTINE = "byzantine validators"
    SIGNATURE = "certificate signature"


class AttackInvalid(Exception):
    """The evidence failed `check`; the message says how."""

    def __init__(self, check: AttackCheck, detail: str) -> None:
        super().__init__(f"{check.value}: {detail}")
        self.check = check
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChainView:
    """What a node knows of its chain to judge evidence for the block at `next_height`."""

    chain_id: str
    next_height: int  # the height of the block that would carry the evidence
    evidence_age_blocks_max: int
    validators_at: Callable[[int], ValidatorSet | None]  # the set that signed a height
    commit_at: Callable[[int], Commit | None]  # the canonical certificate of a height


@dataclass(frozen=True, slots=True)
class Screened:
    """Evidence that passed every check but its signatures, and what it proves."""

    lunatic: bool
    byzantine: tuple[bytes, ...]
    # (public key, message, signature) per signature of the conflicting certificate.
    items: tuple[tuple[bytes, bytes, bytes], ...]


def includable(evidence: Evidence, next_height: int, age_blocks_max: int) -> bool:
    """Whether a block at `next_height` may carry `evidence` as far as heights go.

    A duplicate vote from any earlier height; a light-client attack from a
    height whose canonical certificate is stored (h <= next_height - 2);
    both no older than the age limit, counted from `age_height`.
    """
    if next_height - evidence.age_height > age_blocks_max:
        return False
    if isinstance(evidence, LightClientAttackEvidence):
        return evidence.height <= next_height - 2
    return evidence.height < next_height


def conflict_key(ev: LightClientAttackEvidence) -> tuple[int, bytes]:
    """What one attack is: the conflicting header's height and hash.

    Valid evidence of one conflicting header comes in many forms (any subset
    of more than 2/3 of its certificate's signatures, other valid common
    heights), each up to 167 KB; a pool and a block take one per key, so the
    ledger acts once and nobody can multiply one attack into many items.
    """
    return (ev.conflicting_header.height, ev.conflicting_header.hash)


def screen_light_attack(ev: LightClientAttackEvidence, chain: ChainView) -> Screened:
    """Every check but the signatures (module docstring, 1 to 6); AttackInvalid names a failure."""
    header, commit, conflicting = (
        ev.conflicting_header,
        ev.conflicting_commit,
        ev.conflicting_validators,
    )
    h = header.height
    # Integers and short strings first: evidence this node cannot judge (or that
    # is too old) costs no hashing of its header or set.
    if commit.height != h:
        raise AttackInvalid(AttackCheck.COMMIT_HEIGHT, f"{commit.height}, header {h}")
    if header.chain_id != chain.chain_id:
        raise AttackInvalid(
            AttackCheck.CHAIN_ID, f"{header.chain_id!r}, expected {chain.chain_id!r}"
        )
    if h > chain.next_height - 2:
        raise AttackInvalid(
            AttackCheck.HEIGHT,
            f"{h}: the certificate of the chain's block {h} is not final before "
            f"height {h + 1} is committed (this block: {chain.next_height})",
        )
    if ev.common_height > h:
        raise AttackInvalid(AttackCheck.COMMON_HEIGHT, f"{ev.common_height} is above {h}")
    if chain.next_height - ev.common_height > chain.evidence_age_blocks_max:
        raise AttackInvalid(
            AttackCheck.TOO_OLD,
            f"common height {ev.common_height}, {chain.next_height - ev.common_height} blocks "
            f"before {chain.next_height}, limit {chain.evidence_age_blocks_max}",
        )
    if commit.block_hash != header.hash:
        raise AttackInvalid(AttackCheck.COMMIT_BLOCK, "the certificate names another block")
    if conflicting.hash != header.validators_hash:
        raise AttackInvalid(
            AttackCheck.VALIDATORS_HASH, "the set given does not hash to the header's"
        )
    ours = chain.commit_at(h)
    own_set = chain.validators_at(h)
    if ours is None or own_set is None:
        raise AttackInvalid(AttackCheck.HEIGHT, f"height {h} is not in this node's store")
    if ours.block_hash == commit.block_hash:
        raise AttackInvalid(AttackCheck.NOT_CONFLICTING, f"it is the chain's block {h}")
    power = 0
    for s in commit.signatures:
        if s.validator_index >= len(conflicting):
            raise AttackInvalid(AttackCheck.SIGNERS, f"index {s.validator_index} out of the set")
        power += conflicting[s.validator_index].power
    if not conflicting.has_quorum(power):
        raise AttackInvalid(
            AttackCheck.QUORUM, f"signers hold {power} of {conflicting.total_power}"
        )
    lunatic = header.validators_hash != own_set.hash
    if lunatic:
        byzantine = _lunatic_signers(ev, chain)
    else:
        if ev.common_height != h:
            raise AttackInvalid(
                AttackCheck.COMMON_HEIGHT,
                f"{ev.common_height}: the header names the chain's set at {h}, so the "
                f"chains agree up to {h}",
            )
        byzantine = _double_signers(commit, ours, own_set)
    if ev.byzantine_validators != byzantine:
        raise AttackInvalid(
            AttackCheck.BYZANTINE,
            f"names {len(ev.byzantine_validators)} validators, the chain shows "
            f"{len(byzantine)}: {', '.join(a.hex() for a in byzantine) or 'none'}",
        )
    message = precommit_sign_bytes(chain.chain_id, h, commit.round, commit.block_hash)
    # The accused validators' signatures first: those a forger cannot make.
    items = tuple(
        (conflicting[s.validator_index].public_key, message, s.signature)
        for s in ev.signatures_in_check_order()
    )
    return Screened(lunatic, byzantine, items)


def verify_light_attack(ev: LightClientAttackEvidence, chain: ChainView) -> Screened:
    """Every check, the signatures last (one at a time: for tests and small certificates)."""
    screened = screen_light_attack(ev, chain)
    for (public_key, message, signature), s in zip(
        screened.items, ev.signatures_in_check_order(), strict=True
    ):
        if not verify(public_key, message, signature):
            raise AttackInvalid(AttackCheck.SIGNATURE, f"validator index {s.validator_index}")
    return screened


def _lunatic_signers(ev: LightClientAttackEvidence, chain: ChainView) -> tuple[bytes, ...]:
    """The common set's validators among the signers; they must hold more than 1/3 of it."""
    common = None if ev.common_height >= ev.height else chain.validators_at(ev.common_height)
    if common is None:
        raise AttackInvalid(
            AttackCheck.COMMON_HEIGHT,
            f"{ev.common_height}: a lunatic header needs a known height below {ev.height}",
        )
    # The indices are in the conflicting set (check 4 counted the signers' power).
    power, signers = signers_in(ev.conflicting_commit, ev.conflicting_validators, common)
    if not common.has_one_honest(power):
        raise AttackInvalid(
            AttackCheck.TRUST_LEVEL,
            f"validators of height {ev.common_height} signed {power} of {common.total_power}",
        )
    return tuple(sorted(signers))


def _double_signers(
    conflicting: Commit, ours: Commit, validators: ValidatorSet
) -> tuple[bytes, ...]:
    """Validators in both certificates of one round (the set is the same: same hash)."""
    if conflicting.round != ours.round:
        return ()
    both = {s.validator_index for s in conflicting.signatures} & {
        s.validator_index for s in ours.signatures
    }
    return tuple(sorted(validators[i].address for i in both))
