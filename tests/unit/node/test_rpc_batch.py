"""The API's msgpack batch reader (node/rpc.py `_msgpack_byte_strings`) accepts exactly what
the codec's bounded reader (`consensus.codec.decode_binaries`) accepts as an array of byte
strings, and refuses a batch over its count from the header alone.

Why it exists: `POST /txs` with application/octet-stream used to go through msgpack whole,
which builds every object of a 1 MiB body (a million nils: 16 MiB) before any check.
"""

from __future__ import annotations

import random

import pytest

from consensus.codec import DecodeError, decode_binaries, encode
from node.rpc import TooManyItems, _msgpack_byte_strings


def _old_reader(data: bytes, count_max: int) -> list[bytes]:
    items = decode_binaries(
        data, "txs", count_max=10**9, length_max=len(data), bytes_max=len(data) + 1
    )
    if len(items) > count_max:
        raise TooManyItems("too many")
    return list(items)


def _outcome(reader: object, data: bytes) -> object:
    try:
        return reader(data, 100_000)  # type: ignore[operator]
    except TooManyItems:
        return "too many"
    except DecodeError:
        return "refused"


def test_batches_of_every_header_size_read_back_as_encoded() -> None:
    """Arrays of 0, 1, 15, 16, 65,536 items; items of 0, 255, 256 and 65,536 bytes."""
    rng = random.Random(11)
    for count in (0, 1, 15, 16, 65_536):
        sizes = [0, 255, 256, 65_536] if count >= 4 else [3] * count
        items = [rng.randbytes(sizes[i]) if i < len(sizes) else b"\x01" for i in range(count)]
        assert _msgpack_byte_strings(encode(items), 100_000) == items


def test_agrees_with_the_codec_on_mutated_batches() -> None:
    """Random byte flips, truncations and extensions of valid batches: both readers give the
    same items or both refuse (the count limit aside)."""
    rng = random.Random(12)
    for _ in range(3_000):
        items = [
            rng.randbytes(rng.choice((0, 1, 20, 255, 256, 300))) for _ in range(rng.randrange(20))
        ]
        data = bytearray(encode(items))
        match rng.randrange(3):
            case 0 if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            case 1 if data:
                del data[rng.randrange(len(data)) :]
            case _:
                data += rng.randbytes(rng.randrange(1, 4))
        assert _outcome(_msgpack_byte_strings, bytes(data)) == _outcome(_old_reader, bytes(data))


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\xc0" * (1 << 20),  # a million nils
        b"\x91\xdd" + (1 << 20).to_bytes(4, "big") + b"\xc0" * (1 << 20),  # nested in an item
        b"\x91" * (1 << 20),  # nested a million deep
        b"\x91\xc6\xff\xff\xff\xff",  # an item declared 4 GiB long
    ],
)
def test_hostile_batches_are_refused_from_their_headers(data: bytes) -> None:
    with pytest.raises(DecodeError):
        _msgpack_byte_strings(data, 10_000)
