"""The frame codec: round trips, limits before allocation, and fuzzing with arbitrary bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from network import wire
from network.errors import FrameError, FrameTooLarge

LIMIT = 1 << 16


def _frame(value: object) -> bytes:
    body = msgpack.packb(value)
    return len(body).to_bytes(4, "big") + body


def test_round_trip_of_every_message_kind() -> None:
    """HELLO, both batch kinds, PING and PONG decode to what was encoded."""
    stream = (
        wire.encode_hello(26656)
        + wire.encode_batch(False, wire.CONSENSUS, [b"a", b"bc"])
        + wire.encode_batch(True, wire.MEMPOOL, [b"tx"])
        + wire.encode_ping(7)
        + wire.encode_pong(7)
    )
    decoder = wire.FrameDecoder(LIMIT)
    assert decoder.feed(stream) == [
        wire.Hello(wire.PROTOCOL_VERSION, 26656),
        wire.Batch(False, wire.CONSENSUS, [b"a", b"bc"]),
        wire.Batch(True, wire.MEMPOOL, [b"tx"]),
        wire.Ping(7),
        wire.Pong(7),
    ]
    assert decoder.buffered_bytes == 0


def test_byte_by_byte_feeding_yields_the_same_messages() -> None:
    """Frames split at every byte boundary decode identically."""
    stream = wire.encode_batch(True, wire.EVIDENCE, [bytes(300), b"x"]) + wire.encode_ping(1)
    decoder = wire.FrameDecoder(LIMIT)
    out: list[wire.Message] = []
    for index in range(len(stream)):
        out += decoder.feed(stream[index : index + 1])
    assert out == [wire.Batch(True, wire.EVIDENCE, [bytes(300), b"x"]), wire.Ping(1)]


@pytest.mark.parametrize("length", [LIMIT + 1, 2**32 - 1])
def test_oversized_header_rejected_before_buffering(length: int) -> None:
    """A header over the limit raises FrameTooLarge at once, with nothing buffered."""
    decoder = wire.FrameDecoder(LIMIT)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(length.to_bytes(4, "big"))
    assert info.value.length == length
    assert decoder.buffered_bytes == 0


@pytest.mark.parametrize(
    "value",
    [
        [],
        {},
        [9, 1],
        [True, 1, [b"x"]],
        [1, 99, [b"x"]],
        [1, 1, []],
        [1, 1, ["text"]],
        [1, 1, b"x"],
        [0, 1],
        [0, -1, 5],
        [0, 1, 70000],
        [3, "x"],
        [3, -1],
        [4, 1, 2],
    ],
)
def test_malformed_bodies_raise_frame_error(value: object) -> None:
    """Bodies of the wrong shape, kind, channel or field type raise FrameError."""
    with pytest.raises(FrameError):
        wire.FrameDecoder(LIMIT).feed(_frame(value))


def test_pex_messages_round_trip_and_validate() -> None:
    """PEX request and addresses round-trip; bad node ids and ports are refused."""
    assert wire.decode_pex(wire.encode_pex_request()) == wire.PexRequest()
    entries = [("ab" * 20, "10.0.0.1", 26656)]
    assert wire.decode_pex(wire.encode_pex_addresses(entries)) == wire.PexAddresses(
        tuple(entries)
    )
    for bad in (
        [1, [["AB" * 20, "h", 1]]],
        [1, [["ab" * 20, "", 1]]],
        [1, [["ab" * 20, "h", 70000]]],
        [1, [["ab" * 20, "h"]]],
        [1, [[]] * (wire.PEX_ADDRESSES_MAX + 1)],
        [2],
    ):
        with pytest.raises(FrameError):
            wire.decode_pex(msgpack.packb(bad))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_decoder_on_arbitrary_bytes_raises_only_frame_error(data: bytes, step: int) -> None:
    """Any bytes, in any chunking, give messages or FrameError, never another exception."""
    decoder = wire.FrameDecoder(1024)
    try:
        for offset in range(0, len(data), step):
            for message in decoder.feed(data[offset : offset + step]):
                assert isinstance(message, wire.Hello | wire.Batch | wire.Ping | wire.Pong)
    except FrameError:
        pass
    assert decoder.buffered_bytes <= 1024 + 4 + step


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.binary(max_size=20)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_msgpack_values, min_size=0, max_size=4))
def test_decoder_on_arbitrary_msgpack_raises_only_frame_error(value: list[object]) -> None:
    """Well-formed msgpack of the wrong shape is still only ever a FrameError."""
    try:
        wire.FrameDecoder(LIMIT).feed(_frame(value))
        wire.decode_pex(msgpack.packb(value))
    except FrameError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.sampled_from(wire.CHANNELS),
    st.lists(st.binary(max_size=300), min_size=1, max_size=20),
)
def test_batches_round_trip(gossip: bool, channel: int, payloads: list[bytes]) -> None:
    """Any batch of payloads encodes and decodes to itself."""
    (message,) = wire.FrameDecoder(LIMIT).feed(wire.encode_batch(gossip, channel, payloads))
    assert message == wire.Batch(gossip, channel, payloads)
