"""Hostile and broken peers on real loopback sockets: each is dropped, the node keeps serving."""

from __future__ import annotations

import random
import tracemalloc

import pytest
import trio

from consensus.crypto import PrivateKey
from network import CONSENSUS, HandshakeError, Misbehaviour, Network, noise
from network.errors import ConnectionClosed
from network.secure import encode_identity_payload, handshake
from network.testing import (
    TEST_CHAIN_ID,
    address_of_node,
    connect_raw,
    eventually,
    key_id,
    loopback_node,
    start_pair,
)


async def _still_serves(node: Network, friend: Network, tag: bytes) -> None:
    """The honest peer still exchanges messages with the node in both directions."""
    with trio.fail_after(10):
        assert node.send(friend.node_id, CONSENSUS, b"to-friend-" + tag)
        assert (await friend.inbox.receive()).payload == b"to-friend-" + tag
        assert friend.send(node.node_id, CONSENSUS, b"to-node-" + tag)
        assert (await node.inbox.receive()).payload == b"to-node-" + tag
    assert {p.node_id for p in node.peers()} == {friend.node_id}


async def _read_until_closed(stream: trio.abc.ReceiveStream, timeout_s: float = 60.0) -> None:
    """Drain what the node sends until it closes the connection."""
    with trio.fail_after(timeout_s):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass


async def test_handshake_success_identifies_both_sides() -> None:
    """Both sides learn the other's node id, direction and address after the handshake."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        (seen_by_node,) = node.peers()
        (seen_by_friend,) = friend.peers()
        assert (seen_by_node.node_id, seen_by_node.direction) == (friend.node_id, "inbound")
        assert (seen_by_friend.node_id, seen_by_friend.direction) == (node.node_id, "outbound")
        assert seen_by_friend.port == node.listen_address[1]
        await _still_serves(node, friend, b"0")
        await eventually(lambda: node.peers()[0].listen_port == friend.listen_address[1])
        nursery.cancel_scope.cancel()


async def test_wrong_chain_id_fails_the_handshake() -> None:
    """A peer of another chain cannot complete the handshake (the prologue differs).

    The dialler finds out at message 2 and hangs up, so for the node this is an
    abandoned handshake: nothing it checked failed, and nobody is blamed.
    """
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        with pytest.raises(HandshakeError):
            await connect_raw(node, hello=False, chain_id="another-chain")
        await eventually(lambda: node.statistics().handshakes_abandoned == 1)
        assert node.statistics().handshake_failures == 0
        await _still_serves(node, friend, b"1")
        nursery.cancel_scope.cancel()


async def test_wrong_node_id_is_dropped_by_the_dialler() -> None:
    """A dialler that expects another node id drops the connection and never registers it."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        with pytest.raises(HandshakeError, match="expected"):
            await connect_raw(node, hello=False, expected_node_id="ab" * 20)
        impostor_address = address_of_node(node)
        wrong = type(impostor_address)("cd" * 20, impostor_address.host, impostor_address.port)
        dialler = loopback_node(persistent=[wrong])
        await nursery.start(dialler.run)
        await eventually(lambda: dialler.statistics().handshake_failures >= 2)
        assert dialler.peers() == []
        await _still_serves(node, friend, b"2")
        nursery.cancel_scope.cancel()


async def test_bad_identity_signature_is_refused() -> None:
    """A handshake payload whose signature does not sign the Noise static key is refused."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        static_private, _ = noise.generate_keypair()
        _, other_static_public = noise.generate_keypair()
        stream = await trio.open_tcp_stream(*node.listen_address)
        await handshake(
            stream,
            initiator=True,
            identity=key,
            static_private=static_private,
            # Signs somebody else's static key.
            identity_payload=encode_identity_payload(key, other_static_public),
            chain_id=TEST_CHAIN_ID,
            timeout_s=5,
        )
        await _read_until_closed(stream)
        assert node.statistics().handshake_failures == 1
        assert key_id(key) not in {p.node_id for p in node.peers()}
        await _still_serves(node, friend, b"3")
        nursery.cancel_scope.cancel()


async def test_tampered_handshake_message_is_refused() -> None:
    """Flipping a bit in handshake message 3 makes the node refuse the connection."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        static_private, static_public = noise.generate_keypair()
        state = noise.HandshakeState(
            initiator=True, prologue=TEST_CHAIN_ID.encode(), static_private=static_private
        )
        stream = await trio.open_tcp_stream(*node.listen_address)
        first = state.write_message()
        await stream.send_all(len(first).to_bytes(2, "big") + first)
        buffer = b""
        while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
            buffer += await stream.receive_some(4096)
        state.read_message(buffer[2:])
        third = bytearray(state.write_message(encode_identity_payload(key, static_public)))
        third[5] ^= 0x80
        await stream.send_all(len(third).to_bytes(2, "big") + bytes(third))
        await _read_until_closed(stream)
        assert node.statistics().handshake_failures == 1
        await _still_serves(node, friend, b"4")
        nursery.cancel_scope.cancel()


async def test_tampered_transport_message_closes_without_ban() -> None:
    """A corrupted transport ciphertext closes the connection; the id is not banned."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, hello=False, key=key)
        wire_bytes = bytearray(conn._send_cipher.seal(b"\x00\x00\x00\x03\x93\x01\x01"))
        wire_bytes[-1] ^= 1
        await conn.stream.send_all(bytes(wire_bytes))
        await _read_until_closed(conn.stream)
        await eventually(lambda: node.statistics().disconnects.get("authentication_failed") == 1)
        assert not node.is_banned(key_id(key))
        await _still_serves(node, friend, b"5")
        nursery.cancel_scope.cancel()


async def test_truncated_handshake_is_dropped() -> None:
    """A client that sends half of handshake message 1 and closes is dropped, blaming nobody."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        stream = await trio.open_tcp_stream(*node.listen_address)
        await stream.send_all(b"\x00\x20" + bytes(16))
        await stream.send_eof()
        await _read_until_closed(stream)
        stats = node.statistics()
        assert (stats.handshake_failures, stats.handshakes_abandoned) == (0, 1)
        await _still_serves(node, friend, b"6")
        nursery.cancel_scope.cancel()


async def test_silent_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A client that connects and sends nothing is closed after handshake_timeout_s."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery, handshake_timeout_s=5.0)
        stream = await trio.open_tcp_stream(*node.listen_address)
        start = trio.current_time()
        await _read_until_closed(stream)
        assert 5.0 <= trio.current_time() - start < 6.0
        stats = node.statistics()
        assert (stats.handshake_failures, stats.handshakes_abandoned) == (0, 1)
        await _still_serves(node, friend, b"7")
        nursery.cancel_scope.cancel()


async def test_random_bytes_before_handshake_close_without_banning_the_ip() -> None:
    """Random bytes instead of a handshake are counted and closed; 127.0.0.1 stays usable."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        noise_bytes = random.Random(7).randbytes(4096)
        stream = await trio.open_tcp_stream(*node.listen_address)
        await stream.send_all(noise_bytes)
        await _read_until_closed(stream)
        stats = node.statistics()
        assert stats.handshake_failures == 1
        assert stats.bans_active == 0
        # A new honest peer from the same IP still gets in.
        late = loopback_node(persistent=[address_of_node(node)])
        await nursery.start(late.run)
        with trio.fail_after(10):
            await late.wait_peers(1)
        await _still_serves_many(node, [friend, late])
        nursery.cancel_scope.cancel()


async def _still_serves_many(node: Network, friends: list[Network]) -> None:
    for index, friend in enumerate(friends):
        with trio.fail_after(10):
            assert node.send(friend.node_id, CONSENSUS, b"ping-%d" % index)
            assert (await friend.inbox.receive()).payload == b"ping-%d" % index


async def test_repeated_garbage_from_one_ip_bans_the_ip_at_the_threshold(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With handshake_failures_ip_ban=3, the third failure bans the IP: one handshake a second.

    The clock stands still, so the banned IP's one token is not refilled: the
    first new connection may start a handshake, the next is closed unread.
    """
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery, handshake_failures_ip_ban=3)
        for _ in range(3):
            stream = await trio.open_tcp_stream(*node.listen_address)
            await stream.send_all(b"\xff\xff")
            await _read_until_closed(stream)
        stats = node.statistics()
        assert (stats.handshake_failures, stats.bans_active) == (3, 1)
        admitted = await trio.open_tcp_stream(*node.listen_address)
        await trio.testing.wait_all_tasks_blocked()
        refused = await trio.open_tcp_stream(*node.listen_address)
        await _read_until_closed(refused)
        assert node.statistics().connections_rejected["ip_banned"] == 1
        await admitted.aclose()
        # Connections already established are not affected.
        await _still_serves(node, friend, b"8")
        nursery.cancel_scope.cancel()


async def test_frame_header_claiming_4_gib_bans_without_allocating() -> None:
    """An authenticated peer announcing a 4 GiB frame is dropped and banned, allocating nothing."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, hello=False, key=key)
        tracemalloc.start()
        try:
            await conn.send(b"\xff\xff\xff\xff")
            await _read_until_closed(conn.stream)
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak_bytes < 16 * 1024 * 1024
        assert node.is_banned(key_id(key))
        stats = node.statistics()
        assert stats.peers_banned == 1
        assert stats.disconnects["oversized_message"] == 1
        # The banned id is refused when it comes back.
        conn = await connect_raw(node, hello=False, key=key)
        await _read_until_closed(conn.stream)
        assert node.statistics().connections_rejected["banned"] == 1
        await _still_serves(node, friend, b"9")
        nursery.cancel_scope.cancel()


async def test_malformed_frame_after_handshake_bans() -> None:
    """Random bytes inside the encrypted stream (bad msgpack) ban the authenticated sender."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, hello=False, key=key)
        body = b"\xc1" * 20  # 0xc1 is never valid msgpack
        await conn.send(len(body).to_bytes(4, "big") + body)
        await _read_until_closed(conn.stream)
        assert node.is_banned(key_id(key))
        assert node.statistics().disconnects["malformed_frame"] == 1
        await _still_serves(node, friend, b"10")
        nursery.cancel_scope.cancel()


async def test_reported_misbehaviour_disconnects_and_bans(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """report_misbehaviour closes the peer, refuses it for ban_duration_s, then lets it back."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery, ban_duration_s=100.0)
        node.report_misbehaviour(friend.node_id, Misbehaviour.INVALID_SIGNATURE)
        ban_ends = trio.current_time() + 100.0
        assert node.is_banned(friend.node_id)
        assert node.peers() == []
        # The friend keeps redialling (it is a persistent peer); the node refuses it
        # until the ban expires, then accepts it again.
        with trio.fail_after(200):
            await node.wait_peers(1)
        assert trio.current_time() >= ban_ends - 1.0
        assert node.statistics().connections_rejected["banned"] >= 1
        assert not node.is_banned(friend.node_id)
        await _still_serves(node, friend, b"11")
        nursery.cancel_scope.cancel()


async def test_idle_peer_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    """A peer that completes the handshake and then stays silent is dropped at idle_timeout_s."""
    async with trio.open_nursery() as nursery:
        node = loopback_node(idle_timeout_s=20.0, ping_interval_s=5.0)
        await nursery.start(node.run)
        conn = await connect_raw(node, hello=False)
        start = trio.current_time()
        await _read_until_closed(conn.stream)
        assert 20.0 <= trio.current_time() - start < 21.0
        assert node.statistics().disconnects["idle_timeout"] == 1
        nursery.cancel_scope.cancel()


async def test_unsolicited_pex_answer_is_a_protocol_violation() -> None:
    """Sending PEX addresses nobody asked for scores the sender (two violations ban it)."""
    from network import wire

    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        for _ in range(2):
            conn = await connect_raw(node, hello=False, key=key)
            frames = (
                wire.encode_hello(0)
                + wire.encode_batch(False, wire.PEX, [wire.encode_pex_addresses([])]) * 2
            )
            await conn.send(frames)
            with pytest.raises((ConnectionClosed, trio.BrokenResourceError)):
                with trio.fail_after(10):
                    while True:
                        await conn.receive()
        assert node.is_banned(key_id(key))
        await _still_serves(node, friend, b"12")
        nursery.cancel_scope.cancel()
