"""Gossip, channels and peer exchange between real nodes on loopback sockets."""

from __future__ import annotations

import collections

import trio

from network import CONSENSUS, MEMPOOL, Envelope, Network, PeerAddress
from network.testing import address_of_node, eventually
from network.testing import loopback_node as make_node


async def _full_mesh(nursery: trio.Nursery, count: int, **overrides: object) -> list[Network]:
    """`count` nodes where node i lists every node j < i as a persistent peer."""
    nodes: list[Network] = []
    for _ in range(count):
        persistent = [address_of_node(n) for n in nodes]
        node = make_node(persistent=persistent, **overrides)
        await nursery.start(node.run)
        nodes.append(node)
    with trio.fail_after(10):
        for node in nodes:
            await node.wait_peers(count - 1)
    return nodes


async def _relay(node: Network, received: list[Envelope], limit: int) -> None:
    """What the node does: take each envelope and forward it (gossip excludes the sender)."""
    async for envelope in node.inbox:
        received.append(envelope)
        node.gossip(envelope.channel, envelope.payload, exclude_peer=envelope.peer_id)
        if len(received) >= limit:
            return


async def test_five_nodes_broadcast_reaches_everyone_exactly_once() -> None:
    """A message gossiped by one of 5 fully meshed nodes reaches the other 4 exactly once."""
    async with trio.open_nursery() as nursery:
        nodes = await _full_mesh(nursery, 5)
        received: dict[str, list[Envelope]] = {n.node_id: [] for n in nodes}
        messages = [b"vote-%d" % i for i in range(50)]
        async with trio.open_nursery() as relays:
            for node in nodes[1:]:
                relays.start_soon(_relay, node, received[node.node_id], len(messages))
            for message in messages:
                assert nodes[0].gossip(CONSENSUS, message)
            assert nodes[0].gossip(CONSENSUS, messages[0]) is False
        # Copies on the wire: 4 from the origin and 3 from each relay per message;
        # all but the first copy at each relay are dropped as duplicates.
        copies = len(messages) * (4 + 4 * 3)
        await eventually(
            lambda: (
                sum(n.statistics().messages_dropped.get("duplicate", 0) for n in nodes)
                == copies - 4 * len(messages)
            )
        )
        for node in nodes[1:]:
            payloads = [e.payload for e in received[node.node_id]]
            assert sorted(payloads) == sorted(messages)
            assert node.inbox.statistics().current_buffer_used == 0
            assert all(e.channel == CONSENSUS for e in received[node.node_id])
        assert nodes[0].inbox.statistics().current_buffer_used == 0
        nursery.cancel_scope.cancel()


async def test_peer_exchange_from_one_seed_connects_everyone() -> None:
    """Five nodes that know only the seed learn each other through PEX and form a full mesh."""
    async with trio.open_nursery() as nursery:
        seed = make_node()
        await nursery.start(seed.run)
        nodes = [seed]
        for _ in range(4):
            node = make_node(persistent=[address_of_node(seed)])
            await nursery.start(node.run)
            nodes.append(node)
        with trio.fail_after(15):
            for node in nodes:
                await node.wait_peers(4)
        for node in nodes:
            ids = {p.node_id for p in node.peers()}
            assert ids == {n.node_id for n in nodes} - {node.node_id}
            assert len(node.peers()) == 4  # duplicates resolved: one connection per pair
        nursery.cancel_scope.cancel()


async def test_consensus_is_sent_before_a_mempool_flood() -> None:
    """A vote queued after 5000 transactions is delivered before most of them."""
    async with trio.open_nursery() as nursery:
        a, b = await _full_mesh(nursery, 2)
        for i in range(5000):
            assert a.gossip(MEMPOOL, b"tx-%05d" % i + bytes(200))
        assert a.gossip(CONSENSUS, b"the-vote")
        order: list[bytes] = []
        with trio.fail_after(10):
            while len(order) < 5001:
                order.append((await b.inbox.receive()).payload)
        assert order.index(b"the-vote") < 1000
        nursery.cancel_scope.cancel()


async def test_send_queue_full_drops_and_counts() -> None:
    """With a 10-message mempool queue, the 11th direct send is refused and counted."""
    limits = ((1, 100), (2, 10), (3, 10), (4, 10), (5, 10))
    async with trio.open_nursery() as nursery:
        a, b = await _full_mesh(nursery, 2, send_queue_messages_max=limits)
        results = [a.send(b.node_id, MEMPOOL, b"tx-%d" % i) for i in range(11)]
        assert results == [True] * 10 + [False]
        assert a.statistics().messages_dropped["send_queue_full"] == 1
        assert a.send("00" * 20, MEMPOOL, b"x") is False
        assert a.statistics().messages_dropped["no_such_peer"] == 1
        got = [(await b.inbox.receive()).payload for _ in range(10)]
        assert got == [b"tx-%d" % i for i in range(10)]
        # Direct messages are not deduplicated: the same bytes again are delivered again.
        assert a.send(b.node_id, MEMPOOL, b"tx-0")
        assert (await b.inbox.receive()).payload == b"tx-0"
        await a.wait_send_capacity(MEMPOOL)
        stats = b.statistics()
        assert stats.messages_received_by_channel[MEMPOOL] == 11
        assert (stats.peers_outbound, a.statistics().peers_inbound) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_large_messages_span_several_noise_messages() -> None:
    """A 1 MiB payload (16 Noise messages) and a 64 KiB one arrive intact, in order."""
    async with trio.open_nursery() as nursery:
        a, b = await _full_mesh(nursery, 2)
        big = bytes(range(256)) * 4096
        assert a.send(b.node_id, 3, big)
        assert a.send(b.node_id, 3, big[:65536])
        with trio.fail_after(10):
            assert (await b.inbox.receive()).payload == big
            assert (await b.inbox.receive()).payload == big[:65536]
        nursery.cancel_scope.cancel()


async def test_persistent_peer_is_redialled_after_disconnect() -> None:
    """When a persistent peer's connection drops, the dialler reconnects (with backoff)."""
    async with trio.open_nursery() as nursery:
        a, b = await _full_mesh(nursery, 2)
        first = b.peers()[0].connected_since
        b._peers[a.node_id].close("test")  # the link drops
        await eventually(lambda: bool(b.peers()) and b.peers()[0].connected_since != first)
        await eventually(lambda: len(a.peers()) == 1)
        assert a.send(b.node_id, CONSENSUS, b"after-reconnect")
        with trio.fail_after(5):
            assert (await b.inbox.receive()).payload == b"after-reconnect"
        assert b.statistics().disconnects["test"] == 1
        nursery.cancel_scope.cancel()


async def test_simultaneous_dials_keep_one_connection() -> None:
    """Two nodes listing each other as persistent peers end with one connection, both sides."""
    async with trio.open_nursery() as nursery:
        a = make_node()
        b = make_node()
        await nursery.start(a.run)
        await nursery.start(b.run)
        a._persistent.append(address_of_node(b))
        b._persistent.append(address_of_node(a))
        nursery.start_soon(a._persistent_loop, address_of_node(b))
        nursery.start_soon(b._persistent_loop, address_of_node(a))
        await eventually(lambda: len(a.peers()) == 1 and len(b.peers()) == 1)
        # Let any second connection finish its handshake and be resolved.
        await eventually(
            lambda: {p.direction for p in a.peers()} != {p.direction for p in b.peers()}
        )
        dialler = a if a.node_id < b.node_id else b
        assert dialler.peers()[0].direction == "outbound"
        counts = collections.Counter(len(n.peers()) for n in (a, b))
        assert counts == {1: 2}
        nursery.cancel_scope.cancel()


def test_peer_address_parse() -> None:
    """`node_id@host:port` parses; malformed ids and ports are refused."""
    node_id = "ab" * 20
    parsed = PeerAddress.parse(f"{node_id}@127.0.0.1:26656")
    assert parsed == PeerAddress(node_id, "127.0.0.1", 26656)
    for bad in ("x@1.2.3.4:1", f"{node_id}@host", f"{node_id}@host:0"):
        try:
            PeerAddress.parse(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


async def test_forwarding_never_echoes_to_the_sender() -> None:
    """A relay that forwards with exclude_peer sends nothing back to the message's origin."""
    async with trio.open_nursery() as nursery:
        a, b = await _full_mesh(nursery, 2)
        received: list[Envelope] = []
        async with trio.open_nursery() as relays:
            relays.start_soon(_relay, b, received, 20)
            for i in range(20):
                assert a.gossip(CONSENSUS, b"m-%d" % i)
        assert len(received) == 20
        assert b.statistics().messages_sent_by_channel[CONSENSUS] == 0
        assert a.statistics().messages_received_by_channel[CONSENSUS] == 0
        # Gossiping again what was already forwarded is refused by the seen-cache.
        assert b.gossip(CONSENSUS, b"m-0") is False
        nursery.cancel_scope.cancel()
