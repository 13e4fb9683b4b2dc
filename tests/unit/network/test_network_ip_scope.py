"""What a per-IP rule and a PEX address cover.

An IPv6 host gets a /64 (2^64 addresses it can send from), so a ban or a per-IP
limit keyed on the full address is a new key per connection. And a PEX address
whose host is the unspecified address ("0.0.0.0", "::") is never a peer's: a
connect to it reaches this very host (Linux), so a hostile peer can make the node
dial its own listener or local services with every book entry."""

from __future__ import annotations

import pytest

from consensus.crypto import PrivateKey
from network.testing import key_id, loopback_node


async def test_an_ip_ban_covers_the_attackers_ipv6_prefix() -> None:
    node = loopback_node(handshake_failures_ip_ban=3)
    for _ in range(3):
        node._blame_ip("2001:db8:1:2::1")
    assert node._ip_banned("2001:db8:1:2::1")
    # The next connection comes from the same /64: still the banned host.
    assert node._ip_banned("2001:db8:1:2::2")


async def test_the_per_ip_handshake_rate_covers_the_ipv6_prefix() -> None:
    node = loopback_node(handshakes_per_ip_per_s_max=2.0)
    refused = [node._admit_ip(f"2001:db8:1:2::{n:x}") for n in range(1, 11)]
    assert refused.count("") <= 2, refused


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "224.0.0.1", "ff02::1"])
async def test_pex_does_not_learn_an_unspecified_or_multicast_host(host: str) -> None:
    node = loopback_node()
    node_id = key_id(PrivateKey.generate())
    node._learn(((node_id, host, 26656),), "127.0.0.1")
    assert node_id not in node._book


@pytest.mark.parametrize(
    ("host", "sender", "learnt"),
    [
        ("127.0.0.1", "127.0.0.1", True),  # a devnet on loopback
        ("::1", "::1", True),
        ("127.0.0.1", "9.9.9.9", False),  # a remote peer: not this host's services
        ("127.0.0.1", "10.0.0.2", False),
        ("10.0.0.5", "10.0.0.2", True),  # a private network, told by one of its own
        ("192.168.1.5", "9.9.9.9", False),  # a remote peer: not the node's LAN
        ("8.8.8.8", "10.0.0.2", True),  # public addresses from anyone
        ("8.8.8.8", "9.9.9.9", True),
        ("169.254.0.1", "10.0.0.2", False),  # link-local
        ("240.0.0.1", "10.0.0.2", False),  # reserved
        ("::ffff:127.0.0.1", "127.0.0.1", True),  # IPv4-mapped, as the IPv4 address
    ],
)
async def test_pex_learns_a_local_address_only_from_a_peer_as_local(
    host: str, sender: str, learnt: bool
) -> None:
    node = loopback_node()
    node_id = key_id(PrivateKey.generate())
    node._learn(((node_id, host, 26656),), sender)
    assert (node_id in node._book) is learnt


async def test_a_persistent_peer_is_never_banned_with_its_ipv6_prefix() -> None:
    """The /64 of an attacker may hold a persistent peer: the peer's exact address stays exempt."""
    node = loopback_node(handshake_failures_ip_ban=3)
    node._protected_ips.add("2001:db8:1:2::7")
    for _ in range(3):
        node._blame_ip("2001:db8:1:2::1")
    assert node._admit_ip("2001:db8:1:2::1") in ("ip_banned", "")
    assert node._ip_banned("2001:db8:1:2::9")
    assert node._admit_ip("2001:db8:1:2::7") == ""
