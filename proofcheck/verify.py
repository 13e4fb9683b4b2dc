"""Check an Archipelago proof file offline, from the genesis you trust: one module to vendor.

Written from docs/PROTOCOL.md (sections 1-7 and 13) alone, and importing
only the standard library, pynacl and msgpack, so that an auditor or
another chain can copy this file and check what an Archipelago chain
committed without this project or a node. Usage:

    python verify.py PROOF_FILE --genesis genesis.json [--trusted-height H --trusted-hash HEX]
                     [--trusting-period-ms MS]

Exit 0 and one line saying what holds; exit 1 and one line
`proof rejected: <check>: <detail>` naming the first check that failed;
exit 2 for bad arguments or an unreadable file.

What it checks, in order (section 13.3): the file's framing and limits;
the genesis hash and chain id; then each hop of the file's chain of
(header, commit certificate, validator sets) from the genesis validators
(or from a header the caller trusts by hash), sequentially (+2/3 of the set
the previous header named) or by skipping (more than 1/3 of the power of
the last trusted header's next set signed, and +2/3 of the header's own
set); then the target: a transaction's Merkle path to header h's
`data_hash` and its result's path to header h + 1's `last_results_hash`, or
a state key's proof against header h + 1's `app_hash`.

The trusting period is unlimited unless given: an offline audit checks
history, and its root of trust is the genesis (or trusted header) the
auditor supplies, not a recent header. The price, stated in section 13.4:
keys of a past validator set that leak later could sign a fork that such an
audit accepts. A verifier that follows the live chain (another chain's
light client) passes a period below the chain's unbonding time.

Hostile input: the file and genesis sizes are checked before they are
read, every msgpack decode has per-type length limits and must be the
canonical encoding (re-encoded and compared), and the work is linear in the
file's size (at most one signature verification per 66 bytes of file).

Why one module of over 600 lines: it is meant to be copied alone, so the
decoders, both crypto suites, the Merkle walks and the command line live
together, and nothing of the project's own code is imported.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import nacl.exceptions
import nacl.signing

FORMAT_TAG: Final = "archipelago/proof/v1"
# A hop is about 0.8 KB with 4 validators and up to ~170 KB with 1,000 (two sets and
# 1,000 signatures); bisection keeps an honest file to tens of hops, a few hundred
# when the set turns over fast. 32 MiB bounds what a hostile file costs: memory
# about three times its size, and at most one signature verification per 66 bytes
# (~40 s of Ed25519); larger files are refused before they are read.
FILE_BYTES_MAX: Final = 32 * 1024 * 1024
GENESIS_BYTES_MAX: Final = 16 * 1024 * 1024
HOPS_MAX: Final = 4096
HEADER_BYTES_MAX: Final = 1024  # 12 fields, the longest a 50-byte chain id and a 64-byte app hash
COMMIT_BYTES_MAX: Final = 80_000  # 1,000 signatures of 70 bytes each and the fields
VALIDATOR_SET_BYTES_MAX: Final = 50_000  # 1,000 validators of at most 46 bytes each
VALIDATORS_MAX: Final = 1000
TX_BYTES_MAX: Final = 33_024  # section 1
RESULT_BYTES_MAX: Final = 65_536
STATE_KEY_BYTES_MAX: Final = 1024
STATE_VALUE_BYTES_MAX: Final = 1024 * 1024
STATE_PROOF_BYTES_MAX: Final = 9000  # section 11: 256 siblings of 34 bytes, the leaf, headers
EMPTY_HASH: Final = bytes(32)  # section 11: the hash of an empty subtree
AUNTS_MAX: Final = 64  # a tree of up to 2^64 leaves
CHAIN_ID_BYTES_MAX: Final = 50
HASH_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
ADDRESS_BYTES: Final = 20
KINDS: Final = ("tx", "state")
EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class ProofError(Exception):
    """The proof fails `check` (the name printed and tested); the message says how."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check


# ---------------------------------------------------------------- crypto suites


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    public_key_bytes: int
    hash: Callable[[bytes], bytes]
    verify: Callable[[bytes, bytes, bytes], bool]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    # libsodium's verification is strict: non-canonical S and small-order keys fail.
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


# GB/T 32918.5's curve; Z_A hashes a, b and the base point G.
SM2_P: Final = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)
SM2_A: Final = SM2_P - 3
SM2_B: Final = int("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93", 16)
SM2_N: Final = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
SM2_GX: Final = int("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7", 16)
SM2_GY: Final = int("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0", 16)
SM2_ID: Final = b"1234567812345678"
_NID_SM2: Final = 1172


class _Sm2:
    """SM2 verification (GB/T 32918.2, section 7) on libcrypto's curve arithmetic, by ctypes.

    This module computes Z_A and e with SM3 itself and asks libcrypto only to
    decode the point and compute s*G + t*P, so no EVP state is involved.
    """

    def __init__(self) -> None:
        try:
            hashlib.new("sm3", b"")
        except ValueError:
            raise ProofError("crypto", "this Python's OpenSSL has no SM3") from None
        try:
            lib = ctypes.CDLL("libcrypto.so.3")
        except OSError as e:
            raise ProofError("crypto", f"libcrypto.so.3 cannot be loaded: {e}") from None
        vp, i, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
        protos: dict[str, tuple[Any, tuple[Any, ...]]] = {
            "EC_GROUP_new_by_curve_name": (vp, (i,)),
            "EC_POINT_new": (vp, (vp,)),
            "EC_POINT_free": (None, (vp,)),
            "EC_POINT_oct2point": (i, (vp, vp, ctypes.c_char_p, sz, vp)),
            "EC_POINT_mul": (i, (vp, vp, vp, vp, vp, vp)),
            "EC_POINT_is_at_infinity": (i, (vp, vp)),
            "EC_POINT_get_affine_coordinates": (i, (vp, vp, vp, vp, vp)),
            "BN_new": (vp, ()),
            "BN_free": (None, (vp,)),
            "BN_bin2bn": (vp, (ctypes.c_char_p, i, vp)),
            "BN_bn2binpad": (i, (vp, ctypes.c_char_p, i)),
            "BN_CTX_new": (vp, ()),
            "BN_CTX_free": (None, (vp,)),
            "ERR_clear_error": (None, ()),
        }
        try:
            for name, (restype, argtypes) in protos.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
        except AttributeError as e:
            raise ProofError("crypto", f"libcrypto lacks {e}") from None
        self.lib = lib
        self.group = lib.EC_GROUP_new_by_curve_name(_NID_SM2)
        if not self.group:
            raise ProofError("crypto", "libcrypto has no SM2 curve")
        self.ctx = lib.BN_CTX_new()
        assert self.ctx, "out of memory"

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != 33 or public_key[0] not in (2, 3) or len(signature) != 64:
            return False
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        t = (r + s) % SM2_N
        if not (1 <= r < SM2_N and 1 <= s < SM2_N) or t == 0:
            return False
        lib, group, ctx = self.lib, self.group, self.ctx
        point, total = lib.EC_POINT_new(group), lib.EC_POINT_new(group)
        bns = [lib.BN_new() for _ in range(4)]
        try:
            x, y, s_bn, t_bn = bns
            if lib.EC_POINT_oct2point(group, point, public_key, 33, ctx) != 1:
                lib.ERR_clear_error()
                return False  # not a point of the curve
            assert lib.EC_POINT_get_affine_coordinates(group, point, x, y, ctx) == 1
            xa, ya = ctypes.create_string_buffer(32), ctypes.create_string_buffer(32)
            assert lib.BN_bn2binpad(x, xa, 32) == 32 and lib.BN_bn2binpad(y, ya, 32) == 32
            z = _sm3(
                (len(SM2_ID) * 8).to_bytes(2, "big")
                + SM2_ID
                + b"".join(v.to_bytes(32, "big") for v in (SM2_A, SM2_B, SM2_GX, SM2_GY))
                + xa.raw
                + ya.raw
            )
            e = int.from_bytes(_sm3(z + message), "big")
            lib.BN_bin2bn(s.to_bytes(32, "big"), 32, s_bn)
            lib.BN_bin2bn(t.to_bytes(32, "big"), 32, t_bn)
            assert lib.EC_POINT_mul(group, total, s_bn, point, t_bn, ctx) == 1
            if lib.EC_POINT_is_at_infinity(group, total):
                return False
            assert lib.EC_POINT_get_affine_coordinates(group, total, x, y, ctx) == 1
            x1 = ctypes.create_string_buffer(32)
            assert lib.BN_bn2binpad(x, x1, 32) == 32
            return (e + int.from_bytes(x1.raw, "big")) % SM2_N == r
        finally:
            for bn in bns:
                lib.BN_free(bn)
            lib.EC_POINT_free(point)
            lib.EC_POINT_free(total)


def _sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def suite_named(name: str) -> Suite:
    """The crypto suite of genesis `"crypto"` (section 2); ProofError("crypto") if unusable here."""
    if name == "ed25519-sha256":
        return Suite(name, 32, _sha256, _ed25519_verify)
    if name == "sm2-sm3":
        return Suite(name, 33, _sm3, _Sm2().verify)
    raise ProofError("genesis", f"unknown crypto suite {name!r}")


# ---------------------------------------------------------------- canonical msgpack


def _decode(data: bytes, what: str, bytes_max: int, array_max: int, bin_max: int) -> Any:
    """The value `data` canonically encodes (section 1), with every length bounded first."""
    if len(data) > bytes_max:
        raise ProofError("encoding", f"{what} is {len(data)} bytes, at most {bytes_max}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            max_array_len=array_max,
            max_bin_len=bin_max,
            max_str_len=CHAIN_ID_BYTES_MAX * 2,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProofError("encoding", f"{what} is not msgpack: {e}") from None
    if msgpack.packb(value, use_bin_type=True) != data:
        raise ProofError("encoding", f"{what} is not the canonical encoding")
    return value


def _array(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise ProofError("encoding", f"{what} is not an array of {length or 'any'} items")
    return value


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ProofError("encoding", f"{what} is not an unsigned integer")
    return value


def _bin(value: Any, what: str, lengths: Sequence[int] | None = None, most: int = 0) -> bytes:
    if type(value) is not bytes or (lengths is not None and len(value) not in lengths):
        raise ProofError("encoding", f"{what} is not a byte string of the right length")
    if most and len(value) > most:
        raise ProofError("encoding", f"{what} is over {most} bytes")
    return value


# ---------------------------------------------------------------- the chain's objects


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    last_block_hash: bytes
    data_hash: bytes
    validators_hash: bytes
    next_validators_hash: bytes
    app_hash: bytes
    last_results_hash: bytes
    hash: bytes  # H(encoded header): the block hash


def decode_header(data: bytes, suite: Suite) -> Header:
    f = _array(_decode(data, "a header", HEADER_BYTES_MAX, 12, 64), "a header", 12)
    if not isinstance(f[0], str) or not 1 <= len(f[0].encode()) <= CHAIN_ID_BYTES_MAX:
        raise ProofError("encoding", "a header's chain id")
    for i in (3, 4):
        _bin(f[i], "a header's last block or commit hash", (0, HASH_BYTES))
    for i in (5, 6, 7, 9, 10):
        _bin(f[i], "a header hash field", (HASH_BYTES,))
    _bin(f[8], "a header's app hash", most=64)
    _bin(f[11], "a header's proposer address", (ADDRESS_BYTES,))
    height = _uint(f[1], "a header's height")
    if height < 1:
        raise ProofError("encoding", "a header's height is 0")
    return Header(
        f[0], height, _uint(f[2], "a header's time"), f[3], f[5], f[6], f[7], f[8], f[9],
        suite.hash(data),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    keys: tuple[bytes, ...]
    powers: tuple[int, ...]
    hash: bytes

    @property
    def total(self) -> int:
        return sum(self.powers)

    def power_of(self) -> dict[bytes, int]:
        return dict(zip(self.keys, self.powers, strict=True))


def decode_validator_set(data: bytes, suite: Suite) -> ValidatorSet:
    items = _array(
        _decode(data, "a validator set", VALIDATOR_SET_BYTES_MAX, VALIDATORS_MAX, 33),
        "a validator set",
    )
    if not items:
        raise ProofError("encoding", "an empty validator set")
    keys, powers, last = [], [], b""
    for item in items:
        key, power = _array(item, "a validator", 2)
        keys.append(_bin(key, "a validator's public key", (suite.public_key_bytes,)))
        powers.append(_uint(power, "a validator's power"))
        address = suite.hash(key)[:ADDRESS_BYTES]
        if powers[-1] < 1 or address <= last:
            raise ProofError("encoding", "a validator set not sorted by address, or a power of 0")
        last = address
    return ValidatorSet(tuple(keys), tuple(powers), suite.hash(data))


def genesis_validator_set(genesis: dict[str, Any], suite: Suite) -> bytes:
    """The encoded validator set of height 1: genesis validators sorted by address (section 7)."""
    entries = []
    for v in genesis["validators"]:
        key = bytes.fromhex(v["public_key"])
        entries.append((suite.hash(key)[:ADDRESS_BYTES], [key, v["power"]]))
    entries.sort(key=lambda e: e[0])
    return msgpack.packb([e[1] for e in entries], use_bin_type=True)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Commit:
    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[int, bytes], ...]


def decode_commit(data: bytes) -> Commit:
    f = _array(
        _decode(data, "a certificate", COMMIT_BYTES_MAX, VALIDATORS_MAX, SIGNATURE_BYTES),
        "a certificate",
        4,
    )
    sigs = []
    for s in _array(f[3], "a certificate's signatures"):
        index, sig = _array(s, "a certificate signature", 2)
        sigs.append(
            (_uint(index, "a signer's index"), _bin(sig, "a signature", (SIGNATURE_BYTES,)))
        )
    return Commit(
        _uint(f[0], "a certificate's height"),
        _uint(f[1], "a certificate's round"),
        _bin(f[2], "a certificate's block hash", (HASH_BYTES,)),
        tuple(sigs),
    )


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def signed_power(commit: Commit, header: Header, vset: ValidatorSet, suite: Suite) -> list[int]:
    """Section 5, steps 2-4: the signers' indexes in `vset`; every signature must verify."""
    if commit.height != header.height or commit.block_hash != header.hash:
        raise ProofError("certificate", f"the certificate of height {header.height} is another's")
    if not commit.signatures:
        raise ProofError("quorum", f"the certificate of height {header.height} has no signature")
    message = _pack(
        ["archipelago/vote/v1", header.chain_id, 2, commit.height, commit.round, commit.block_hash]
    )
    last = -1
    for index, sig in commit.signatures:
        if index <= last or index >= len(vset.keys):
            raise ProofError("certificate", f"signer index {index} out of order or of the set")
        last = index
        if not suite.verify(vset.keys[index], message, sig):
            raise ProofError(
                "certificate signature",
                f"validator {index} at height {header.height} ({vset.keys[index].hex()[:16]}...)",
            )
    return [index for index, _ in commit.signatures]


# ---------------------------------------------------------------- Merkle paths (section 6)


def merkle_root(leaf: bytes, index: int, total: int, aunts: Sequence[bytes], suite: Suite) -> bytes:
    """The root an inclusion proof gives for `leaf` (the item's bytes), or ValueError."""
    if not 0 <= index < total:
        raise ValueError(f"index {index} is not below total {total}")
    left_at_level = []
    while total > 1:
        k = 1 << ((total - 1).bit_length() - 1)  # largest power of two strictly below total
        if index < k:
            left_at_level.append(True)
            total = k
        else:
            left_at_level.append(False)
            index, total = index - k, total - k
    if len(aunts) != len(left_at_level):
        raise ValueError(f"{len(aunts)} aunts for a path of {len(left_at_level)} levels")
    node = suite.hash(b"\x00" + leaf)
    for aunt, left in zip(aunts, reversed(left_at_level), strict=True):
        node = suite.hash(b"\x01" + node + aunt if left else b"\x01" + aunt + node)
    return node


def _path(f: list[Any], what: str) -> tuple[int, int, list[bytes]]:
    index, total = _uint(f[0], f"{what} index"), _uint(f[1], f"{what} total")
    aunts = _array(f[2], f"{what} aunts")
    if len(aunts) > AUNTS_MAX:
        raise ProofError("encoding", f"{what} has more than {AUNTS_MAX} aunts")
    return index, total, [_bin(a, f"{what} aunt", (HASH_BYTES,)) for a in aunts]


# ---------------------------------------------------------------- the file


@dataclass(frozen=True, slots=True)
class Trusted:
    """Where trust stands: the last verified header and the next set it names."""

    height: int
    hash: bytes
    time_ms: int
    next_set: ValidatorSet
    header: Header | None  # None at genesis


def load_genesis(text: bytes) -> tuple[dict[str, Any], Suite, bytes, ValidatorSet]:
    """The genesis object, its suite, its hash (section 7) and the validator set of height 1."""
    if len(text) > GENESIS_BYTES_MAX:
        raise ProofError("genesis", f"over {GENESIS_BYTES_MAX} bytes")
    try:
        genesis = json.loads(text)
        suite = suite_named(genesis.get("crypto", "ed25519-sha256"))
        canonical = json.dumps(genesis, sort_keys=True, separators=(",", ":")).encode()
        vset = decode_validator_set(genesis_validator_set(genesis, suite), suite)
        if not isinstance(genesis["chain_id"], str) or type(genesis["genesis_time_ms"]) is not int:
            raise ValueError("chain_id is not text or genesis_time_ms not an integer")
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        OverflowError,  # a power past 64 bits, refused by the encoder
        RecursionError,  # JSON nested deeper than the interpreter's stack
        ProofError,
    ) as e:
        if isinstance(e, ProofError) and e.check == "crypto":
            raise
        detail = "nested too deep" if isinstance(e, RecursionError) else str(e)
        raise ProofError("genesis", f"not a genesis file: {type(e).__name__}: {detail}") from None
    return genesis, suite, suite.hash(canonical), vset


def verify_proof(
    data: bytes,
    genesis_text: bytes,
    *,
    trusted: tuple[int, bytes] | None = None,
    trusting_period_ms: int | None = None,
    now_ms: int | None = None,
    clock_drift_ms: int = 10_000,
    allow_failed: bool = False,
) -> str:
    """Check a proof file (section 13); returns what it proves, raises ProofError naming a check.

    A transaction whose proven result code is not 0 failed (it is in its block all
    the same): refused as `result code` unless `allow_failed`, so that a caller
    reading only the verdict never takes a failed transfer for a done one.
    """
    if len(data) > FILE_BYTES_MAX:
        raise ProofError("encoding", f"the file is over {FILE_BYTES_MAX} bytes")
    genesis, suite, genesis_hash, genesis_set = load_genesis(genesis_text)
    f = _array(_decode(data, "the file", FILE_BYTES_MAX, HOPS_MAX, FILE_BYTES_MAX), "the file", 7)
    if f[0] != FORMAT_TAG or f[1] not in KINDS:
        raise ProofError("encoding", f"not a {FORMAT_TAG} tx or state proof")
    if f[2] != genesis["chain_id"]:
        raise ProofError(
            "chain id", f"the file is of {f[2]!r}, the genesis of {genesis['chain_id']!r}"
        )
    if f[3] != genesis_hash:
        raise ProofError("genesis hash", "the file was built from another genesis")
    hops = _array(f[5], "the hops")
    if not hops:
        raise ProofError("encoding", "the file has no hop")
    state = Trusted(0, b"", genesis["genesis_time_ms"], genesis_set, None)
    start = None if f[4] is None else _array(f[4], "the trusted header", 2)
    if (start is None) != (trusted is None) or (
        start is not None and (start[0], start[1]) != trusted
    ):
        raise ProofError("trusted header", "the file starts from another header than the one given")
    for i, hop in enumerate(hops):
        # The period bounds the age of T, the header trusted before each hop (a trusted
        # starting header is T from the second hop on).
        if trusting_period_ms is not None and not (i == 0 and trusted is not None):
            assert now_ms is not None
            if state.time_ms + trusting_period_ms <= now_ms:
                raise ProofError(
                    "trusting period",
                    f"{'the genesis' if state.height == 0 else f'height {state.height}'} is "
                    f"{now_ms - state.time_ms} ms old, "
                    f"the trusting period {trusting_period_ms} ms",
                )
        anchor = trusted if i == 0 else None
        state = _follow(state, _array(hop, "a hop", 4), genesis["chain_id"], suite, anchor)
        if (
            now_ms is not None
            and trusting_period_ms is not None
            and (state.time_ms > now_ms + clock_drift_ms)
        ):
            raise ProofError("header time", f"header {state.height} is from the future")
    target = _array(f[6], "the target")
    if f[1] == "tx":
        return _check_tx(target, state, genesis["chain_id"], suite, allow_failed)
    return _check_state(target, state, suite)


def _follow(
    state: Trusted, hop: list[Any], chain_id: str, suite: Suite, anchor: tuple[int, bytes] | None
) -> Trusted:
    """Verify one hop from `state` (section 13.3, step 4); the new trusted state."""
    header = decode_header(_bin(hop[0], "a hop's header"), suite)
    commit = decode_commit(_bin(hop[1], "a hop's certificate"))
    vset = decode_validator_set(_bin(hop[2], "a hop's validator set"), suite)
    nxt = vset if hop[3] is None else decode_validator_set(_bin(hop[3], "a next set"), suite)
    h = header.height
    if header.chain_id != chain_id:
        raise ProofError("chain id", f"header {h} is of {header.chain_id!r}, not {chain_id!r}")
    if vset.hash != header.validators_hash or nxt.hash != header.next_validators_hash:
        raise ProofError("validator-set hash", f"the sets given do not hash to header {h}'s")
    signers = signed_power(commit, header, vset, suite)
    signed = sum(vset.powers[i] for i in signers)
    if 3 * signed <= 2 * vset.total:
        raise ProofError("quorum", f"signers hold {signed} of {vset.total} at height {h}")
    if anchor is not None:  # the caller trusts this header by its hash
        if (h, header.hash) != anchor:
            raise ProofError("trusted header", f"the first header is not the one given ({h})")
        return Trusted(h, header.hash, header.time_ms, nxt, header)
    if h <= state.height:
        raise ProofError("height", f"header {h} does not follow {state.height}")
    # Height 1's time may equal genesis_time_ms (section 3); later times strictly increase.
    at_genesis = state.header is None
    if header.time_ms < state.time_ms or (not at_genesis and header.time_ms == state.time_ms):
        raise ProofError("header time", f"header {h} is not after height {state.height}")
    if h == state.height + 1:
        if header.last_block_hash != state.hash:
            raise ProofError("last block hash", f"header {h} does not link to {state.height}")
        if header.validators_hash != state.next_set.hash:
            raise ProofError(
                "validator-set hash", f"header {h}'s set is not the one {state.height} named"
            )
    else:
        trusted_power = state.next_set.power_of()
        vouched = sum(trusted_power.get(vset.keys[i], 0) for i in signers)
        if 3 * vouched <= state.next_set.total:
            raise ProofError(
                "trusted power",
                f"validators trusted at height {state.height} signed {vouched} of "
                f"{state.next_set.total} of header {h}; a skip needs more than 1/3",
            )
    return Trusted(h, header.hash, header.time_ms, nxt, header)


def _check_tx(
    target: list[Any], state: Trusted, chain_id: str, suite: Suite, allow_failed: bool
) -> str:
    """Section 13.3, step 5: the tx under header h's data_hash, its result under h + 1's."""
    _array(target, "the tx target", 5)
    tx = _bin(target[0], "the transaction", most=TX_BYTES_MAX)
    tx_hash = _bin(target[1], "the transaction hash", (HASH_BYTES,))
    final = state.header
    assert final is not None
    if target[2] is None:
        header = final
    else:
        header = decode_header(_bin(target[2], "header h"), suite)
        if header.chain_id != chain_id:
            raise ProofError("chain id", f"header {header.height} is of {header.chain_id!r}")
        if header.hash != final.last_block_hash or header.height + 1 != final.height:
            raise ProofError("last block hash", f"header {final.height} does not link to header h")
    if suite.hash(tx) != tx_hash:
        raise ProofError("tx byte", f"the transaction's bytes do not hash to {tx_hash.hex()}")
    index, total, aunts = _path(_array(target[3], "the tx path", 3), "the tx path")
    try:
        root = merkle_root(tx, index, total, aunts, suite)
    except ValueError as e:
        raise ProofError("tx Merkle step", str(e)) from None
    if root != header.data_hash:
        raise ProofError(
            "tx Merkle step", f"the path does not lead to header {header.height}'s data_hash"
        )
    said = f"proof holds: tx {tx_hash.hex()} is transaction {index} of block {header.height}"
    if target[4] is None:
        return said + f" of chain {chain_id} (inclusion only, no result proof)"
    result_bytes, path = _array(target[4], "the result", 2)
    result = _bin(result_bytes, "the result", most=RESULT_BYTES_MAX)
    r_index, r_total, r_aunts = _path(_array(path, "the result path", 3), "the result path")
    if target[2] is None:
        raise ProofError("result step", f"no header {header.height + 1} carries the results hash")
    if (r_index, r_total) != (index, total):
        raise ProofError("result step", f"result {r_index} of {r_total} is not the transaction's")
    try:
        root = merkle_root(result, r_index, r_total, r_aunts, suite)
    except ValueError as e:
        raise ProofError("result step", str(e)) from None
    if root != final.last_results_hash:
        raise ProofError(
            "result step", f"the path does not lead to header {final.height}'s last_results_hash"
        )
    code, _data = _array(
        _decode(result, "the result", RESULT_BYTES_MAX, 2, RESULT_BYTES_MAX), "a result", 2
    )
    result_code = _uint(code, "a result code")
    if result_code != 0 and not allow_failed:
        raise ProofError(
            "result code",
            f"tx {tx_hash.hex()} is in block {header.height} but failed with code "
            f"{result_code} (--allow-failed accepts a failed transaction)",
        )
    return said + f" of chain {chain_id}, result code {result_code}"


def _check_state(target: list[Any], state: Trusted, suite: Suite) -> str:
    """Section 13.3, step 5: a key's value (or absence) under header F's app_hash (section 11)."""
    _array(target, "the state target", 3)
    key = _bin(target[0], "the state key", most=STATE_KEY_BYTES_MAX)
    value = None if target[1] is None else _bin(target[1], "the value", most=STATE_VALUE_BYTES_MAX)
    raw = _bin(target[2], "the state proof")
    if not key or len(raw) > STATE_PROOF_BYTES_MAX:
        raise ProofError("state proof encoding", "an empty key, or a proof over 9,000 bytes")
    try:
        proof = _decode(raw, "the state proof", STATE_PROOF_BYTES_MAX, 256, HASH_BYTES)
        proof = _array(proof, "the state proof", 2)
        siblings = [_bin(s, "a sibling", (0, HASH_BYTES)) for s in _array(proof[0], "siblings")]
        leaf = None if proof[1] is None else _array(proof[1], "the leaf", 2)
        if leaf is not None:
            leaf = [_bin(x, "the leaf", (HASH_BYTES,)) for x in leaf]
    except ProofError as e:
        raise ProofError("state proof encoding", str(e)) from None
    if EMPTY_HASH in siblings or (siblings and not siblings[-1]):
        raise ProofError(
            "state proof encoding", "an empty subtree written out, or a last sibling E"
        )
    path, d = suite.hash(key), len(siblings)
    if value is not None:
        if leaf is None or leaf[0] != path:
            raise ProofError("state key", "the proof's leaf is not the key's")
        if leaf[1] != suite.hash(value):
            raise ProofError("state value", "the value does not hash to the proven leaf's")
    elif leaf is not None and (leaf[0] == path or not _same_bits(leaf[0], path, d)):
        raise ProofError("absence", "the key is present, or the leaf is not on its path")
    node = EMPTY_HASH if leaf is None else suite.hash(b"\x10" + leaf[0] + leaf[1])
    for i in range(d - 1, -1, -1):
        sibling = siblings[i] or EMPTY_HASH
        bit = (path[i // 8] >> (7 - i % 8)) & 1
        node = suite.hash(b"\x11" + node + sibling if bit == 0 else b"\x11" + sibling + node)
    assert state.header is not None, "a file has at least one hop"
    if node != state.header.app_hash:
        raise ProofError(
            "state proof step", f"the path does not lead to header {state.height}'s app_hash"
        )
    held = "absent" if value is None else f"holds {value.hex()}"
    return f"proof holds: state key {key.hex()} {held} after block {state.height - 1}"


def _same_bits(a: bytes, b: bytes, bits: int) -> bool:
    whole, rest = divmod(bits, 8)
    if a[:whole] != b[:whole]:
        return False
    return rest == 0 or (a[whole] ^ b[whole]) >> (8 - rest) == 0


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check an Archipelago proof file offline.")
    p.add_argument("file", help="the proof file")
    p.add_argument("--genesis", required=True, help="the chain's genesis.json, which you trust")
    p.add_argument(
        "--trusted-height", type=int, help="a header you trust, if the file starts there"
    )
    p.add_argument("--trusted-hash", help="its block hash (64 hex)")
    p.add_argument(
        "--trusting-period-ms",
        type=int,
        help="refuse trust older than this (default: unlimited, for an offline audit)",
    )
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help="accept a transaction whose result code is not 0 (by default: exit 1)",
    )
    ns = p.parse_args(argv)
    return run(
        ns.file,
        ns.genesis,
        ns.trusted_height,
        ns.trusted_hash,
        ns.trusting_period_ms,
        allow_failed=ns.allow_failed,
    )


def run(
    file: str,
    genesis: str,
    trusted_height: int | None,
    trusted_hash: str | None,
    trusting_period_ms: int | None,
    prog: str = "verify-proof",
    *,
    allow_failed: bool = False,
) -> int:
    """The command: print one line, return the exit code (usage errors start with `prog`)."""
    if (trusted_height is None) != (trusted_hash is None):
        print(
            f"{prog}: give both --trusted-height and --trusted-hash, or neither",
            file=sys.stderr,
        )
        return EXIT_USAGE
    trusted = None
    if trusted_height is not None and trusted_hash is not None:
        try:
            trusted = (trusted_height, bytes.fromhex(trusted_hash))
        except ValueError:
            print(f"{prog}: --trusted-hash is not hex", file=sys.stderr)
            return EXIT_USAGE
    try:
        with open(file, "rb") as fp:
            data = fp.read(FILE_BYTES_MAX + 1)
        with open(genesis, "rb") as fp:
            genesis_text = fp.read(GENESIS_BYTES_MAX + 1)
    except OSError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        said = verify_proof(
            data,
            genesis_text,
            trusted=trusted,
            trusting_period_ms=trusting_period_ms,
            now_ms=time.time_ns() // 1_000_000,
            allow_failed=allow_failed,
        )
    except ProofError as e:
        print(f"proof rejected: {e}")
        return EXIT_REJECTED
    print(said)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
