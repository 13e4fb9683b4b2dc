"""Canonical msgpack: one byte string per value, and bounded, typed decoding.

Every type whose bytes nodes must agree on (hashed, signed or gossiped) is
encoded as a msgpack array of its fields in a fixed order. The canonical form
is what msgpack's reference packer emits with `use_bin_type=True`: the
shortest encoding of every integer, string, byte string and container length.
Decoders enforce it by re-encoding what they parsed and comparing bytes, so
two different byte strings never decode to one value (which would let a peer
change a hash without changing the meaning).

Untrusted bytes are decoded by following the expected schema with a `Reader`:
it reads one array header or one scalar at a time, and a non-empty array
where a scalar is expected fails before anything is built. What a decoder
allocates is therefore bounded by the schema (the counts it allows times the
size of a scalar) plus a 64 KiB read buffer, never by the shape or the
lengths the sender declared: a frame of nested empty arrays costs a header
read, not a gigabyte of tuples. `decode` builds a whole value in one call and is kept for small
inputs only (stored values, an application's payload), whose size bounds it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from itertools import islice
from typing import Any, TypeVar

import msgpack

# The largest input the generic `decode` accepts. msgpack builds the whole
# value, up to about 40 bytes of Python objects per input byte (a one-byte
# negative fixint becomes a 28-byte int), so this bounds one call to about
# 2.6 MiB. Anything larger is decoded with a Reader.
DECODE_BYTES_MAX = 64 * 1024
# The longest array `decode` accepts. msgpack allocates an array's slots from
# its header before reading its items, at up to 1,024 levels of nesting, so
# this bounds those slots to 8 bytes x 16 x 1,024 = 128 KiB whatever the
# input. The values decoded this way (stored records, sign bytes) are short.
DECODE_ARRAY_LEN_MAX = 16

# A Reader's msgpack reads its input this much at a time, so its buffer holds
# at most this plus one field, not a copy of a 16 MiB frame.
READ_BYTES = 64 * 1024

_T = TypeVar("_T")


class DecodeError(ValueError):
    """Raised for any input that is not the canonical encoding of a valid value."""


def encode(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def decode(data: bytes, *, bytes_max: int = DECODE_BYTES_MAX) -> Any:
    """Parse small canonical msgpack; maps, floats and extension types are not canonical here."""
    assert bytes_max <= DECODE_BYTES_MAX, "larger inputs are decoded with a Reader"
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
            max_array_len=DECODE_ARRAY_LEN_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as e:  # msgpack raises many types on hostile input
        raise DecodeError(f"malformed msgpack: {type(e).__name__}") from None
    if encode(obj) != data:
        raise DecodeError("non-canonical encoding")
    return obj


def decode_with(
    data: bytes,
    read: Callable[[Reader], _T],
    encode_value: Callable[[_T], bytes],
    *,
    bytes_max: int,
    field_bytes_max: int,
) -> _T:
    """The value `read` takes from `data`, which must be exactly its canonical encoding.

    `bytes_max` is checked before parsing; `field_bytes_max` is the longest
    bin or str the schema has anywhere (a longer one is refused by its header).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("expected bytes")
    if len(data) > bytes_max:
        raise DecodeError(f"encoded value is {len(data)} bytes, limit {bytes_max}")
    r = Reader(data, field_bytes_max=field_bytes_max)
    value = read(r)
    r.end()
    if encode_value(value) != data:
        raise DecodeError("non-canonical encoding")
    return value


def decode_binaries(
    data: bytes, what: str, *, count_max: int, length_max: int, bytes_max: int
) -> tuple[bytes, ...]:
    """A canonical array of at most `count_max` bins of at most `length_max` bytes each."""

    def read(r: Reader) -> tuple[bytes, ...]:
        return r.binaries(what, count_max=count_max, length_max=length_max)

    return decode_with(data, read, encode, bytes_max=bytes_max, field_bytes_max=length_max)


class Reader:
    """Typed reads of one value's fields, in order, from untrusted bytes.

    Each read raises DecodeError naming the field (`what`). Scalars are read
    with msgpack's container limits at zero, so only the headers the schema
    asks for are ever read as arrays; every count is checked against the
    schema's limit before any element is read. msgpack's buffer holds at most
    READ_BYTES plus one field of the input.
    """

    __slots__ = ("_header", "_size", "_unpack", "_unpacker")

    def __init__(self, data: bytes, *, field_bytes_max: int) -> None:
        self._size = len(data)
        unpacker = msgpack.Unpacker(
            io.BytesIO(data),  # shares a bytes object's buffer: no copy
            read_size=max(min(len(data), READ_BYTES), 1),
            max_buffer_size=READ_BYTES + field_bytes_max + _FIELD_HEADER_BYTES_MAX,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=field_bytes_max,
            max_bin_len=field_bytes_max,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self._unpacker = unpacker
        self._unpack = unpacker.unpack
        self._header = unpacker.read_array_header

    def _next(self, what: str) -> Any:
        try:
            return self._unpack()
        except msgpack.OutOfData:
            raise DecodeError(f"{what}: truncated") from None
        except Exception as e:  # msgpack raises many types on hostile input
            raise DecodeError(f"{what}: expected a scalar ({_why(e)})") from None

    def array(self, what: str, *, length: int | None = None, count_max: int = 0) -> int:
        """An array header: exactly `length` items, or at most `count_max`; returns the count."""
        try:
            n: int = self._header()
        except msgpack.OutOfData:
            raise DecodeError(f"{what}: truncated") from None
        except Exception as e:  # msgpack raises many types on hostile input
            raise DecodeError(f"{what}: expected an array ({_why(e)})") from None
        if length is not None:
            if n != length:
                raise DecodeError(f"{what}: expected an array of {length} fields")
        elif n > count_max:
            raise DecodeError(f"{what}: expected an array of at most {count_max} items")
        return n

    def scalar(self, what: str) -> Any:
        """Any one value that is not a non-empty array or map, unchecked."""
        return self._next(what)

    def integer(self, what: str, lo: int, hi: int) -> int:
        obj = self._next(what)
        if type(obj) is not int or not lo <= obj <= hi:
            raise DecodeError(f"{what}: expected an integer in [{lo}, {hi}]")
        return obj

    def binary(self, what: str, *, length: int | None = None, length_max: int = 0) -> bytes:
        """A bin of exactly `length` bytes, or of at most `length_max`."""
        obj = self._next(what)
        if type(obj) is not bytes:
            raise DecodeError(f"{what}: expected bytes")
        if length is not None:
            if len(obj) != length:
                raise DecodeError(f"{what}: expected {length} bytes, got {len(obj)}")
        elif len(obj) > length_max:
            raise DecodeError(f"{what}: {len(obj)} bytes exceeds limit {length_max}")
        return obj

    def text(self, what: str, bytes_max: int) -> str:
        """A str of at most `bytes_max` UTF-8 bytes."""
        obj = self._next(what)
        if type(obj) is not str or len(obj.encode()) > bytes_max:
            raise DecodeError(f"{what}: expected a string of at most {bytes_max} bytes")
        return obj

    def boolean(self, what: str) -> bool:
        obj = self._next(what)
        if type(obj) is not bool:
            raise DecodeError(f"{what}: expected a boolean")
        return obj

    def nil(self, what: str) -> None:
        if self._next(what) is not None:
            raise DecodeError(f"{what}: must be nil")

    def binaries(self, what: str, *, count_max: int, length_max: int) -> tuple[bytes, ...]:
        """An array of at most `count_max` bins of at most `length_max` bytes each.

        Read in one call (msgpack iterates in C); each item is a scalar, so
        the items cost at most `count_max` objects plus their bytes.
        """
        n = self.array(what, count_max=count_max)
        try:
            items = tuple(islice(self._unpacker, n))
        except Exception as e:  # msgpack raises many types on hostile input
            raise DecodeError(f"{what}: expected byte strings ({_why(e)})") from None
        if len(items) != n:
            raise DecodeError(f"{what}: truncated")
        if n and (set(map(type, items)) != _BYTES or max(map(len, items)) > length_max):
            raise DecodeError(f"{what}: expected byte strings of at most {length_max} bytes")
        return items

    def end(self) -> None:
        """Nothing may follow the value."""
        if self._unpacker.tell() != self._size:
            raise DecodeError("trailing bytes after the value")


_BYTES = {bytes}
_FIELD_HEADER_BYTES_MAX = 5  # bin32 or str32: marker and a 4-byte length


def _why(e: Exception) -> str:
    text = str(e)[:80]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
