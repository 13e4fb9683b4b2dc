"""Review: the resolver's RESOLVER_THREADS are shared by PEX-learnt names and the
persistent peers' names, so a peer that answers PEX with names whose lookup hangs
keeps a persistent peer given by name from being redialled."""

from __future__ import annotations

import socket
import threading

import pytest
import trio

from consensus.crypto import PrivateKey
from network import PeerAddress, service, wire
from network.testing import address_of_node, connect_raw, eventually, key_id, loopback_node


async def test_pex_names_that_hang_do_not_stop_a_persistent_peer_by_name_from_redialling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile peer answers the node's PEX request with 10 host names under a domain
    whose authoritative server never answers (the system resolver then holds the
    lookup for its whole timeout: 5 s x 2 attempts per nameserver and search domain,
    or forever with a hanging NSS module). The node dials them from its address book
    (outbound_peers_max = 10 at once): 8 lookups take all RESOLVER_THREADS and keep
    them after their dials gave up. The node's persistent peer, given by a name that
    resolves at once, then loses its link: its redial must still get through within
    seconds (persistent_dial_backoff_max_s), not wait behind the attacker's names."""
    release = threading.Event()
    hanging = 0
    lock = threading.Lock()

    friend = loopback_node()
    friend_port = 0

    def resolve(host: str, port: int) -> list[object]:
        nonlocal hanging
        if host.endswith(".attacker.example"):
            with lock:
                hanging += 1
            release.wait(30)
            raise socket.gaierror("no answer")
        if host == "friend.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # type: ignore[return-value]

    monkeypatch.setattr(service, "_getaddrinfo", resolve)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(friend.run)
            friend_port = address_of_node(friend).port
            node = loopback_node(
                persistent=[PeerAddress(friend.node_id, "friend.example", friend_port)],
                dial_timeout_s=1.0,
                connect_timeout_s=0.5,
                persistent_dial_backoff_max_s=0.1,
            )
            await nursery.start(node.run)
            await eventually(lambda: friend.node_id in node._peers)

            # The hostile peer: connects, and answers the node's PEX request.
            conn = await connect_raw(node)
            decoder = wire.FrameDecoder(node.config.frame_bytes_max)
            with trio.fail_after(5):
                asked = False
                while not asked:
                    for message in decoder.feed(await conn.receive()):
                        if type(message) is wire.Batch and message.channel == wire.PEX:
                            asked = True
            names = [
                (key_id(PrivateKey.generate()), f"n{i}.attacker.example", 26656)
                for i in range(node.config.outbound_peers_max)
            ]
            answer = wire.encode_pex_addresses(names)
            await conn.send(wire.encode_batch(False, wire.PEX, [answer]))
            await eventually(lambda: hanging >= service.RESOLVER_THREADS, timeout_s=5)

            # The persistent peer's link drops; the node redials it by name.
            node._peers[friend.node_id].close("link lost (test)")
            await eventually(lambda: friend.node_id not in node._peers, timeout_s=2)
            await eventually(lambda: friend.node_id in node._peers, timeout_s=5)
            nursery.cancel_scope.cancel()
    finally:
        release.set()
