"""The light client's checks on a chain of real headers, certificates and signatures.

The chain is made here from headers whose validator sets change (each height's
set is a sliding window over a pool of keys, so after a few heights none of
the first set is left); every certificate is signed with real keys. Each kind
of tampering must be refused with the check that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from consensus.crypto import PrivateKey
from consensus.light import (
    Check,
    LightBlock,
    LightError,
    TrustOptions,
    conflict,
    verify_adjacent,
    verify_light_block,
    verify_skipping,
    verify_to,
)
from consensus.types import (
    Commit,
    CommitSig,
    Header,
    Validator,
    ValidatorSet,
)
from tests.signing import certificate

CHAIN = "light-test"
POOL = [PrivateKey(hashlib.sha256(b"light %d" % i).digest()) for i in range(40)]
SET_SIZE = 4
HOUR_MS = 3_600_000
OPTIONS = TrustOptions(trusting_period_ms=HOUR_MS)
BLOCK_MS = 1_000


def keys_at(height: int, shift_every: int) -> list[PrivateKey]:
    """The validators of `height`: a window of SET_SIZE keys moving one key every few heights."""
    start = (height - 1) // shift_every
    return [POOL[(start + i) % len(POOL)] for i in range(SET_SIZE)]


def vset(keys: list[PrivateKey]) -> ValidatorSet:
    return ValidatorSet.of(Validator(k.public_key, 10) for k in keys)


def sign(
    header: Header, keys: list[PrivateKey], validators: ValidatorSet, round_: int = 0
) -> Commit:
    return certificate(CHAIN, header, keys, validators, round_)


def make_chain(heights: int, shift_every: int = 3, app_tag: bytes = b"") -> list[LightBlock]:
    """Light blocks 1..heights (index h - 1), each certified by all of its set."""
    blocks: list[LightBlock] = []
    previous = b""
    for h in range(1, heights + 1):
        keys = keys_at(h, shift_every)
        validators, next_validators = vset(keys), vset(keys_at(h + 1, shift_every))
        header = Header(
            chain_id=CHAIN,
            height=h,
            time_ms=h * BLOCK_MS,
            last_block_hash=previous,
            last_commit_hash=b"" if h == 1 else hashlib.sha256(b"c%d" % h).digest(),
            data_hash=hashlib.sha256(app_tag).digest(),
            validators_hash=validators.hash,
            next_validators_hash=next_validators.hash,
            app_hash=hashlib.sha256(b"app %d" % h + app_tag).digest(),
            last_results_hash=hashlib.sha256(b"").digest(),
            evidence_hash=hashlib.sha256(b"").digest(),
            proposer_address=validators[0].address,
        )
        blocks.append(
            LightBlock(header, sign(header, keys, validators), validators, next_validators)
        )
        previous = header.hash
    return blocks


CHAIN_BLOCKS = make_chain(60)
NOW = 61 * BLOCK_MS


def at(height: int) -> LightBlock:
    return CHAIN_BLOCKS[height - 1]


def refused(check: Check, call: object, *args: object) -> LightError:
    with pytest.raises(LightError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.check is check, info.value
    return info.value


def test_every_header_follows_sequentially_through_changing_sets() -> None:
    """Header h + 1 is trusted from h for every height, while the set turns over fully."""
    assert not set(keys_at(1, 3)) & set(keys_at(60, 3))
    for h in range(1, 60):
        verify_adjacent(at(h), at(h + 1), CHAIN, NOW, OPTIONS)


def test_a_skip_with_a_third_of_the_trusted_power_is_trusted() -> None:
    """Skipping from 1 to 7: the sets share 2 of 4 validators (half the power): trusted."""
    shared = set(keys_at(2, 3)) & set(keys_at(7, 3))
    assert len(shared) == 2
    verify_skipping(at(1), at(7), CHAIN, NOW, OPTIONS)


def test_a_skip_with_less_than_a_third_is_refused_and_bisection_gets_there() -> None:
    """From 1 to 60 no trusted validator is left: TRUST_LEVEL; verify_to bisects through
    intermediate heights, each step a verified skip or adjacent header, ending at 60."""
    refused(Check.TRUST_LEVEL, verify_skipping, at(1), at(60), CHAIN, NOW, OPTIONS)
    fetched: list[int] = []

    def fetch(h: int) -> LightBlock:
        fetched.append(h)
        return at(h)

    trace = verify_to(at(1), 60, fetch, CHAIN, NOW, OPTIONS)
    assert trace[-1].height == 60
    heights = [b.height for b in trace]
    assert heights == sorted(set(heights))
    assert len(fetched) < 59, "bisection fetched nearly every header"


def test_exactly_a_third_is_not_more_than_a_third() -> None:
    """A certificate in which trusted validators hold exactly 1/3 of the trusted power."""
    trusted = at(1)
    target = at(10)
    # The trusted next set has 6 validators of power 10; height 10 is signed by a set in
    # which 2 of them take part: 20 of 60, exactly 1/3.
    six = [*keys_at(2, 3)[:2], *POOL[30:34]]
    tset = vset([*keys_at(2, 3), *POOL[34:36]])  # 6 validators of power 10
    trusted = dataclasses.replace(
        trusted,
        next_validators=tset,
        header=dataclasses.replace(trusted.header, next_validators_hash=tset.hash),
    )
    new_set = vset(six)
    header = dataclasses.replace(target.header, validators_hash=new_set.hash)
    block = LightBlock(header, sign(header, six, new_set), new_set, target.next_validators)
    refused(Check.TRUST_LEVEL, verify_skipping, trusted, block, CHAIN, NOW, OPTIONS)


def test_a_tampered_signature_names_the_certificate_signature() -> None:
    block = at(5)
    sigs = list(block.commit.signatures)
    bad = bytearray(sigs[1].signature)
    bad[0] ^= 1
    sigs[1] = dataclasses.replace(sigs[1], signature=bytes(bad))
    forged = dataclasses.replace(
        block, commit=dataclasses.replace(block.commit, signatures=tuple(sigs))
    )
    refused(Check.COMMIT_SIGNATURE, verify_adjacent, at(4), forged, CHAIN, NOW, OPTIONS)


def test_a_tampered_header_no_longer_matches_its_certificate() -> None:
    """Another app hash under height 5's certificate; a re-signed header that links elsewhere."""
    block = at(5)
    header = dataclasses.replace(block.header, app_hash=hashlib.sha256(b"another state").digest())
    tampered = dataclasses.replace(block, header=header)
    refused(Check.COMMIT_BLOCK, verify_light_block, tampered, CHAIN)
    header = dataclasses.replace(block.header, last_block_hash=hashlib.sha256(b"x").digest())
    relinked = dataclasses.replace(
        block, header=header, commit=sign(header, keys_at(5, 3), block.validators)
    )
    refused(Check.LAST_BLOCK_HASH, verify_adjacent, at(4), relinked, CHAIN, NOW, OPTIONS)


def test_a_wrong_validator_set_is_refused() -> None:
    """A set that is not the header's, and a header whose set is not the one trusted."""
    block = at(5)
    wrong = vset(POOL[20:24])
    refused(
        Check.VALIDATORS_HASH,
        verify_light_block,
        dataclasses.replace(block, validators=wrong),
        CHAIN,
    )
    # A fork certified by another set: its header names that set, which height 4 did not.
    header = dataclasses.replace(block.header, validators_hash=wrong.hash)
    fork = LightBlock(header, sign(header, POOL[20:24], wrong), wrong, block.next_validators)
    refused(Check.VALIDATORS_HASH, verify_adjacent, at(4), fork, CHAIN, NOW, OPTIONS)
    refused(Check.TRUST_LEVEL, verify_skipping, at(2), fork, CHAIN, NOW, OPTIONS)


def test_a_header_from_another_chain_is_refused() -> None:
    other = dataclasses.replace(at(5), header=dataclasses.replace(at(5).header, chain_id="other"))
    refused(Check.CHAIN_ID, verify_adjacent, at(4), other, CHAIN, NOW, OPTIONS)


def test_trust_expires_after_the_trusting_period() -> None:
    late = at(1).header.time_ms + HOUR_MS
    refused(Check.EXPIRED, verify_skipping, at(1), at(7), CHAIN, late, OPTIONS)
    verify_skipping(at(1), at(7), CHAIN, late - 1, OPTIONS)


def test_a_certificate_without_a_quorum_is_refused() -> None:
    block = at(5)
    keys = keys_at(5, 3)
    weak = sign(block.header, keys[:2], block.validators)  # 20 of 40: not more than 2/3
    refused(Check.QUORUM, verify_light_block, dataclasses.replace(block, commit=weak), CHAIN)


def test_two_verified_headers_of_one_height_are_a_conflict_naming_the_double_signers() -> None:
    """A fork signed by the same validators (another app hash at height 5) verifies on its
    own; `conflict` names every validator that signed both."""
    fork = make_chain(5, app_tag=b"fork")[4]
    assert fork.header.hash != at(5).header.hash
    found = conflict(at(5), fork, CHAIN)
    assert found is not None and found.height == 5
    assert set(found.double_signers) == {k.address for k in keys_at(5, 3)}
    assert conflict(at(5), at(5), CHAIN) is None


def test_a_forged_set_costs_at_most_one_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header signed by 50 keys of the attacker's own: refused before any signature is
    checked; with the trusted validators listed under junk signatures, at the first one."""
    import consensus.light as light

    checked: list[bytes] = []
    real_verify = light.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        checked.append(public_key)
        return real_verify(public_key, message, signature)

    monkeypatch.setattr(light, "verify", counting)
    target = at(10)
    own = [PrivateKey(hashlib.sha256(b"attacker %d" % i).digest()) for i in range(50)]
    forged_set = vset(own)
    header = dataclasses.replace(target.header, validators_hash=forged_set.hash)
    forged = LightBlock(header, sign(header, own, forged_set), forged_set, target.next_validators)
    refused(Check.TRUST_LEVEL, verify_skipping, at(1), forged, CHAIN, NOW, OPTIONS)
    assert checked == []
    # The trusted set's keys named in the forged set, their signatures junk: one check.
    trusted_keys = keys_at(2, 3)
    mixed_set = vset([*own, *trusted_keys])
    header = dataclasses.replace(target.header, validators_hash=mixed_set.hash)
    commit = sign(header, own, mixed_set)
    junk = [
        CommitSig(i, bytes(64))
        for i, v in enumerate(mixed_set)
        if v.address in {k.address for k in trusted_keys}
    ]
    sigs = tuple(sorted([*commit.signatures, *junk], key=lambda s: s.validator_index))
    commit = dataclasses.replace(commit, signatures=sigs)
    mixed = LightBlock(header, commit, mixed_set, target.next_validators)
    refused(Check.COMMIT_SIGNATURE, verify_skipping, at(1), mixed, CHAIN, NOW, OPTIONS)
    assert len(checked) == 1
    assert checked[0] in {k.public_key for k in trusted_keys}
