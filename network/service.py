"""The network service the node runs: listener, dialler, peers, gossip, PEX, bans.

Why one service object: the node needs a small surface (send, gossip, an
inbox, peer list, misbehaviour reports, statistics) and the network needs one
owner for the shared state every connection touches (the peer table, the
seen-cache, bans, the address book). Everything here runs in the node's trio
nursery; `run` is the service entry point and cancellation is shutdown.

    net = Network(identity=key, chain_id="chain", listen=("0.0.0.0", 26656),
                  persistent_peers=[PeerAddress.parse("<id>@host:26656")])
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        net.gossip(CONSENSUS, vote_bytes)
        async for envelope in net.inbox:
            ...  # validate, then forward: net.gossip(ch, payload, exclude_peer=envelope.peer_id)

Gossip and the seen-cache. `gossip` sends a payload to every peer except
`exclude_peer`, at most once per payload (the cache is keyed by SHA-256 of
the payload, remembers each for `seen_cache_ttl_s` and at most
`seen_cache_entries_max` of them, oldest evicted: network/seen.py). A
gossiped payload that arrives from a peer is delivered to the inbox only the
first time; forwarding is the node's decision (it forwards what it has
validated, so an invalid message stops at the first honest node and only its
origin is scored), made by calling `gossip(..., exclude_peer=sender,
digest=envelope.digest)`, which returns False if this node already gossiped
that payload. So each node sends each payload to each peer at most once, and
never back to the peer it came from. Every envelope carries the SHA-256 of
its payload, computed once on arrival (in a worker thread from 1 MiB up, so
a large payload does not stall the event loop). A node that had to drop a
delivered payload (its own queue was full) calls `forget(digest)`, so that a
later copy from another peer is delivered again.

The inbox is bounded in envelopes (`inbox_messages_max`) and in payload
bytes (`inbox_bytes_max`); when either is full, peer readers wait.

Duplicate connections. When two connections to one node id exist (both
sides dialled at once) the one dialled by the node with the smaller node id
is kept by both sides; two connections in the same direction mean a
reconnect, and the newer one is kept.

Misbehaviour and bans. Malformed or oversized frames and protocol violations
(found here) and invalid data reported by the node (`report_misbehaviour`)
add a score to the peer's node id; each closes the connection, and reaching
`misbehaviour_score_ban` bans the node id for `ban_duration_s`: it is refused
after the handshake and never dialled. A transport message that fails
authentication closes the connection without a score, because anyone on the
path can corrupt a ciphertext and would otherwise get honest peers banned.
Timeouts (idle, stalled frame, stalled reader) close without a score: a slow
honest link causes them too.

Handshake failures. Before the handshake there is no node id to blame, only
the source IP, which many honest nodes may share (NAT, one host running
several nodes, every loopback test). So an inbound handshake ends as one of:

* failed (blamed on the source IP, counted in `handshake_failures`): the
  peer sent bytes that a check refused: a handshake message over 1024 bytes,
  a Noise message that does not authenticate or has a bad length, a
  non-empty first payload, an identity payload that is malformed or does not
  sign the Noise static key;
* abandoned (never blamed, counted in `handshakes_abandoned`): the
  connection closed, was reset or reached `handshake_timeout_s` before any
  check refused anything, whatever it had sent by then. A dialler of another
  chain ends here: it finds the mismatch at message 2 and hangs up.

`handshake_failures_ip_ban` failed handshakes from one IP within
`ban_duration_s` ban the IP for `ban_duration_s`. For IPv6 every per-IP rule
covers the address's /64 (a host can send from any address of its /64). A ban is a rate, not a
wall: a banned IP may still start `banned_ip_handshakes_per_s_max`
handshakes per second (others are closed before a byte is read), so honest
nodes behind it still get in, while its garbage costs the node almost
nothing. Every IP is also limited to `handshakes_per_ip_per_s_max` new
connections per second and `handshakes_pending_per_ip_max` handshakes at
once. The exact addresses of persistent peers (their literal IPs, and for
one given by name the address where a handshake last proved it: dialled, or
connecting in from an address its name resolves to) are never banned or
limited per IP. A failed outbound handshake (wrong node id at the
address, another chain) is counted but blames nobody: the node dialled.
Established connections are never affected by an IP ban.

Membership. With `admit` given, a node id for which `admit(node_id)` is
False is refused right after the handshake, in both directions (counted in
`connections_rejected["not_member"]`), is never dialled from the address
book and is never advertised in PEX answers; `enforce_admission()` closes
connected peers after the membership changed. `on_refused(node_id, reason)`
is called for refusals at most once per node id per `REFUSAL_REPORT_INTERVAL_S`
and `REFUSAL_REPORTS_PER_S_MAX` per second overall, so the caller can log each
one without a log flood from fresh keys. Both run inside the network's
tasks: they must return quickly and not raise.

PEX. Right after connecting, and then every `pex_interval_s` with one random
peer, a node asks for addresses; a peer answers at most once per half
interval with up to `pex_addresses_max` addresses of its connected peers
(outbound: the address it dialled; inbound: the observed IP and the listen
port from HELLO). Addresses go into a bounded address book, and the node
dials from it while it has fewer than `outbound_peers_max` outbound peers.
An unsolicited answer is a protocol violation. An IP address that is no
peer's (unspecified, multicast, link-local, reserved) is not learnt, nor a
loopback one from a peer not on loopback, nor another non-global one from a
peer on a global address, nor an IPv4 address spelt as a name; a learnt
name is dialled only at the resolved addresses that would have been learnt
from the same peer. Addresses for a persistent peer's node id are not
learnt. Names are looked up on threads of their own, apart from the
persistent peers' names.

It is longer than the house's 600 lines on purpose: the network's one
object (dialling, accepting, handshakes, admission, bans, gossip, PEX)
owns the peer table that all of them change.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import math
import os
import random
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio

from consensus.crypto import PrivateKey
from network import noise, wire
from network.config import NetworkConfig, PeerAddress
from network.errors import FrameError, HandshakeAbandoned, HandshakeError, ProtocolViolation
from network.peer import (
    MISBEHAVIOUR_SCORE,
    ByteBudget,
    Counters,
    Misbehaviour,
    Peer,
    SendBudget,
    TokenBucket,
)
from network.secure import SecureConnection, encode_identity_payload, handshake, node_id_of
from network.seen import SeenCache
from network.wire import BATCH_OVERHEAD_BYTES, CHANNEL_NAMES, PAYLOAD_OVERHEAD_BYTES, PEX

# The seen-cache's key: the transport's own, like Noise's primitives, so it is
# SHA-256 whatever the chain's crypto suite (no chain data depends on it).
_sha256 = hashlib.sha256
DIGEST_BYTES = 32
# Payloads from this size are hashed in a worker thread (hashlib releases the
# GIL): SHA-256 runs at ~1.3 GB/s here, so 1 MiB would hold the loop ~0.8 ms
# and a 16 MiB block ~13 ms; the thread round trip costs ~0.1 ms.
HASH_IN_THREAD_BYTES_MIN = 1024 * 1024
# deliver() yields to other tasks after this many payloads that did not wait.
CHECKPOINT_PAYLOADS = 256
# on_refused is called at most once per node id per interval, and at most
# this often overall (burst of REFUSAL_REPORTS_BURST): fresh keys are free.
REFUSAL_REPORT_INTERVAL_S = 60.0
REFUSAL_REPORTS_PER_S_MAX = 1.0
REFUSAL_REPORTS_BURST = 10
# A dial tries at most this many of the addresses a peer's host name resolves
# to (each for connect_timeout_s), so a name with hundreds of records cannot
# hold a dial for long.
DIAL_ADDRESSES_MAX = 4
# Name lookups run on threads of their own, at most this many at once: a lookup
# whose dial gave up (a resolver that hangs) keeps its thread until the system
# resolver returns, and must not hold one of trio's shared worker threads, which
# the node's WAL syncs, block writes and validation use. A dial that finds them
# all busy waits for one within its timeout. The persistent peers' names (the
# operator's) have threads of their own, so that names a peer sent through PEX,
# whose lookups may hang on purpose, never keep a persistent peer from being redialled.
RESOLVER_THREADS = 8
PERSISTENT_RESOLVER_THREADS = 4


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _dialable_host(host: str) -> bool:
    """An IP address or an ASCII host name of 1-63 character labels (what a dial can resolve).

    Not a name that the system resolver reads as an IPv4 address without a
    lookup ("0", "127.1", "2130706433", "0x7f000001": inet_aton's old forms),
    which would evade the rules for IP addresses, nor one whose last label is
    all digits (no top-level domain is).
    """
    if _is_ip(host):
        return True
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return False
    try:
        socket.inet_aton(host)
    except OSError:
        return not labels[-1].isdigit()
    return False


_AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]


def _getaddrinfo(host: str, port: int) -> list[_AddrInfo]:
    """The system resolver's TCP addresses for `host` (blocking: run in a thread)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)  # type: ignore[return-value]


def _digest(payload: bytes) -> bytes:
    return _sha256(payload).digest()


def _normal_ip(ip: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 (dual-stack listeners) as IPv4."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ip_scope(ip: str) -> str:
    """The key of the per-IP rules (bans, handshake rates): the address, or for IPv6 its /64.

    A host on an IPv6 link can send from any of its /64's 2^64 addresses: keyed
    on the full address, a ban or a rate would be a new key per connection.
    Hosts sharing a /64 share its limits, as hosts behind one NAT do an IPv4 one.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # already a scope
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip


def _learnable_ip(host: str, sender_ip: str) -> bool:
    """Whether a PEX address whose host is the IP `host` may be learnt from a peer at `sender_ip`.

    Never an address that is no peer's: unspecified (a connect to it reaches this
    very host), multicast, link-local (it needs an interface), reserved. A
    loopback address only from a peer on loopback, any other non-global one (a
    private network) only from a peer on a non-global address: a peer out on the
    internet cannot point the node at the node's own host or its LAN.
    """
    address = ipaddress.ip_address(_normal_ip(host))
    sender = ipaddress.ip_address(_normal_ip(sender_ip))
    if address.is_loopback:
        return sender.is_loopback
    if address.is_unspecified or address.is_multicast or address.is_link_local:
        return False
    return not address.is_reserved and (address.is_global or not sender.is_global)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One payload received from a peer on a channel, with its SHA-256 computed once."""

    peer_id: str
    channel: int
    payload: bytes
    digest: bytes


class Inbox(trio.abc.ReceiveChannel[Envelope]):
    """The node's end of the inbox: a memory channel whose payload bytes are also bounded.

    Receiving returns an envelope's bytes to the budget that peer readers wait on.
    """

    def __init__(self, channel: trio.MemoryReceiveChannel[Envelope], budget: ByteBudget) -> None:
        self._channel = channel
        self._budget = budget

    async def receive(self) -> Envelope:
        envelope = await self._channel.receive()
        self._budget.release(len(envelope.payload))
        return envelope

    def receive_nowait(self) -> Envelope:
        envelope = self._channel.receive_nowait()
        self._budget.release(len(envelope.payload))
        return envelope

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._channel.statistics()

    @property
    def bytes_used(self) -> int:
        return self._budget.bytes_used

    async def aclose(self) -> None:
        await self._channel.aclose()


@dataclass(frozen=True, slots=True)
class PeerInfo:
    node_id: str
    host: str
    port: int
    direction: str  # "inbound" or "outbound"
    connected_since: float  # trio.current_time() at registration
    bytes_sent: int  # wire bytes, including Noise framing
    bytes_received: int
    messages_sent: int
    messages_received: int
    send_queue_messages: int
    listen_port: int  # from HELLO; 0 if the peer does not listen


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """A snapshot of the counters; per-channel maps are keyed by channel id."""

    peers_inbound: int
    peers_outbound: int
    bytes_sent_by_channel: Mapping[int, int]
    bytes_received_by_channel: Mapping[int, int]
    messages_sent_by_channel: Mapping[int, int]
    messages_received_by_channel: Mapping[int, int]
    # Messages not sent or not delivered, by reason: send_queue_full,
    # send_budget_full, peer_closing, payload_too_large, no_such_peer,
    # duplicate (gossip already seen), control_queue_full (a PING or PONG not
    # queued), pex_request_too_soon.
    messages_dropped: Mapping[str, int]
    # Connections refused, by reason: ip_banned, ip_rate, ip_handshakes_busy,
    # inbound_full, handshakes_busy (before the handshake); banned,
    # not_member, duplicate (after it).
    connections_rejected: Mapping[str, int]
    # Closed connections by reason: disconnected, idle_timeout, frame_timeout,
    # send_timeout, link_dead, rate_exceeded, authentication_failed, banned, duplicate,
    # not_member, and the Misbehaviour values.
    disconnects: Mapping[str, int]
    handshake_failures: int  # blamed: a check refused the peer's bytes
    handshakes_abandoned: int  # closed or timed out first: nobody blamed
    peers_banned: int  # bans issued since start (node ids and IPs)
    bans_active: int
    reads_throttled: int  # reader pauses for rate_bytes/messages_per_s_max
    reads_paused_for_memory: int  # waits for large_frames_bytes_max or the inbox
    seen_cache_entries: int
    address_book_entries: int
    # Memory held now, against its limit in NetworkConfig.
    send_queues_bytes: int  # send_queues_bytes_max
    large_frames_bytes: int  # large_frames_bytes_max (reserved)
    inbox_bytes: int  # inbox_bytes_max


@dataclass(slots=True)
class _BookEntry:
    address: PeerAddress
    learnt_from: str  # the IP of the peer that told it: what its name resolves to must suit
    failures: int = 0
    next_dial_time: float = -math.inf


class Network:
    """The peer-to-peer service. See the module docstring for the policies."""

    def __init__(
        self,
        *,
        identity: PrivateKey,
        chain_id: str,
        listen: tuple[str, int],
        persistent_peers: Iterable[PeerAddress] = (),
        config: NetworkConfig | None = None,
        rng: random.Random | None = None,
        advertise_port: int | None = None,
        admit: Callable[[str], bool] | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config or NetworkConfig()
        self.identity = identity
        self.node_id = node_id_of(identity.public_key)
        self.chain_id = chain_id
        self._listen = listen
        self._listen_port = listen[1]
        self._advertise_port = advertise_port
        self._persistent = [p for p in persistent_peers if p.node_id != self.node_id]
        self._persistent_by_id = {p.node_id: p for p in self._persistent}
        self._admit = admit
        self._on_refused = on_refused
        self._rng = rng or random.Random(os.urandom(16))
        # The Noise static key lives as long as the process; it is bound to the
        # identity by the signature in the handshake payload.
        self._static_private, static_public = noise.generate_keypair()
        self._identity_payload = encode_identity_payload(identity, static_public)
        self._payload_bytes_max = (
            self.config.frame_bytes_max
            - wire.FRAME_HEADER_BYTES
            - BATCH_OVERHEAD_BYTES
            - PAYLOAD_OVERHEAD_BYTES
        )
        self._inbox_send, inbox_receive = trio.open_memory_channel[Envelope](
            self.config.inbox_messages_max
        )
        self._inbox_bytes = ByteBudget(self.config.inbox_bytes_max)
        self.inbox = Inbox(inbox_receive, self._inbox_bytes)
        self._frames_budget = ByteBudget(self.config.large_frames_bytes_max)
        self._send_budget = SendBudget(self.config.send_queues_bytes_max)
        self._peers: dict[str, Peer] = {}
        self._peers_changed = trio.Event()
        self._seen = SeenCache(self.config.seen_cache_entries_max, self.config.seen_cache_ttl_s)
        self._counters = Counters()
        self._bans: dict[str, float] = {}
        self._ip_bans: dict[str, float] = {}
        self._ip_failures: dict[str, tuple[int, float]] = {}
        self._ip_buckets: dict[str, TokenBucket] = {}
        self._ip_pending: collections.Counter[str] = collections.Counter()
        # Never banned or limited per IP: the persistent peers' literal IPs, and
        # where each persistent peer was last reached (node id -> IP; the
        # handshake proved its node id there, and a peer that moves takes its
        # exemption along).
        self._protected_ips = {_normal_ip(p.host) for p in self._persistent if _is_ip(p.host)}
        self._persistent_reached: dict[str, str] = {}
        self._persistent_confirming: set[str] = set()
        self._resolver = trio.CapacityLimiter(RESOLVER_THREADS)
        self._persistent_resolver = trio.CapacityLimiter(PERSISTENT_RESOLVER_THREADS)
        self._scores: dict[str, int] = {}
        self._refusals_reported: dict[str, float] = {}
        self._refusal_bucket = TokenBucket(REFUSAL_REPORTS_PER_S_MAX, 0.0, REFUSAL_REPORTS_BURST)
        self._bans_issued = 0
        self._handshake_failures = 0
        self._handshakes_abandoned = 0
        self._handshakes_pending = 0
        self._inbound_pending = 0
        self._book: dict[str, _BookEntry] = {}
        self._dialling: set[str] = set()
        self._pex_wakeup = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- public API ----------------------------------------------------------

    @property
    def listen_address(self) -> tuple[str, int]:
        """The bound address (the real port once `run` has started)."""
        return self._listen[0], self._listen_port

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self._listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._listen_port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._serve, listeners)
            for address in self._persistent:
                nursery.start_soon(self._persistent_loop, address)
            nursery.start_soon(self._pex_loop)
            task_status.started()

    def gossip(
        self,
        channel: int,
        payload: bytes,
        exclude_peer: str | None = None,
        digest: bytes | None = None,
    ) -> bool:
        """Queue `payload` for every peer but `exclude_peer`; False if already gossiped.

        `digest` is SHA-256 of `payload` when the caller has it (an Envelope's),
        so that it is not computed again.
        """
        self._check_channel(channel)
        if len(payload) > self._payload_bytes_max:
            self._counters.dropped["payload_too_large"] += 1
            return False
        if digest is None:
            digest = _sha256(payload).digest()
        assert len(digest) == DIGEST_BYTES
        if not self._seen.add_gossiped(digest, trio.current_time()):
            return False
        for peer in self._peers.values():
            if peer.node_id != exclude_peer:
                peer.enqueue(channel, True, payload)
        return True

    def forget(self, digest: bytes) -> bool:
        """Let a delivered payload be delivered again; True if it was in the seen-cache.

        For a payload the node received but had to drop (its own queue was
        full): a later copy from another peer then reaches the inbox again. A
        payload this node gossiped stays remembered (for seen_cache_ttl_s), so
        it is not sent twice.
        """
        return self._seen.forget(digest)

    def send(self, peer_id: str, channel: int, payload: bytes) -> bool:
        """Queue `payload` for one peer; False (and counted) if not connected or queue full."""
        self._check_channel(channel)
        if len(payload) > self._payload_bytes_max:
            self._counters.dropped["payload_too_large"] += 1
            return False
        peer = self._peers.get(peer_id)
        if peer is None:
            self._counters.dropped["no_such_peer"] += 1
            return False
        return peer.enqueue(channel, False, payload)

    async def wait_send_capacity(self, channel: int) -> None:
        """Return once no connected peer's queue for `channel` is more than half full."""
        while True:
            for peer in list(self._peers.values()):
                if peer.queue_over_half(channel):
                    await peer.wait_progress()
                    break
            else:
                return

    async def wait_peers(self, count: int) -> None:
        """Return once at least `count` peers are connected."""
        while len(self._peers) < count:
            await self._peers_changed.wait()

    def has_room(self, peer_id: str, channel: int) -> bool:
        """Whether `peer_id` is connected and its queue for `channel` is at most half full.

        For producers that would load or build something costly for one peer
        (a node serving stored blocks) and should not when it would be dropped.
        """
        peer = self._peers.get(peer_id)
        return peer is not None and not peer.queue_over_half(channel)

    def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(
                node_id=p.node_id,
                host=p.host,
                port=p.port,
                direction=p.direction,
                connected_since=p.connected_since,
                bytes_sent=p.bytes_sent,
                bytes_received=p.bytes_received,
                messages_sent=p.messages_sent,
                messages_received=p.messages_received,
                send_queue_messages=p.queued_messages,
                listen_port=p.hello.listen_port if p.hello else 0,
            )
            for p in self._peers.values()
        ]

    def report_misbehaviour(self, peer_id: str, reason: Misbehaviour, detail: str = "") -> None:
        """The node found invalid data from `peer_id`: score it and disconnect it."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            self._close_peer(peer, reason.value)
        self._score(peer_id, reason)

    def enforce_admission(self) -> int:
        """Close every connected peer that `admit` now refuses; how many were closed."""
        admit = self._admit
        if admit is None:
            return 0
        refused = [p for p in self._peers.values() if not admit(p.node_id)]
        for peer in refused:
            self._close_peer(peer, "not_member")
            self._report_refusal(peer.node_id, "not_member")
        return len(refused)

    def is_banned(self, node_id: str) -> bool:
        expiry = self._bans.get(node_id)
        if expiry is None:
            return False
        if expiry <= trio.current_time():
            del self._bans[node_id]
            return False
        return True

    def statistics(self) -> NetworkStatistics:
        c = self._counters

        def by_channel(values: list[int]) -> Mapping[int, int]:
            return MappingProxyType({ch: values[ch] for ch in CHANNEL_NAMES})

        now = trio.current_time()
        inbound = sum(1 for p in self._peers.values() if p.direction == "inbound")
        return NetworkStatistics(
            peers_inbound=inbound,
            peers_outbound=len(self._peers) - inbound,
            bytes_sent_by_channel=by_channel(c.bytes_sent),
            bytes_received_by_channel=by_channel(c.bytes_received),
            messages_sent_by_channel=by_channel(c.messages_sent),
            messages_received_by_channel=by_channel(c.messages_received),
            messages_dropped=MappingProxyType(dict(c.dropped)),
            connections_rejected=MappingProxyType(dict(c.rejected)),
            disconnects=MappingProxyType(dict(c.disconnects)),
            handshake_failures=self._handshake_failures,
            handshakes_abandoned=self._handshakes_abandoned,
            peers_banned=self._bans_issued,
            bans_active=sum(1 for t in self._bans.values() if t > now)
            + sum(1 for t in self._ip_bans.values() if t > now),
            reads_throttled=c.throttled,
            reads_paused_for_memory=c.memory_waits,
            seen_cache_entries=len(self._seen),
            address_book_entries=len(self._book),
            send_queues_bytes=self._send_budget.bytes_used,
            large_frames_bytes=self._frames_budget.bytes_used,
            inbox_bytes=self._inbox_bytes.bytes_used,
        )

    # -- peer host callbacks ---------------------------------------------------

    async def deliver(self, peer: Peer, batch: wire.Batch) -> None:
        channel = batch.channel
        peer_id = peer.node_id
        gossip = batch.gossip
        seen = self._seen
        # The clock is read once per batch and again after each wait: a stale
        # time would stamp entries older than they are (network/seen.py).
        now = trio.current_time()
        take = self._inbox_bytes.try_take
        send_nowait = self._inbox_send.send_nowait
        duplicates = 0
        delivered = 0
        for payload in batch.payloads:
            size = len(payload)
            if size < HASH_IN_THREAD_BYTES_MIN:
                digest = _sha256(payload).digest()
            else:
                digest = await trio.to_thread.run_sync(_digest, payload)
                now = trio.current_time()
            if gossip and not seen.add_delivered(digest, now):
                duplicates += 1
                continue
            envelope = Envelope(peer_id, channel, payload, digest)
            # Inline fast path: room in bytes and in envelopes, no await.
            if take(size):
                try:
                    send_nowait(envelope)
                except trio.WouldBlock:
                    self._inbox_bytes.release(size)
                    await self._put(envelope)
                    now = trio.current_time()
            else:
                await self._put(envelope)
                now = trio.current_time()
            delivered += 1
            if delivered % CHECKPOINT_PAYLOADS == 0:
                await trio.lowlevel.checkpoint()
                now = trio.current_time()
        if duplicates:
            self._counters.dropped["duplicate"] += duplicates

    async def _put(self, envelope: Envelope) -> None:
        """Into the inbox, waiting while it is full in envelopes or in bytes."""
        size = len(envelope.payload)
        budget = self._inbox_bytes
        if not budget.try_take(size):
            self._counters.memory_waits += 1
            await budget.take(size)
        try:
            self._inbox_send.send_nowait(envelope)
        except trio.WouldBlock:
            try:
                await self._inbox_send.send(envelope)
            except BaseException:
                budget.release(size)
                raise

    def on_hello(self, peer: Peer, hello: wire.Hello) -> None:
        pass

    def on_pex(self, peer: Peer, payloads: list[bytes]) -> None:
        for payload in payloads:
            message = wire.decode_pex(payload)
            if isinstance(message, wire.PexRequest):
                self._answer_pex(peer)
            else:
                if not peer.pex_requested:
                    raise ProtocolViolation("unsolicited pex addresses")
                peer.pex_requested = False
                self._learn(message.addresses, peer.ip)

    def on_misbehaviour(self, peer: Peer, reason: Misbehaviour, detail: str) -> None:
        self._score(peer.node_id, reason)

    # -- bans ----------------------------------------------------------------

    def _score(self, node_id: str, reason: Misbehaviour) -> None:
        score = self._scores.pop(node_id, 0) + MISBEHAVIOUR_SCORE[reason]
        if score >= self.config.misbehaviour_score_ban:
            self._ban(node_id)
            return
        self._scores[node_id] = score
        if len(self._scores) > self.config.bans_entries_max:
            del self._scores[next(iter(self._scores))]

    def _ban(self, node_id: str) -> None:
        self._bans.pop(node_id, None)
        self._bans[node_id] = trio.current_time() + self.config.ban_duration_s
        self._bans_issued += 1
        if len(self._bans) > self.config.bans_entries_max:
            del self._bans[next(iter(self._bans))]
        self._book.pop(node_id, None)
        peer = self._peers.get(node_id)
        if peer is not None:
            self._close_peer(peer, "banned")

    def _close_peer(self, peer: Peer, reason: str) -> None:
        """Close and unlist at once, so peers() and gossip stop seeing it now."""
        peer.close(reason)
        if self._peers.get(peer.node_id) is peer:
            del self._peers[peer.node_id]
            self._changed()

    def _admitted(self, node_id: str) -> bool:
        return self._admit is None or self._admit(node_id)

    def _report_refusal(self, node_id: str, reason: str) -> None:
        """Tell `on_refused`, at most once per node id per interval and at a bounded rate."""
        if self._on_refused is None:
            return
        now = trio.current_time()
        reported = self._refusals_reported
        last = reported.get(node_id)
        if last is not None and now - last < REFUSAL_REPORT_INTERVAL_S:
            return
        if not self._refusal_bucket.try_take(now):
            return
        reported.pop(node_id, None)
        reported[node_id] = now
        if len(reported) > self.config.bans_entries_max:
            del reported[next(iter(reported))]
        self._on_refused(node_id, reason)

    def _ip_banned(self, ip: str) -> bool:
        scope = _ip_scope(ip)
        expiry = self._ip_bans.get(scope)
        if expiry is None:
            return False
        if expiry <= trio.current_time():
            del self._ip_bans[scope]
            return False
        return True

    def _admit_ip(self, ip: str) -> str:
        """ "" if a new inbound connection from `ip` may start a handshake, else why not."""
        if self._protected(ip):
            return ""
        config = self.config
        scope = _ip_scope(ip)
        banned = self._ip_banned(scope)
        rate = (
            config.banned_ip_handshakes_per_s_max if banned else config.handshakes_per_ip_per_s_max
        )
        now = trio.current_time()
        bucket = self._ip_buckets.pop(scope, None)
        if bucket is None or bucket.rate != rate:
            bucket = TokenBucket(rate, now, max(1.0, rate))
        # Re-inserted last: the table is evicted oldest first at its bound.
        self._ip_buckets[scope] = bucket
        if len(self._ip_buckets) > config.bans_entries_max:
            del self._ip_buckets[next(iter(self._ip_buckets))]
        if not bucket.try_take(now):
            return "ip_banned" if banned else "ip_rate"
        if self._ip_pending[scope] >= config.handshakes_pending_per_ip_max:
            return "ip_handshakes_busy"
        return ""

    def _blame_ip(self, ip: str) -> None:
        """A failed inbound handshake from `ip`: count it, and ban the IP at the threshold."""
        threshold = self.config.handshake_failures_ip_ban
        if threshold <= 0 or self._protected(ip):
            return
        scope = _ip_scope(ip)
        now = trio.current_time()
        count, since = self._ip_failures.pop(scope, (0, now))
        if now - since > self.config.ban_duration_s:
            count, since = 0, now
        count += 1
        if count >= threshold:
            self._ip_bans.pop(scope, None)
            self._ip_bans[scope] = now + self.config.ban_duration_s
            self._bans_issued += 1
            if len(self._ip_bans) > self.config.bans_entries_max:
                del self._ip_bans[next(iter(self._ip_bans))]
            return
        self._ip_failures[scope] = (count, since)
        if len(self._ip_failures) > self.config.bans_entries_max:
            del self._ip_failures[next(iter(self._ip_failures))]

    def _protected(self, ip: str) -> bool:
        return ip in self._protected_ips or ip in self._persistent_reached.values()

    def _confirm_persistent_inbound(self, node_id: str, ip: str) -> None:
        """A handshake proved that a persistent peer given by name connects in from `ip`:
        where the node reaches it if its name resolves there (a peer that only dials
        in, behind NAT, is never reached by a dial). One lookup at a time per peer."""
        address = self._persistent_by_id.get(node_id)
        if (
            address is None
            or _is_ip(address.host)
            or self._persistent_reached.get(node_id) == ip
            or node_id in self._persistent_confirming
            or self._nursery is None
        ):
            return
        self._persistent_confirming.add(node_id)
        self._nursery.start_soon(self._confirm_reached, address, ip)

    async def _confirm_reached(self, address: PeerAddress, ip: str) -> None:
        try:
            with trio.move_on_after(self.config.dial_timeout_s):
                infos = await self._lookup(address.host, address.port, persistent=True)
                if ip in {_normal_ip(str(info[4][0])) for info in infos}:
                    self._persistent_reached[address.node_id] = ip
        finally:
            self._persistent_confirming.discard(address.node_id)

    # -- connections ---------------------------------------------------------

    async def _serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._handle_inbound, listeners)

    def _inbound_count(self) -> int:
        return sum(1 for p in self._peers.values() if p.direction == "inbound")

    async def _handle_inbound(self, stream: trio.SocketStream) -> None:
        try:
            ip, port = stream.socket.getpeername()[:2]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        ip = _normal_ip(ip)
        try:
            reason = self._admit_ip(ip)
            if reason:
                pass
            elif self._inbound_count() + self._inbound_pending >= self.config.inbound_peers_max:
                reason = "inbound_full"
            elif self._handshakes_pending >= self.config.handshakes_pending_max:
                reason = "handshakes_busy"
            if reason:
                self._counters.rejected[reason] += 1
                return
            conn = await self._handshake(stream, ip, initiator=False)
            if conn is not None:
                self._confirm_persistent_inbound(conn.remote_node_id, ip)
                await self._run_peer(conn, "inbound", ip, port, None, ip)
        finally:
            await trio.aclose_forcefully(stream)

    async def _handshake(
        self,
        stream: trio.SocketStream,
        ip: str,
        *,
        initiator: bool,
        expected_node_id: str | None = None,
    ) -> SecureConnection | None:
        self._handshakes_pending += 1
        scope = "" if initiator else _ip_scope(ip)
        if not initiator:
            self._inbound_pending += 1
            self._ip_pending[scope] += 1
        try:
            return await handshake(
                stream,
                initiator=initiator,
                identity=self.identity,
                static_private=self._static_private,
                identity_payload=self._identity_payload,
                chain_id=self.chain_id,
                timeout_s=self.config.handshake_timeout_s,
                expected_node_id=expected_node_id,
            )
        except HandshakeAbandoned:
            self._handshakes_abandoned += 1
            return None
        except HandshakeError:
            self._handshake_failures += 1
            if not initiator:
                self._blame_ip(ip)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._handshakes_abandoned += 1
            return None
        finally:
            self._handshakes_pending -= 1
            if not initiator:
                self._inbound_pending -= 1
                self._ip_pending[scope] -= 1
                if not self._ip_pending[scope]:
                    del self._ip_pending[scope]

    def _preferred(self, new: Peer, old: Peer) -> Peer:
        if new.direction == old.direction:
            return new
        ours = "outbound" if self.node_id < new.node_id else "inbound"
        return new if new.direction == ours else old

    async def _run_peer(
        self,
        conn: SecureConnection,
        direction: str,
        host: str,
        port: int,
        dial_address: PeerAddress | None,
        ip: str,
    ) -> bool:
        """Register the peer and serve it until it closes; False if refused."""
        node_id = conn.remote_node_id
        if self.is_banned(node_id):
            self._counters.rejected["banned"] += 1
            return False
        if not self._admitted(node_id):
            self._counters.rejected["not_member"] += 1
            self._report_refusal(node_id, "not_member")
            return False
        if direction == "inbound" and self._inbound_count() >= self.config.inbound_peers_max:
            self._counters.rejected["inbound_full"] += 1
            return False
        peer = Peer(
            conn,
            direction=direction,
            host=host,
            port=port,
            ip=ip,
            config=self.config,
            counters=self._counters,
            service=self,
            frames_budget=self._frames_budget,
            send_budget=self._send_budget,
            dial_address=dial_address,
        )
        existing = self._peers.get(node_id)
        if existing is not None:
            if self._preferred(peer, existing) is existing:
                self._counters.rejected["duplicate"] += 1
                return False
            existing.close("duplicate")
        self._peers[node_id] = peer
        self._changed()
        listen_port = self._advertise_port or self._listen_port
        peer.enqueue_control(wire.encode_hello(listen_port))
        self._request_pex(peer)
        try:
            await peer.run()
        finally:
            if self._peers.get(node_id) is peer:
                del self._peers[node_id]
                self._changed()
        return True

    def _changed(self) -> None:
        event, self._peers_changed = self._peers_changed, trio.Event()
        event.set()

    async def _dial(
        self, address: PeerAddress, *, persistent: bool = False, learnt_from: str | None = None
    ) -> bool:
        """Dial, handshake and serve until the connection ends; True if it was established."""
        self._dialling.add(address.node_id)
        try:
            stream = await self._connect(address, persistent=persistent, learnt_from=learnt_from)
            if stream is None:
                return False
            try:
                conn = await self._handshake(
                    stream, address.host, initiator=True, expected_node_id=address.node_id
                )
                if conn is None:
                    return False
                try:
                    ip = _normal_ip(stream.socket.getpeername()[0])
                except OSError:
                    return False
                if persistent:
                    # Where this persistent peer really is (the handshake proved
                    # its node id there): its inbound connections come from
                    # there and must never be banned. Not before: a name can
                    # resolve to anyone.
                    self._persistent_reached[address.node_id] = ip
                return await self._run_peer(
                    conn, "outbound", address.host, address.port, address, ip
                )
            finally:
                await trio.aclose_forcefully(stream)
        finally:
            self._dialling.discard(address.node_id)

    async def _connect(
        self, address: PeerAddress, *, persistent: bool = False, learnt_from: str | None = None
    ) -> trio.SocketStream | None:
        """A TCP connection to `address`, or None.

        The name is resolved within dial_timeout_s; then each address it
        resolves to (at most DIAL_ADDRESSES_MAX, in the resolver's order) gets
        one connect of at most connect_timeout_s, the whole within
        dial_timeout_s. A SYN into a dead link is thus abandoned after
        connect_timeout_s, and the next dial, once the link is back, gets in
        with the first SYN instead of the kernel's next backed-off retry.

        For an address learnt through PEX from a peer at `learnt_from`, what
        the name resolves to must be an address that could be learnt from that
        peer (_learnable_ip): a name is no way around the rules for IPs.
        """
        config = self.config
        with trio.move_on_after(config.dial_timeout_s):
            infos = await self._lookup(address.host, address.port, persistent=persistent)
            if learnt_from is not None:
                infos = [i for i in infos if _learnable_ip(str(i[4][0]), learnt_from)]
            for family, kind, proto, _, sockaddr in infos[:DIAL_ADDRESSES_MAX]:
                try:
                    sock = trio.socket.socket(family, kind, proto)
                except OSError:  # an address family this host cannot use
                    continue
                try:
                    with trio.move_on_after(config.connect_timeout_s):
                        await sock.connect(sockaddr)
                        return trio.SocketStream(sock)
                except OSError:
                    pass
                except BaseException:
                    sock.close()
                    raise
                sock.close()
        return None

    async def _lookup(self, host: str, port: int, *, persistent: bool) -> list[_AddrInfo]:
        """What `host` resolves to ([] if it does not), on the resolver's own threads
        (a persistent peer's name on the persistent peers' threads).

        An IP address is not looked up. UnicodeError is a name the IDNA codec
        refuses (a label over 63 characters, an empty one), which a PEX answer
        or a config can carry: it fails the lookup, not the node.
        """
        try:
            if _is_ip(host):
                return _getaddrinfo(host, port)  # numeric: no resolver, no wait
            return await trio.to_thread.run_sync(
                _getaddrinfo,
                host,
                port,
                limiter=self._persistent_resolver if persistent else self._resolver,
                abandon_on_cancel=True,
            )
        except (OSError, UnicodeError):
            return []

    def _backoff_s(self, failures: int, cap_s: float) -> float:
        """Before the next dial: base x 2^failures, at most `cap_s`, times 0.5 to 1 at random."""
        base: float = self.config.dial_backoff_base_s * float(2 ** min(failures, 30))
        return min(cap_s, base) * (0.5 + self._rng.random() / 2)

    async def _persistent_loop(self, address: PeerAddress) -> None:
        config = self.config
        cap_s = min(config.persistent_dial_backoff_max_s, config.dial_backoff_max_s)
        failures = 0
        while True:
            peer = self._peers.get(address.node_id)
            if peer is not None:
                await peer.closed.wait()
                failures = 0
            elif self.is_banned(address.node_id):
                await trio.sleep_until(self._bans[address.node_id])
                continue
            elif not self._admitted(address.node_id):
                # Not a member (yet): dialling it would only be refused.
                await trio.sleep(self.config.dial_backoff_max_s)
                continue
            elif address.node_id not in self._dialling:
                connected = await self._dial(address, persistent=True)
                failures = 0 if connected else failures + 1
            await trio.sleep(self._backoff_s(failures, cap_s))

    # -- peer exchange ----------------------------------------------------------

    def _request_pex(self, peer: Peer) -> None:
        if peer.enqueue(PEX, False, wire.encode_pex_request()):
            peer.pex_requested = True

    def _answer_pex(self, peer: Peer) -> None:
        now = trio.current_time()
        if now - peer.last_pex_answer_time < self.config.pex_interval_s / 2:
            self._counters.dropped["pex_request_too_soon"] += 1
            return
        peer.last_pex_answer_time = now
        addresses: list[tuple[str, str, int]] = []
        for other in self._peers.values():
            if other is peer or not self._admitted(other.node_id):
                continue
            if other.direction == "outbound":
                addresses.append((other.node_id, other.host, other.port))
            elif other.hello is not None and other.hello.listen_port:
                addresses.append((other.node_id, other.host, other.hello.listen_port))
            if len(addresses) >= min(self.config.pex_addresses_max, wire.PEX_ADDRESSES_MAX):
                break
        peer.enqueue(PEX, False, wire.encode_pex_addresses(addresses))

    def _learn(self, addresses: tuple[tuple[str, str, int], ...], sender_ip: str) -> None:
        """Add what a peer at `sender_ip` answered to PEX to the address book.

        Not a persistent peer's node id: the operator's address for it is the
        one dialled, and a book dial would hold it in _dialling, delaying the
        persistent redial.
        """
        learnt = False
        for node_id, host, port in addresses:
            if (
                node_id == self.node_id
                or node_id in self._persistent_by_id
                or node_id in self._book
                or port == 0
                or not self._admitted(node_id)
                or not _dialable_host(host)
                or (_is_ip(host) and not _learnable_ip(host, sender_ip))
            ):
                continue
            if len(self._book) >= self.config.address_book_entries_max:
                break
            try:
                address = PeerAddress(node_id, host, port)
            except ValueError as exc:
                raise FrameError(str(exc)) from exc
            self._book[node_id] = _BookEntry(address, sender_ip)
            learnt = True
        if learnt:
            self._pex_wakeup.set()

    def _outbound_count(self) -> int:
        persistent = self._persistent_by_id.keys()
        return sum(
            1
            for p in self._peers.values()
            if p.direction == "outbound" and p.node_id not in persistent
        ) + len(self._dialling - persistent)

    def _dial_from_book(self) -> None:
        assert self._nursery is not None
        free = self.config.outbound_peers_max - self._outbound_count()
        if free <= 0:
            return
        now = trio.current_time()
        entries = list(self._book.values())
        self._rng.shuffle(entries)
        for entry in entries:
            node_id = entry.address.node_id
            if (
                node_id in self._peers
                or node_id in self._dialling
                or entry.next_dial_time > now
                or self.is_banned(node_id)
                or not self._admitted(node_id)
            ):
                continue
            self._dialling.add(node_id)
            self._nursery.start_soon(self._book_dial, entry)
            free -= 1
            if free <= 0:
                return

    async def _book_dial(self, entry: _BookEntry) -> None:
        if await self._dial(entry.address, learnt_from=entry.learnt_from):
            entry.failures = 0
        else:
            entry.failures += 1
        entry.next_dial_time = trio.current_time() + self._backoff_s(
            entry.failures, self.config.dial_backoff_max_s
        )
        if entry.failures > 8:
            self._book.pop(entry.address.node_id, None)

    async def _pex_loop(self) -> None:
        while True:
            self._dial_from_book()
            with trio.move_on_after(self.config.pex_interval_s) as scope:
                await self._pex_wakeup.wait()
            self._pex_wakeup = trio.Event()
            if scope.cancelled_caught and self._peers:
                peer = self._rng.choice(list(self._peers.values()))
                self._request_pex(peer)

    # -- helpers -------------------------------------------------------------

    def _check_channel(self, channel: int) -> None:
        if channel not in CHANNEL_NAMES or channel == PEX:
            raise ValueError(f"not a channel the node may use: {channel}")
