"""The validator's last signature, durable before any signature leaves the node.

A validator that signs two different votes (or proposals) for one height,
round and step is Byzantine by definition and is slashed by evidence. After a
crash the consensus state machine may want to sign again what it was about to
sign; the only thing that stops it signing something *different* is a record,
on disk, of what it last signed. This module keeps that record.

Rules (the same as CometBFT's FilePV "last sign state"):

- A signature is released only for a (height, round, step) at or above the
  last one signed, with step order propose < prevote < precommit.
- At exactly the last (height, round, step) the stored signature is returned
  again, and only when the sign bytes are identical; anything else raises
  `DoubleSignRefused`.
- The new record is written to a temporary file, fsync'd, renamed over the old
  one, and the directory is fsync'd, all BEFORE the signature is returned. A
  rename without the directory fsync can be lost on power failure, leaving the
  old record and allowing a conflicting signature (CometBFT issue #6031).
- A missing or unreadable file is an error (`SignStateError`), never a reason
  to start from scratch: a validator that lost its sign state must not sign.
  `SignState.create` (run once by `archipelago init`) makes the first record.

The file is JSON so an operator can read it; a SHA-256 checksum over its
fields catches bit rot and hand edits. Writes are synchronous: the owner (the
consensus task) calls `check_and_sign` from a worker thread if it must not
block the event loop; it is not safe for concurrent use by several threads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from consensus.codec import DecodeError, decode
from consensus.crypto import SIGNATURE_BYTES
from consensus.types import HEIGHT_MAX, ROUND_MAX, TAG_PROPOSAL, TAG_VOTE, VoteType
from node.durable import replace_durably

__all__ = [
    "SIGN_STATE_FILENAME",
    "DoubleSignRefused",
    "SignState",
    "SignStateError",
    "SignStep",
    "SignedRecord",
    "hrs_of_sign_bytes",
    "step_of_vote",
]

SIGN_STATE_FILENAME = "sign_state.json"
# Sign bytes are a vote's or a proposal's (each under 200 bytes); the file is
# read whole, so it is bounded well above that and far below anything costly.
SIGN_BYTES_MAX = 1024
FILE_BYTES_MAX = 16 * 1024
_FORMAT_VERSION = 1


class SignStateError(Exception):
    """The sign state is missing, unreadable, corrupt or could not be made durable.

    The node must not sign while this is unresolved; the message says which file
    and why, so the operator can restore it (never by deleting it).
    """


class DoubleSignRefused(Exception):
    """Signing this would conflict with (or go below) what this validator already signed."""


class SignStep(IntEnum):
    """Steps of one round in the order a validator signs them (0: nothing signed yet)."""

    NONE = 0
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


def step_of_vote(vote_type: VoteType) -> SignStep:
    return SignStep.PREVOTE if vote_type == VoteType.PREVOTE else SignStep.PRECOMMIT


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """The last thing signed: height 0 with empty bytes means nothing yet."""

    height: int
    round: int
    step: SignStep
    sign_bytes: bytes
    signature: bytes

    @property
    def hrs(self) -> tuple[int, int, int]:
        return (self.height, self.round, int(self.step))

    def to_json_obj(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "version": _FORMAT_VERSION,
            "height": self.height,
            "round": self.round,
            "step": int(self.step),
            "sign_bytes": self.sign_bytes.hex(),
            "signature": self.signature.hex(),
        }
        fields["checksum"] = _checksum(fields).hex()
        return fields

    @classmethod
    def from_json_obj(cls, obj: Any) -> SignedRecord:
        """Strict parse; raises ValueError (with the reason) for anything off."""
        keys = {"version", "height", "round", "step", "sign_bytes", "signature", "checksum"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise ValueError(f"expected exactly the keys {sorted(keys)}")
        if obj["version"] != _FORMAT_VERSION:
            raise ValueError(f"unknown version {obj['version']!r}")
        checksum = bytes.fromhex(_str(obj, "checksum"))
        if checksum != _checksum({k: v for k, v in obj.items() if k != "checksum"}):
            raise ValueError("checksum mismatch")
        height = _int(obj, "height", 0, HEIGHT_MAX)
        round_ = _int(obj, "round", 0, ROUND_MAX)
        step = SignStep(_int(obj, "step", 0, int(SignStep.PRECOMMIT)))
        sign_bytes = bytes.fromhex(_str(obj, "sign_bytes"))
        signature = bytes.fromhex(_str(obj, "signature"))
        if height == 0:
            if (round_, step, sign_bytes, signature) != (0, SignStep.NONE, b"", b""):
                raise ValueError("height 0 must carry no signature")
        else:
            if step == SignStep.NONE or len(signature) != SIGNATURE_BYTES:
                raise ValueError("a signed record needs a step and a 64-byte signature")
            if not 0 < len(sign_bytes) <= SIGN_BYTES_MAX:
                raise ValueError("sign_bytes: bad length")
        return cls(height, round_, step, sign_bytes, signature)


_EMPTY = SignedRecord(0, 0, SignStep.NONE, b"", b"")


def _checksum(fields: dict[str, Any]) -> bytes:
    # A checksum of this node's own file, not a chain hash: SHA-256 whatever the
    # chain's crypto suite, so the file format is one.
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def _int(obj: dict[str, Any], key: str, lo: int, hi: int) -> int:
    value = obj[key]
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{key}: expected an integer in [{lo}, {hi}]")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if type(value) is not str:
        raise ValueError(f"{key}: expected a hex string")
    return value


def hrs_of_sign_bytes(sign_bytes: bytes) -> tuple[int, int, SignStep]:
    """The (height, round, step) that vote or proposal sign bytes commit to.

    Lets `check_and_sign` refuse a caller that records one step and signs
    bytes for another (a bug that would defeat the whole record).
    """
    try:
        obj = decode(sign_bytes, bytes_max=SIGN_BYTES_MAX)
    except DecodeError as e:
        raise ValueError(f"sign bytes are not canonical msgpack: {e}") from None
    if isinstance(obj, tuple) and len(obj) == 6 and obj[0] == TAG_VOTE:
        if type(obj[2]) is int and obj[2] in (1, 2):
            if type(obj[3]) is int and type(obj[4]) is int:
                return obj[3], obj[4], step_of_vote(VoteType(obj[2]))
    if isinstance(obj, tuple) and len(obj) == 6 and obj[0] == TAG_PROPOSAL:
        if type(obj[2]) is int and type(obj[3]) is int:
            return obj[2], obj[3], SignStep.PROPOSE
    raise ValueError("sign bytes are neither a vote's nor a proposal's")


class SignState:
    """The durable last-signed record of one validator key. Open with `load` or `create`."""

    __slots__ = ("_failed", "_last", "path")

    def __init__(self, path: Path, last: SignedRecord) -> None:
        self.path = path
        self._last = last
        self._failed: str | None = None

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> SignState:
        """Write the initial (nothing signed) record; called once by `archipelago init`.

        Refuses to overwrite an existing file: replacing a sign state would erase
        the very record that prevents double signing.
        """
        p = Path(path)
        if p.exists():
            raise SignStateError(f"{p}: already exists; refusing to reset a sign state")
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            replace_durably(p, _encode(_EMPTY))
        except OSError as e:
            raise SignStateError(f"{p}: cannot write: {e}") from None
        return cls(p, _EMPTY)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SignState:
        """Read the record; missing, unreadable or corrupt raises SignStateError."""
        p = Path(path)
        try:
            with open(p, "rb") as f:
                data = f.read(FILE_BYTES_MAX + 1)
        except FileNotFoundError:
            raise SignStateError(
                f"{p}: missing; refusing to sign (restore it, or run init for a new validator)"
            ) from None
        except OSError as e:
            raise SignStateError(f"{p}: unreadable: {e}") from None
        if len(data) > FILE_BYTES_MAX:
            raise SignStateError(f"{p}: larger than {FILE_BYTES_MAX} bytes; corrupt")
        try:
            record = SignedRecord.from_json_obj(json.loads(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise SignStateError(f"{p}: corrupt: {e}") from None
        return cls(p, record)

    @property
    def last(self) -> SignedRecord:
        return self._last

    def check_and_sign(
        self,
        height: int,
        round: int,
        step: SignStep,
        sign_bytes: bytes,
        signer: Callable[[bytes], bytes],
    ) -> bytes:
        """The signature over `sign_bytes`, durable on disk before it is returned.

        Raises DoubleSignRefused below the last (height, round, step), or at it
        with different bytes; SignStateError if the record could not be made
        durable (after which this object refuses every request: restart the node).
        """
        if self._failed is not None:
            raise SignStateError(f"{self.path}: an earlier write failed ({self._failed})")
        if step == SignStep.NONE or height < 1:
            raise ValueError("sign at height >= 1 and a real step")
        if not 0 < len(sign_bytes) <= SIGN_BYTES_MAX:
            raise ValueError(f"sign bytes must be 1..{SIGN_BYTES_MAX} bytes")
        if hrs_of_sign_bytes(sign_bytes) != (height, round, step):
            raise ValueError("sign bytes are for another height, round or step")
        requested = (height, round, int(step))
        last = self._last
        if requested < last.hrs:
            raise DoubleSignRefused(f"{requested} is below the last signed {last.hrs}")
        if requested == last.hrs:
            if sign_bytes == last.sign_bytes:
                return last.signature
            raise DoubleSignRefused(f"conflicting sign bytes at {requested}")
        signature = signer(sign_bytes)
        assert len(signature) == SIGNATURE_BYTES
        record = SignedRecord(height, round, step, sign_bytes, signature)
        try:
            replace_durably(self.path, _encode(record))
        except OSError as e:
            # Whether the rename reached the disk is unknown: stop signing altogether.
            self._failed = str(e)
            raise SignStateError(f"{self.path}: cannot persist: {e}") from None
        self._last = record
        return signature


def _encode(record: SignedRecord) -> bytes:
    return (json.dumps(record.to_json_obj(), indent=2) + "\n").encode()
