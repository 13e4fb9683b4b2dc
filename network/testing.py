"""Test helpers for code that runs the network: loopback nodes with fast timers.

Why in the package (as trio.testing is in trio): the network tests, the
node's integration tests and the benchmark all need nodes on 127.0.0.1 with
short timeouts and a way to wait for a condition without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import trio
import trio.testing

from consensus.crypto import PrivateKey
from network import Network, NetworkConfig, PeerAddress, noise, wire
from network.secure import SecureConnection, encode_identity_payload, handshake, node_id_of

TEST_CHAIN_ID = "archipelago-test"

# Small enough to keep the suite fast, large enough never to fire by accident.
TEST_CONFIG = NetworkConfig(
    handshake_timeout_s=5.0,
    dial_timeout_s=5.0,
    ping_interval_s=5.0,
    idle_timeout_s=20.0,
    dial_backoff_base_s=0.05,
    dial_backoff_max_s=0.5,
    pex_interval_s=0.5,
    seen_cache_entries_max=10_000,
)


def loopback_node(
    *,
    persistent: list[PeerAddress] | None = None,
    chain_id: str = TEST_CHAIN_ID,
    key: PrivateKey | None = None,
    **overrides: object,
) -> Network:
    config = replace(TEST_CONFIG, **overrides)  # type: ignore[arg-type]
    return Network(
        identity=key or PrivateKey.generate(),
        chain_id=chain_id,
        listen=("127.0.0.1", 0),
        persistent_peers=persistent or [],
        config=config,
    )


def address_of_node(net: Network) -> PeerAddress:
    host, port = net.listen_address
    return PeerAddress(net.node_id, host, port)


async def start_pair(nursery: trio.Nursery, **overrides: Any) -> tuple[Network, Network]:
    """A loopback node (`overrides` are NetworkConfig fields) and an honest peer, connected.

    Both run in `nursery`; returns once each lists the other as a peer.
    """
    node = loopback_node(**overrides)
    await nursery.start(node.run)
    friend = loopback_node(persistent=[address_of_node(node)])
    await nursery.start(friend.run)
    with trio.fail_after(10):
        await node.wait_peers(1)
        await friend.wait_peers(1)
    return node, friend


def key_id(key: PrivateKey) -> str:
    return node_id_of(key.public_key)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `predicate()` holds, re-checking whenever every task is blocked.

    Not for tests on `autojump_clock`: a pending wait_all_tasks_blocked keeps
    that clock from jumping. Wait on events there (e.g. `Network.wait_peers`).
    """
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked(cushion=0.005)


async def connect_raw(
    net: Network,
    *,
    key: PrivateKey | None = None,
    chain_id: str = TEST_CHAIN_ID,
    expected_node_id: str | None = None,
    hello: bool = True,
) -> SecureConnection:
    """A hand-driven peer of `net`: handshake done (and HELLO sent), nothing else.

    For tests that play a hostile or broken peer on the real wire protocol. The
    handshake expects `net`'s node id unless `expected_node_id` says another.
    """
    key = key or PrivateKey.generate()
    static_private, static_public = noise.generate_keypair()
    host, port = net.listen_address
    stream = await trio.open_tcp_stream(host, port)
    conn = await handshake(
        stream,
        initiator=True,
        identity=key,
        static_private=static_private,
        identity_payload=encode_identity_payload(key, static_public),
        chain_id=chain_id,
        timeout_s=TEST_CONFIG.handshake_timeout_s,
        expected_node_id=expected_node_id or net.node_id,
    )
    if hello:
        await conn.send(wire.encode_hello(0))
    return conn
