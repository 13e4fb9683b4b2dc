"""State proofs (section 11's state tree) in proof files: inclusion, absence, each tampering named.

The state tree and its proofs are built by tests/unit/proofcheck/smt.py from
the protocol text, and every header of a real signed chain carries its root
as app hash; the proof file then proves a key against header F's app hash.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from consensus import sm2
from consensus.crypto import ED25519_SHA256, SM2_SM3, Suite, using
from proofcheck.verify import ProofError, verify_proof
from tests.unit.proofcheck import smt
from tests.unit.proofcheck.chain import Chain, make_chain

STATE = {
    b"a" + bytes(range(20)): msgpack.packb([1000, 3]),
    b"m/admin": bytes(20),
    b"m/chain": msgpack.packb(["archipelago/app/v2", "proof-test", "ledger"]),
    **{b"k" + b"key %d" % i: b"value %d" % i for i in range(40)},
}
HOPS = [1, 4, 7, 10]


def chain_with_state(suite: Suite) -> Chain:
    with using(suite):
        return make_chain(suite, 12, app_hash=smt.root(suite, STATE))


CHAIN = chain_with_state(ED25519_SHA256)


def state_file(chain: Chain, key: bytes, value: bytes | None, proof: bytes | None = None) -> bytes:
    with using(chain.suite):
        proof = smt.prove(chain.suite, STATE, key) if proof is None else proof
        return chain.file("state", [chain.hop(h) for h in HOPS], [key, value, proof])


def check(data: bytes, chain: Chain = CHAIN) -> str:
    try:
        verify_proof(data, chain.genesis_text)
    except ProofError as e:
        return e.check
    return "holds"


def test_inclusion_and_absence_hold() -> None:
    key = b"k" + b"key 7"
    said = verify_proof(state_file(CHAIN, key, STATE[key]), CHAIN.genesis_text)
    assert said == f"proof holds: state key {key.hex()} holds {STATE[key].hex()} after block 9"
    for absent in (b"k" + b"no such key", b"a" + bytes(20), b"x"):
        assert "absent" in verify_proof(state_file(CHAIN, absent, None), CHAIN.genesis_text)


def tampered_proof(key: bytes, change: Any) -> bytes:
    proof = msgpack.unpackb(smt.prove(ED25519_SHA256, STATE, key))
    change(proof)
    packed: bytes = msgpack.packb(proof, use_bin_type=True)
    return packed


def test_each_tampering_is_named() -> None:
    key = b"k" + b"key 7"
    assert check(state_file(CHAIN, key, b"value 8")) == "state value"
    assert check(state_file(CHAIN, key, None)) == "absence"
    other = b"k" + b"key 8"
    assert check(state_file(CHAIN, other, STATE[other], smt.prove(ED25519_SHA256, STATE, key))) == (
        "state key"
    )

    def sibling(p: list[Any]) -> None:
        p[0][0] = bytes([p[0][0][0] ^ 1]) + p[0][0][1:]

    def drop(p: list[Any]) -> None:
        p[0] = p[0][1:]

    def spelled_empty(p: list[Any]) -> None:
        p[0] = [*p[0], bytes(32)]

    assert check(state_file(CHAIN, key, STATE[key], tampered_proof(key, sibling))) == (
        "state proof step"
    )
    assert check(state_file(CHAIN, key, STATE[key], tampered_proof(key, drop))) == (
        "state proof step"
    )
    assert check(state_file(CHAIN, key, STATE[key], tampered_proof(key, spelled_empty))) == (
        "state proof encoding"
    )
    assert check(state_file(CHAIN, key, STATE[key], b"\x92\x90")) == "state proof encoding"
    assert check(state_file(CHAIN, key, STATE[key], b"\x00" * 9001)) == "state proof encoding"
    # A proof against another state: the walk reaches another root.
    moved = dict(STATE) | {key: b"changed"}
    assert check(state_file(CHAIN, key, b"changed", smt.prove(ED25519_SHA256, moved, key))) == (
        "state proof step"
    )


@pytest.mark.skipif(sm2.unavailable_reason() is not None, reason="no SM2 in this libcrypto")
def test_an_sm2_sm3_state_proof() -> None:
    chain = chain_with_state(SM2_SM3)
    key = b"m/admin"
    assert "holds" in verify_proof(state_file(chain, key, STATE[key]), chain.genesis_text)
    assert check(state_file(chain, key, b"\x01" * 20), chain) == "state value"
