"""Every limit of the network layer, with its unit in its name and the reason for its default.

Why one record: the limits are the network's defence (memory, CPU, fairness)
and the operator's tuning surface; keeping them in one frozen dataclass makes
them visible, testable and impossible to change behind a running service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

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
    """Every limit of the network layer; docs/PROTOCOL.md section 8.9 lists them with defaults.

    Memory the network can hold for peers with these defaults, whatever the
    peers send (P = inbound_peers_max + outbound_peers_max + persistent peers,
    50 + persistent by default):

        send queues, all peers         send_queues_bytes_max           256 MiB
        large incomplete frames        large_frames_bytes_max           64 MiB
        inbox (payload bytes)          inbox_bytes_max                  64 MiB
        per peer, small frames         ~0.9 MiB x P                    ~45 MiB
        one frame being decoded        frame_bytes_max                  16 MiB
        seen-cache                     seen_cache_entries_max          ~32 MiB
        handshakes                     handshakes_pending_max x 2 KiB  128 KiB

    about 475 MiB plus Python's per-object overhead (inbox envelopes ~2 MiB).
    The per-peer figure is one read (RECEIVE_BYTES_MAX, 512 KiB) plus one
    small partial frame (write_bytes_max, 256 KiB) plus a Noise message tail.
    """

    # A frame larger than this is a protocol violation; checked on the 4-byte
    # header before the body is buffered. Must hold the largest block part.
    frame_bytes_max: int = 16 * MIB
    # One write of the send loop gathers frames up to this many plaintext
    # bytes: big enough to amortise encryption and syscalls over hundreds of
    # small messages, small enough that a vote waits at most one such write.
    # Frames up to this size are also "small" on receipt (see large_frames_bytes_max).
    write_bytes_max: int = 256 * 1024
    # XX is three messages; a peer that cannot finish in this time is gone.
    handshake_timeout_s: float = 10.0
    # Concurrent handshakes in progress (each costs 3 X25519 + 1 signature verification
    # of the chain's suite: about 50 us for Ed25519, 1.3 ms for SM2 through OpenSSL 3.0).
    handshakes_pending_max: int = 64
    # Concurrent handshakes from one source IP, so that one address cannot
    # take every handshake slot with half-open connections.
    handshakes_pending_per_ip_max: int = 8
    # New inbound connections per second from one source IP (burst of the
    # same count); more are closed before any byte is read. An honest node
    # connects a few times a minute; this caps what one address can make the
    # node spend on handshakes (~0.3 ms of CPU each) at ~3 ms per second.
    # Hosts of persistent peers are exempt.
    handshakes_per_ip_per_s_max: float = 10.0
    dial_timeout_s: float = 10.0
    # A PING goes out this often; a peer silent for idle_timeout_s is dropped.
    ping_interval_s: float = 10.0
    idle_timeout_s: float = 30.0
    # Time a frame may spend waiting for the peer's bytes once its first byte
    # arrived (time the node itself pauses the reader does not count): 16 MiB
    # at 1 MiB/s with room to spare. A stalled frame closes the connection.
    frame_timeout_s: float = 20.0
    # The peer must accept each 256 KiB of our writes within this time; a peer
    # that stops reading is dropped (its send queue freed) instead of pinning
    # queued messages forever.
    send_timeout_s: float = 20.0
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
    # Per peer, payload bytes queued: two of the largest blocks.
    send_queue_bytes_max: int = 32 * MIB
    # All peers together, payload bytes queued, each payload counted once
    # however many peers it is queued for (gossip shares one bytes object).
    # When full, the message is dropped for that peer ("send_budget_full").
    send_queues_bytes_max: int = 256 * MIB
    # HELLO, PING and PONG frames waiting to be written to one peer. Our side
    # queues one PING per ping_interval_s and one PONG per PING received; when
    # full, a PONG (or our PING) is not queued: the peer is not reading, and
    # send_timeout_s will drop it.
    control_queue_frames_max: int = 16
    # The node's inbox, in envelopes and in payload bytes; when either is
    # full, peer readers wait (backpressure reaches the senders through TCP)
    # rather than drop consensus messages. Must hold the largest frame.
    inbox_messages_max: int = 10_000
    inbox_bytes_max: int = 64 * MIB
    # Frames longer than write_bytes_max (only single large payloads: blocks)
    # reserve their whole length from this budget, shared by all peers, when
    # their header arrives, before more of them is read. When it is full the
    # reader stops reading that peer (TCP backpressure) until a reservation
    # is released, in arrival order. A reservation that never completes ends
    # at frame_timeout_s. Must hold the largest frame.
    large_frames_bytes_max: int = 64 * MIB
    # Gossip dedupe (network/seen.py): 32-byte hashes, ~170 B each with the
    # dict entry, so the count bounds the cache at ~32 MiB whatever peers
    # send; when full, the oldest entry is evicted.
    seen_cache_entries_max: int = 200_000
    # ... and each entry is forgotten once it is this old (and at most 2/64
    # of it later), so that at a steady rate the cache holds about
    # ttl x (new digests per second) and stops growing one TTL after the
    # rate settles (4 validators at 200-270 tx/s: 1,500-4,700 entries).
    # Why 60 s: the copies of one payload reach a node within the time it
    # takes to cross the network, seconds (a 16 MiB block at the 1 MiB/s
    # that frame_timeout_s assumes: 16 s a hop), so 60 s is long past the
    # last copy in a healthy network. The slow re-deliveries do not go
    # through gossip: block sync and the consensus re-sends to a stalled or
    # reconnected peer are direct sends, and a closed connection's queued
    # gossip is dropped, not replayed. A copy later than the TTL (from a
    # nearly stalled link, or a peer replaying old payloads on purpose) is
    # delivered again and costs its decode and a screen, and is not
    # forwarded again: the consensus machine drops a vote or proposal it
    # holds, or of another height, before any signature check; the mempool
    # a transaction it holds or recently committed, by its id; the evidence
    # pool evidence it has (duplicate-vote evidence after checking its two
    # signatures again). A hostile peer can cost the node as much at any
    # time with payloads never seen (another batch of old transactions, an
    # old vote of another height), which no seen-cache stops: what bounds
    # that is the per-peer read rates (rate_bytes_per_s_max,
    # rate_messages_per_s_max) and the consensus inbox's per-peer share.
    # Longer buys nothing but memory (gossipsub's default seen TTL is 120 s,
    # in a protocol whose peers also pull ids announced in the last
    # seconds); much shorter and copies queued behind a large block on a
    # slow link would be delivered twice.
    seen_cache_ttl_s: float = 60.0
    ban_duration_s: float = 3600.0
    misbehaviour_score_ban: int = 100
    # Blamed handshake failures (network.service, "Handshake failures") from
    # one IP within ban_duration_s that ban the IP (0 disables IP bans).
    handshake_failures_ip_ban: int = 20
    # A banned IP is not refused outright: it may still start this many
    # handshakes per second, so honest nodes behind the same address (NAT, a
    # shared host) still get in while the garbage it sends costs ~nothing.
    banned_ip_handshakes_per_s_max: float = 1.0
    # Per-peer receive throttles: beyond these rates the peer's reader pauses
    # (TCP backpressure), nothing is dropped.
    rate_bytes_per_s_max: int = 64 * MIB
    rate_messages_per_s_max: int = 100_000
    # PINGs have no legitimate burst (one per ping_interval_s): more than this
    # rate (burst of 5) is a protocol violation and closes the connection.
    rate_pings_per_s_max: float = 1.0
    dial_backoff_base_s: float = 0.5
    dial_backoff_max_s: float = 60.0
    pex_interval_s: float = 30.0
    # A dead link (a cable cut, a host's interface down) is found and left
    # within seconds, and persistent peers redialled within seconds after it
    # is back, instead of waiting for TCP's backed-off retransmission timer
    # (doubling to 15 s and beyond) or idle_timeout_s:
    # - a connection whose kernel has been retransmitting unacknowledged data
    #   for retransmit_timeout_s with no acknowledgement from the peer in that
    #   time (TCP_INFO, read every link_check_interval_s; Linux only, 0
    #   disables) is closed as "link_dead". A peer that is alive but not
    #   reading (zero window: busy, paused, full inbox) is still acknowledging
    #   and is left to send_timeout_s; an event-loop stall only delays the check.
    retransmit_timeout_s: float = 4.0
    link_check_interval_s: float = 1.0
    # - one TCP connect attempt (per address the host resolves to) gives up
    #   after connect_timeout_s rather than wait out the kernel's SYN retries
    #   (1, 3, 7, 15 ... s); resolving the name is bounded by dial_timeout_s.
    connect_timeout_s: float = 3.0
    # - persistent peers are redialled after at most this long (or
    #   dial_backoff_max_s if smaller), which still bounds PEX-discovered
    #   dials; with jitter (the delay is drawn from half to all of the
    #   backoff) so that peers cut together do not redial in lockstep.
    persistent_dial_backoff_max_s: float = 2.0
    # Bound of the address book learnt through PEX, and of one PEX answer.
    address_book_entries_max: int = 1_000
    pex_addresses_max: int = 64
    # Bound of the ban, score and per-IP tables (oldest evicted first).
    bans_entries_max: int = 10_000

    def __post_init__(self) -> None:
        # Every time and rate is finite and positive (retransmit_timeout_s may be 0:
        # off); written so that NaN fails too, as every comparison with NaN is false.
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and not (
                math.isfinite(value)
                and (value > 0 or (value == 0 and field.name == "retransmit_timeout_s"))
            ):
                raise ValueError(f"{field.name} must be a finite positive number, not {value}")
        limits = dict(self.send_queue_messages_max)
        if set(limits) != set(CHANNELS) or min(limits.values()) < 1:
            raise ValueError("send_queue_messages_max needs a positive limit for every channel")
        if not 64 < self.frame_bytes_max < 2**32:
            raise ValueError("frame_bytes_max must fit the 4-byte frame header")
        if self.write_bytes_max > self.frame_bytes_max:
            raise ValueError("write_bytes_max must not exceed frame_bytes_max")
        if self.idle_timeout_s <= self.ping_interval_s:
            raise ValueError("idle_timeout_s must exceed ping_interval_s")
        if self.ping_interval_s * self.rate_pings_per_s_max < 1:
            raise ValueError("ping_interval_s must respect rate_pings_per_s_max")
        if min(self.inbox_bytes_max, self.large_frames_bytes_max) < self.frame_bytes_max:
            raise ValueError("inbox_bytes_max and large_frames_bytes_max must hold one frame")
        if self.send_queues_bytes_max < self.send_queue_bytes_max:
            raise ValueError("send_queues_bytes_max must be at least send_queue_bytes_max")
        if self.seen_cache_entries_max < 1 or not 1.0 <= self.seen_cache_ttl_s <= 86_400.0:
            raise ValueError(
                "seen_cache_entries_max must be positive and seen_cache_ttl_s in 1..86400 s"
            )
        if self.control_queue_frames_max < 2:
            raise ValueError("control_queue_frames_max must hold a HELLO and a PING")
        if self.connect_timeout_s > self.dial_timeout_s:
            raise ValueError("connect_timeout_s must be at most dial_timeout_s")
        if self.handshakes_pending_per_ip_max < 1:
            raise ValueError("handshakes_pending_per_ip_max must be positive")

    def queue_messages_max(self, channel: int) -> int:
        return dict(self.send_queue_messages_max)[channel]
