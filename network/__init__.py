"""Archipelago's peer-to-peer layer: Noise transport, framing, channels, gossip, peers.

The node uses only what is exported here (a test pins the list):

    Network(identity=, chain_id=, listen=(host, port), persistent_peers=, config=)
        await nursery.start(net.run)
        net.gossip(channel, payload, exclude_peer=None) -> bool
        net.send(peer_id, channel, payload) -> bool
        net.inbox                         # trio receive channel of Envelope
        net.peers() -> list[PeerInfo]
        net.report_misbehaviour(peer_id, Misbehaviour.INVALID_SIGNATURE)
        net.statistics() -> NetworkStatistics
        await net.wait_send_capacity(channel); await net.wait_peers(count)

Channels (send priority in this order): CONSENSUS, EVIDENCE, BLOCKSYNC,
MEMPOOL; PEX is owned by the network layer. The wire protocol is in
docs/PROTOCOL.md (section 8).
"""

from network.config import NetworkConfig, PeerAddress
from network.errors import (
    ConnectionClosed,
    FrameError,
    FrameTooLarge,
    HandshakeError,
    HandshakeTimeout,
    NetworkError,
    NoiseError,
    PeerIdleTimeout,
    ProtocolViolation,
)
from network.peer import Misbehaviour
from network.secure import node_id_of
from network.service import Envelope, Network, NetworkStatistics, PeerInfo
from network.wire import BLOCKSYNC, CHANNEL_NAMES, CHANNELS, CONSENSUS, EVIDENCE, MEMPOOL, PEX

__all__ = [
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
    "FrameTooLarge",
    "HandshakeError",
    "HandshakeTimeout",
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
    "node_id_of",
]
