"""Merkle roots and proofs: RFC 6962 shape, every leaf provable, nothing else provable."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import merkle


def _reference_root(items: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written recursively as the RFC states it."""
    if not items:
        return hashlib.sha256(b"").digest()
    if len(items) == 1:
        return hashlib.sha256(b"\x00" + items[0]).digest()
    k = 1
    while k * 2 < len(items):
        k *= 2
    left, right = _reference_root(items[:k]), _reference_root(items[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=16), max_size=40))
def test_root_matches_rfc6962(items: list[bytes]) -> None:
    """The iterative root equals the RFC's recursive definition."""
    assert merkle.root(items) == _reference_root(items)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=33, unique=True), st.data())
def test_every_leaf_has_a_proof_and_proofs_do_not_transfer(
    items: list[bytes], data: st.DataObject
) -> None:
    """A proof verifies its own leaf against the root and fails for any other leaf or index."""
    r = merkle.root(items)
    i = data.draw(st.integers(0, len(items) - 1))
    proof = merkle.prove(items, i)
    assert proof.verify(items[i], r)
    for j, other in enumerate(items):
        if j != i:
            assert not proof.verify(other, r)
    if len(items) > 1:
        moved = merkle.Proof((i + 1) % len(items), proof.total, proof.aunts)
        assert not moved.verify(items[i], r) or items[i] == items[(i + 1) % len(items)]


def test_malformed_proofs_fail_closed() -> None:
    """Out-of-range index, wrong aunt count and short aunts give no root."""
    items = [b"a", b"b", b"c"]
    proof = merkle.prove(items, 1)
    assert merkle.Proof(5, 3, proof.aunts).compute_root(b"b") is None
    assert merkle.Proof(1, 3, proof.aunts[:1]).compute_root(b"b") is None
    assert merkle.Proof(1, 3, (b"x",) * len(proof.aunts)).compute_root(b"b") is None
