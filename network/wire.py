"""Frames and messages on the secured stream: encode, and decode untrusted bytes.

Why here and sans-I/O: this is the edge where bytes from a peer become
values. Everything in it is pure so that the decoder can be fuzzed (the
hypothesis tests feed it arbitrary bytes) and so that the rules that protect
memory and CPU are in one place.

Frame: 4-byte big-endian body length, then a msgpack body. The body is an
array whose first element is the message kind (docs/PROTOCOL.md (section 8) has
the byte-exact layout):

    [0, version, listen_port]        HELLO   first frame each side sends
    [1, channel, [payload, ...]]     DIRECT  point-to-point batch
    [2, channel, [payload, ...]]     GOSSIP  batch of broadcast payloads
    [3, nonce]                       PING
    [4, nonce]                       PONG

Payloads are opaque non-empty bytes, except on the PEX channel whose payloads
this module also defines (`encode_pex_request`, `encode_pex_addresses`,
`decode_pex`).

What a frame can cost. A generic msgpack decode builds the whole object
graph before any type check, so 16 MiB of nested empty arrays would become
16 million Python lists (about 1 GiB) before being refused. Nothing here
does that. A frame body holds only arrays, integers and bins, so it is
parsed by hand from the frame's bytes: each header is checked against the
message's own bound before anything behind it is read, a wrong type byte is
refused before an object is built for it, and each payload is copied once:

* the 4-byte length is checked against `frame_bytes_max` before a byte of
  the body is buffered (`FrameTooLarge`);
* the envelope (array header, kind, channel, payload count: at most
  `ENVELOPE_BYTES_MAX` bytes) is checked as soon as it has arrived, while the
  rest of a large frame is still on its way, so a frame that cannot be legal
  is refused before it is buffered;
* HELLO, PING and PONG bodies are at most `CONTROL_BODY_BYTES_MAX` bytes;
* a batch holds 1 to `BATCH_PAYLOADS_MAX` payloads, each a non-empty bin.

So decoding a frame builds at most `BATCH_PAYLOADS_MAX` bytes objects and
costs time linear in its length (about 1 us per frame and 0.3 us per payload,
plus the copy). PEX payloads, which carry strings, are read with msgpack's
streaming `Unpacker` with every container forbidden (`max_array_len=0`,
`max_map_len=0`, `max_ext_len=0`): a scalar read of anything nested raises,
and the protocol's own arrays are read with `read_array_header()`, which
builds nothing.

`FrameDecoder` raises only `FrameError` (or its subclass `FrameTooLarge`);
any other exception from it is a bug.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from network.errors import FrameError, FrameTooLarge

PROTOCOL_VERSION = 1

# Channel ids; their order is their send priority (consensus first).
CONSENSUS = 1
EVIDENCE = 2
BLOCKSYNC = 3
MEMPOOL = 4
PEX = 5
CHANNELS: tuple[int, ...] = (CONSENSUS, EVIDENCE, BLOCKSYNC, MEMPOOL, PEX)
CHANNEL_NAMES: dict[int, str] = {
    CONSENSUS: "consensus",
    EVIDENCE: "evidence",
    BLOCKSYNC: "blocksync",
    MEMPOOL: "mempool",
    PEX: "pex",
}

KIND_HELLO = 0
KIND_DIRECT = 1
KIND_GOSSIP = 2
KIND_PING = 3
KIND_PONG = 4
_CONTROL_KINDS = (KIND_HELLO, KIND_PING, KIND_PONG)

FRAME_HEADER_BYTES = 4
# msgpack overhead of one bin item (bin32 header) and of a batch's envelope
# ([kind, channel, array32 header]); used to keep batches under their limit.
PAYLOAD_OVERHEAD_BYTES = 5
BATCH_OVERHEAD_BYTES = 16
# Payloads in one batch frame. The sender (network.peer) never puts more in
# one frame: a write carries at most `write_bytes_max` (256 KiB) of frames, so
# this allows payloads down to 64 bytes at full batches (votes and
# transactions are larger); a receiver refuses more. It bounds the objects a
# batch builds: 4096 x ~40 B of headers besides the payload bytes themselves.
BATCH_PAYLOADS_MAX = 4096
# Largest HELLO / PING / PONG body in any valid msgpack form: an array32
# header (5 bytes) and three uint64 (9 bytes each) is 32; the smallest forms
# are 3 to 11 bytes.
CONTROL_BODY_BYTES_MAX = 32
# Largest envelope [array header, kind, channel, array header of the
# payloads] in any valid form: 5 + 9 + 9 + 5.
ENVELOPE_BYTES_MAX = 28
# Bounds of a PEX message, so that decoding one is cheap. The largest legal
# addresses message is 256 entries of (40 + 253 + port + headers) ~ 77 KB.
PEX_ADDRESSES_MAX = 256
PEX_PAYLOAD_BYTES_MAX = 96 * 1024
HOST_CHARS_MAX = 253
NODE_ID_CHARS = 40
# A decoded frame at least this long is dropped from the decoder's buffer at
# once (copying the few bytes behind it) instead of when the next read comes.
_RELEASE_FRAME_BYTES_MIN = 64 * 1024
UINT64_MAX = 2**64 - 1

_header = struct.Struct(">I")
_pack_header = _header.pack
_unpack_header_from = _header.unpack_from
# What msgpack raises on bad or truncated input (FormatError, StackError,
# limit overruns and invalid UTF-8 are ValueErrors; OutOfData is an
# UnpackException; an unhashable map key is a TypeError).
_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


def _packb(value: object) -> bytes:
    packed: bytes = msgpack.packb(value)
    return packed


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    listen_port: int


@dataclass(frozen=True, slots=True)
class Batch:
    gossip: bool
    channel: int
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


Message = Hello | Batch | Ping | Pong


@dataclass(frozen=True, slots=True)
class PexRequest:
    pass


@dataclass(frozen=True, slots=True)
class PexAddresses:
    addresses: tuple[tuple[str, str, int], ...]  # (node_id, host, port)


PexMessage = PexRequest | PexAddresses


def _frame(body: bytes) -> bytes:
    return _pack_header(len(body)) + body


def encode_hello(listen_port: int) -> bytes:
    return _frame(_packb([KIND_HELLO, PROTOCOL_VERSION, listen_port]))


def encode_batch(gossip: bool, channel: int, payloads: list[bytes]) -> bytes:
    assert 0 < len(payloads) <= BATCH_PAYLOADS_MAX
    kind = KIND_GOSSIP if gossip else KIND_DIRECT
    return _frame(_packb([kind, channel, payloads]))


def encode_ping(nonce: int) -> bytes:
    return _frame(_packb([KIND_PING, nonce]))


def encode_pong(nonce: int) -> bytes:
    return _frame(_packb([KIND_PONG, nonce]))


_PEX_REQUEST = _packb([0])


def encode_pex_request() -> bytes:
    return _PEX_REQUEST


def encode_pex_addresses(addresses: list[tuple[str, str, int]]) -> bytes:
    assert len(addresses) <= PEX_ADDRESSES_MAX
    return _packb([1, [list(a) for a in addresses]])


def _unpacker(size: int, *, str_chars_max: int = 0) -> msgpack.Unpacker:
    """A streaming reader of `size` bytes that refuses every container and long string.

    Its first buffer is at most 1 KiB (msgpack would allocate up to 1 MiB per
    reader); feeding more grows it.
    """
    return msgpack.Unpacker(
        read_size=min(size, 1024),
        max_buffer_size=size,
        max_bin_len=size,
        max_str_len=str_chars_max,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
        raw=False,
    )


def _uint(value: object, what: str, limit: int = UINT64_MAX) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise FrameError(f"{what} must be an integer in [0, {limit}]")
    return value


# msgpack markers of the only types a frame body holds (besides payload bins).
_FIXARRAY_FIRST, _FIXARRAY_LAST, _ARRAY16, _ARRAY32 = 0x90, 0x9F, 0xDC, 0xDD
_POSITIVE_FIXINT_LAST, _NEGATIVE_FIXINT_FIRST = 0x7F, 0xE0
# uint8..uint64, int8..int64: (width in bytes, signed)
_INT_FORMS = {
    0xCC: (1, False),
    0xCD: (2, False),
    0xCE: (4, False),
    0xCF: (8, False),
    0xD0: (1, True),
    0xD1: (2, True),
    0xD2: (4, True),
    0xD3: (8, True),
}
_BIN8, _BIN16, _BIN32 = 0xC4, 0xC5, 0xC6
_unpack_u16_from = struct.Struct(">H").unpack_from


def _read_sized(view: memoryview, offset: int, width: int, signed: bool = False) -> int:
    end = offset + width
    if end > len(view):
        raise FrameError("truncated frame")
    return int.from_bytes(view[offset:end], "big", signed=signed)


def _read_array_header(view: memoryview, offset: int) -> tuple[int, int]:
    """(element count, offset after the header); builds nothing."""
    marker = view[offset]
    if _FIXARRAY_FIRST <= marker <= _FIXARRAY_LAST:
        return marker - _FIXARRAY_FIRST, offset + 1
    if marker == _ARRAY16:
        return _read_sized(view, offset + 1, 2), offset + 3
    if marker == _ARRAY32:
        return _read_sized(view, offset + 1, 4), offset + 5
    raise FrameError("expected an array")


def _read_int(view: memoryview, offset: int) -> tuple[int, int]:
    """(value, offset after it) of a msgpack integer in any of its forms."""
    marker = view[offset]
    if marker <= _POSITIVE_FIXINT_LAST:
        return marker, offset + 1
    if marker >= _NEGATIVE_FIXINT_FIRST:
        return marker - 0x100, offset + 1
    form = _INT_FORMS.get(marker)
    if form is None:
        raise FrameError("expected an integer")
    width, signed = form
    return _read_sized(view, offset + 1, width, signed), offset + 1 + width


def _read_envelope(view: memoryview, body_bytes: int) -> tuple[int, int, int, int, int]:
    """(fields, kind, channel, payload count, offset after the envelope) of a frame body.

    `view` holds the body or at least its first ENVELOPE_BYTES_MAX bytes;
    `body_bytes` is the body's whole length. Channel and count are 0 for
    control messages. Builds nothing; raises FrameError (IndexError past the end).
    """
    fields, offset = _read_array_header(view, 0)
    if fields == 0:
        raise FrameError("frame body must be a non-empty array")
    kind, offset = _read_int(view, offset)
    if kind in _CONTROL_KINDS:
        if body_bytes > CONTROL_BODY_BYTES_MAX:
            raise FrameError(f"control message of {body_bytes} bytes")
        return fields, kind, 0, 0, offset
    if kind != KIND_DIRECT and kind != KIND_GOSSIP:
        raise FrameError(f"unknown message kind {kind}")
    if fields != 3:
        raise FrameError("batch must have 3 fields")
    channel, offset = _read_int(view, offset)
    if channel not in CHANNEL_NAMES:
        raise FrameError("unknown channel")
    count, offset = _read_array_header(view, offset)
    if not 0 < count <= BATCH_PAYLOADS_MAX:
        raise FrameError(f"batch of {count} payloads (1 to {BATCH_PAYLOADS_MAX} allowed)")
    return fields, kind, channel, count, offset


def check_envelope(prefix: bytes | memoryview, body_bytes: int) -> None:
    """Refuse a frame from its first bytes: `prefix` holds at least ENVELOPE_BYTES_MAX of them."""
    with memoryview(prefix) as view:
        try:
            _read_envelope(view, body_bytes)
        except IndexError as exc:
            raise FrameError("invalid envelope") from exc


def decode_body(body: bytes | memoryview) -> Message:
    """One frame body to a message. Raises FrameError on anything unexpected.

    Parsed by hand: the protocol's bodies hold only arrays, integers and bins,
    and reading them directly refuses a wrong byte before any object is
    built for it and copies each payload once.
    """
    size = len(body)
    if size == 0:
        raise FrameError("empty frame body")
    with memoryview(body) as view:
        try:
            fields, kind, channel, count, offset = _read_envelope(view, size)
            if count:
                payloads, offset = _read_bins(view, offset, count)
                message: Message = Batch(kind == KIND_GOSSIP, channel, payloads)
            else:
                message, offset = _read_control(view, offset, fields, kind)
        except (IndexError, struct.error) as exc:
            raise FrameError("truncated frame") from exc
    if offset != size:
        raise FrameError("trailing bytes after the message")
    return message


def _read_bins(view: memoryview, offset: int, count: int) -> tuple[list[bytes], int]:
    """`count` non-empty bins from `view` at `offset`; the payloads and where they end.

    The hot loop of the receiver (~0.3 us per payload besides its copy), so
    written out; a header cut short raises IndexError or struct.error.
    """
    size = len(view)
    payloads: list[bytes] = []
    append = payloads.append
    for _ in range(count):
        marker = view[offset]
        if marker == _BIN8:
            length = view[offset + 1]
            start = offset + 2
        elif marker == _BIN16:
            (length,) = _unpack_u16_from(view, offset + 1)
            start = offset + 3
        elif marker == _BIN32:
            (length,) = _unpack_header_from(view, offset + 1)
            start = offset + 5
        else:
            raise FrameError("payload must be a bin")
        offset = start + length
        if not length or offset > size:
            raise FrameError("payload must be non-empty and inside its frame")
        append(bytes(view[start:offset]))
    return payloads, offset


def _read_control(
    view: memoryview, offset: int, fields: int, kind: int
) -> tuple[Message, int]:
    if kind == KIND_HELLO:
        if fields != 3:
            raise FrameError("hello must have 3 fields")
        version, offset = _read_int(view, offset)
        listen_port, offset = _read_int(view, offset)
        hello = Hello(_uint(version, "version"), _uint(listen_port, "listen_port", 65535))
        return hello, offset
    if fields != 2:
        raise FrameError("ping/pong must have 2 fields")
    nonce, offset = _read_int(view, offset)
    _uint(nonce, "nonce")
    return (Ping(nonce) if kind == KIND_PING else Pong(nonce)), offset


class FrameDecoder:
    """Splits the decrypted byte stream into frames and decodes them one at a time.

    `receive_data(data)` appends bytes; `next_message()` returns the next
    complete message or None. Decoding lazily lets the caller apply its rate
    limits per message and stop at the first one over its limit, instead of
    decoding everything one read brought (a read of 512 KiB of 7-byte PINGs
    is 75,000 frames).

    Memory bound: the buffer holds the bytes of one `receive_data` call plus at
    most one partial frame of at most `frame_bytes_max` bytes; a header that
    claims more raises `FrameTooLarge` before its body is buffered, and a
    partial frame's envelope is checked as soon as it has arrived.
    `partial_frame_bytes` tells the caller how long the incomplete frame will
    be, so it can reserve that memory before reading on.
    """

    __slots__ = ("_buffer", "_checked", "_offset", "frame_bytes_max", "frames_decoded")

    def __init__(self, frame_bytes_max: int) -> None:
        assert FRAME_HEADER_BYTES < frame_bytes_max < 2**32
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._offset = 0
        # Whether the envelope of the partial frame at the head was checked.
        self._checked = False
        self.frames_decoded = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._offset

    @property
    def partial_frame_bytes(self) -> int:
        """Body length of the incomplete frame at the head; 0 if none is known."""
        available = len(self._buffer) - self._offset
        if available < FRAME_HEADER_BYTES:
            return 0
        (length,) = _unpack_header_from(self._buffer, self._offset)
        return int(length) if FRAME_HEADER_BYTES + length > available else 0

    def receive_data(self, data: bytes | bytearray) -> None:
        if self._offset == len(self._buffer):
            # Nothing pending: adopt a fresh bytearray from the transport as is.
            self._buffer = data if type(data) is bytearray else bytearray(data)
        else:
            if self._offset:
                del self._buffer[: self._offset]
            self._buffer += data
        self._offset = 0

    def next_message(self) -> Message | None:
        buffer = self._buffer
        offset = self._offset
        available = len(buffer) - offset
        if available < FRAME_HEADER_BYTES:
            return None
        (length,) = _unpack_header_from(buffer, offset)
        if length > self.frame_bytes_max:
            raise FrameTooLarge(length, self.frame_bytes_max)
        start = offset + FRAME_HEADER_BYTES
        end = start + length
        with memoryview(buffer) as view:
            if end > len(buffer):
                if not self._checked and len(buffer) - start >= ENVELOPE_BYTES_MAX:
                    check_envelope(view[start : start + ENVELOPE_BYTES_MAX], length)
                    self._checked = True
                return None
            message = decode_body(view[start:end])
            # A large frame is released as soon as it is decoded (its payloads
            # are copies; keeping the raw bytes would double what it holds),
            # when the bytes behind it are few enough to copy cheaply.
            left = len(buffer) - end
            release = length >= _RELEASE_FRAME_BYTES_MIN and left * 4 <= length
            rest = bytearray(view[end:]) if release and left else None
        self._checked = False
        self.frames_decoded += 1
        if release:
            self._buffer = rest if rest is not None else bytearray()
            self._offset = 0
        else:
            self._offset = end
        return message

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """`receive_data` then every complete message (for tests and simple callers)."""
        self.receive_data(data)
        messages: list[Message] = []
        while (message := self.next_message()) is not None:
            messages.append(message)
        return messages


def decode_pex(payload: bytes) -> PexMessage:
    """A PEX channel payload to a message. Raises FrameError on anything unexpected."""
    size = len(payload)
    if not 0 < size <= PEX_PAYLOAD_BYTES_MAX:
        raise FrameError(f"pex payload of {size} bytes")
    if payload == _PEX_REQUEST:
        return PexRequest()  # the common case, without building a reader
    try:
        unpacker = _unpacker(size, str_chars_max=HOST_CHARS_MAX)
        unpacker.feed(payload)
        fields = unpacker.read_array_header()
        kind = unpacker.unpack() if fields else None
        if kind == 0 and type(kind) is int and fields == 1:
            message: PexMessage = PexRequest()
        elif kind == 1 and type(kind) is int and fields == 2:
            message = PexAddresses(_read_addresses(unpacker))
        else:
            raise FrameError("unknown pex message")
        if unpacker.tell() != size:
            raise FrameError("trailing bytes after the pex message")
    except _DECODE_ERRORS as exc:
        raise FrameError(f"invalid pex msgpack: {type(exc).__name__}") from exc
    return message


def _read_addresses(unpacker: msgpack.Unpacker) -> tuple[tuple[str, str, int], ...]:
    count = unpacker.read_array_header()
    if count > PEX_ADDRESSES_MAX:
        raise FrameError("pex addresses must be an array of bounded length")
    out: list[tuple[str, str, int]] = []
    for _ in range(count):
        if unpacker.read_array_header() != 3:
            raise FrameError("pex address must be [node_id, host, port]")
        node_id = unpacker.unpack()
        host = unpacker.unpack()
        port = unpacker.unpack()
        if (
            type(node_id) is not str
            or len(node_id) != NODE_ID_CHARS
            or any(c not in "0123456789abcdef" for c in node_id)
        ):
            raise FrameError("pex node id must be 40 lowercase hex characters")
        if type(host) is not str or not 0 < len(host) <= HOST_CHARS_MAX:
            raise FrameError("pex host must be a non-empty string")
        out.append((node_id, host, _uint(port, "port", 65535)))
    return tuple(out)
