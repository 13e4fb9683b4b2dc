"""Every limit of the network layer, with its unit in its name and the reason for its default.

Why one record: the limits are the network's defence (memory, CPU, fairness)
and the operator's tuning surface; keeping them in one frozen dataclass makes
them visible, testable and impossible to change behind a running service.
"""

from __future__ import annotations

from dataclasses import dataclass

from network.wire import CHANNELS, CONSENSUS, MEMPOOL

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where to dial a peer and which node id must answer there."""

    node_id: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if len(self.node_id) != 40 or any(c not in "0123456789abcdef" for c in self.node_id):
            raise ValueError(f"node id must be 40 lowercase hex characters: {self.node_id!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port out of range: {self.port}")

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """`node_id@host:port`, the form used by `[p2p] persistent_peers`."""
        node_id, _, rest = text.partition("@")
        host, _, port = rest.rpartition(":")
        if not node_id or not host or not port.isdigit():
            raise ValueError(f"peer address must be node_id@host:port: {text!r}")
        return cls(node_id.lower(), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.node_id}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    # A frame larger than this is a protocol violation; checked on the 4-byte
    # header before the body is buffered. Must hold the largest block part.
    frame_bytes_max: int = 16 * MIB
    # One write of the send loop gathers frames up to this many plaintext
    # bytes: big enough to amortise encryption and syscalls over hundreds of
    # small messages, small enough that a vote waits at most one such write.
    write_bytes_max: int = 256 * 1024
    # XX is three messages; a peer that cannot finish in this time is gone.
    handshake_timeout_s: float = 10.0
    # Concurrent handshakes in progress (each costs 3 X25519 + 1 Ed25519 verify).
    handshakes_pending_max: int = 64
    dial_timeout_s: float = 10.0
    # A PING goes out this often; a peer silent for idle_timeout_s is dropped.
    ping_interval_s: float = 10.0
    idle_timeout_s: float = 30.0
    inbound_peers_max: int = 40
    # PEX-discovered dials stop at this many outbound peers; persistent peers
    # are always dialled and do not count against it.
    outbound_peers_max: int = 10
    # Per peer and per channel; when full, `send`/`gossip` drop the message
    # for that peer and count it ("send_queue_full"). Consensus gets the most
    # room because a dropped vote costs a round; mempool the least memory.
    send_queue_messages_max: tuple[tuple[int, int], ...] = (
        (CONSENSUS, 10_000),
        (2, 1_000),
        (3, 1_000),
        (MEMPOOL, 10_000),
        (5, 100),
    )
    send_queue_bytes_max: int = 32 * MIB
    # The node's inbox; when full, peer readers wait (backpressure reaches the
    # senders through TCP) rather than drop consensus messages.
    inbox_messages_max: int = 10_000
    # Gossip dedupe: 32-byte hashes, ~150 B each with the dict entry, so the
    # default bounds the cache at ~30 MiB.
    seen_cache_entries_max: int = 200_000
    ban_duration_s: float = 3600.0
    misbehaviour_score_ban: int = 100
    # Pre-handshake garbage from one IP: this many failures within
    # ban_duration_s bans the IP (0 disables IP bans). See network.service.
    handshake_failures_ip_ban: int = 20
    # Per-peer receive throttles: beyond these rates the peer's reader pauses
    # (TCP backpressure), nothing is dropped.
    rate_bytes_per_s_max: int = 64 * MIB
    rate_messages_per_s_max: int = 100_000
    dial_backoff_base_s: float = 0.5
    dial_backoff_max_s: float = 60.0
    pex_interval_s: float = 30.0
    # Bound of the address book learnt through PEX, and of one PEX answer.
    address_book_entries_max: int = 1_000
    pex_addresses_max: int = 64
    # Bound of the ban and score tables (oldest evicted first).
    bans_entries_max: int = 10_000

    def __post_init__(self) -> None:
        limits = dict(self.send_queue_messages_max)
        if set(limits) != set(CHANNELS) or min(limits.values()) < 1:
            raise ValueError("send_queue_messages_max needs a positive limit for every channel")
        if not 64 < self.frame_bytes_max < 2**32:
            raise ValueError("frame_bytes_max must fit the 4-byte frame header")
        if self.write_bytes_max > self.frame_bytes_max:
            raise ValueError("write_bytes_max must not exceed frame_bytes_max")
        if self.idle_timeout_s <= self.ping_interval_s:
            raise ValueError("idle_timeout_s must exceed ping_interval_s")

    def queue_messages_max(self, channel: int) -> int:
        return dict(self.send_queue_messages_max)[channel]
