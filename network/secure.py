"""The secured byte stream: Noise XX handshake with identity binding, then transport.

Why: every connection must prove which node is on the other end and must be
confidential and tamper-evident. The Noise handshake (network/noise.py) gives
a shared key and each side's Noise static key; the handshake payload binds the
static key to the node's long-term identity key (of the chain's crypto suite,
consensus/crypto.py) with a signature, so the node id (the identity key's
20-byte address, in hex) is authenticated. The Noise handshake's own
primitives do not depend on the chain's suite. The chain id is the Noise
prologue, so nodes of different chains fail the handshake instead of talking.

Wire (libp2p-style Noise framing): every Noise message, handshake or
transport, is preceded by its length as 2 bytes big-endian. After the
handshake the plaintexts of the transport messages, concatenated, form the
frame stream (network/wire.py); a frame longer than one Noise message
(65535 bytes including the 16-byte tag) spans several messages.

The transport seals and opens with libsodium directly (through PyNaCl's cffi
binding) so that a large write is encrypted chunk by chunk into one
preallocated buffer without intermediate copies; `noise.CipherState` remains
the reference and the handshake uses it.
"""

from __future__ import annotations

import math
import struct

import msgpack
import trio
from nacl._sodium import ffi, lib

from consensus.crypto import SIGNATURE_BYTES, PrivateKey, active, address_of, verify
from network import noise
from network.errors import (
    ConnectionClosed,
    HandshakeAbandoned,
    HandshakeError,
    HandshakeTimeout,
    NetworkError,
    NoiseError,
    SendTimeout,
)

IDENTITY_DOMAIN = b"archipelago-noise-static:"
LENGTH_PREFIX_BYTES = 2
# Handshake messages are small (at most 32 + 48 + payload + 16 bytes); anything
# bigger than this is not ours.
HANDSHAKE_MESSAGE_BYTES_MAX = 1024
# One read from the socket; also the most a receive buffers beyond one message.
RECEIVE_BYTES_MAX = 512 * 1024
# One read during the handshake: a connection that has not authenticated makes
# the node hold at most one handshake message and this much beyond it.
HANDSHAKE_READ_BYTES = HANDSHAKE_MESSAGE_BYTES_MAX + LENGTH_PREFIX_BYTES
# A send is written in pieces of this size, each within the send timeout, so
# the timeout measures a stalled reader and not the length of a large write.
SEND_CHUNK_BYTES = 256 * 1024

_MAX_PLAIN = noise.PLAINTEXT_BYTES_MAX
_TAG = noise.TAG_BYTES
_u16 = struct.Struct(">H")
_nonce_struct = struct.Struct("<4xQ")


def node_id_of(identity_public_key: bytes) -> str:
    """The node id: hex of the 20-byte address of the identity key."""
    return address_of(identity_public_key).hex()


def encode_identity_payload(identity: PrivateKey, static_public: bytes) -> bytes:
    signature = identity.sign(IDENTITY_DOMAIN + static_public)
    packed: bytes = msgpack.packb([identity.public_key, signature])
    return packed


def verify_identity_payload(payload: bytes, remote_static: bytes) -> bytes:
    """The peer's identity public key, if its payload signs its Noise static key."""
    try:
        # At most 1024 bytes (HANDSHAKE_MESSAGE_BYTES_MAX), and no container
        # larger than the two fields: a few objects at most.
        value = msgpack.unpackb(
            payload, raw=False, max_array_len=2, max_map_len=0, max_str_len=0, max_ext_len=0
        )
    except Exception as exc:
        raise HandshakeError("identity payload is not msgpack") from exc
    if type(value) is not list or len(value) != 2:
        raise HandshakeError("identity payload must be [identity_key, signature]")
    key, signature = value
    public_key_bytes = active().public_key_bytes
    if type(key) is not bytes or len(key) != public_key_bytes:
        raise HandshakeError(f"identity key must be {public_key_bytes} bytes")
    if type(signature) is not bytes or len(signature) != SIGNATURE_BYTES:
        raise HandshakeError("identity signature must be 64 bytes")
    if not verify(key, IDENTITY_DOMAIN + remote_static, signature):
        raise HandshakeError("identity signature does not sign the Noise static key")
    return key


class _Cipher:
    """A transport CipherState (Noise section 5.1) using libsodium without copies."""

    __slots__ = ("_key", "_nonce", "n")

    def __init__(self, state: noise.CipherState) -> None:
        assert state.k is not None
        self._key = ffi.new("unsigned char[]", state.k)
        self._nonce = ffi.new("unsigned char[12]")
        self.n = state.n

    def seal(self, plaintext: bytes | bytearray) -> bytearray:
        """Length-prefixed transport messages carrying `plaintext`, in one buffer."""
        size = len(plaintext)
        chunks = max(1, math.ceil(size / _MAX_PLAIN))
        out = bytearray(size + chunks * (LENGTH_PREFIX_BYTES + _TAG))
        src = ffi.from_buffer(plaintext)
        dst = ffi.from_buffer(out)
        clen = ffi.new("unsigned long long *")
        nonce = self._nonce
        pos = 0
        offset = 0
        while True:
            take = min(_MAX_PLAIN, size - offset)
            _u16.pack_into(out, pos, take + _TAG)
            if self.n >= 2**64 - 1:
                raise NoiseError("nonce exhausted")
            ffi.memmove(nonce, _nonce_struct.pack(self.n), 12)
            rc = lib.crypto_aead_chacha20poly1305_ietf_encrypt(
                dst + pos + LENGTH_PREFIX_BYTES,
                clen,
                src + offset,
                take,
                ffi.NULL,
                0,
                ffi.NULL,
                nonce,
                self._key,
            )
            assert rc == 0
            self.n += 1
            pos += LENGTH_PREFIX_BYTES + take + _TAG
            offset += take
            if offset >= size:
                break
        assert pos == len(out)
        return out

    def open_into(self, ciphertext: memoryview, out: bytearray, at: int) -> int:
        """Decrypt one transport message into out[at:]; returns the plaintext length."""
        size = len(ciphertext) - _TAG
        if size < 0:
            raise NoiseError("transport message shorter than its tag")
        if self.n >= 2**64 - 1:
            raise NoiseError("nonce exhausted")
        ffi.memmove(self._nonce, _nonce_struct.pack(self.n), 12)
        mlen = ffi.new("unsigned long long *")
        dst = ffi.from_buffer(out)
        rc = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            dst + at,
            mlen,
            ffi.NULL,
            ffi.from_buffer(ciphertext),
            len(ciphertext),
            ffi.NULL,
            0,
            self._nonce,
            self._key,
        )
        if rc != 0:
            raise NoiseError("transport message failed authentication")
        self.n += 1
        return size


class SecureConnection:
    """An authenticated, encrypted connection to one peer over a trio stream.

    `send(plaintext)` encrypts and writes (one socket write per call);
    `receive()` returns the plaintext of every complete transport message
    available (at least one), waiting for the socket if needed. Errors: the
    `NetworkError` family; trio's BrokenResourceError / OSError pass through.
    """

    __slots__ = (
        "_buffer",
        "_receive_cipher",
        "_send_cipher",
        "bytes_received",
        "bytes_sent",
        "handshake_hash",
        "remote_identity_key",
        "remote_node_id",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        buffer: bytearray,
        state: noise.HandshakeState,
        remote_identity_key: bytes,
    ) -> None:
        assert state.send_cipher is not None and state.receive_cipher is not None
        self.stream = stream
        self._buffer = buffer
        self._send_cipher = _Cipher(state.send_cipher)
        self._receive_cipher = _Cipher(state.receive_cipher)
        self.handshake_hash = state.handshake_hash
        self.remote_identity_key = remote_identity_key
        self.remote_node_id = node_id_of(remote_identity_key)
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, plaintext: bytes | bytearray, *, timeout_s: float = math.inf) -> None:
        """Encrypt and write; raises SendTimeout if the peer takes no SEND_CHUNK_BYTES in timeout_s.

        After a SendTimeout the stream is in an unknown state: close it.
        """
        wire = self._send_cipher.seal(plaintext)
        self.bytes_sent += len(wire)
        size = len(wire)
        with memoryview(wire) as view:
            for start in range(0, size, SEND_CHUNK_BYTES):
                with trio.move_on_after(timeout_s) as scope:
                    await self.stream.send_all(view[start : start + SEND_CHUNK_BYTES])
                if scope.cancelled_caught:
                    raise SendTimeout(f"peer took no {SEND_CHUNK_BYTES} bytes in {timeout_s} s")

    async def receive(self) -> bytearray:
        if self._buffer:
            # Bytes left over from the handshake or from the previous read.
            plaintext = self._open_available(self._buffer)
            if plaintext is not None:
                return plaintext
        while True:
            data = await self.stream.receive_some(RECEIVE_BYTES_MAX)
            if not data:
                raise ConnectionClosed("peer closed the connection")
            self.bytes_received += len(data)
            if self._buffer:
                self._buffer += data
                plaintext = self._open_available(self._buffer)
            else:
                # Common case: decrypt straight from the received bytes and keep
                # only the incomplete tail, instead of copying everything first.
                plaintext = self._open_available(data)
            if plaintext is not None:
                return plaintext

    def _open_available(self, buf: bytes | bytearray) -> bytearray | None:
        """Decrypt every complete message at the start of `buf`; keep the rest buffered."""
        size = len(buf)
        if size < LENGTH_PREFIX_BYTES:
            self._keep(buf, 0)
            return None
        # First pass: how many complete messages, and their plaintext size.
        offset = 0
        plain_bytes = 0
        while size - offset >= LENGTH_PREFIX_BYTES:
            length = (buf[offset] << 8) | buf[offset + 1]
            if length < _TAG:
                raise NoiseError("transport message shorter than its tag")
            end = offset + LENGTH_PREFIX_BYTES + length
            if end > size:
                break
            plain_bytes += length - _TAG
            offset = end
        if offset == 0:
            self._keep(buf, 0)
            return None
        out = bytearray(plain_bytes)
        at = 0
        position = 0
        with memoryview(buf) as view:
            while position < offset:
                length = (buf[position] << 8) | buf[position + 1]
                start = position + LENGTH_PREFIX_BYTES
                at += self._receive_cipher.open_into(view[start : start + length], out, at)
                position = start + length
        self._keep(buf, offset)
        return out

    def _keep(self, buf: bytes | bytearray, consumed: int) -> None:
        if buf is self._buffer:
            del self._buffer[:consumed]
        else:
            self._buffer = bytearray(buf[consumed:]) if consumed < len(buf) else bytearray()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _receive_handshake_message(stream: trio.abc.Stream, buffer: bytearray) -> bytes:
    while True:
        if len(buffer) >= LENGTH_PREFIX_BYTES:
            length = (buffer[0] << 8) | buffer[1]
            if length > HANDSHAKE_MESSAGE_BYTES_MAX:
                raise HandshakeError(f"handshake message of {length} bytes is too long")
            end = LENGTH_PREFIX_BYTES + length
            if len(buffer) >= end:
                message = bytes(buffer[LENGTH_PREFIX_BYTES:end])
                del buffer[:end]
                return message
        data = await stream.receive_some(HANDSHAKE_READ_BYTES)
        if not data:
            raise HandshakeAbandoned("peer closed the connection during the handshake")
        buffer += data


async def _send_handshake_message(stream: trio.abc.Stream, message: bytes) -> None:
    await stream.send_all(_u16.pack(len(message)) + message)


async def handshake(
    stream: trio.abc.Stream,
    *,
    initiator: bool,
    identity: PrivateKey,
    static_private: bytes,
    identity_payload: bytes,
    chain_id: str,
    timeout_s: float,
    expected_node_id: str | None = None,
) -> SecureConnection:
    """Run Noise XX over `stream` and check the peer's identity binding.

    The initiator sends an empty first payload (so its identity is not
    revealed before the responder has proved its own), checks the responder's
    identity and, when given, that it is `expected_node_id`, then sends its own
    identity in message 3. A node refuses a connection to itself. Raises
    `HandshakeError` when a check refuses the peer's bytes, and its subclass
    `HandshakeAbandoned` when the connection ends first: EOF, reset, or
    `HandshakeTimeout` after `timeout_s`.
    """
    state = noise.HandshakeState(
        initiator=initiator,
        prologue=chain_id.encode("utf-8"),
        static_private=static_private,
    )
    buffer = bytearray()
    remote_key = b""
    with trio.move_on_after(timeout_s) as scope:
        try:
            if initiator:
                await _send_handshake_message(stream, state.write_message(b""))
                payload = state.read_message(await _receive_handshake_message(stream, buffer))
                assert state.remote_static is not None
                remote_key = verify_identity_payload(payload, state.remote_static)
                remote_id = node_id_of(remote_key)
                if expected_node_id is not None and remote_id != expected_node_id:
                    raise HandshakeError(
                        f"peer is {remote_id}, expected {expected_node_id}"
                    )
                await _send_handshake_message(stream, state.write_message(identity_payload))
            else:
                first = state.read_message(await _receive_handshake_message(stream, buffer))
                if first:
                    raise HandshakeError("first handshake payload must be empty")
                await _send_handshake_message(stream, state.write_message(identity_payload))
                payload = state.read_message(await _receive_handshake_message(stream, buffer))
                assert state.remote_static is not None
                remote_key = verify_identity_payload(payload, state.remote_static)
        except NoiseError as exc:
            raise HandshakeError(f"noise: {exc}") from exc
        except HandshakeError:
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise HandshakeAbandoned(f"connection lost: {type(exc).__name__}") from exc
        except NetworkError as exc:  # pragma: no cover - all wire errors are typed above
            raise HandshakeError(str(exc)) from exc
    if scope.cancelled_caught:
        raise HandshakeTimeout(f"handshake not finished within {timeout_s} s")
    assert state.complete
    if remote_key == identity.public_key:
        raise HandshakeError("connected to self")
    return SecureConnection(stream, buffer, state, remote_key)
