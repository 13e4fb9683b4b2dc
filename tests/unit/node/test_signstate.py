"""Unit tests for node/signstate.py: the double-sign guard and its durable record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consensus.crypto import PrivateKey, verify
from consensus.types import VoteType, proposal_sign_bytes, vote_sign_bytes
from node.signstate import (
    DoubleSignRefused,
    SignState,
    SignStateError,
    SignStep,
    hrs_of_sign_bytes,
)

CHAIN = "test-chain"
KEY = PrivateKey(bytes(range(32)))
HASH_A = b"\xaa" * 32
HASH_B = b"\xbb" * 32


def prevote(height: int, round: int, block_hash: bytes = HASH_A) -> bytes:
    return vote_sign_bytes(CHAIN, VoteType.PREVOTE, height, round, block_hash)


def precommit(height: int, round: int, block_hash: bytes = HASH_A) -> bytes:
    return vote_sign_bytes(CHAIN, VoteType.PRECOMMIT, height, round, block_hash)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "data" / "sign_state.json"
    SignState.create(p)
    return p


def test_sign_returns_valid_signature_and_persists_it(path: Path) -> None:
    """A released signature verifies, and a fresh load sees exactly that record."""
    ss = SignState.load(path)
    sig = ss.check_and_sign(5, 0, SignStep.PREVOTE, prevote(5, 0), KEY.sign)
    assert verify(KEY.public_key, prevote(5, 0), sig)
    again = SignState.load(path)
    assert again.last.hrs == (5, 0, int(SignStep.PREVOTE))
    assert again.last.sign_bytes == prevote(5, 0)
    assert again.last.signature == sig


def test_same_hrs_same_bytes_returns_stored_signature(path: Path) -> None:
    """Identical bytes at the last (h, r, s) get the stored signature; the key is unused."""
    ss = SignState.load(path)
    sig = ss.check_and_sign(3, 1, SignStep.PRECOMMIT, precommit(3, 1), KEY.sign)

    def must_not_sign(_: bytes) -> bytes:
        raise AssertionError("signer called for a repeat")

    reloaded = SignState.load(path)
    assert reloaded.check_and_sign(3, 1, SignStep.PRECOMMIT, precommit(3, 1), must_not_sign) == sig


def test_same_hrs_different_bytes_refused_across_reload(path: Path) -> None:
    """A different block at the same (h, r, s) is refused, also after a restart."""
    ss = SignState.load(path)
    ss.check_and_sign(7, 0, SignStep.PREVOTE, prevote(7, 0, HASH_A), KEY.sign)
    with pytest.raises(DoubleSignRefused):
        ss.check_and_sign(7, 0, SignStep.PREVOTE, prevote(7, 0, HASH_B), KEY.sign)
    with pytest.raises(DoubleSignRefused):
        SignState.load(path).check_and_sign(7, 0, SignStep.PREVOTE, prevote(7, 0, b""), KEY.sign)


@pytest.mark.parametrize(
    ("height", "round", "step"),
    [(9, 2, SignStep.PROPOSE), (9, 1, SignStep.PRECOMMIT), (8, 5, SignStep.PRECOMMIT)],
)
def test_lower_hrs_refused(path: Path, height: int, round: int, step: SignStep) -> None:
    """Anything below the last signed (height, round, step) is refused."""
    ss = SignState.load(path)
    ss.check_and_sign(9, 2, SignStep.PREVOTE, prevote(9, 2), KEY.sign)
    if step == SignStep.PROPOSE:
        sb = proposal_sign_bytes(CHAIN, height, round, -1, HASH_A)
    else:
        sb = precommit(height, round)
    with pytest.raises(DoubleSignRefused):
        ss.check_and_sign(height, round, step, sb, KEY.sign)
    assert ss.last.hrs == (9, 2, int(SignStep.PREVOTE))


def test_step_order_within_a_round(path: Path) -> None:
    """propose < prevote < precommit: each later step of a round may be signed once."""
    ss = SignState.load(path)
    ss.check_and_sign(
        4, 0, SignStep.PROPOSE, proposal_sign_bytes(CHAIN, 4, 0, -1, HASH_A), KEY.sign
    )
    ss.check_and_sign(4, 0, SignStep.PREVOTE, prevote(4, 0), KEY.sign)
    ss.check_and_sign(4, 0, SignStep.PRECOMMIT, precommit(4, 0), KEY.sign)
    ss.check_and_sign(4, 1, SignStep.PREVOTE, prevote(4, 1, b""), KEY.sign)
    assert SignState.load(path).last.hrs == (4, 1, int(SignStep.PREVOTE))


def test_sign_bytes_must_match_claimed_hrs(path: Path) -> None:
    """Recording one (h, r, s) while signing bytes for another is rejected before signing."""
    ss = SignState.load(path)
    with pytest.raises(ValueError, match="another height"):
        ss.check_and_sign(5, 0, SignStep.PRECOMMIT, prevote(5, 0), KEY.sign)
    with pytest.raises(ValueError, match="neither"):
        ss.check_and_sign(5, 0, SignStep.PREVOTE, b"\x93\x01\x02\x03", KEY.sign)
    assert hrs_of_sign_bytes(proposal_sign_bytes(CHAIN, 2, 3, 1, HASH_A)) == (
        2,
        3,
        SignStep.PROPOSE,
    )
    assert SignState.load(path).last.height == 0


def test_missing_file_refuses(tmp_path: Path) -> None:
    """No sign state means no signing: load raises rather than starting fresh."""
    with pytest.raises(SignStateError, match="missing"):
        SignState.load(tmp_path / "sign_state.json")


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],
        lambda text: "",
        lambda text: text.replace('"height": 6', '"height": 2'),
        lambda text: "\x00" * 100,
        lambda text: json.dumps({"height": 1}),
    ],
    ids=["truncated", "empty", "edited", "zeros", "wrong-shape"],
)
def test_corrupt_file_refuses(path: Path, damage: object) -> None:
    """A truncated, zeroed or hand-edited file is detected; load raises SignStateError."""
    ss = SignState.load(path)
    ss.check_and_sign(6, 0, SignStep.PREVOTE, prevote(6, 0), KEY.sign)
    text = path.read_text()
    assert callable(damage)
    path.write_text(damage(text))
    with pytest.raises(SignStateError, match="corrupt"):
        SignState.load(path)


def test_create_refuses_to_overwrite(path: Path) -> None:
    """init cannot reset an existing record (that would re-enable double signing)."""
    SignState.load(path).check_and_sign(2, 0, SignStep.PREVOTE, prevote(2, 0), KEY.sign)
    with pytest.raises(SignStateError, match="already exists"):
        SignState.create(path)
    assert SignState.load(path).last.height == 2


def test_write_failure_poisons_and_releases_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the record cannot be written the signature is withheld and signing stops."""
    ss = SignState.load(path)

    def fsync_fails(fd: int) -> None:
        raise OSError(5, "Input/output error")  # a disk going bad, even for root

    with monkeypatch.context() as m:
        m.setattr("node.durable.os.fsync", fsync_fails)
        with pytest.raises(SignStateError, match="cannot persist"):
            ss.check_and_sign(2, 0, SignStep.PREVOTE, prevote(2, 0), KEY.sign)
    assert not list(path.parent.glob("*.tmp"))  # no temp file left behind
    with pytest.raises(SignStateError, match="earlier write failed"):
        ss.check_and_sign(3, 0, SignStep.PREVOTE, prevote(3, 0), KEY.sign)
    assert SignState.load(path).last.height == 0


def test_file_mode_is_private(path: Path) -> None:
    """The record is written 0600 (it sits beside the validator key)."""
    SignState.load(path).check_and_sign(2, 0, SignStep.PREVOTE, prevote(2, 0), KEY.sign)
    assert path.stat().st_mode & 0o777 == 0o600
