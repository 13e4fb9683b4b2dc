"""A light client's checks: follow a chain's headers from a trusted one by certificates alone.

A light client holds no state of the chain but one trusted header and the
validator sets around it. It moves its trust to a later header in two ways,
as CometBFT's light client does (its specification, "verification"):

- **sequentially** (`verify_adjacent`): header h + 1 names as its validator
  set the one the trusted header h named as the next (`validators_hash` =
  `next_validators_hash`), links to it by `last_block_hash`, and carries a
  certificate from more than 2/3 of that set's power;
- **by skipping** (`verify_skipping`): header h + k with k > 1 is trusted if
  validators of the trusted header's next set holding more than `trust_level`
  (1/3 by default) of that set's power signed its certificate. Those
  validators were trusted to include at least one correct one (fewer than
  1/3 of a set's power is faulty, within the trusting period, while their
  stake could still be slashed), so a correct validator vouches for it.

Trust expires: a trusted header older than the trusting period (less than the
chain's unbonding time) cannot vouch for anything. `verify_to` bisects from
a trusted header to a target height through a `fetch` callback, and
`conflict` tells two verified headers of one height apart: proof that the
chain's validators forked it (light-client attack), with the validators who
signed both; `attack_evidence` turns one of them into the evidence full nodes
accept, gossip and commit (consensus/attack.py says how they judge it).

Pure: the caller passes the time and fetches light blocks; each failed check
raises `LightError` naming it (`Check`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from consensus.crypto import verify
from consensus.types import (
    Commit,
    Header,
    LightClientAttackEvidence,
    ValidatorSet,
    precommit_sign_bytes,
)

__all__ = [
    "Check",
    "Conflict",
    "LightBlock",
    "LightError",
    "TrustOptions",
    "attack_evidence",
    "conflict",
    "signers_in",
    "verify_adjacent",
    "verify_light_block",
    "verify_skipping",
    "verify_to",
]


class Check(Enum):
    """The check a light block failed; its value is what a verifier prints."""

    CHAIN_ID = "chain id"
    HEIGHT = "height"
    VALIDATORS_HASH = "validator set hash"
    NEXT_VALIDATORS_HASH = "next validator set hash"
    LAST_BLOCK_HASH = "last block hash"
    COMMIT_HEIGHT = "certificate height"
    COMMIT_BLOCK = "certificate block hash"
    COMMIT_SIGNERS = "certificate signers"
    COMMIT_SIGNATURE = "certificate signature"
    QUORUM = "certificate power (more than 2/3 of the header's set)"
    TRUST_LEVEL = "trusted power (more than the trust level of the trusted set)"
    EXPIRED = "trusting period"
    TIME = "header time"


class LightError(Exception):
    """A light block failed `check`; the message says how."""

    def __init__(self, check: Check, detail: str) -> None:
        super().__init__(f"{check.value}: {detail}")
        self.check = check


@dataclass(frozen=True, slots=True)
class LightBlock:
    """A header with the certificate that committed it and the validator sets around it."""

    header: Header
    commit: Commit
    validators: ValidatorSet  # the set of header.height: H = header.validators_hash
    next_validators: ValidatorSet  # the set of height + 1: H = header.next_validators_hash

    @property
    def height(self) -> int:
        return self.header.height


@dataclass(frozen=True, slots=True)
class TrustOptions:
    """How far trust reaches; the trusting period must be below the unbonding time."""

    trusting_period_ms: int
    # A skip needs signers holding more than numerator/denominator of the trusted set.
    trust_numerator: int = 1
    trust_denominator: int = 3
    # How far ahead of the verifier's clock a header's time may be.
    clock_drift_ms: int = 10_000

    def __post_init__(self) -> None:
        assert self.trusting_period_ms > 0
        assert 3 * self.trust_numerator >= self.trust_denominator > self.trust_numerator > 0, (
            "the trust level must be in [1/3, 1)"
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two verified headers of one height: the chain's validators signed a fork."""

    height: int
    first: LightBlock
    second: LightBlock
    # Validators (addresses) whose precommits are in both certificates: if the two
    # were committed in the same round, each of them signed two blocks there.
    double_signers: tuple[bytes, ...]


def verify_light_block(block: LightBlock, chain_id: str) -> None:
    """The block on its own: its sets match its header, its certificate is a quorum of its set.

    The claimed signers' power is summed before any signature is checked, so a
    certificate short of a quorum costs no signature check at all.
    """
    _check_shape(block, chain_id)
    _check_quorum(block)
    _verify_signatures(block, chain_id, None)


def _check_shape(block: LightBlock, chain_id: str) -> None:
    h = block.header
    if h.chain_id != chain_id:
        raise LightError(Check.CHAIN_ID, f"{h.chain_id!r}, expected {chain_id!r}")
    if block.validators.hash != h.validators_hash:
        raise LightError(
            Check.VALIDATORS_HASH, f"the set given does not hash to height {h.height}'s"
        )
    if block.next_validators.hash != h.next_validators_hash:
        raise LightError(
            Check.NEXT_VALIDATORS_HASH, f"the set given does not hash to height {h.height}'s next"
        )
    commit = block.commit
    if commit.height != h.height:
        raise LightError(Check.COMMIT_HEIGHT, f"{commit.height}, header {h.height}")
    if commit.block_hash != h.hash:
        raise LightError(
            Check.COMMIT_BLOCK, f"the certificate of height {h.height} names another block"
        )
    last = -1
    for s in commit.signatures:
        if s.validator_index <= last or s.validator_index >= len(block.validators):
            raise LightError(Check.COMMIT_SIGNERS, f"index {s.validator_index} out of order or set")
        last = s.validator_index


def _check_quorum(block: LightBlock) -> None:
    """More than 2/3 of the header's own set claims to have signed (signatures not checked)."""
    power = sum(block.validators[s.validator_index].power for s in block.commit.signatures)
    if not block.validators.has_quorum(power):
        raise LightError(
            Check.QUORUM,
            f"signers hold {power} of {block.validators.total_power} at height {block.height}",
        )


def verify_adjacent(
    trusted: LightBlock, untrusted: LightBlock, chain_id: str, now_ms: int, options: TrustOptions
) -> None:
    """Trust `untrusted` (height trusted + 1) because `trusted` named its validator set."""
    _check_common(trusted, untrusted, chain_id, now_ms, options)
    if untrusted.height != trusted.height + 1:
        raise LightError(Check.HEIGHT, f"{untrusted.height} is not {trusted.height} + 1")
    if untrusted.header.last_block_hash != trusted.header.hash:
        raise LightError(Check.LAST_BLOCK_HASH, f"height {untrusted.height} links elsewhere")
    if untrusted.header.validators_hash != trusted.header.next_validators_hash:
        raise LightError(
            Check.VALIDATORS_HASH,
            f"height {untrusted.height}'s set is not the one height {trusted.height} named",
        )
    verify_light_block(untrusted, chain_id)


def verify_skipping(
    trusted: LightBlock, untrusted: LightBlock, chain_id: str, now_ms: int, options: TrustOptions
) -> None:
    """Trust `untrusted` (any later height) because enough of `trusted`'s next set signed it."""
    _check_common(trusted, untrusted, chain_id, now_ms, options)
    if untrusted.height == trusted.height + 1:
        verify_adjacent(trusted, untrusted, chain_id, now_ms, options)
        return
    # Every count comes before any signature check, and the signatures of trusted
    # validators are checked first: a certificate by keys the trusted set does not
    # hold is refused at no signature check, a forged one at its first bad signature.
    _check_shape(untrusted, chain_id)
    _check_quorum(untrusted)
    trusted_set = trusted.next_validators
    power, _ = signers_in(untrusted.commit, untrusted.validators, trusted_set)
    need = trusted_set.total_power * options.trust_numerator
    if power * options.trust_denominator <= need:
        raise LightError(
            Check.TRUST_LEVEL,
            f"validators trusted at height {trusted.height} claim {power} of "
            f"{trusted_set.total_power}, need more than "
            f"{options.trust_numerator}/{options.trust_denominator}",
        )
    _verify_signatures(untrusted, chain_id, trusted_set)


def verify_to(
    trusted: LightBlock,
    target: int,
    fetch: Callable[[int], LightBlock],
    chain_id: str,
    now_ms: int,
    options: TrustOptions,
) -> list[LightBlock]:
    """Bisect from `trusted` to height `target`; the verified blocks in height order.

    Tries the target directly; when too little of the trusted set signed it,
    verifies the middle height first and goes on from there. `fetch(h)` gives
    the light block of height h (from an untrusted source: everything it
    returns is checked). Each failed check but TRUST_LEVEL ends the walk.
    """
    if target <= trusted.height:
        raise LightError(Check.HEIGHT, f"target {target} is not above {trusted.height}")
    trace: list[LightBlock] = []
    pending = [fetch(target)]
    while pending:
        candidate = pending[-1]
        try:
            verify_skipping(trusted, candidate, chain_id, now_ms, options)
        except LightError as e:
            if e.check is not Check.TRUST_LEVEL or candidate.height == trusted.height + 1:
                raise
            pending.append(fetch((trusted.height + candidate.height) // 2))
            continue
        pending.pop()
        trace.append(candidate)
        trusted = candidate
    return trace


def conflict(a: LightBlock, b: LightBlock, chain_id: str) -> Conflict | None:
    """Two light blocks of one height with different headers, both verified on their own."""
    if a.height != b.height or a.header.hash == b.header.hash:
        return None
    verify_light_block(a, chain_id)
    verify_light_block(b, chain_id)
    signed_a = {a.validators[s.validator_index].address for s in a.commit.signatures}
    signed_b = {b.validators[s.validator_index].address for s in b.commit.signatures}
    return Conflict(a.height, a, b, tuple(sorted(signed_a & signed_b)))


def attack_evidence(
    common: LightBlock, conflicting: LightBlock, chain_block: LightBlock
) -> LightClientAttackEvidence:
    """The evidence, for full nodes whose block at that height is `chain_block`, of `conflicting`.

    `common` is the last light block both chains share (a height at or below
    the conflict's, verified on the way to both). When `conflicting` names the
    validator set of `chain_block` it is an equivocation by that set: the
    common height is the conflict's and the accused are the validators in
    both certificates when they are of one round (none when the rounds differ:
    amnesia). Otherwise it is a lunatic attack from `common`: the accused are
    the validators of `common`'s set that signed `conflicting`. Full nodes
    derive the same list from their own chain, so `chain_block.commit` must be
    the canonical certificate (`/commit/{h}` once block h + 1 is committed).
    """
    h = conflicting.height
    assert chain_block.height == h and common.height <= h, "heights of one conflict"
    assert conflicting.header.hash != chain_block.header.hash, "the headers conflict"
    signed = conflicting.commit.signatures
    if conflicting.header.validators_hash == chain_block.header.validators_hash:
        common_height = h
        accused: set[bytes] = set()
        if conflicting.commit.round == chain_block.commit.round:
            ours = {s.validator_index for s in chain_block.commit.signatures}
            accused = {conflicting.validators[s.validator_index].address for s in signed}
            accused &= {chain_block.validators[i].address for i in ours}
    else:
        common_height = common.height
        accused = set(signers_in(conflicting.commit, conflicting.validators, common.validators)[1])
    return LightClientAttackEvidence(
        conflicting.header,
        conflicting.commit,
        conflicting.validators,
        common_height,
        tuple(sorted(accused)),
    )


# ---------------------------------------------------------------- the checks


def _check_common(
    trusted: LightBlock, untrusted: LightBlock, chain_id: str, now_ms: int, options: TrustOptions
) -> None:
    if trusted.header.time_ms + options.trusting_period_ms <= now_ms:
        raise LightError(
            Check.EXPIRED,
            f"height {trusted.height} is {now_ms - trusted.header.time_ms} ms old, "
            f"trusting period {options.trusting_period_ms} ms",
        )
    if untrusted.header.chain_id != chain_id:
        raise LightError(Check.CHAIN_ID, f"{untrusted.header.chain_id!r}, expected {chain_id!r}")
    if untrusted.height <= trusted.height:
        raise LightError(Check.HEIGHT, f"{untrusted.height} is not above {trusted.height}")
    if untrusted.header.time_ms <= trusted.header.time_ms:
        raise LightError(Check.TIME, f"height {untrusted.height} is not after the trusted header")
    if untrusted.header.time_ms > now_ms + options.clock_drift_ms:
        raise LightError(Check.TIME, f"height {untrusted.height} is from the future")


def _verify_signatures(block: LightBlock, chain_id: str, first: ValidatorSet | None) -> None:
    """Every signature of the certificate must verify; those of `first`'s members go first.

    Stops at the first bad one. Called once `_check_shape` has checked the indices.
    """
    commit = block.commit
    message = precommit_sign_bytes(chain_id, commit.height, commit.round, commit.block_hash)
    signed = [(block.validators[s.validator_index], s.signature) for s in commit.signatures]
    if first is not None:
        signed.sort(key=lambda pair: first.index_of(pair[0].address) is None)
    for v, signature in signed:
        if not verify(v.public_key, message, signature):
            raise LightError(
                Check.COMMIT_SIGNATURE, f"validator {v.address.hex()} at height {block.height}"
            )


def signers_in(
    commit: Commit, signed_set: ValidatorSet, other: ValidatorSet
) -> tuple[int, list[bytes]]:
    """The power in `other` of the validators of `signed_set` whose signatures `commit`
    carries, and their addresses in the certificate's order.

    Claimed only: no signature is checked here (the caller checks them against
    `signed_set`, whose indices it has checked the certificate's against); a
    validator is the same in both sets if its address is (an address is the
    hash of the public key). A skip's trusted power, and the accused of a
    lunatic attack (consensus/attack.py).
    """
    power = 0
    addresses: list[bytes] = []
    for s in commit.signatures:
        address = signed_set[s.validator_index].address
        index = other.index_of(address)
        if index is not None:
            power += other[index].power
            addresses.append(address)
    return power, addresses
