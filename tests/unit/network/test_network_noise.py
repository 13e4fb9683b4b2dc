"""Noise XX conformance: the published test vector and interop with the `noise` package."""

from __future__ import annotations

import pytest
import trio
from noise.connection import Keypair, NoiseConnection

from network import noise
from network.errors import NoiseError

# Cacophony vector "Noise_XX_25519_ChaChaPoly_BLAKE2b" (haskell-cryptography/cacophony,
# vectors/cacophony.txt): messages alternate initiator, responder, initiator, ...
VECTOR_PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
INIT_STATIC = bytes.fromhex("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1")
INIT_EPHEMERAL = bytes.fromhex("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
RESP_STATIC = bytes.fromhex("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893")
RESP_EPHEMERAL = bytes.fromhex("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
VECTOR_MESSAGES = [
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
        "4c756477696720766f6e204d69736573",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f144808843"
        "0505b6745ce64a5f33f0e8e3b83f11ce8802bca507f4f2d8b564dbe277e19661"
        "16e132faa2dfd70b8b077b9f94b913df5056ae1319469b824a98d54bbaa82c32"
        "5595587064f978c4b6d104f7596e6f",
    ),
    (
        "462e20412e20486179656b",
        "99579e1c1ee15e422a57ddd6b16d37087b17558e8369c18991b4b2ca3a824abf"
        "904cdcf5458b5431a75af034ca9e9b982de039eaaf156775e2d580cd4e5ebae8"
        "9c3f8cb2594b556d8a8169",
    ),
    ("4361726c204d656e676572", "fc56eea290b3f3a21aac0c70cd5787b5ee99be37d2f4d751329b55"),
    (
        "4a65616e2d426170746973746520536179",
        "bb31c9da10d5639a4cdb88a12f5c61de41bbc7df09bf75d94f8184fe4157f5c68f",
    ),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "f6199cadb152fb27f82be0a0891ec76a33598ae92a46cab2fb5a8ed5bf48b7f267f8370af7",
    ),
]


def test_cacophony_vector() -> None:
    """Our HandshakeState reproduces the published XX 25519/ChaChaPoly/BLAKE2b vector exactly."""
    init = noise.HandshakeState(
        initiator=True,
        prologue=VECTOR_PROLOGUE,
        static_private=INIT_STATIC,
        ephemeral_private=INIT_EPHEMERAL,
    )
    resp = noise.HandshakeState(
        initiator=False,
        prologue=VECTOR_PROLOGUE,
        static_private=RESP_STATIC,
        ephemeral_private=RESP_EPHEMERAL,
    )
    for index, (payload_hex, ciphertext_hex) in enumerate(VECTOR_MESSAGES):
        payload = bytes.fromhex(payload_hex)
        writer, reader = (init, resp) if index % 2 == 0 else (resp, init)
        if index < 3:
            message = writer.write_message(payload)
            assert message.hex() == ciphertext_hex
            assert reader.read_message(message) == payload
        else:
            assert writer.send_cipher is not None and reader.receive_cipher is not None
            message = writer.send_cipher.encrypt(payload)
            assert message.hex() == ciphertext_hex
            assert reader.receive_cipher.decrypt(message) == payload
    assert init.handshake_hash == resp.handshake_hash
    assert init.remote_static == noise.public_key_of(RESP_STATIC)
    assert resp.remote_static == noise.public_key_of(INIT_STATIC)


def _their_side(initiator: bool, static_private: bytes, prologue: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(noise.PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static_private)
    conn.start_handshake()
    return conn


async def _read_prefixed(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    while True:
        if len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
            size = int.from_bytes(buffer[:2], "big")
            message = bytes(buffer[2 : 2 + size])
            del buffer[: 2 + size]
            return message
        data = await stream.receive_some(65536)
        assert data
        buffer += data


async def _write_prefixed(stream: trio.SocketStream, message: bytes) -> None:
    await stream.send_all(len(message).to_bytes(2, "big") + message)


@pytest.mark.parametrize("we_initiate", [True, False])
async def test_interop_with_noise_package_over_loopback(we_initiate: bool) -> None:
    """Our Noise completes a handshake and transport exchange with the `noise` package on TCP."""
    prologue = b"archipelago-test-chain"
    ours_static, _ = noise.generate_keypair()
    theirs_static, theirs_public = noise.generate_keypair()
    ours = noise.HandshakeState(
        initiator=we_initiate, prologue=prologue, static_private=ours_static
    )
    theirs = _their_side(not we_initiate, theirs_static, prologue)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server_stream = None
    received: list[bytes] = []

    async def accept() -> None:
        nonlocal server_stream
        server_stream = await listeners[0].accept()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        client_stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert server_stream is not None
    our_stream, their_stream = client_stream, server_stream
    our_buf, their_buf = bytearray(), bytearray()
    for turn in range(3):
        our_turn = (turn % 2 == 0) == we_initiate
        if our_turn:
            await _write_prefixed(our_stream, ours.write_message(b"ours-%d" % turn))
            message = await _read_prefixed(their_stream, their_buf)
            received.append(bytes(theirs.read_message(message)))
        else:
            await _write_prefixed(their_stream, bytes(theirs.write_message(b"theirs-%d" % turn)))
            received.append(ours.read_message(await _read_prefixed(our_stream, our_buf)))
    expected = [
        (b"ours-%d" if ((t % 2 == 0) == we_initiate) else b"theirs-%d") % t for t in range(3)
    ]
    assert received == expected
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == theirs_public
    assert ours.send_cipher is not None and ours.receive_cipher is not None
    for index in range(3):
        await _write_prefixed(our_stream, ours.send_cipher.encrypt(b"to-them-%d" % index))
        message = await _read_prefixed(their_stream, their_buf)
        assert theirs.decrypt(message) == b"to-them-%d" % index
        await _write_prefixed(their_stream, theirs.encrypt(b"to-us-%d" % index))
        message = await _read_prefixed(our_stream, our_buf)
        assert ours.receive_cipher.decrypt(message) == b"to-us-%d" % index
    await our_stream.aclose()
    await their_stream.aclose()
    await listeners[0].aclose()


def test_tampered_handshake_message_fails_authentication() -> None:
    """Flipping one bit of message 2 makes the initiator's read raise NoiseError."""
    init = noise.HandshakeState(initiator=True, prologue=b"x", static_private=INIT_STATIC)
    resp = noise.HandshakeState(initiator=False, prologue=b"x", static_private=RESP_STATIC)
    resp.read_message(init.write_message())
    message = bytearray(resp.write_message(b"hello"))
    message[40] ^= 1
    with pytest.raises(NoiseError):
        init.read_message(bytes(message))


def test_prologue_mismatch_fails() -> None:
    """Different prologues (chain ids) make the handshake fail at message 2."""
    init = noise.HandshakeState(initiator=True, prologue=b"chain-a", static_private=INIT_STATIC)
    resp = noise.HandshakeState(initiator=False, prologue=b"chain-b", static_private=RESP_STATIC)
    resp.read_message(init.write_message())
    with pytest.raises(NoiseError):
        init.read_message(resp.write_message())


def test_truncated_and_low_order_keys_rejected() -> None:
    """A short message 1 and an all-zero (low-order) ephemeral key raise NoiseError."""
    resp = noise.HandshakeState(initiator=False, prologue=b"", static_private=RESP_STATIC)
    with pytest.raises(NoiseError):
        resp.read_message(b"\x01" * 10)
    resp = noise.HandshakeState(initiator=False, prologue=b"", static_private=RESP_STATIC)
    resp.read_message(b"\x00" * 32)
    with pytest.raises(NoiseError):
        resp.write_message(b"")


def test_transport_nonce_and_replay() -> None:
    """A replayed transport message fails (the receiver's nonce moved on)."""
    init = noise.HandshakeState(initiator=True, prologue=b"", static_private=INIT_STATIC)
    resp = noise.HandshakeState(initiator=False, prologue=b"", static_private=RESP_STATIC)
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    assert init.send_cipher is not None and resp.receive_cipher is not None
    message = init.send_cipher.encrypt(b"once")
    assert resp.receive_cipher.decrypt(message) == b"once"
    with pytest.raises(NoiseError):
        resp.receive_cipher.decrypt(message)
