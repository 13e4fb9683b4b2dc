"""Hostile peers on real loopback sockets against the limits of issue 11.

Each test plays one attack of the issue with a hand-driven peer on the real
wire protocol and checks the bound that defeats it: memory (tracemalloc or
the network's own accounting), time (trio's virtual clock where a timeout
matters), and the peer being dropped, scored or refused.
"""

from __future__ import annotations

import hashlib
import time
import tracemalloc

import trio
import trio.testing

from consensus.crypto import PrivateKey
from network import CONSENSUS, MEMPOOL, Envelope, Network, wire
from network.peer import PING_BURST, ByteBudget, SendBudget
from network.secure import SecureConnection
from network.testing import (
    address_of_node,
    connect_raw,
    eventually,
    key_id,
    loopback_node,
    start_pair,
)

MIB = 1024 * 1024


async def _closed_by_node(conn: SecureConnection, timeout_s: float = 60.0) -> None:
    """Read (and discard) until the node closes the connection."""
    with trio.fail_after(timeout_s):
        try:
            while await conn.stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _send_until_refused(conn: SecureConnection, data: bytes, piece_bytes: int) -> int:
    """Send `data` in pieces (each sealed on its own); the bytes sent before the node hung up."""
    sent = 0
    try:
        for start in range(0, len(data), piece_bytes):
            await conn.send(data[start : start + piece_bytes])
            sent += piece_bytes
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


# -- decode amplification -----------------------------------------------------------


async def test_decode_bomb_is_refused_from_its_envelope() -> None:
    """A 16 MiB frame of nested empty arrays is refused in milliseconds, holding < 2 MiB.

    Before issue 11 this frame cost ~1.2 GiB and froze the node for seconds:
    the whole object graph was built before any type check. Now the node reads
    the envelope [3, <array of 16.7 million>], sees a PING body longer than 32
    bytes, and drops and bans the sender before the rest of the frame arrives.
    """
    count = 16 * MIB - 7
    body = b"\x92\x03\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    frame = len(body).to_bytes(4, "big") + body
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, key=key)
        tracemalloc.start()
        try:
            start = time.perf_counter()
            await _send_until_refused(conn, frame, 64 * 1024)
            await _closed_by_node(conn)
            elapsed_s = time.perf_counter() - start
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak_bytes < 2 * MIB
        assert elapsed_s < 1.0
        assert node.is_banned(key_id(key))
        assert node.statistics().disconnects["malformed_frame"] == 1
        with trio.fail_after(10):
            assert node.send(friend.node_id, CONSENSUS, b"still-here")
            assert (await friend.inbox.receive()).payload == b"still-here"
        nursery.cancel_scope.cancel()


async def test_batch_of_too_many_payloads_is_refused_before_it_is_buffered() -> None:
    """A batch announcing more than BATCH_PAYLOADS_MAX payloads is refused from its envelope."""
    count = wire.BATCH_PAYLOADS_MAX + 1
    body = b"\x93\x01\x01\xdd" + count.to_bytes(4, "big") + b"\xc4\x01x" * count
    async with trio.open_nursery() as nursery:
        node, _ = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, key=key)
        await _send_until_refused(conn, len(body).to_bytes(4, "big") + body, 4096)
        await _closed_by_node(conn)
        assert node.is_banned(key_id(key))
        nursery.cancel_scope.cancel()


async def test_many_tiny_payloads_travel_in_batches_within_the_limit() -> None:
    """10,000 gossiped 8-byte payloads (more than one batch may hold) all arrive, in order."""
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(nursery)
        payloads = [b"tx%06d" % i for i in range(10_000)]
        for payload in payloads:
            assert node.gossip(MEMPOOL, payload)
        got: list[bytes] = []
        with trio.fail_after(20):
            while len(got) < len(payloads):
                got.append((await friend.inbox.receive()).payload)
        assert got == payloads
        await eventually(lambda: node.statistics().send_queues_bytes == 0)
        nursery.cancel_scope.cancel()


# -- slow frames ------------------------------------------------------------------------


async def test_slow_frames_are_bounded_by_the_shared_budget_and_dropped_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """30 peers each send a legal 1 MiB frame but its last byte: 4 MiB held at most, all dropped.

    Frames larger than write_bytes_max reserve their length from
    large_frames_bytes_max (4 MiB here) before they are read, so 4 frames are in
    progress at any time and the other 26 readers wait without reading (their
    senders block on TCP). Each reservation ends frame_timeout_s (10 s) after
    its frame started: 4 peers are dropped every 10 s, and the waiting ones do
    not time out while the node itself keeps them waiting.
    """
    frame_bytes = MIB
    config = {
        "frame_bytes_max": frame_bytes,
        "write_bytes_max": 64 * 1024,
        "large_frames_bytes_max": 4 * frame_bytes,
        "inbox_bytes_max": 4 * frame_bytes,
        "frame_timeout_s": 10.0,
        "idle_timeout_s": 1000.0,
        "ping_interval_s": 100.0,
        "handshakes_per_ip_per_s_max": 1000.0,
    }
    payload_bytes = frame_bytes - 9
    head = b"\x93\x01\x01\x91\xc6" + payload_bytes.to_bytes(4, "big")
    frame_but_last_byte = frame_bytes.to_bytes(4, "big") + head + bytes(payload_bytes - 1)
    async with trio.open_nursery() as nursery:
        node = loopback_node(**config)
        await nursery.start(node.run)
        conns = [await connect_raw(node) for _ in range(30)]
        start = trio.current_time()
        closed_at: list[float] = []
        reserved_max = [0]

        async def watch() -> None:
            while True:
                reserved_max[0] = max(reserved_max[0], node.statistics().large_frames_bytes)
                await trio.sleep(0.5)

        async def attack(conn: SecureConnection) -> None:
            await _send_until_refused(conn, frame_but_last_byte, 256 * 1024)
            await _closed_by_node(conn, timeout_s=200)
            closed_at.append(trio.current_time() - start)

        nursery.start_soon(watch)
        async with trio.open_nursery() as attackers:
            for conn in conns:
                attackers.start_soon(attack, conn)
        assert reserved_max[0] == 4 * frame_bytes
        rounds = sorted(round(t) for t in closed_at)
        assert rounds == [10 * (1 + i // 4) for i in range(30)]
        stats = node.statistics()
        assert stats.disconnects["frame_timeout"] == 30
        assert stats.reads_paused_for_memory >= 26
        assert stats.large_frames_bytes == 0
        assert stats.inbox_bytes == 0
        nursery.cancel_scope.cancel()


# -- control queue, PING rate, stalled readers --------------------------------------------


async def test_ping_flood_without_reading_is_dropped() -> None:
    """10,000 PINGs in one write from a peer that never reads: closed after PING_BURST + 1.

    Before issue 11 each PING queued a PONG in an unbounded control queue
    (75 MiB in 12 s). Now PINGs beyond rate_pings_per_s_max (burst 5) are a
    protocol violation: the node closes the connection and scores the peer
    (50: a second flood bans it). Nothing it sent is buffered for it.
    """
    async with trio.open_nursery() as nursery:
        node, _ = await start_pair(nursery)
        key = PrivateKey.generate()
        conn = await connect_raw(node, key=key)
        pings = b"".join(wire.encode_ping(n) for n in range(10_000))
        tracemalloc.start()
        try:
            await _send_until_refused(conn, pings, len(pings))
            await eventually(lambda: node.statistics().disconnects.get("rate_exceeded") == 1)
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak_bytes < MIB
        assert key_id(key) not in {p.node_id for p in node.peers()}
        assert not node.is_banned(key_id(key))
        conn = await connect_raw(node, key=key)
        await _send_until_refused(conn, pings, len(pings))
        await eventually(lambda: node.is_banned(key_id(key)))
        nursery.cancel_scope.cancel()


async def test_pings_at_the_allowed_rate_are_answered() -> None:
    """An honest burst of PING_BURST PINGs gets as many PONGs, and the link stays up."""
    async with trio.open_nursery() as nursery:
        node = loopback_node()
        await nursery.start(node.run)
        conn = await connect_raw(node)
        await conn.send(b"".join(wire.encode_ping(n) for n in range(PING_BURST)))
        decoder = wire.FrameDecoder(node.config.frame_bytes_max)
        pongs: list[int] = []
        with trio.fail_after(10):
            while len(pongs) < PING_BURST:
                for message in decoder.feed(await conn.receive()):
                    if type(message) is wire.Pong:
                        pongs.append(message.nonce)
        assert pongs == list(range(PING_BURST))
        assert len(node.peers()) == 1
        nursery.cancel_scope.cancel()


async def test_stalled_reader_is_dropped_after_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that never reads is dropped send_timeout_s after our writes stop moving.

    The node has 8 MiB queued for it; TCP buffers fill, the write stalls. The
    peer keeps PINGing once a second (so it is not idle): PONGs pile up in the
    control queue to its bound (4 here) and the rest are not queued. At
    send_timeout_s the peer is closed and its queued bytes are released.
    """
    async with trio.open_nursery() as nursery:
        node = loopback_node(
            send_timeout_s=10.0,
            idle_timeout_s=1000.0,
            ping_interval_s=100.0,
            control_queue_frames_max=4,
        )
        await nursery.start(node.run)
        conn = await connect_raw(node)
        await eventually_peers(node, 1)
        peer_id = node.peers()[0].node_id
        for index in range(8):
            assert node.send(peer_id, 3, bytes([index]) * MIB)
        start = trio.current_time()
        closed = trio.Event()

        async def keep_pinging() -> None:
            nonce = 0
            with trio.move_on_after(60):
                while not closed.is_set():
                    nonce += 1
                    try:
                        await conn.send(wire.encode_ping(nonce))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    await trio.sleep(1.0)

        nursery.start_soon(keep_pinging)
        with trio.fail_after(60):
            while node.peers():
                await trio.sleep(0.1)
        closed.set()
        elapsed_s = trio.current_time() - start
        assert 10.0 <= elapsed_s < 12.0
        stats = node.statistics()
        assert stats.disconnects["send_timeout"] == 1
        assert stats.messages_dropped["control_queue_full"] >= 1
        assert stats.send_queues_bytes == 0
        nursery.cancel_scope.cancel()


async def eventually_peers(node: Network, count: int) -> None:
    with trio.fail_after(10):
        await node.wait_peers(count)


# -- bans that do not punish bystanders ------------------------------------------------------


async def _garbage(node: Network, times: int) -> None:
    """Connections that send an oversized handshake message: blamed failures."""
    for _ in range(times):
        stream = await trio.open_tcp_stream(*node.listen_address)
        try:
            await stream.send_all(b"\xff\xff")
            with trio.fail_after(30):
                while await stream.receive_some(4096):
                    pass
        except trio.BrokenResourceError:
            pass
        await stream.aclose()


async def test_ip_ban_never_hits_a_persistent_peers_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Garbage from the IP of a persistent peer (127.0.0.1 here) is counted but never bans it."""
    async with trio.open_nursery() as nursery:
        friend = loopback_node()
        await nursery.start(friend.run)
        node = loopback_node(persistent=[address_of_node(friend)], handshake_failures_ip_ban=3)
        await nursery.start(node.run)
        await eventually_peers(node, 1)
        await _garbage(node, 10)
        stats = node.statistics()
        assert (stats.handshake_failures, stats.bans_active) == (10, 0)
        late = loopback_node(persistent=[address_of_node(node)])
        await nursery.start(late.run)
        await eventually_peers(node, 2)
        nursery.cancel_scope.cancel()


async def test_banned_ip_still_lets_honest_peers_in_while_garbage_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After 3 failures 127.0.0.1 is banned; an honest node there still connects, garbage never.

    The ban admits banned_ip_handshakes_per_s_max (1) handshake a second: the
    honest dialler retries with backoff and gets one of them; each garbage
    connection either fails its handshake or is closed unread.
    """
    async with trio.open_nursery() as nursery:
        node = loopback_node(handshake_failures_ip_ban=3)
        await nursery.start(node.run)
        await _garbage(node, 3)
        assert node.statistics().bans_active == 1
        honest = loopback_node(persistent=[address_of_node(node)])
        await nursery.start(honest.run)

        async def more_garbage() -> None:
            while True:
                await _garbage(node, 1)
                await trio.sleep(0.2)

        nursery.start_soon(more_garbage)
        await eventually_peers(node, 1)
        assert [p.node_id for p in node.peers()] == [honest.node_id]
        await trio.sleep(10)
        stats = node.statistics()
        assert stats.connections_rejected["ip_banned"] >= 1
        assert stats.handshake_failures > 3
        assert [p.node_id for p in node.peers()] == [honest.node_id]
        nursery.cancel_scope.cancel()


async def test_silent_and_half_open_connections_blame_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """30 connections that say nothing, or half a handshake message, never ban the IP."""
    async with trio.open_nursery() as nursery:
        node = loopback_node(handshake_failures_ip_ban=3, handshakes_per_ip_per_s_max=1000.0)
        await nursery.start(node.run)
        streams = []
        for index in range(30):
            stream = await trio.open_tcp_stream(*node.listen_address)
            if index % 2:
                await stream.send_all(b"\x00\x20" + bytes(10))
            streams.append(stream)
        await trio.sleep(node.config.handshake_timeout_s + 1)
        stats = node.statistics()
        assert stats.handshake_failures == 0
        assert stats.bans_active == 0
        assert (
            stats.handshakes_abandoned + stats.connections_rejected.get("ip_handshakes_busy", 0)
            == 30
        )
        for stream in streams:
            await stream.aclose()
        honest = loopback_node(persistent=[address_of_node(node)])
        await nursery.start(honest.run)
        await eventually_peers(node, 1)
        nursery.cancel_scope.cancel()


# -- membership ------------------------------------------------------------------------------


async def test_admit_hook_refuses_unknown_ids_and_never_dials_them() -> None:
    """A node id admit() refuses is dropped after the handshake, reported once, never dialled.

    The stranger keeps redialling (the node is its persistent peer): every try
    is counted as not_member, on_refused hears of it once. A member that knows
    the stranger advertises it in PEX, and the node does not learn it.
    """
    stranger = loopback_node()
    member = loopback_node()
    refused: list[tuple[str, str]] = []
    async with trio.open_nursery() as nursery:
        node = Network(
            identity=PrivateKey.generate(),
            chain_id="archipelago-test",
            listen=("127.0.0.1", 0),
            config=loopback_node().config,
            admit=lambda node_id: node_id == member.node_id,
            on_refused=lambda node_id, reason: refused.append((node_id, reason)),
        )
        await nursery.start(node.run)
        await nursery.start(stranger.run)
        member._persistent.append(address_of_node(stranger))
        await nursery.start(member.run)
        nursery.start_soon(member._persistent_loop, address_of_node(node))
        await eventually_peers(member, 2)
        await eventually_peers(node, 1)
        stranger._persistent.append(address_of_node(node))
        nursery.start_soon(stranger._persistent_loop, address_of_node(node))
        await eventually(lambda: node.statistics().connections_rejected.get("not_member", 0) >= 3)
        assert refused == [(stranger.node_id, "not_member")]
        assert [p.node_id for p in node.peers()] == [member.node_id]
        # The member answered the node's PEX request with the stranger's address.
        await eventually(lambda: member.statistics().messages_sent_by_channel[wire.PEX] >= 1)
        assert stranger.node_id not in node._book
        nursery.cancel_scope.cancel()


async def test_non_members_are_not_advertised_and_are_closed_by_enforce_admission() -> None:
    """After the member list shrinks, PEX answers leave the ex-member out; enforce closes it."""
    members: set[str] = set()
    async with trio.open_nursery() as nursery:
        node = Network(
            identity=PrivateKey.generate(),
            chain_id="archipelago-test",
            listen=("127.0.0.1", 0),
            config=loopback_node().config,
            admit=members.__contains__,
        )
        await nursery.start(node.run)
        kept = loopback_node(persistent=[address_of_node(node)])
        dropped = loopback_node(persistent=[address_of_node(node)])
        members.update({kept.node_id, dropped.node_id})
        asker_key = PrivateKey.generate()
        members.add(key_id(asker_key))
        await nursery.start(kept.run)
        await nursery.start(dropped.run)
        await eventually_peers(node, 2)
        await eventually(lambda: all(p.listen_port for p in node.peers()))
        members.discard(dropped.node_id)
        conn = await connect_raw(node, key=asker_key)
        await conn.send(wire.encode_batch(False, wire.PEX, [wire.encode_pex_request()]))
        decoder = wire.FrameDecoder(node.config.frame_bytes_max)
        answer: wire.PexAddresses | None = None
        with trio.fail_after(10):
            while answer is None:
                for message in decoder.feed(await conn.receive()):
                    if type(message) is wire.Batch and message.channel == wire.PEX:
                        for payload in message.payloads:
                            decoded = wire.decode_pex(payload)
                            if type(decoded) is wire.PexAddresses:
                                answer = decoded
        assert [a[0] for a in answer.addresses] == [kept.node_id]
        assert node.enforce_admission() == 1
        assert dropped.node_id not in {p.node_id for p in node.peers()}
        await eventually(lambda: node.statistics().disconnects.get("not_member") == 1)
        nursery.cancel_scope.cancel()


# -- digests, forget, inbox bytes ---------------------------------------------------------------


async def test_forget_lets_a_dropped_payload_be_delivered_again() -> None:
    """forget(digest) re-admits a delivered payload: the next copy from another peer arrives.

    Without it the second copy is a duplicate. Envelopes carry SHA-256 of the
    payload, and gossip(..., digest=) reuses it.
    """
    async with trio.open_nursery() as nursery:
        hub = loopback_node()
        await nursery.start(hub.run)
        first = loopback_node(persistent=[address_of_node(hub)])
        second = loopback_node(persistent=[address_of_node(hub)])
        third = loopback_node(persistent=[address_of_node(hub)])
        for spoke in (first, second, third):
            await nursery.start(spoke.run)
        await eventually_peers(hub, 3)
        payload = b"a vote the hub had to drop"
        digest = hashlib.sha256(payload).digest()
        assert first.gossip(CONSENSUS, payload)
        with trio.fail_after(10):
            envelope = await hub.inbox.receive()
        assert envelope == Envelope(first.node_id, CONSENSUS, payload, digest)
        assert second.gossip(CONSENSUS, payload)
        await eventually(lambda: hub.statistics().messages_dropped.get("duplicate") == 1)
        assert hub.forget(digest)
        assert third.gossip(CONSENSUS, payload)
        with trio.fail_after(10):
            again = await hub.inbox.receive()
        assert (again.peer_id, again.digest) == (third.node_id, digest)
        assert hub.gossip(CONSENSUS, payload, exclude_peer=third.node_id, digest=digest)
        assert hub.gossip(CONSENSUS, payload, digest=digest) is False
        assert hub.forget(digest) is False  # gossiped: stays remembered
        nursery.cancel_scope.cancel()


async def test_inbox_is_bounded_in_bytes_and_readers_wait() -> None:
    """With a 256 KiB inbox the node holds at most 256 KiB of payloads; the rest waits in TCP."""
    config = {"frame_bytes_max": 256 * 1024, "write_bytes_max": 64 * 1024}
    async with trio.open_nursery() as nursery:
        node, friend = await start_pair(
            nursery, inbox_bytes_max=256 * 1024, large_frames_bytes_max=256 * 1024, **config
        )
        payloads = [bytes([i]) * 60_000 for i in range(20)]
        for payload in payloads:
            assert friend.send(node.node_id, MEMPOOL, payload)
        await eventually(lambda: node.statistics().reads_paused_for_memory >= 1)
        assert node.statistics().inbox_bytes <= 256 * 1024
        got = []
        with trio.fail_after(10):
            for _ in payloads:
                got.append((await node.inbox.receive()).payload)
        assert got == payloads
        assert node.statistics().inbox_bytes == 0
        nursery.cancel_scope.cancel()


# -- the budgets themselves --------------------------------------------------------------------


async def test_byte_budget_grants_in_arrival_order() -> None:
    """Waiters get bytes first come first served; a cancelled waiter gives its place back.

    With 8 of 10 bytes used, "small" (1 byte) would fit at once but waits
    behind "big" (6 bytes), so a stream of small frames cannot starve a block.
    """
    budget = ByteBudget(10)
    assert budget.try_take(8)
    done: set[str] = set()

    async def want(name: str, amount: int) -> None:
        await budget.take(amount)
        done.add(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(want, "big", 6)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(want, "small", 1)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.try_take(1) is False
        assert done == set()
        budget.release(4)
        await trio.testing.wait_all_tasks_blocked()
        assert (done, budget.bytes_used) == ({"big"}, 10)
        budget.release(6)
        await trio.testing.wait_all_tasks_blocked()
        assert (done, budget.bytes_used) == ({"big", "small"}, 5)
    with trio.move_on_after(0.01):
        await budget.take(6)
    assert budget.bytes_used == 5
    assert budget.try_take(5)


def test_send_budget_counts_a_shared_payload_once() -> None:
    """The same bytes object queued for three peers costs its length once, until all release."""
    budget = SendBudget(100)
    shared = bytes(60)
    assert all(budget.hold(shared) for _ in range(3))
    assert budget.bytes_used == 60
    assert budget.hold(bytes(50)) is False
    for _ in range(3):
        budget.release(shared)
    assert budget.bytes_used == 0
    assert budget.hold(bytes(50))


async def test_unsolicited_pongs_close_the_connection() -> None:
    """A PONG that answers none of the node's PINGs is a flood: the connection is closed."""
    async with trio.open_nursery() as nursery:
        node, _ = await start_pair(nursery)
        conn = await connect_raw(node)
        await conn.send(wire.encode_pong(1))
        await _closed_by_node(conn)
        assert node.statistics().disconnects["rate_exceeded"] == 1
        nursery.cancel_scope.cancel()
