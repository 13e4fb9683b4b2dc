"""Canonical msgpack: one byte string per value, and a strict decoder.

Every type whose bytes nodes must agree on (hashed, signed or gossiped) is
encoded as a msgpack array of its fields in a fixed order. The canonical form
is what msgpack's reference packer emits with `use_bin_type=True`: the
shortest encoding of every integer, string, byte string and container length.
The decoder enforces it by re-encoding what it parsed and comparing bytes, so
two different byte strings never decode to one value (which would let a peer
change a hash without changing the meaning).
"""

from __future__ import annotations

from typing import Any

import msgpack

# The largest encoded value any decoder here accepts; callers pass tighter limits.
# Bounded so a malicious length prefix inside msgpack cannot make us allocate more.
DECODE_BYTES_MAX = 64 * 1024 * 1024


class DecodeError(ValueError):
    """Raised for any input that is not the canonical encoding of a valid value."""


def encode(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def decode(data: bytes, *, bytes_max: int = DECODE_BYTES_MAX) -> Any:
    """Parse canonical msgpack; maps, floats and extension types are not canonical here."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    if len(data) > bytes_max:
        raise DecodeError(f"encoded value is {len(data)} bytes, limit {bytes_max}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=bytes_max,
            max_bin_len=bytes_max,
            max_array_len=bytes_max,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types on hostile input
        raise DecodeError(f"malformed msgpack: {type(e).__name__}") from None
    if encode(obj) != bytes(data):
        raise DecodeError("non-canonical encoding")
    return obj


# Field checkers used by the types' from_obj methods. Each raises DecodeError.


def expect_tuple(obj: Any, length: int, what: str) -> tuple[Any, ...]:
    if not isinstance(obj, tuple) or len(obj) != length:
        raise DecodeError(f"{what}: expected an array of {length} fields")
    return obj


def expect_int(obj: Any, what: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise DecodeError(f"{what}: expected an integer in [{lo}, {hi}]")
    return obj


def expect_bytes(obj: Any, what: str, *, length: int | None = None, length_max: int = 0) -> bytes:
    if type(obj) is not bytes:
        raise DecodeError(f"{what}: expected bytes")
    if length is not None and len(obj) != length:
        raise DecodeError(f"{what}: expected {length} bytes, got {len(obj)}")
    if length is None and len(obj) > length_max:
        raise DecodeError(f"{what}: {len(obj)} bytes exceeds limit {length_max}")
    return obj


def expect_str(obj: Any, what: str, length_max: int) -> str:
    if type(obj) is not str or len(obj.encode()) > length_max:
        raise DecodeError(f"{what}: expected a string of at most {length_max} bytes")
    return obj


def expect_array(obj: Any, what: str, count_max: int) -> tuple[Any, ...]:
    if not isinstance(obj, tuple) or len(obj) > count_max:
        raise DecodeError(f"{what}: expected an array of at most {count_max} items")
    return obj
