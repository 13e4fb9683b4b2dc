"""Hostile host names and DNS answers: a dial fails, the node stays up, nothing unproven
is protected, and a hanging resolver holds only its own threads."""

from __future__ import annotations

import socket
import threading

import pytest
import trio

from consensus.crypto import PrivateKey
from network import Network, PeerAddress, service, wire
from network.testing import (
    TEST_CHAIN_ID,
    TEST_CONFIG,
    connect_raw,
    eventually,
    key_id,
    loopback_node,
)

UNENCODABLE_HOSTS = [
    "a" * 64 + ".example",  # a DNS label over 63 characters: UnicodeError (idna codec)
    "a..example",  # an empty label: UnicodeError
    "\u00fc\u200d.example",  # refused by IDNA 2008: idna.IDNAError
]


@pytest.mark.parametrize("host", UNENCODABLE_HOSTS)
async def test_a_dial_to_an_unencodable_host_fails_instead_of_raising(host: str) -> None:
    node = loopback_node()
    assert await node._connect(PeerAddress(key_id(PrivateKey.generate()), host, 26656)) is None


@pytest.mark.parametrize("host", UNENCODABLE_HOSTS)
async def test_a_pex_address_with_an_unencodable_host_does_not_stop_the_node(host: str) -> None:
    node = loopback_node()
    bad = key_id(PrivateKey.generate())
    witness = key_id(PrivateKey.generate())  # a good address, dialled in the same round
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        conn = await connect_raw(node)
        decoder = wire.FrameDecoder(node.config.frame_bytes_max)
        with trio.fail_after(10):
            asked = False
            while not asked:  # the node asks every new peer for addresses
                for message in decoder.feed(await conn.receive()):
                    if type(message) is wire.Batch and message.channel == wire.PEX:
                        asked = True
        answer = wire.encode_pex_addresses(
            [(bad, host, 26656), (witness, "127.0.0.1", closed_port)]
        )
        await conn.send(wire.encode_batch(False, wire.PEX, [answer]))
        # Both addresses are learnt in one PEX answer and dialled in one round:
        # once the witness's dial has failed, the bad one was dialled or skipped.
        await eventually(lambda: witness in node._book and node._book[witness].failures >= 1)
        await trio.sleep(0.2)
        assert node.peers()  # still serving the hostile peer: the service is alive
        nursery.cancel_scope.cancel()


async def test_an_address_that_fails_the_handshake_is_not_protected_from_ip_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A persistent peer's name that resolves (hostile DNS, rotating answers) to a host that
    is not that peer: whatever accepted the TCP connection must not become a protected IP
    (exempt from IP bans and per-IP handshake limits) when the handshake then proves it is
    someone else. With persistent redials every 2 s at most, each answer would add one."""
    answers = iter(f"127.0.0.{n}" for n in range(2, 250))

    impostor = socket.socket()
    impostor.bind(("0.0.0.0", 0))  # answers on every 127.x address
    impostor.listen(64)
    impostor.setblocking(False)
    port = impostor.getsockname()[1]
    node = loopback_node(
        persistent=[PeerAddress(key_id(PrivateKey.generate()), "peer.example", port)],
        dial_backoff_base_s=0.05,
        persistent_dial_backoff_max_s=0.1,
        handshake_timeout_s=0.2,
    )
    monkeypatch.setattr(
        service,
        "_getaddrinfo",
        lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))],
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)

            async def close_what_arrives() -> None:
                while True:
                    await trio.lowlevel.wait_readable(impostor)
                    conn, _ = impostor.accept()
                    conn.close()  # not the peer: the handshake fails

            nursery.start_soon(close_what_arrives)
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
    finally:
        impostor.close()
    protected = {ip for ip in range_127() if node._protected(ip)}
    # Every answer only ever connected to an impostor.
    assert protected == set()


def range_127() -> list[str]:
    return [f"127.0.0.{n}" for n in range(1, 256)]


async def test_a_persistent_peer_that_moves_takes_its_exemption_along(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A persistent peer given by name is exempt from per-IP rules where the handshake proved
    it, and only there: once it is reached at a new address, the old one is an address
    like any other (it may be anyone's by now)."""
    friend = Network(
        identity=PrivateKey.generate(),
        chain_id=TEST_CHAIN_ID,
        listen=("0.0.0.0", 0),  # answers on every 127.x address
        config=TEST_CONFIG,
    )
    where = "127.0.0.2"
    monkeypatch.setattr(
        service,
        "_getaddrinfo",
        lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (where, port))],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(friend.run)
        port = friend.listen_address[1]
        node = loopback_node(
            persistent=[PeerAddress(friend.node_id, "friend.example", port)],
            persistent_dial_backoff_max_s=0.1,
        )
        await nursery.start(node.run)
        await eventually(lambda: friend.node_id in node._peers)
        assert {ip for ip in range_127() if node._protected(ip)} == {"127.0.0.2"}

        where = "127.0.0.3"
        node._peers[friend.node_id].close("moved (test)")
        await eventually(lambda: node._persistent_reached.get(friend.node_id) == "127.0.0.3")
        assert {ip for ip in range_127() if node._protected(ip)} == {"127.0.0.3"}
        nursery.cancel_scope.cancel()


async def test_lookups_that_hang_hold_only_the_resolvers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver that hangs: each dial gives up at its timeout, its lookup thread runs on,
    and no more than RESOLVER_THREADS of them run at once, on threads of their own. trio's
    shared worker threads (WAL syncs, block writes) stay free: before, 45 abandoned
    lookups held 40 of its 40 and an unrelated thread call waited 2.7 s."""
    running = 0
    most = 0
    release = threading.Event()

    def hang(host: str, port: int) -> list[object]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        release.wait(10)
        running -= 1
        raise socket.gaierror("no answer")

    monkeypatch.setattr(service, "_getaddrinfo", hang)
    node = loopback_node(dial_timeout_s=0.2, connect_timeout_s=0.1)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(45):
                address = PeerAddress(key_id(PrivateKey.generate()), "hang.example", 26656)
                nursery.start_soon(node._connect, address)
        assert most <= service.RESOLVER_THREADS, most
        with trio.fail_after(1):  # trio's default pool: free at once
            await trio.to_thread.run_sync(lambda: None)
        # A numeric address needs no lookup and dials as usual.
        assert (
            await node._connect(PeerAddress(key_id(PrivateKey.generate()), "127.0.0.1", 1)) is None
        )
    finally:
        release.set()
