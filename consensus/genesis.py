"""genesis.json: the chain's starting point, parsed strictly.

Genesis is JSON for people to read and edit, not a canonical msgpack type,
so it lives apart from consensus/types.py. Parsing checks every field and
raises `GenesisError` with a message naming it. The application is only
named here: which names a node can run is the node's business (apps/), so
parsing checks the name's shape, not that it is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consensus.codec import DecodeError
from consensus.crypto import ADDRESS_BYTES, DEFAULT_SUITE, SUITES, Suite, using
from consensus.types import (
    BLOCK_BYTES_MAX,
    BLOCK_TXS_MAX,
    CHAIN_ID_BYTES_MAX,
    MEMBERS_MAX,
    TIME_MS_MAX,
    VOTING_POWER_MAX,
    Validator,
    ValidatorSet,
)

__all__ = ["ConsensusParams", "Genesis", "GenesisError", "GenesisValidator"]


class GenesisError(ValueError):
    """genesis.json is missing a field or holds a wrong value; the message names it."""


# An application's name, as the node's registry knows it (apps/); bounded
# because it is hashed into the first app hash and echoed in errors.
APP_NAME_BYTES_MAX = 32


@dataclass(frozen=True, slots=True)
class ConsensusParams:
    block_bytes_max: int = 4 * 1024 * 1024
    block_txs_max: int = 20_000
    evidence_age_blocks_max: int = 100_000
    block_time_drift_ms_max: int = 10_000  # how far a proposed time may run ahead of ours


@dataclass(frozen=True, slots=True)
class GenesisValidator:
    name: str
    public_key: bytes
    power: int


@dataclass(frozen=True, slots=True)
class Genesis:
    """The chain's starting point, stored as genesis.json (JSON, for people to read).

    `app_state` is opaque here; the application named by `app` interprets it.
    `crypto` names the chain's suite (consensus/crypto.py); it is written only
    when it is not the default, so a genesis from before suites existed keeps
    its text and its hash. The genesis hash is the suite's hash of the
    canonical JSON text (keys sorted, no spaces, UTF-8) so every node can
    compare that it started from the same file.
    """

    chain_id: str
    genesis_time_ms: int
    validators: tuple[GenesisValidator, ...]
    app: str
    app_state: dict[str, Any]
    params: ConsensusParams = ConsensusParams()
    # Node ids (20 bytes each) allowed to connect; empty: anyone may connect.
    members: tuple[bytes, ...] = ()
    crypto: str = DEFAULT_SUITE.name

    @property
    def suite(self) -> Suite:
        return SUITES[self.crypto]

    @property
    def validator_set(self) -> ValidatorSet:
        with using(self.suite):  # ordered by address, which is the suite's hash
            return ValidatorSet.of(Validator(v.public_key, v.power) for v in self.validators)

    def to_json_obj(self) -> dict[str, Any]:
        obj = {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "app": self.app,
            "consensus_params": {
                "block_bytes_max": self.params.block_bytes_max,
                "block_txs_max": self.params.block_txs_max,
                "evidence_age_blocks_max": self.params.evidence_age_blocks_max,
                "block_time_drift_ms_max": self.params.block_time_drift_ms_max,
            },
            "validators": [
                {"name": v.name, "public_key": v.public_key.hex(), "power": v.power}
                for v in self.validators
            ],
            "app_state": self.app_state,
        }
        if self.members:  # absent when empty, so an open chain's genesis hash is unchanged
            obj["members"] = [m.hex() for m in self.members]
        if self.crypto != DEFAULT_SUITE.name:  # absent by default, for the same reason
            obj["crypto"] = self.crypto
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=2) + "\n"

    @property
    def hash(self) -> bytes:
        text = json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":"))
        return self.suite.hash(text.encode())

    @classmethod
    def from_json(cls, text: str) -> Genesis:
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenesisError(f"not valid JSON: {e}") from None
        except RecursionError:
            raise GenesisError("not valid JSON: nested too deeply") from None
        return cls.from_json_obj(obj)

    @classmethod
    def from_json_obj(cls, obj: Any) -> Genesis:
        if not isinstance(obj, dict):
            raise GenesisError("expected a JSON object")
        known = {
            "chain_id",
            "genesis_time_ms",
            "app",
            "consensus_params",
            "validators",
            "app_state",
            "members",
            "crypto",
        }
        unknown = set(obj) - known
        if unknown:
            raise GenesisError(f"unknown key {sorted(unknown)[0]!r}")
        chain_id = _gfield(obj, "chain_id", str)
        if not 1 <= len(_utf8(chain_id, "chain_id")) <= CHAIN_ID_BYTES_MAX:
            raise GenesisError(f"chain_id: expected 1..{CHAIN_ID_BYTES_MAX} bytes")
        time_ms = _gfield(obj, "genesis_time_ms", int)
        if not 0 <= time_ms <= TIME_MS_MAX:
            raise GenesisError("genesis_time_ms: out of range")
        app = _gfield(obj, "app", str)
        if not app.isprintable() or not 1 <= len(app.encode()) <= APP_NAME_BYTES_MAX:
            raise GenesisError(f"app: expected a name of 1..{APP_NAME_BYTES_MAX} printable bytes")
        params = _params_from(obj.get("consensus_params", {}))
        crypto = obj.get("crypto", DEFAULT_SUITE.name)
        if not isinstance(crypto, str) or crypto not in SUITES:
            raise GenesisError(f"crypto: expected one of {', '.join(SUITES)}, got {crypto!r}")
        suite = SUITES[crypto]
        raw_validators = _gfield(obj, "validators", list)
        validators: list[GenesisValidator] = []
        for i, v in enumerate(raw_validators):
            where = f"validators[{i}]"
            if not isinstance(v, dict) or set(v) != {"name", "public_key", "power"}:
                raise GenesisError(f"{where}: expected keys name, public_key, power")
            name = _gfield(v, "name", str, where)
            try:
                pk = bytes.fromhex(_gfield(v, "public_key", str, where))
            except ValueError:
                raise GenesisError(f"{where}.public_key: expected hex") from None
            if not suite.public_key_well_formed(pk):
                raise GenesisError(
                    f"{where}.public_key: not an {suite.key_type} public key "
                    f"({suite.public_key_bytes} bytes), which crypto {suite.name!r} requires"
                )
            power = _gfield(v, "power", int, where)
            if not 1 <= power <= VOTING_POWER_MAX:
                raise GenesisError(f"{where}.power: expected 1..{VOTING_POWER_MAX}")
            validators.append(GenesisValidator(name, pk, power))
        app_state = _gfield(obj, "app_state", dict)
        members = _members_from(obj.get("members", []))
        genesis = cls(chain_id, time_ms, tuple(validators), app, app_state, params, members, crypto)
        try:
            genesis.validator_set  # noqa: B018  (checks count and duplicates)
        except DecodeError as e:
            raise GenesisError(f"validators: {e}") from None
        return genesis


def _utf8(text: str, where: str) -> bytes:
    """`text` in UTF-8; JSON allows a lone surrogate, which UTF-8 cannot encode."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise GenesisError(f"{where}: expected valid UTF-8 text") from None


def _gfield(obj: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise GenesisError(f"{name}: missing")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GenesisError(f"{name}: expected {kind.__name__}")
    return value


def _members_from(obj: Any) -> tuple[bytes, ...]:
    """Genesis `members`: distinct node ids, 40 lowercase hex characters each."""
    if not isinstance(obj, list) or len(obj) > MEMBERS_MAX:
        raise GenesisError(f"members: expected a list of at most {MEMBERS_MAX} node ids")
    members: list[bytes] = []
    for i, text in enumerate(obj):
        if (
            not isinstance(text, str)
            or len(text) != 2 * ADDRESS_BYTES
            or any(c not in "0123456789abcdef" for c in text)
        ):
            raise GenesisError(f"members[{i}]: expected a node id (40 lowercase hex characters)")
        members.append(bytes.fromhex(text))
    if len(set(members)) != len(members):
        raise GenesisError("members: a node id is listed twice")
    return tuple(members)


def _params_from(obj: Any) -> ConsensusParams:
    if not isinstance(obj, dict):
        raise GenesisError("consensus_params: expected an object")
    defaults = ConsensusParams()
    values: dict[str, int] = {}
    for key, value in obj.items():
        if not hasattr(defaults, key):
            raise GenesisError(f"consensus_params: unknown key {key!r}")
        if type(value) is not int or value < 1:
            raise GenesisError(f"consensus_params.{key}: expected a positive integer")
        values[key] = value
    params = ConsensusParams(**values)
    if params.block_bytes_max > BLOCK_BYTES_MAX or params.block_txs_max > BLOCK_TXS_MAX:
        raise GenesisError("consensus_params: block limits exceed the protocol's hard limits")
    return params
