"""The per-IP scope, PEX learning rules and persistent-peer protection (review 4).

Each test failed on 2a9bd4f and its parent."""

from __future__ import annotations

import socket
import threading
from functools import partial

import pytest
import trio

from consensus.crypto import PrivateKey
from network import Network, PeerAddress, service
from network.testing import (
    TEST_CHAIN_ID,
    TEST_CONFIG,
    address_of_node,
    eventually,
    key_id,
    loopback_node,
)

# Hosts that are not IP addresses to `ipaddress` (so `_learnable_ip` never sees
# them) but are to the system resolver: getaddrinfo() takes them as numeric IPv4
# (inet_aton's forms: fewer parts, decimal, octal, hex) without any lookup.
NUMERIC_NAMES = [
    ("0", "0.0.0.0"),  # the very address the commit stopped learning: the node dials itself
    ("0.0", "0.0.0.0"),
    ("127.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("10.1", "10.0.0.1"),
    ("192.168.1", "192.168.0.1"),
]


@pytest.mark.parametrize(("host", "is_really"), NUMERIC_NAMES)
async def test_pex_does_not_learn_an_ip_spelt_as_a_name(host: str, is_really: str) -> None:
    """A hostile peer on a global address sends "0", "127.1", "2130706433", "10.1"...:
    _dialable_host takes them for names, _is_ip does not, so _learnable_ip is
    skipped, yet the system resolver turns them into 0.0.0.0 / 127.0.0.1 / 10.0.0.1
    without a lookup. The new rule (no unspecified address; no loopback or private
    address from a remote peer) is evaded with one byte."""
    assert socket.getaddrinfo(host, 1, type=socket.SOCK_STREAM)[0][4][0] == is_really
    node = loopback_node()
    node_id = key_id(PrivateKey.generate())
    node._learn(((node_id, host, 26656),), "9.9.9.9")
    assert node_id not in node._book


async def test_a_name_from_a_remote_peer_that_resolves_to_loopback_is_not_dialled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile peer on a global address sends a name it controls (or "localhost")
    that resolves to 127.0.0.1: the node dials its own host's services, exactly what
    the new rule refuses for the literal 127.0.0.1. What a PEX-learnt name resolves
    to must meet the same rule, checked against the IP of the peer that told it."""
    accepted = 0
    asked = trio.Event()

    async def count(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
        local_port = listeners[0].socket.getsockname()[1]
        token = trio.lowlevel.current_trio_token()

        def resolve(host: str, port: int) -> list[object]:
            if host == "rebind.attacker.example":
                token.run_sync_soon(asked.set)
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
            raise socket.gaierror("unknown (test)")

        monkeypatch.setattr(service, "_getaddrinfo", resolve)
        node = loopback_node()
        await nursery.start(node.run)
        node._learn(
            ((key_id(PrivateKey.generate()), "rebind.attacker.example", local_port),),
            "9.9.9.9",
        )
        # Either the name is never looked up for a dial, or its answer is refused.
        with trio.move_on_after(3):
            await asked.wait()
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert accepted == 0


async def test_a_pex_address_for_a_persistent_peers_node_id_does_not_delay_its_redial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile peer answers PEX with the node id of the node's persistent peer at a
    name whose lookup hangs (or an IP that drops SYNs). When the persistent peer's
    link drops, the address book's dial of that entry puts the node id in
    `_dialling`, and _persistent_loop skips its own dial while it is there: the
    redial waits up to dial_timeout_s (10 s by default), again at every drop while
    the entry lives, however many resolver threads the persistent peers have."""
    release = threading.Event()
    hanging = threading.Event()

    def resolve(host: str, port: int) -> list[object]:
        if host.endswith(".attacker.example"):
            hanging.set()
            release.wait(30)
            raise socket.gaierror("no answer")
        if host == "friend.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        raise socket.gaierror("unknown (test)")

    monkeypatch.setattr(service, "_getaddrinfo", resolve)
    try:
        async with trio.open_nursery() as nursery:
            friend = loopback_node()
            await nursery.start(friend.run)
            node = loopback_node(
                persistent=[
                    PeerAddress(friend.node_id, "friend.example", address_of_node(friend).port)
                ],
                dial_timeout_s=8.0,
                persistent_dial_backoff_max_s=0.1,
            )
            await nursery.start(node.run)
            await eventually(lambda: friend.node_id in node._peers)
            node._learn(((friend.node_id, "hang.attacker.example", 26656),), "9.9.9.9")

            node._peers[friend.node_id].close("link lost (test)")
            await eventually(lambda: friend.node_id not in node._peers, timeout_s=2)
            node._dial_from_book()  # what the PEX loop does whenever it wakes
            # The persistent peer is back within a few persistent backoffs, not
            # after the attacker's dial gives up.
            await eventually(lambda: friend.node_id in node._peers, timeout_s=3)
            nursery.cancel_scope.cancel()
    finally:
        release.set()


async def test_a_persistent_peer_by_name_that_only_dials_in_is_protected() -> None:
    """A persistent peer given by name that the node cannot dial (behind NAT without
    a port forward: OPERATIONS.md's "several of your nodes sit behind one address,
    list them as persistent peers") but which dials in and proves its node id in the
    handshake. Before 2a9bd4f its address was protected (what its name resolved
    to); now _persistent_reached is set only by an outbound dial, so it never is:
    its NAT address stays subject to per-IP limits and bans that anyone behind the
    same address can trigger. Here: its name resolves to 127.0.0.1, where it dials
    in from, but nothing listens on the port."""
    async with trio.open_nursery() as nursery:
        node_key = PrivateKey.generate()
        friend_key = PrivateKey.generate()
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # a port nobody listens on
        dead_port = closed.getsockname()[1]
        node = Network(
            identity=node_key,
            chain_id=TEST_CHAIN_ID,
            listen=("127.0.0.1", 0),
            persistent_peers=[PeerAddress(key_id(friend_key), "localhost", dead_port)],
            config=TEST_CONFIG,
        )
        await nursery.start(node.run)
        friend = loopback_node(persistent=[address_of_node(node)], key=friend_key)
        await nursery.start(friend.run)
        await eventually(lambda: friend.node_id in node._peers)
        assert node._peers[friend.node_id].direction == "inbound"
        assert node._peers[friend.node_id].ip == "127.0.0.1"
        await eventually(lambda: node._protected("127.0.0.1"))  # once its name is looked up
        nursery.cancel_scope.cancel()
        closed.close()
