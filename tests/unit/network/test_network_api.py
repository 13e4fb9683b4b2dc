"""The public surface of network/ and its configuration checks."""

from __future__ import annotations

import dataclasses

import pytest

import network
from network import NetworkConfig


def test_exports_are_pinned() -> None:
    """The names the node may use are exactly these (changing them is an API change)."""
    assert sorted(network.__all__) == sorted(
        [
            "BLOCKSYNC",
            "CHANNELS",
            "CHANNEL_NAMES",
            "CONSENSUS",
            "EVIDENCE",
            "MEMPOOL",
            "PEX",
            "ConnectionClosed",
            "Envelope",
            "FrameError",
            "FrameTimeout",
            "FrameTooLarge",
            "HandshakeAbandoned",
            "HandshakeError",
            "HandshakeTimeout",
            "Inbox",
            "Misbehaviour",
            "Network",
            "NetworkConfig",
            "NetworkError",
            "NetworkStatistics",
            "NoiseError",
            "PeerAddress",
            "PeerIdleTimeout",
            "PeerInfo",
            "ProtocolViolation",
            "RateExceeded",
            "SendTimeout",
            "node_id_of",
        ]
    )
    for name in network.__all__:
        assert hasattr(network, name)


def test_channel_ids_and_priority_order() -> None:
    """Channel ids are fixed by the protocol, and CHANNELS lists them in send priority."""
    assert (network.CONSENSUS, network.EVIDENCE, network.BLOCKSYNC) == (1, 2, 3)
    assert (network.MEMPOOL, network.PEX) == (4, 5)
    assert network.CHANNELS == (1, 2, 3, 4, 5)


def test_records_are_frozen() -> None:
    """Envelope, PeerInfo, statistics and config are frozen slotted dataclasses."""
    for cls in (network.Envelope, network.PeerInfo, network.NetworkStatistics, NetworkConfig):
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__


@pytest.mark.parametrize(
    "changes",
    [
        {"frame_bytes_max": 2**32},
        {"write_bytes_max": 32 * 1024 * 1024},
        {"idle_timeout_s": 1.0, "ping_interval_s": 2.0},
        {"send_queue_messages_max": ((1, 10),)},
    ],
)
def test_inconsistent_config_is_refused(changes: dict[str, object]) -> None:
    """Limits that contradict each other raise ValueError at construction."""
    with pytest.raises(ValueError):
        dataclasses.replace(NetworkConfig(), **changes)  # type: ignore[arg-type]


async def test_send_and_gossip_refuse_the_pex_channel_and_big_payloads() -> None:
    """The node may not write on PEX; an oversized payload is dropped and counted."""
    from network.testing import loopback_node

    net = loopback_node(frame_bytes_max=4096, write_bytes_max=4096)
    with pytest.raises(ValueError):
        net.gossip(network.PEX, b"x")
    assert net.gossip(network.CONSENSUS, bytes(5000)) is False
    assert net.send("ab" * 20, network.CONSENSUS, bytes(5000)) is False
    assert net.statistics().messages_dropped["payload_too_large"] == 2
