"""The state tree: roots as docs/PROTOCOL.md section 11 defines them, proofs and their checks.

A reference root is written here from the section's text (recursively, over
sorted paths, with hashlib), and the module's batched, structure-sharing
updates are pinned to it. Each kind of tampering with a proof is rejected
with the check the section names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import encode
from consensus.crypto import SM2_SM3, using
from consensus.statetree import (
    EMPTY,
    STATE_PROOF_BYTES_MAX,
    STATE_VERSIONS_KEPT,
    StateProof,
    StateProofError,
    StateTree,
    StateVersions,
    decode_state_proof,
    verify_state_proof,
)


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _bits(path: bytes) -> str:
    return "".join(f"{b:08b}" for b in path)


def _reference_root(state: dict[bytes, bytes], h: Callable[[bytes], bytes] = _sha) -> bytes:
    """Section 11 as written: E, a lone key's leaf, or the inner hash of the two halves."""

    def subtree(leaves: list[tuple[str, bytes, bytes]], depth: int) -> bytes:
        if not leaves:
            return bytes(32)
        if len(leaves) == 1:
            _, path, value = leaves[0]
            return h(b"\x10" + path + h(value))
        left = [leaf for leaf in leaves if leaf[0][depth] == "0"]
        right = [leaf for leaf in leaves if leaf[0][depth] == "1"]
        return h(b"\x11" + subtree(left, depth + 1) + subtree(right, depth + 1))

    leaves = [(_bits(h(k)), h(k), v) for k, v in state.items()]
    return subtree(leaves, 0)


KEYS = st.binary(min_size=1, max_size=3)
STATES = st.dictionaries(KEYS, st.binary(max_size=4), max_size=40)
# Batches of writes over a small key space, so keys are overwritten and deleted.
BATCHES = st.lists(
    st.dictionaries(
        st.sampled_from([bytes([i]) for i in range(48)]), st.none() | st.binary(max_size=3)
    ),
    max_size=6,
)


def test_empty_tree_and_one_key() -> None:
    assert StateTree.from_items([]).root == EMPTY
    tree = StateTree.from_items([(b"k", b"v")])
    assert tree.root == _sha(b"\x10" + _sha(b"k") + _sha(b"v"))
    value, proof = tree.prove(b"k")
    assert value == b"v" and proof.siblings == ()
    verify_state_proof(tree.root, b"k", b"v", proof)


@settings(max_examples=200, deadline=None)
@given(STATES)
def test_root_is_the_sections_root(state: dict[bytes, bytes]) -> None:
    assert StateTree.from_items(state.items()).root == _reference_root(state)


@settings(max_examples=200, deadline=None)
@given(STATES, BATCHES)
def test_batched_updates_equal_a_tree_built_from_scratch(
    start: dict[bytes, bytes], batches: list[dict[bytes, bytes | None]]
) -> None:
    tree = StateTree.from_items(start.items())
    state = dict(start)
    versions = [(tree, dict(state))]
    for batch in batches:
        tree = tree.updated(sorted(batch.items()))
        for k, v in batch.items():
            if v is None:
                state.pop(k, None)
            else:
                state[k] = v
        versions.append((tree, dict(state)))
        assert tree.root == StateTree.from_items(state.items()).root == _reference_root(state)
    # Every earlier version is intact (the updates share structure, never mutate).
    for old, old_state in versions:
        assert old.root == _reference_root(old_state)


@settings(max_examples=100, deadline=None)
@given(STATES, st.lists(KEYS, max_size=10))
def test_every_key_proves_its_value_or_its_absence(
    state: dict[bytes, bytes], probes: list[bytes]
) -> None:
    tree = StateTree.from_items(state.items())
    for key in list(state) + probes:
        value, proof = tree.prove(key)
        assert value == state.get(key)
        decoded = decode_state_proof(proof.encode())
        assert decoded == proof
        verify_state_proof(tree.root, key, value, decoded)
        if value is not None:
            with pytest.raises(StateProofError) as e:
                verify_state_proof(tree.root, key, value + b"x", decoded)
            assert e.value.check == "state value"
            with pytest.raises(StateProofError) as e:
                verify_state_proof(tree.root, key, None, decoded)
            assert e.value.check == "absence"


def _tree(n: int = 200) -> StateTree:
    return StateTree.from_items((b"a%d" % i, b"%d" % (i * 7)) for i in range(n))


def _check(tree: StateTree, key: bytes, value: bytes | None, proof: StateProof) -> str:
    with pytest.raises(StateProofError) as e:
        verify_state_proof(tree.root, key, value, proof)
    return e.value.check


def test_tampering_is_rejected_naming_the_check() -> None:
    tree = _tree()
    value, proof = tree.prove(b"a5")
    assert value == b"35"
    verify_state_proof(tree.root, b"a5", value, proof)
    assert _check(tree, b"a5", b"36", proof) == "state value"
    assert _check(tree, b"a6", value, proof) == "state key"  # a proof for another key
    assert _check(tree, b"a5", None, proof) == "absence"  # the key is present
    for i in range(len(proof.siblings)):
        step = bytearray(proof.siblings[i])
        step[0] ^= 1
        bad = StateProof((*proof.siblings[:i], bytes(step), *proof.siblings[i + 1 :]), proof.leaf)
        assert _check(tree, b"a5", value, bad) == "state proof step"
    shorter = StateProof(proof.siblings[1:], proof.leaf)
    assert _check(tree, b"a5", value, shorter) == "state proof step"
    other_root = _tree(201).root
    with pytest.raises(StateProofError, match="state proof step"):
        verify_state_proof(other_root, b"a5", value, proof)


def test_absence_proofs_and_their_tampering() -> None:
    tree = _tree()
    missing = [b"b%d" % i for i in range(100)]
    by_leaf = [k for k in missing if tree.prove(k)[1].leaf is not None]
    assert by_leaf, "some absent key's path ends at another key's leaf"
    for key in missing:
        value, proof = tree.prove(key)
        assert value is None
        verify_state_proof(tree.root, key, None, proof)
        # Claiming a value for an absent key: the proof ends at another key or none.
        assert _check(tree, key, b"35", proof) == "state key"
    key = by_leaf[0]
    _, proof = tree.prove(key)
    assert proof.leaf is not None
    # A leaf that is not on the absent key's path (its first bit flipped).
    path, value_hash = proof.leaf
    off_path = StateProof(proof.siblings, (bytes([path[0] ^ 0x80]) + path[1:], value_hash))
    assert proof.siblings and _check(tree, key, None, off_path) == "absence"
    # Dropping the leaf (claiming an empty slot where a key is).
    assert _check(tree, key, None, StateProof(proof.siblings, None)) == "state proof step"


def test_proof_encoding_is_canonical_and_bounded() -> None:
    tree = _tree()
    _, proof = tree.prove(b"a1")
    data = proof.encode()
    assert decode_state_proof(data) == proof

    def refused(raw: bytes) -> str:
        with pytest.raises(StateProofError) as e:
            decode_state_proof(raw)
        return e.value.check

    assert refused(data + b"\x00") == "proof encoding"
    assert refused(data[:-1]) == "proof encoding"
    assert refused(b"\x00" * (STATE_PROOF_BYTES_MAX + 1)) == "proof encoding"
    assert refused(encode([[EMPTY], None])) == "proof encoding"  # E written out
    assert refused(encode([[b"\x01" * 32, b""], None])) == "proof encoding"  # ends empty
    assert refused(encode([[b"\x01" * 31], None])) == "proof encoding"
    assert refused(encode([[b"\x01" * 32] * 257, None])) == "proof encoding"
    assert refused(encode([[], [b"\x01" * 32]])) == "proof encoding"
    assert refused(encode([[], [b"\x01" * 32, b"\x02" * 31]])) == "proof encoding"
    assert refused(encode([[], None, None])) == "proof encoding"
    assert refused(b"\xc1") == "proof encoding"
    deep = b"\x91" * 5000  # nested arrays: refused at the first header, nothing built
    assert refused(deep) == "proof encoding"
    # The largest canonical proof fits the limit.
    assert (
        len(encode([[b"\x01" * 32] * 256, [b"\x02" * 32, b"\x03" * 32]])) <= STATE_PROOF_BYTES_MAX
    )


def test_sm3_chains_have_sm3_trees() -> None:
    state = {b"a%d" % i: b"v" for i in range(30)}
    sha_root = StateTree.from_items(state.items()).root
    with using(SM2_SM3):
        tree = StateTree.from_items(state.items())

        def sm3(data: bytes) -> bytes:
            return hashlib.new("sm3", data).digest()

        assert tree.root == _reference_root(state, sm3) != sha_root
        value, proof = tree.prove(b"a3")
        verify_state_proof(tree.root, b"a3", value, decode_state_proof(proof.encode()))


def test_versions_keep_the_latest_two() -> None:
    versions = StateVersions(StateTree.from_items([(b"x", b"0")]), 0)
    roots = [versions.current.root]
    for height in range(1, 5):
        pending = versions.pending([(b"x", b"%d" % height)])
        tree = versions.commit(pending, height)
        roots.append(tree.root)
        assert versions.current is tree
    assert STATE_VERSIONS_KEPT == 2
    assert versions.at(2) is None and versions.at(5) is None
    third, fourth = versions.at(3), versions.at(4)
    assert third is not None and fourth is not None
    assert third.root == roots[3] and fourth.root == roots[4]
    assert third.get(b"x") == b"3" and fourth.get(b"x") == b"4"
