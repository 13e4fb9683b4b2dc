"""Canonical encodings: every type round-trips, and hostile bytes raise only DecodeError."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import codec
from consensus.crypto import PrivateKey, address_of
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    DecodeError,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    Transaction,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
    precommit_sign_bytes,
)

KEYS = [PrivateKey(bytes([i]) * 32) for i in range(1, 5)]
CHAIN = "test-chain"

hashes = st.binary(min_size=32, max_size=32)
sigs = st.binary(min_size=64, max_size=64)
addresses = st.binary(min_size=20, max_size=20)
heights = st.integers(1, 2**40)
rounds = st.integers(0, 1000)

transactions = st.builds(
    Transaction,
    sender=st.binary(min_size=32, max_size=32),
    nonce=st.integers(0, 2**64 - 1),
    payload=st.binary(max_size=300),
    signature=sigs,
)
votes = st.builds(
    Vote,
    type=st.sampled_from(VoteType),
    height=heights,
    round=rounds,
    block_hash=st.one_of(st.just(b""), hashes),
    validator_address=addresses,
    validator_index=st.integers(0, 999),
    signature=sigs,
)


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    round_ = draw(rounds)
    pol = draw(st.integers(-1, round_ - 1))
    return Proposal(draw(heights), round_, pol, draw(hashes), draw(sigs))


@st.composite
def commits(draw: st.DrawFn, height: Any = heights) -> Commit:
    indexes = sorted(draw(st.sets(st.integers(0, 999), min_size=1, max_size=8)))
    return Commit(
        draw(height),
        draw(rounds),
        draw(hashes),
        tuple(CommitSig(i, draw(sigs)) for i in indexes),
    )


@st.composite
def evidences(draw: st.DrawFn) -> DuplicateVoteEvidence:
    v = draw(votes)
    other = draw(hashes)
    a, b = sorted([v.block_hash, other])
    if a == b:
        a = b""
    return DuplicateVoteEvidence(
        Vote(v.type, v.height, v.round, a, v.validator_address, v.validator_index, v.signature),
        Vote(v.type, v.height, v.round, b, v.validator_address, v.validator_index, v.signature),
    )


@st.composite
def headers(draw: st.DrawFn) -> Header:
    height = draw(heights)
    link = st.just(b"") if height == 1 else hashes
    return Header(
        chain_id=draw(st.text(min_size=1, max_size=20)),
        height=height,
        time_ms=draw(st.integers(0, 2**50)),
        last_block_hash=draw(link),
        last_commit_hash=draw(link),
        data_hash=draw(hashes),
        validators_hash=draw(hashes),
        next_validators_hash=draw(hashes),
        app_hash=draw(st.binary(max_size=64)),
        last_results_hash=draw(hashes),
        evidence_hash=draw(hashes),
        proposer_address=draw(addresses),
    )


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    header = draw(headers())
    commit = None if header.height == 1 else draw(commits())
    txs = tuple(t.encode() for t in draw(st.lists(transactions, max_size=5)))
    return Block(header, txs, commit, tuple(draw(st.lists(evidences(), max_size=2))))


validator_sets = st.lists(
    st.builds(Validator, st.binary(min_size=32, max_size=32), st.integers(1, 10**9)),
    min_size=1,
    max_size=10,
    unique_by=lambda v: address_of(v.public_key),
).map(ValidatorSet.of)

CASES = [
    (Transaction, transactions),
    (Vote, votes),
    (Proposal, proposals()),
    (Commit, commits()),
    (DuplicateVoteEvidence, evidences()),
    (Header, headers()),
    (Block, blocks()),
    (ValidatorSet, validator_sets),
]


@pytest.mark.parametrize(("cls", "strategy"), CASES, ids=[c[0].__name__ for c in CASES])
def test_round_trip(cls: Any, strategy: Any) -> None:
    """decode(encode(x)) == x for every canonical type, and re-encoding is byte-identical."""

    @settings(max_examples=60, deadline=None)
    @given(strategy)
    def check(x: Any) -> None:
        data = x.encode()
        y = cls.decode(data)
        assert y == x
        assert y.encode() == data

    check()


@pytest.mark.parametrize(("cls", "strategy"), CASES, ids=[c[0].__name__ for c in CASES])
def test_mutated_bytes_raise_only_decode_error(cls: Any, strategy: Any) -> None:
    """Flipped, truncated or extended encodings give the typed error or a canonical value."""

    @settings(max_examples=60, deadline=None)
    @given(strategy, st.data())
    def check(x: Any, data: st.DataObject) -> None:
        raw = bytearray(x.encode())
        op = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        if op == "flip":
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
        try:
            y = cls.decode(bytes(raw))
        except DecodeError:
            return
        assert y.encode() == bytes(raw)  # whatever decodes is canonical

    check()


@pytest.mark.parametrize("cls", [c[0] for c in CASES], ids=[c[0].__name__ for c in CASES])
@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(cls: Any, raw: bytes) -> None:
    """Arbitrary bytes never raise anything but DecodeError."""
    try:
        cls.decode(raw)
    except DecodeError:
        pass


def test_non_canonical_integer_is_rejected() -> None:
    """The same vote with a height in a wider integer encoding is refused."""
    vote = Vote(VoteType.PREVOTE, 5, 0, b"", b"\x01" * 20, 0, b"\x02" * 64)
    data = vote.encode()
    wide = data.replace(b"\x05", b"\xcd\x00\x05", 1)  # uint16 instead of fixint
    assert wide != data
    with pytest.raises(DecodeError, match="non-canonical"):
        Vote.decode(wide)


def test_oversized_input_is_rejected_before_parsing() -> None:
    """A transaction longer than the hard limit is refused by its length alone."""
    with pytest.raises(DecodeError, match="limit"):
        Transaction.decode(b"\x94" + b"\x00" * 100_000)


def test_vote_signature_is_bound_to_chain_id() -> None:
    """A vote signed on one chain does not verify on another."""
    from consensus.crypto import verify

    k = KEYS[0]
    vote = Vote.create(k, CHAIN, VoteType.PRECOMMIT, 3, 1, b"\x07" * 32, 0)
    assert verify(k.public_key, vote.sign_bytes(CHAIN), vote.signature)
    assert not verify(k.public_key, vote.sign_bytes("other-chain"), vote.signature)


def test_sign_bytes_are_as_documented() -> None:
    """The precommit sign bytes are the msgpack array PROTOCOL.md describes, byte for byte."""
    expected = codec.encode(["archipelago/vote/v1", CHAIN, 2, 7, 1, b"\xaa" * 32])
    assert precommit_sign_bytes(CHAIN, 7, 1, b"\xaa" * 32) == expected
    assert expected[:1] == b"\x96"  # fixarray of 6


def _commit_for(vs: ValidatorSet, keys: list[PrivateKey], block_hash: bytes) -> Commit:
    sigs = []
    for k in keys:
        index = vs.index_of(k.address)
        assert index is not None
        sigs.append(CommitSig(index, k.sign(precommit_sign_bytes(CHAIN, 9, 0, block_hash))))
    return Commit(9, 0, block_hash, tuple(sorted(sigs, key=lambda s: s.validator_index)))


def test_commit_verification_needs_two_thirds_of_power() -> None:
    """3 of 4 equal validators certify a block; 2 of 4 do not; a forged signature fails."""
    vs = ValidatorSet.of(Validator(k.public_key, 10) for k in KEYS)
    bh = b"\x01" * 32
    assert _commit_for(vs, KEYS[:3], bh).verify(CHAIN, vs) is None
    reason = _commit_for(vs, KEYS[:2], bh).verify(CHAIN, vs)
    assert reason is not None and "voting power" in reason
    good = _commit_for(vs, KEYS[:3], bh)
    forged = Commit(
        good.height, good.round, b"\x02" * 32, good.signatures
    )  # signatures over another block
    assert forged.verify(CHAIN, vs) == "invalid signature by validator index 0"


def test_commit_by_power_not_count() -> None:
    """One validator holding 70% of the power certifies alone; three small ones cannot."""
    powers = [70, 10, 10, 10]
    vs = ValidatorSet.of(Validator(k.public_key, p) for k, p in zip(KEYS, powers, strict=True))
    bh = b"\x03" * 32
    assert _commit_for(vs, KEYS[:1], bh).verify(CHAIN, vs) is None
    assert _commit_for(vs, KEYS[1:], bh).verify(CHAIN, vs) is not None


def test_evidence_verification() -> None:
    """Two conflicting precommits by one validator verify as evidence; a forged one does not."""
    vs = ValidatorSet.of(Validator(k.public_key, 10) for k in KEYS)
    k = KEYS[1]
    index = vs.index_of(k.address)
    assert index is not None
    a = Vote.create(k, CHAIN, VoteType.PRECOMMIT, 4, 0, b"\x01" * 32, index)
    b = Vote.create(k, CHAIN, VoteType.PRECOMMIT, 4, 0, b"\x02" * 32, index)
    ev = DuplicateVoteEvidence(a, b)
    assert ev.verify(CHAIN, vs) is None
    assert DuplicateVoteEvidence.decode(ev.encode()) == ev
    with pytest.raises(DecodeError):
        DuplicateVoteEvidence.decode(DuplicateVoteEvidence(b, a).encode())
    forged = DuplicateVoteEvidence(a, dataclasses.replace(b, signature=b"\x00" * 64))
    assert forged.verify(CHAIN, vs) == "invalid vote signature"


def test_validator_set_rejects_duplicates_and_order() -> None:
    """A set with a repeated or unsorted validator does not decode."""
    v1, v2 = (Validator(k.public_key, 1) for k in KEYS[:2])
    ordered = ValidatorSet.of([v1, v2])
    with pytest.raises(DecodeError):
        ValidatorSet((v1, v1))
    with pytest.raises(DecodeError):
        ValidatorSet(tuple(reversed(ordered.validators)))
