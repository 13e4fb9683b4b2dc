"""Archipelago's peer-to-peer layer: Noise transport, framing, channels, gossip, peers.

The node uses only what is exported here (a test pins the list):

    Network(identity=, chain_id=, listen=(host, port), persistent_peers=, config=,
            admit=None, on_refused=None)
        await nursery.start(net.run)
        net.gossip(channel, payload, exclude_peer=None, digest=None) -> bool
        net.send(peer_id, channel, payload) -> bool
        net.inbox                         # trio receive channel of Envelope
        net.forget(envelope.digest)       # deliver that payload again if it comes back
        net.peers() -> list[PeerInfo]
        net.report_misbehaviour(peer_id, Misbehaviour.INVALID_SIGNATURE)
        net.enforce_admission()           # after the member list changed
        net.statistics() -> NetworkStatistics
        await net.wait_send_capacity(channel); await net.wait_peers(count)

Every limit is a field of NetworkConfig, with its unit in its name and the
reason for its default; docs/PROTOCOL.md section 8.9 lists them.

Channels (send priority in this order): CONSENSUS, EVIDENCE, BLOCKSYNC,
MEMPOOL; PEX is owned by the network layer. The wire protocol is in
docs/PROTOCOL.md (section 8).
"""

from network.config import NetworkConfig, PeerAddress
from network.errors import (
    ConnectionClosed,
    FrameError,
    FrameTimeout,
    FrameTooLarge,
    HandshakeAbandoned,
    HandshakeError,
    HandshakeTimeout,
    NetworkError,
    NoiseError,
    PeerIdleTimeout,
    ProtocolViolation,
    RateExceeded,
    SendTimeout,
)
from network.peer import Misbehaviour
from network.secure import node_id_of
from network.service import Envelope, Inbox, Network, NetworkStatistics, PeerInfo
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
