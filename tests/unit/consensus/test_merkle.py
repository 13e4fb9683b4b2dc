"""Merkle roots and proofs: RFC 6962 shape, every leaf provable, nothing else provable.

The hot paths compute roots their own faster ways (the validation core per
chunk, the results hash per run of equal results); each is pinned here to
merkle.root over the same items.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import merkle
from consensus.app import TX_OK, TxResult, _expanded_root, results_hash
from consensus.codec import encode
from consensus.validation import _join_peaks, _push_peak

# Leaf counts 0..300, with the sizes around powers of two drawn as often as the rest:
# where the tree's shape changes.
LEAF_COUNTS = st.one_of(
    st.integers(0, 300),
    st.sampled_from(sorted({2**k + d for k in range(9) for d in (-1, 0, 1)})),
)


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
@given(LEAF_COUNTS.flatmap(lambda n: st.lists(st.binary(max_size=16), min_size=n, max_size=n)))
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


# ---------------------------------------------------------------- the fast roots


@settings(max_examples=200, deadline=None)
@given(LEAF_COUNTS, st.data())
def test_chunked_data_root_is_merkle_root(n: int, data: st.DataObject) -> None:
    """The validation core's data root (subtree roots of chunks, each a power of two
    aligned on its size, then a shorter last chunk) equals merkle.root of the txs."""
    items = [i.to_bytes(2, "big") for i in range(n)]
    leaves = [merkle.leaf_hash(t) for t in items]
    peaks: list[tuple[int, bytes]] = []
    tail: bytes | None = None
    position = 0
    while position < n:
        alignment = position & -position or 1 << 9
        size = data.draw(st.sampled_from([1 << k for k in range(10) if 1 << k <= alignment]))
        chunk = leaves[position : position + size]
        if len(chunk) == size:
            _push_peak(peaks, size, merkle.root_from_leaf_hashes(chunk))
        else:
            tail = merkle.root_from_leaf_hashes(chunk)
        position += len(chunk)
    assert _join_peaks(peaks, tail) == merkle.root(items)


# A few result objects, so that draws make runs of one object and runs of equal leaves.
_BAD_NONCE = TxResult(2, "nonce")
_RESULT_POOL = [TX_OK, _BAD_NONCE, TxResult(1, "payload"), TxResult(0, "other log"), TX_OK]


@st.composite
def tx_results(draw: st.DrawFn) -> list[TxResult]:
    """0..300 results: long runs of shared objects, or mixed with fresh and distinct ones."""
    n = draw(LEAF_COUNTS)
    results: list[TxResult] = []
    while len(results) < n:
        kind = draw(st.sampled_from(["run", "fresh", "distinct"]))
        if kind == "run":
            results += [draw(st.sampled_from(_RESULT_POOL))] * draw(st.integers(1, 64))
        elif kind == "fresh":
            results.append(TxResult(2, "nonce"))  # equal to _BAD_NONCE, another object
        else:
            results.append(TxResult(1, data=len(results).to_bytes(2, "big")))
    return results[:n]


@settings(max_examples=300, deadline=None)
@given(tx_results())
def test_results_hash_is_merkle_root(results: list[TxResult]) -> None:
    """results_hash (by runs, or expanded when runs are short) and the expanded root each
    equal merkle.root over every result's canonical encoding."""
    expected = merkle.root([encode(r.to_obj()) for r in results])
    assert results_hash(results) == expected
    if results:
        assert _expanded_root(results) == expected


@pytest.mark.parametrize("n", [1_025, 4_097])
@pytest.mark.parametrize("failures", ["none", "few", "every_other", "distinct"])
def test_results_hash_of_large_blocks_is_merkle_root(n: int, failures: str) -> None:
    """The same beyond the sizes drawn above, for the four shapes a block's results take."""

    def pick(i: int) -> TxResult:
        if failures == "few":
            return _BAD_NONCE if i in (0, 5, n - 1) else TX_OK
        if failures == "every_other":
            return _BAD_NONCE if i % 2 else TX_OK
        if failures == "distinct":
            return TxResult(1, data=i.to_bytes(4, "big"))
        return TX_OK

    results = [pick(i) for i in range(n)]
    assert results_hash(results) == merkle.root([encode(r.to_obj()) for r in results])
