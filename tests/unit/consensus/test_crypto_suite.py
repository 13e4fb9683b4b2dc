"""The crypto suites behind one interface, and the genesis that chooses one per chain."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from apps.ledger import Ledger, transfer_tx
from consensus import crypto, light, merkle
from consensus.crypto import (
    DEFAULT_SUITE,
    ED25519_SHA256,
    SM2_SM3,
    SUITES,
    PrivateKey,
    Suite,
    using,
)
from consensus.genesis import Genesis, GenesisError, GenesisValidator
from consensus.sigverify import SignatureVerifier
from consensus.types import Transaction, tx_id
from consensus.validation import BlockInvalid, ChainState, Reason, build_block, validate_block
from tests.unit.consensus import test_light as light_tests  # its chain builder, at import

ALL = pytest.mark.parametrize("suite", list(SUITES.values()), ids=list(SUITES))


@ALL
def test_a_key_signs_what_its_suite_verifies_and_nothing_else(suite: Suite) -> None:
    """Round trip; a changed message, signature or key, or a wrong length, fails; never raises."""
    key = PrivateKey(b"\x07" * 32, suite)
    sig = key.sign(b"message")
    assert len(key.public_key) == suite.public_key_bytes and len(sig) == 64
    assert suite.verify(key.public_key, b"message", sig)
    assert not suite.verify(key.public_key, b"messagf", sig)
    assert not suite.verify(key.public_key, b"message", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not suite.verify(PrivateKey(b"\x08" * 32, suite).public_key, b"message", sig)
    assert not suite.verify(key.public_key[:-1], b"message", sig)
    assert not suite.verify(key.public_key, b"message", sig + b"\x00")
    assert not suite.verify(bytes(suite.public_key_bytes), b"message", sig)
    assert not suite.verify(key.public_key, b"message", bytes(64))
    assert PrivateKey.generate(suite).suite is suite


@ALL
def test_the_batch_call_agrees_with_verify_item_by_item(suite: Suite) -> None:
    """verify_items gives 1 exactly where verify accepts, wrong sizes included."""
    keys = [PrivateKey(bytes([i + 1]) * 32, suite) for i in range(4)]
    items = [(i, k.public_key, b"m%d" % i, k.sign(b"m%d" % i)) for i, k in enumerate(keys)]
    pk, msg, sig = items[0][1:]
    items += [
        (10, pk, msg + b"!", sig),
        (11, pk[:-1], msg, sig),
        (12, pk, msg, sig[:63]),
        (13, keys[1].public_key, msg, sig),
    ]
    expected = [suite.verify(pk, m, s) for _, pk, m, s in items]
    assert expected == [True] * 4 + [False] * 4
    assert [bool(ok) for ok in suite.verify_items(items)] == expected
    with SignatureVerifier(threads=1, suite=suite) as v:
        assert v.verify_many([it[1:] for it in items]) == expected


def test_each_suite_hashes_with_its_own_function() -> None:
    """SHA-256 and SM3 (GB/T 32905's example 1, "abc"); addresses are their first 20 bytes."""
    assert ED25519_SHA256.hash(b"abc") == hashlib.sha256(b"abc").digest()
    assert SM2_SM3.hash(b"abc").hex() == (
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    )
    for suite in SUITES.values():
        key = PrivateKey(b"\x03" * 32, suite)
        assert key.address == suite.hash(key.public_key)[:20]


def test_the_active_suite_decides_hashes_and_using_restores_it() -> None:
    """digest, tx ids and Merkle roots follow the active suite; `using` puts the old one back."""
    assert crypto.active() is DEFAULT_SUITE
    with using(SM2_SM3):
        assert crypto.digest(b"x") == SM2_SM3.hash(b"x")
        assert tx_id(b"x") == SM2_SM3.hash(b"x")
        assert merkle.root([]) == SM2_SM3.hash(b"")
        assert merkle.root([b"a"]) == SM2_SM3.hash(b"\x00a")
    assert crypto.active() is DEFAULT_SUITE
    assert merkle.root([b"a"]) == hashlib.sha256(b"\x00a").digest()


def test_an_sm2_public_key_must_be_a_compressed_point() -> None:
    """33 bytes starting 02 or 03: anything else is refused as a key, without raising."""
    key = PrivateKey(b"\x05" * 32, SM2_SM3)
    assert key.public_key[0] in (2, 3)
    assert SM2_SM3.public_key_well_formed(key.public_key)
    assert not SM2_SM3.public_key_well_formed(b"\x04" + key.public_key[1:])
    assert not SM2_SM3.verify(b"\x04" + key.public_key[1:], b"m", key.sign(b"m"))
    with pytest.raises(ValueError):
        PrivateKey(b"\xff" * 32, SM2_SM3)  # above the group order


# ---------------------------------------------------------------- genesis


def _genesis(suite: Suite, key_suite: Suite | None = None) -> Genesis:
    key = PrivateKey(b"\x07" * 32, key_suite or suite)
    return Genesis(
        "g", 0, (GenesisValidator("v", key.public_key, 1),), "ledger", {}, crypto=suite.name
    )


def test_a_genesis_without_crypto_keeps_its_text_and_hash() -> None:
    """Absent or the default: no "crypto" key written, and the hash is SHA-256 of the same text
    as before suites existed, so existing chains keep their genesis hash."""
    genesis = _genesis(ED25519_SHA256)
    obj = genesis.to_json_obj()
    assert "crypto" not in obj
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    assert genesis.hash == hashlib.sha256(text.encode()).digest()
    explicit = Genesis.from_json(json.dumps(obj | {"crypto": "ed25519-sha256"}))
    assert explicit.hash == Genesis.from_json(json.dumps(obj)).hash == genesis.hash


def test_an_sm2_genesis_round_trips_and_hashes_with_sm3() -> None:
    genesis = _genesis(SM2_SM3)
    parsed = Genesis.from_json(genesis.to_json())
    assert parsed == genesis and parsed.suite is SM2_SM3
    text = json.dumps(genesis.to_json_obj(), sort_keys=True, separators=(",", ":"))
    assert parsed.hash == SM2_SM3.hash(text.encode())
    key = PrivateKey(b"\x07" * 32, SM2_SM3)
    with using(parsed.suite):  # a validator's address is the active suite's
        assert parsed.validator_set[0].address == key.address


@pytest.mark.parametrize(
    ("chain", "keys"), [(SM2_SM3, ED25519_SHA256), (ED25519_SHA256, SM2_SM3)], ids=["sm2", "ed"]
)
def test_a_genesis_whose_keys_do_not_match_its_suite_is_one_error(
    chain: Suite, keys: Suite
) -> None:
    """One line naming the validator's key, its expected type and the suite."""
    with pytest.raises(GenesisError) as info:
        Genesis.from_json(_genesis(chain, keys).to_json())
    message = str(info.value)
    assert message.startswith("validators[0].public_key: not an ")
    assert chain.key_type in message and chain.name in message and "\n" not in message


def test_an_unknown_crypto_is_one_error() -> None:
    obj = _genesis(ED25519_SHA256).to_json_obj()
    for bad in ("rsa", 7, ["sm2-sm3"]):
        with pytest.raises(GenesisError, match=r"^crypto: expected one of ed25519-sha256, sm2-sm3"):
            Genesis.from_json(json.dumps(obj | {"crypto": bad}))


# ---------------------------------------------------------------- validation


def test_an_sm2_chain_validates_its_blocks_and_names_a_bad_signature() -> None:
    """The validation core on an sm2-sm3 chain: a block of SM2 transfers is valid (ids and
    data hash in SM3); a flipped signature bit is TX_BAD_SIGNATURE at its index; an Ed25519
    transaction in the block is malformed there."""
    with using(SM2_SM3):
        users = [PrivateKey(bytes([50 + i]) * 32) for i in range(3)]
        validator = PrivateKey(b"\x11" * 32)
        genesis = Genesis(
            "sm2-chain",
            1_000,
            (GenesisValidator("v", validator.public_key, 10),),
            "ledger",
            {"accounts": {u.address.hex(): 1_000 for u in users}, "admin": validator.address.hex()},
            crypto=SM2_SM3.name,
        )
        app = Ledger.from_genesis(genesis)
        state = ChainState.from_genesis(genesis, app.app_hash)
        txs = [transfer_tx(u, "sm2-chain", 0, users[0].address, 5).encode() for u in users]
        bad = Transaction.decode(txs[1])
        bad = dataclasses.replace(bad, signature=bytes([bad.signature[0] ^ 1]) + bad.signature[1:])
        ed = transfer_tx(PrivateKey(b"\x09" * 32, ED25519_SHA256), "sm2-chain", 0, b"\x01" * 20, 1)
        with SignatureVerifier(threads=1) as v:
            assert v.suite is SM2_SM3

            def validate(raws: list[bytes]) -> object:
                block = build_block(
                    state, raws, time_ms=2_000, proposer_address=validator.address, last_commit=None
                )
                return validate_block(block, state, app, v, now_ms=2_000)

            validated = validate(txs)
            assert validated.tx_ids == tuple(SM2_SM3.hash(t) for t in txs)  # type: ignore[attr-defined]
            with pytest.raises(BlockInvalid) as info:
                validate([txs[0], bad.encode(), txs[2]])
            assert (info.value.reason, info.value.tx_index) == (Reason.TX_BAD_SIGNATURE, 1)
            with pytest.raises(BlockInvalid) as info:
                validate([txs[0], ed.encode()])
            assert (info.value.reason, info.value.tx_index) == (Reason.TX_MALFORMED, 1)


def test_the_light_client_follows_an_sm2_chain() -> None:
    """The light client's checks under sm2-sm3 (SM3 header hashes, SM2 certificates): a
    chain of real certificates through a changing set is followed, sequentially and by
    skipping; a flipped signature bit is COMMIT_SIGNATURE."""
    with using(SM2_SM3):
        pool = [PrivateKey(SM2_SM3.hash(b"light %d" % i)) for i in range(8)]
        original = light_tests.POOL
        light_tests.POOL = pool  # keys_at reads the module's pool
        try:
            blocks = light_tests.make_chain(9)
        finally:
            light_tests.POOL = original
        assert len(blocks[0].validators[0].public_key) == 33
        now, options = 10 * light_tests.BLOCK_MS, light_tests.OPTIONS
        for h in range(8):
            light.verify_adjacent(blocks[h], blocks[h + 1], light_tests.CHAIN, now, options)
        light.verify_skipping(blocks[0], blocks[6], light_tests.CHAIN, now, options)
        sigs = list(blocks[4].commit.signatures)
        sigs[1] = dataclasses.replace(sigs[1], signature=bytes(64 * [1]))
        forged = dataclasses.replace(
            blocks[4], commit=dataclasses.replace(blocks[4].commit, signatures=tuple(sigs))
        )
        with pytest.raises(light.LightError) as info:
            light.verify_adjacent(blocks[3], forged, light_tests.CHAIN, now, options)
        assert info.value.check is light.Check.COMMIT_SIGNATURE
