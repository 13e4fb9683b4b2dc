"""The frame codec: round trips, limits before allocation, and fuzzing with arbitrary bytes."""

from __future__ import annotations

import time
import tracemalloc

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
    """A header over the limit raises FrameTooLarge at once, with nothing of its body buffered."""
    decoder = wire.FrameDecoder(LIMIT)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(length.to_bytes(4, "big"))
    assert info.value.length == length
    assert decoder.buffered_bytes == wire.FRAME_HEADER_BYTES


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
        [1, 1, [b""]],
        [1, 1, [b"x", []]],
        [2, 1, [b"x", 7]],
        [3, 1, 2],
        [3, [[]]],
        [1, 1, [b"x"], 0],
        [3, -1],
        [2, -1, [b"x"]],
        [1, 1.0, [b"x"]],
        [0, 1, None],
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
    assert wire.decode_pex(wire.encode_pex_addresses(entries)) == wire.PexAddresses(tuple(entries))
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
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_msgpack_values, min_size=0, max_size=4))
def test_decoder_on_arbitrary_msgpack_raises_only_frame_error(value: list[object]) -> None:
    """Well-formed msgpack of the wrong shape is only ever a FrameError, never misread.

    What the hand-written decoder accepts, msgpack itself reads as the same value.
    """
    try:
        messages = wire.FrameDecoder(LIMIT).feed(_frame(value))
    except FrameError:
        messages = []
    for message in messages:
        assert _as_value(message) == value
    try:
        wire.decode_pex(msgpack.packb(value))
    except FrameError:
        pass


def _as_value(message: wire.Message) -> list[object]:
    if type(message) is wire.Batch:
        return [2 if message.gossip else 1, message.channel, message.payloads]
    if type(message) is wire.Hello:
        return [0, message.version, message.listen_port]
    assert type(message) is wire.Ping or type(message) is wire.Pong
    return [3 if type(message) is wire.Ping else 4, message.nonce]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # array32 header, kind as uint64, channel as int8, array16 of bin16 and bin32
        (
            b"\xdd\x00\x00\x00\x03\xcf"
            + (2).to_bytes(8, "big")
            + b"\xd0\x04"
            + b"\xdc\x00\x02\xc5\x00\x01a\xc6\x00\x00\x00\x02bc",
            wire.Batch(True, wire.MEMPOOL, [b"a", b"bc"]),
        ),
        (b"\x92\xd3" + (3).to_bytes(8, "big") + b"\xcc\x07", wire.Ping(7)),
        (b"\x92\x04\xcf" + (2**64 - 1).to_bytes(8, "big"), wire.Pong(2**64 - 1)),
    ],
)
def test_every_valid_msgpack_form_decodes(body: bytes, message: wire.Message) -> None:
    """Decoders accept any valid msgpack form of the fields, not only the smallest."""
    assert msgpack.unpackb(body) == _as_value(message)
    assert wire.decode_body(body) == message


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.sampled_from(wire.CHANNELS),
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20),
)
def test_batches_round_trip(gossip: bool, channel: int, payloads: list[bytes]) -> None:
    """Any batch of payloads encodes and decodes to itself."""
    (message,) = wire.FrameDecoder(LIMIT).feed(wire.encode_batch(gossip, channel, payloads))
    assert message == wire.Batch(gossip, channel, payloads)


def _bomb(count: int) -> bytes:
    """[3, [[], [], ...]]: a PING whose nonce is `count` empty arrays."""
    return b"\x92\x03\xdd" + count.to_bytes(4, "big") + b"\x90" * count


def test_nested_array_bomb_is_refused_without_building_it() -> None:
    """16 MiB of nested empty arrays decode to a FrameError in milliseconds, building nothing.

    msgpack.unpackb would build 16.7 million lists (~1 GiB) before any check.
    As a PING the envelope refuses it (a PING body is at most 32 bytes); as
    the payload of a batch the first item is not a bin header.
    """
    body = _bomb(16 * 1024 * 1024 - 7)
    for frame in (body, b"\x93\x01\x01\x91" + body):
        tracemalloc.start()
        try:
            start = time.perf_counter()
            with pytest.raises(FrameError):
                wire.decode_body(frame)
            elapsed_s = time.perf_counter() - start
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak_bytes < 64 * 1024
        assert elapsed_s < 0.1


def test_envelope_is_checked_before_the_frame_is_complete() -> None:
    """A partial frame whose first 28 body bytes cannot be legal raises at once."""
    length = 16 * 1024 * 1024
    cases = [
        _bomb(length - 7)[:64],  # PING longer than 32 bytes
        b"\x93\x01\x01\xdd" + (wire.BATCH_PAYLOADS_MAX + 1).to_bytes(4, "big") + bytes(60),
        b"\x93\x01\x63\x91" + bytes(60),  # unknown channel 99
        b"\x93\x09\x01\x91" + bytes(60),  # unknown kind
        bytes(64),  # not an array
    ]
    for prefix in cases:
        decoder = wire.FrameDecoder(length)
        with pytest.raises(FrameError):
            decoder.feed(length.to_bytes(4, "big") + prefix)
    legal = b"\x93\x01\x01\x91\xc6" + (length - 9).to_bytes(4, "big") + bytes(60)
    decoder = wire.FrameDecoder(length)
    assert decoder.feed(length.to_bytes(4, "big") + legal) == []
    assert decoder.partial_frame_bytes == length


def test_batch_payload_count_is_bounded() -> None:
    """BATCH_PAYLOADS_MAX payloads decode; one more is a malformed frame."""
    payloads = [b"x"] * wire.BATCH_PAYLOADS_MAX
    (message,) = wire.FrameDecoder(LIMIT).feed(wire.encode_batch(True, wire.MEMPOOL, payloads))
    assert message == wire.Batch(True, wire.MEMPOOL, payloads)
    with pytest.raises(FrameError):
        wire.FrameDecoder(LIMIT).feed(_frame([2, wire.MEMPOOL, [*payloads, b"x"]]))


def test_control_messages_in_their_largest_form_decode() -> None:
    """HELLO with an array32 header and uint64 fields (32 bytes) is legal; 33 bytes is not."""
    body = b"\xdd\x00\x00\x00\x03" + b"\xcf" + bytes(8) + b"\xcf" + (1).to_bytes(8, "big")
    body += b"\xcf" + (26656).to_bytes(8, "big")
    assert len(body) == wire.CONTROL_BODY_BYTES_MAX
    assert wire.decode_body(body) == wire.Hello(1, 26656)
    with pytest.raises(FrameError):
        wire.decode_body(body + b"\xc0")


def test_pex_payload_size_is_bounded_before_decoding() -> None:
    """A PEX payload over PEX_PAYLOAD_BYTES_MAX is refused from its length alone."""
    with pytest.raises(FrameError):
        wire.decode_pex(b"\x92\x01" + _bomb(wire.PEX_PAYLOAD_BYTES_MAX))
    with pytest.raises(FrameError):
        wire.decode_pex(b"\x92\x01" + _bomb(1000))  # nested arrays inside the bound
