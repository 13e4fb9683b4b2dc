"""Frames and messages on the secured stream: encode, and decode untrusted bytes.

Why here and sans-I/O: this is the edge where bytes from a peer become
values. Everything in it is pure so that the decoder can be fuzzed (the
hypothesis tests feed it arbitrary bytes) and so that the one rule that
protects memory is in one place: a frame's 4-byte length is checked against
`frame_bytes_max` before a single byte of its body is buffered.

Frame: 4-byte big-endian body length, then a msgpack body. The body is an
array whose first element is the message kind (docs/PROTOCOL.md (section 8) has
the byte-exact layout):

    [0, version, listen_port]        HELLO   first frame each side sends
    [1, channel, [payload, ...]]     DIRECT  point-to-point batch
    [2, channel, [payload, ...]]     GOSSIP  batch of broadcast payloads
    [3, nonce]                       PING
    [4, nonce]                       PONG

Payloads are opaque bytes, except on the PEX channel whose payloads this
module also defines (`encode_pex_request`, `encode_pex_addresses`,
`decode_pex`).

`FrameDecoder.feed` raises only `FrameError` (or its subclass
`FrameTooLarge`); any other exception from it is a bug.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

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

FRAME_HEADER_BYTES = 4
# msgpack overhead of one bin item (bin32 header) and of a batch's envelope
# ([kind, channel, array32 header]); used to keep batches under their limit.
PAYLOAD_OVERHEAD_BYTES = 5
BATCH_OVERHEAD_BYTES = 16
# Bounds of a PEX addresses message, so that decoding one is cheap.
PEX_ADDRESSES_MAX = 256
HOST_CHARS_MAX = 253
NODE_ID_CHARS = 40
UINT64_MAX = 2**64 - 1

_header = struct.Struct(">I")
_pack_header = _header.pack
_unpack_header_from = _header.unpack_from
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
    kind = KIND_GOSSIP if gossip else KIND_DIRECT
    return _frame(_packb([kind, channel, payloads]))


def encode_ping(nonce: int) -> bytes:
    return _frame(_packb([KIND_PING, nonce]))


def encode_pong(nonce: int) -> bytes:
    return _frame(_packb([KIND_PONG, nonce]))


def encode_pex_request() -> bytes:
    return _packb([0])


def encode_pex_addresses(addresses: list[tuple[str, str, int]]) -> bytes:
    assert len(addresses) <= PEX_ADDRESSES_MAX
    return _packb([1, [list(a) for a in addresses]])


def _unpack(body: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ValueError, TypeError, ...)
        raise FrameError(f"invalid msgpack: {type(exc).__name__}") from exc


def _uint(value: object, what: str, limit: int = UINT64_MAX) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise FrameError(f"{what} must be an integer in [0, {limit}]")
    return value


def decode_body(body: bytes | memoryview) -> Message:
    """One frame body to a message. Raises FrameError on anything unexpected."""
    value = _unpack(body)
    if type(value) is not list or not value:
        raise FrameError("frame body must be a non-empty array")
    kind = value[0]
    if type(kind) is not int:
        raise FrameError("message kind must be an integer")
    if kind == KIND_DIRECT or kind == KIND_GOSSIP:
        if len(value) != 3:
            raise FrameError("batch must have 3 fields")
        channel = value[1]
        if type(channel) is not int or channel not in CHANNEL_NAMES:
            raise FrameError("unknown channel")
        payloads = value[2]
        if type(payloads) is not list or not payloads:
            raise FrameError("batch payloads must be a non-empty array")
        for payload in payloads:
            if type(payload) is not bytes:
                raise FrameError("payload must be bytes")
        return Batch(kind == KIND_GOSSIP, channel, payloads)
    if kind == KIND_HELLO:
        if len(value) != 3:
            raise FrameError("hello must have 3 fields")
        return Hello(_uint(value[1], "version"), _uint(value[2], "listen_port", 65535))
    if kind == KIND_PING or kind == KIND_PONG:
        if len(value) != 2:
            raise FrameError("ping/pong must have 2 fields")
        nonce = _uint(value[1], "nonce")
        return Ping(nonce) if kind == KIND_PING else Pong(nonce)
    raise FrameError(f"unknown message kind {kind}")


class FrameDecoder:
    """Splits the decrypted byte stream into frames and decodes each one.

    Memory bound: the buffer holds at most one partial frame of at most
    `frame_bytes_max` bytes plus the bytes of one `feed` call; a header that
    claims more than `frame_bytes_max` raises `FrameTooLarge` before its body
    is buffered.
    """

    __slots__ = ("_buffer", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int) -> None:
        assert FRAME_HEADER_BYTES < frame_bytes_max < 2**32
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[Message]:
        if self._buffer:
            self._buffer += data
            work: bytes | bytearray = self._buffer
        else:
            work = data
        messages: list[Message] = []
        limit = self.frame_bytes_max
        size = len(work)
        offset = 0
        with memoryview(work) as view:
            while size - offset >= FRAME_HEADER_BYTES:
                (length,) = _unpack_header_from(view, offset)
                if length > limit:
                    raise FrameTooLarge(length, limit)
                end = offset + FRAME_HEADER_BYTES + length
                if end > size:
                    break
                messages.append(decode_body(view[offset + FRAME_HEADER_BYTES : end]))
                offset = end
            rest = bytearray(view[offset:]) if offset < size else bytearray()
        self._buffer = rest
        return messages


def decode_pex(payload: bytes) -> PexMessage:
    """A PEX channel payload to a message. Raises FrameError on anything unexpected."""
    value = _unpack(payload)
    if type(value) is not list or not value:
        raise FrameError("pex message must be a non-empty array")
    kind = value[0]
    if kind == 0 and type(kind) is int and len(value) == 1:
        return PexRequest()
    if kind == 1 and type(kind) is int and len(value) == 2:
        entries = value[1]
        if type(entries) is not list or len(entries) > PEX_ADDRESSES_MAX:
            raise FrameError("pex addresses must be an array of bounded length")
        out: list[tuple[str, str, int]] = []
        for entry in entries:
            if type(entry) is not list or len(entry) != 3:
                raise FrameError("pex address must be [node_id, host, port]")
            node_id, host, port = entry
            if (
                type(node_id) is not str
                or len(node_id) != NODE_ID_CHARS
                or any(c not in "0123456789abcdef" for c in node_id)
            ):
                raise FrameError("pex node id must be 40 lowercase hex characters")
            if type(host) is not str or not 0 < len(host) <= HOST_CHARS_MAX:
                raise FrameError("pex host must be a non-empty string")
            out.append((node_id, host, _uint(port, "port", 65535)))
        return PexAddresses(tuple(out))
    raise FrameError("unknown pex message")
