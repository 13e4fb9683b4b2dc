"""The offline verifier accepts real proof files and names the check each tampering fails.

Files are made from a real signed chain (chain.py) whose validator set
turns over completely every 12 heights; each test changes one thing in a
valid file (re-encoding it canonically, so only the named check can catch
it) and asserts the check the verifier names.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest

from consensus import sm2
from consensus.crypto import ED25519_SHA256, SM2_SM3, using
from consensus.types import Commit, CommitSig
from proofcheck import verify as pv
from proofcheck.verify import ProofError, verify_proof
from tests.unit.proofcheck.chain import GENESIS_MS, Chain, make_chain

HEIGHTS = 30
CHAIN = make_chain(ED25519_SHA256, HEIGHTS)
# Bisection's choice from 1 to 21: one skip of 20 heights loses the whole set.
GOOD_HOPS = [1, 4, 7, 10, 13, 16, 19, 20, 21]


def check(data: bytes, chain: Chain = CHAIN, **kwargs: Any) -> str:
    """The check a file fails, or "holds"; a failed transaction (odd indexes here) is
    accepted unless the caller says otherwise: these tests are about the proof."""
    kwargs.setdefault("allow_failed", True)
    try:
        verify_proof(data, chain.genesis_text, **kwargs)
    except ProofError as e:
        return e.check
    return "holds"


def tampered(data: bytes, change: Any) -> bytes:
    f = msgpack.unpackb(data, raw=False)
    change(f)
    packed: bytes = msgpack.packb(f, use_bin_type=True)
    return packed


def good_file(chain: Chain = CHAIN) -> bytes:
    return chain.tx_file(20, 3, GOOD_HOPS)


def test_a_valid_file_holds_sequentially_and_by_skipping() -> None:
    """A file following every height, one skipping where a third of the set stays, both hold."""
    said = verify_proof(good_file(), CHAIN.genesis_text, allow_failed=True)
    assert "transaction 3 of block 20" in said and "result code 1" in said
    assert check(CHAIN.tx_file(20, 0, list(range(1, 22)))) == "holds"
    # Without the result proof the last hop is h itself.
    with using(ED25519_SHA256):
        target = CHAIN.tx_target(20, 0, with_result=False)
        inclusion = CHAIN.file("tx", [CHAIN.hop(h) for h in GOOD_HOPS[:-1]], target)
    assert "inclusion only" in verify_proof(inclusion, CHAIN.genesis_text)


def test_genesis_hash_is_the_nodes() -> None:
    """Section 7's hash as the verifier computes it equals the node's own."""
    assert pv.load_genesis(CHAIN.genesis_text)[2] == CHAIN.genesis.hash


def test_a_skip_with_less_than_a_third_of_trusted_power() -> None:
    """From height 1 straight to 21: none of height 1's next set signed 21."""
    assert check(CHAIN.tx_file(20, 3, [1, 21])) == "trusted power"
    # One of four trusted validators (exactly a quarter) is not enough either.
    assert check(CHAIN.tx_file(20, 3, [1, 10, 21])) == "trusted power"


def test_a_bad_certificate_signature() -> None:
    def flip(f: list[Any]) -> None:
        c = Commit.decode(f[5][2][1])
        sigs = list(c.signatures)
        sigs[1] = CommitSig(
            sigs[1].validator_index, bytes([sigs[1].signature[0] ^ 1]) + sigs[1].signature[1:]
        )
        f[5][2][1] = Commit(c.height, c.round, c.block_hash, tuple(sigs)).encode()

    assert check(tampered(good_file(), flip)) == "certificate signature"


def test_a_certificate_without_two_thirds() -> None:
    with using(ED25519_SHA256):
        hops = [CHAIN.hop(h) for h in GOOD_HOPS]
        hops[3] = CHAIN.hop(GOOD_HOPS[3], signers=2)
        data = CHAIN.file("tx", hops, CHAIN.tx_target(20, 3))
    assert check(data) == "quorum"


def test_a_wrong_or_stale_validator_set() -> None:
    def stale(f: list[Any]) -> None:
        f[5][4][2] = CHAIN.sets[GOOD_HOPS[4] - 3].encode()  # the set of three heights before

    def wrong_next(f: list[Any]) -> None:
        f[5][4][3] = CHAIN.sets[1].encode()

    assert check(tampered(good_file(), stale)) == "validator-set hash"
    assert check(tampered(good_file(), wrong_next)) == "validator-set hash"


def test_a_header_from_another_chain_id() -> None:
    other = make_chain(ED25519_SHA256, 6, chain_id="other-chain")

    def splice(f: list[Any]) -> None:
        f[5][1] = other.hop(4)

    assert check(tampered(good_file(), splice)) == "chain id"
    # The other chain's whole file, against this genesis: refused before any hop.
    assert check(other.tx_file(2, 0, [1, 2, 3])) == "chain id"


def test_another_genesis() -> None:
    same_id = make_chain(ED25519_SHA256, 3, seed=b"another genesis")
    assert check(same_id.tx_file(1, 0, [1, 2])) == "genesis hash"


def test_a_tampered_tx_byte_and_proof_steps() -> None:
    def tx_byte(f: list[Any]) -> None:
        f[6][0] = f[6][0][:-1] + bytes([f[6][0][-1] ^ 1])

    def tx_step(f: list[Any]) -> None:
        f[6][3][2][1] = bytes(32)

    def tx_index(f: list[Any]) -> None:
        f[6][3][0] = 2

    def result_step(f: list[Any]) -> None:
        f[6][4][1][2][0] = bytes(32)

    def result_byte(f: list[Any]) -> None:
        f[6][4][0] = msgpack.packb([0, b""], use_bin_type=True)  # claim success

    def header_h(f: list[Any]) -> None:
        f[6][2] = CHAIN.headers[19].encode()

    assert check(tampered(good_file(), tx_byte)) == "tx byte"
    assert check(tampered(good_file(), tx_step)) == "tx Merkle step"
    assert check(tampered(good_file(), tx_index)) == "tx Merkle step"
    assert check(tampered(good_file(), result_step)) == "result step"
    assert check(tampered(good_file(), result_byte)) == "result step"
    assert check(tampered(good_file(), header_h)) == "last block hash"


def test_a_hop_that_does_not_link() -> None:
    """Sequential hops link by last_block_hash: a fork's header 2 by the same set does not."""
    fork = make_chain(ED25519_SHA256, 4, payload_tag=b" fork")
    assert fork.genesis.hash == CHAIN.genesis.hash and fork.headers[2] != CHAIN.headers[2]

    def splice(f: list[Any]) -> None:
        f[5] = [CHAIN.hop(1), fork.hop(2)]

    assert check(tampered(CHAIN.tx_file(1, 0, [1, 2]), splice)) == "last block hash"


def test_trusting_period() -> None:
    """Unlimited by default; with a period, trust older than it is refused."""
    data = good_file()
    now = GENESIS_MS + 3_600_000
    assert check(data, trusting_period_ms=7_200_000, now_ms=now) == "holds"
    assert check(data, trusting_period_ms=60_000, now_ms=now) == "trusting period"
    assert check(data, trusting_period_ms=7_200_000, now_ms=GENESIS_MS) == "header time"


def test_from_a_trusted_header() -> None:
    trusted = (10, CHAIN.headers[10].hash)
    with using(ED25519_SHA256):
        data = CHAIN.file(
            "tx", [CHAIN.hop(h) for h in (10, 13, 16, 19, 21)], CHAIN.tx_target(20, 1), trusted
        )
    assert check(data, trusted=trusted) == "holds"
    assert check(data) == "trusted header"
    assert check(data, trusted=(10, bytes(32))) == "trusted header"
    with using(ED25519_SHA256):
        lying = CHAIN.file(
            "tx", [CHAIN.hop(h) for h in (11, 13, 16, 19, 21)], CHAIN.tx_target(20, 1), trusted
        )
    assert check(lying, trusted=trusted) == "trusted header"


@pytest.mark.skipif(sm2.unavailable_reason() is not None, reason="no SM2 in this libcrypto")
def test_an_sm2_sm3_chain() -> None:
    """The same checks in the sm2-sm3 suite: SM3 hashes, SM2 certificate signatures."""
    chain = make_chain(SM2_SM3, 12)
    data = chain.tx_file(10, 2, [1, 4, 7, 10, 11])
    assert "transaction 2 of block 10" in verify_proof(data, chain.genesis_text)
    assert pv.load_genesis(chain.genesis_text)[2] == chain.genesis.hash

    def flip(f: list[Any]) -> None:
        c = Commit.decode(f[5][2][1])
        s = c.signatures[0]
        sig = s.signature[:40] + bytes([s.signature[40] ^ 4]) + s.signature[41:]
        f[5][2][1] = Commit(
            c.height, c.round, c.block_hash, (CommitSig(0, sig), *c.signatures[1:])
        ).encode()

    with using(SM2_SM3):
        assert check(tampered(data, flip), chain) == "certificate signature"
    assert check(chain.tx_file(10, 2, [1, 11]), chain) == "trusted power"


def test_sm2_verify_agrees_with_the_projects() -> None:
    """The vendored SM2 check accepts the project's signatures and refuses altered ones."""
    if sm2.unavailable_reason() is not None:
        pytest.skip("no SM2 in this libcrypto")
    verify = pv.suite_named("sm2-sm3").verify
    secret = bytes(31) + b"\x07"
    key = sm2.public_key(secret)
    sig = sm2.sign(secret, b"message")
    assert verify(key, b"message", sig)
    assert not verify(key, b"messagf", sig)
    assert not verify(key, b"message", sig[:32] + bytes(32))
    assert not verify(b"\x04" + key[1:], b"message", sig)
    assert not verify(b"\x02" + bytes(32), b"message", sig)  # x = 0 is not on the curve


def test_hostile_files() -> None:
    """Too big, truncated, not canonical, wrong types: refused as encoding before any work."""
    data = good_file()
    assert check(b"\x00" * (pv.FILE_BYTES_MAX + 1)) == "encoding"
    assert check(data[:-1]) == "encoding"
    assert check(data + b"\x00") == "encoding"
    assert check(b"\xde\x00\x00") == "encoding"  # a map
    assert check(b"") == "encoding"
    long_form = b"\xdc\x00\x07" + data[1:]  # array16 header where fixarray fits
    assert check(long_form) == "encoding"
    assert check(tampered(data, lambda f: f.__setitem__(1, "block"))) == "encoding"
    assert check(tampered(data, lambda f: f[5].__setitem__(0, [1, 2, 3, 4]))) == "encoding"
    assert check(tampered(data, lambda f: f[6][3][2].extend([bytes(32)] * 70))) == "encoding"
    assert check(tampered(data, lambda f: f.__setitem__(5, []))) == "encoding"
    try:
        verify_proof(data, b"{not json")
    except ProofError as e:
        assert e.check == "genesis"


def test_the_command_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "genesis.json").write_bytes(CHAIN.genesis_text)
    (tmp_path / "good").write_bytes(CHAIN.tx_file(20, 2, GOOD_HOPS))
    (tmp_path / "bad").write_bytes(CHAIN.tx_file(20, 3, [1, 21]))
    assert pv.main([str(tmp_path / "good"), "--genesis", str(tmp_path / "genesis.json")]) == 0
    assert pv.main([str(tmp_path / "bad"), "--genesis", str(tmp_path / "genesis.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("proof holds: tx ")
    assert out[1].startswith("proof rejected: trusted power: ") and len(out) == 2


def test_a_failed_transaction_exits_1_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Transaction 3 of block 20 is in its block with result code 1: the proof holds, but
    a script reading only the exit code must not take it for a done transfer."""
    assert check(good_file(), allow_failed=False) == "result code"
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(CHAIN.genesis_text)
    (tmp_path / "failed").write_bytes(good_file())
    assert pv.main([str(tmp_path / "failed"), "--genesis", str(genesis)]) == 1
    assert pv.main([str(tmp_path / "failed"), "--genesis", str(genesis), "--allow-failed"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("proof rejected: result code: tx ") and "code 1" in out[0]
    assert out[1].startswith("proof holds: tx ") and out[1].endswith("result code 1")
    assert len(out) == 2


def test_a_hostile_genesis_fails_in_one_line() -> None:
    """Nested 100,000 deep, or a power past 64 bits: `genesis`, not a traceback."""
    deep = b"[" * 100_000 + b"]" * 100_000
    genesis = json.loads(CHAIN.genesis_text)
    genesis["validators"][0]["power"] = 2**70
    huge = json.dumps(genesis).encode()
    for text in (deep, huge, b'{"chain_id": "x", "validators": [[]]}', b"\xff\xfe"):
        with pytest.raises(ProofError) as info:
            pv.load_genesis(text)
        assert info.value.check == "genesis", info.value
        assert "\n" not in str(info.value)


def test_the_module_stands_alone() -> None:
    """proofcheck/verify.py imports the standard library, pynacl and msgpack only."""
    tree = ast.parse(Path(pv.__file__).read_text())
    imported = {
        (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in (n.names if isinstance(n, ast.Import) else [n])  # type: ignore[attr-defined]
        if not isinstance(n, ast.ImportFrom) or n.module
    }
    assert imported - set(sys.stdlib_module_names) == {"nacl", "msgpack"}


def test_without_sm2_in_libcrypto_one_line_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """An sm2-sm3 genesis where libcrypto cannot be loaded: refused as `crypto`, not a crash."""

    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(pv.ctypes, "CDLL", no_library)
    with pytest.raises(ProofError) as e:
        pv.suite_named("sm2-sm3")
    assert e.value.check == "crypto" and "libcrypto.so.3 cannot be loaded" in str(e.value)
