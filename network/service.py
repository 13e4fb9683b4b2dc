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
the payload and bounded by `seen_cache_entries_max`, oldest evicted). A
gossiped payload that arrives from a peer is delivered to the inbox only the
first time; forwarding is the node's decision (it forwards what it has
validated, so an invalid message stops at the first honest node and only its
origin is scored), made by calling `gossip(..., exclude_peer=sender)`, which
returns False if this node already gossiped that payload. So each node sends
each payload to each peer at most once, and never back to the peer it came
from.

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

Pre-handshake garbage has no node id to blame. Each handshake failure is
counted against the source IP, and only `handshake_failures_ip_ban` failures
within `ban_duration_s` ban the IP. A single bad connection never bans its
IP: many honest nodes can share one address (NAT, one host running several
nodes, every loopback test), and a one-strike IP ban would let one broken
client lock them all out. The cost an attacker can impose before reaching the
threshold is bounded by `handshakes_pending_max` and `handshake_timeout_s`.

PEX. Right after connecting, and then every `pex_interval_s` with one random
peer, a node asks for addresses; a peer answers at most once per half
interval with up to `pex_addresses_max` addresses of its connected peers
(outbound: the address it dialled; inbound: the observed IP and the listen
port from HELLO). Addresses go into a bounded address book, and the node
dials from it while it has fewer than `outbound_peers_max` outbound peers.
An unsolicited answer is a protocol violation.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

from consensus.crypto import PrivateKey
from network import noise, wire
from network.config import NetworkConfig, PeerAddress
from network.errors import FrameError, HandshakeError, ProtocolViolation
from network.peer import MISBEHAVIOUR_SCORE, Counters, Misbehaviour, Peer
from network.secure import SecureConnection, encode_identity_payload, handshake, node_id_of
from network.wire import BATCH_OVERHEAD_BYTES, CHANNEL_NAMES, PAYLOAD_OVERHEAD_BYTES, PEX

_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class Envelope:
    """One payload received from a peer on a channel."""

    peer_id: str
    channel: int
    payload: bytes
    digest: bytes = b""  # SHA-256 of the payload, computed once on arrival (gossip only)


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
    # payload_too_large, no_such_peer, duplicate (gossip already seen).
    messages_dropped: Mapping[str, int]
    # Connections refused, by reason: ip_banned, banned, inbound_full,
    # handshakes_busy, duplicate.
    connections_rejected: Mapping[str, int]
    disconnects: Mapping[str, int]
    handshake_failures: int
    peers_banned: int  # bans issued since start (node ids and IPs)
    bans_active: int
    reads_throttled: int
    seen_cache_entries: int
    address_book_entries: int


@dataclass(slots=True)
class _BookEntry:
    address: PeerAddress
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
    ) -> None:
        self.config = config or NetworkConfig()
        self.identity = identity
        self.node_id = node_id_of(identity.public_key)
        self.chain_id = chain_id
        self._listen = listen
        self._listen_port = listen[1]
        self._advertise_port = advertise_port
        self._persistent = [p for p in persistent_peers if p.node_id != self.node_id]
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
        self._inbox_send, self.inbox = trio.open_memory_channel[Envelope](
            self.config.inbox_messages_max
        )
        self._peers: dict[str, Peer] = {}
        self._peers_changed = trio.Event()
        self._seen: collections.OrderedDict[bytes, bool] = collections.OrderedDict()
        self._counters = Counters()
        self._bans: dict[str, float] = {}
        self._ip_bans: dict[str, float] = {}
        self._ip_failures: dict[str, tuple[int, float]] = {}
        self._scores: dict[str, int] = {}
        self._bans_issued = 0
        self._handshake_failures = 0
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

    def gossip(self, channel: int, payload: bytes, exclude_peer: str | None = None) -> bool:
        """Queue `payload` for every peer but `exclude_peer`; False if already gossiped."""
        self._check_channel(channel)
        if len(payload) > self._payload_bytes_max:
            self._counters.dropped["payload_too_large"] += 1
            return False
        digest = _sha256(payload).digest()
        seen = self._seen
        if seen.get(digest) is True:
            return False
        if digest not in seen and len(seen) >= self.config.seen_cache_entries_max:
            seen.popitem(last=False)
        seen[digest] = True
        dropped = 0
        for peer in self._peers.values():
            if peer.node_id != exclude_peer and not peer.enqueue(channel, True, payload):
                dropped += 1
        if dropped:
            self._counters.dropped["send_queue_full"] += dropped
        return True

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
        if not peer.enqueue(channel, False, payload):
            self._counters.dropped["send_queue_full"] += 1
            return False
        return True

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

    def report_misbehaviour(
        self, peer_id: str, reason: Misbehaviour, detail: str = ""
    ) -> None:
        """The node found invalid data from `peer_id`: score it and disconnect it."""
        peer = self._peers.get(peer_id)
        if peer is not None:
            self._close_peer(peer, reason.value)
        self._score(peer_id, reason)

    def forget(self, digest: bytes) -> None:
        """Un-see a delivered payload the node had to drop, so another copy is delivered."""
        if self._seen.get(digest) is False:
            del self._seen[digest]

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
            peers_banned=self._bans_issued,
            bans_active=sum(1 for t in self._bans.values() if t > now)
            + sum(1 for t in self._ip_bans.values() if t > now),
            reads_throttled=c.throttled,
            seen_cache_entries=len(self._seen),
            address_book_entries=len(self._book),
        )

    # -- peer host callbacks ---------------------------------------------------

    async def deliver(self, peer: Peer, batch: wire.Batch) -> None:
        channel = batch.channel
        peer_id = peer.node_id
        send_nowait = self._inbox_send.send_nowait
        if batch.gossip:
            seen = self._seen
            entries_max = self.config.seen_cache_entries_max
            duplicates = 0
            for payload in batch.payloads:
                digest = _sha256(payload).digest()
                if digest in seen:
                    duplicates += 1
                    continue
                if len(seen) >= entries_max:
                    seen.popitem(last=False)
                seen[digest] = False
                envelope = Envelope(peer_id, channel, payload, digest)
                try:
                    send_nowait(envelope)
                except trio.WouldBlock:
                    await self._inbox_send.send(envelope)
            if duplicates:
                self._counters.dropped["duplicate"] += duplicates
        else:
            for payload in batch.payloads:
                envelope = Envelope(peer_id, channel, payload)
                try:
                    send_nowait(envelope)
                except trio.WouldBlock:
                    await self._inbox_send.send(envelope)

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
                self._learn(message.addresses)

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

    def _ip_banned(self, ip: str) -> bool:
        expiry = self._ip_bans.get(ip)
        if expiry is None:
            return False
        if expiry <= trio.current_time():
            del self._ip_bans[ip]
            return False
        return True

    def _handshake_failed(self, ip: str) -> None:
        self._handshake_failures += 1
        threshold = self.config.handshake_failures_ip_ban
        if threshold <= 0:
            return
        now = trio.current_time()
        count, since = self._ip_failures.pop(ip, (0, now))
        if now - since > self.config.ban_duration_s:
            count, since = 0, now
        count += 1
        if count >= threshold:
            self._ip_bans[ip] = now + self.config.ban_duration_s
            self._bans_issued += 1
            if len(self._ip_bans) > self.config.bans_entries_max:
                del self._ip_bans[next(iter(self._ip_bans))]
            return
        self._ip_failures[ip] = (count, since)
        if len(self._ip_failures) > self.config.bans_entries_max:
            del self._ip_failures[next(iter(self._ip_failures))]

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
        try:
            if self._ip_banned(ip):
                self._counters.rejected["ip_banned"] += 1
                return
            if self._inbound_count() + self._inbound_pending >= self.config.inbound_peers_max:
                self._counters.rejected["inbound_full"] += 1
                return
            if self._handshakes_pending >= self.config.handshakes_pending_max:
                self._counters.rejected["handshakes_busy"] += 1
                return
            conn = await self._handshake(stream, ip, initiator=False)
            if conn is not None:
                await self._run_peer(conn, "inbound", ip, port, None)
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
        if not initiator:
            self._inbound_pending += 1
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
        except HandshakeError:
            if initiator:
                self._handshake_failures += 1
            else:
                self._handshake_failed(ip)
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._handshake_failures += 1
            return None
        finally:
            self._handshakes_pending -= 1
            if not initiator:
                self._inbound_pending -= 1

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
    ) -> bool:
        """Register the peer and serve it until it closes; False if refused."""
        node_id = conn.remote_node_id
        if self.is_banned(node_id):
            self._counters.rejected["banned"] += 1
            return False
        if direction == "inbound" and self._inbound_count() >= self.config.inbound_peers_max:
            self._counters.rejected["inbound_full"] += 1
            return False
        peer = Peer(
            conn,
            direction=direction,
            host=host,
            port=port,
            config=self.config,
            counters=self._counters,
            service=self,
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

    async def _dial(self, address: PeerAddress) -> bool:
        """Dial, handshake and serve until the connection ends; True if it was established."""
        self._dialling.add(address.node_id)
        try:
            stream: trio.SocketStream | None = None
            with trio.move_on_after(self.config.dial_timeout_s):
                try:
                    stream = await trio.open_tcp_stream(address.host, address.port)
                except OSError:
                    return False
            if stream is None:
                return False
            try:
                conn = await self._handshake(
                    stream, address.host, initiator=True, expected_node_id=address.node_id
                )
                if conn is None:
                    return False
                return await self._run_peer(conn, "outbound", address.host, address.port, address)
            finally:
                await trio.aclose_forcefully(stream)
        finally:
            self._dialling.discard(address.node_id)

    def _backoff_s(self, failures: int) -> float:
        base: float = self.config.dial_backoff_base_s * float(2 ** min(failures, 30))
        return min(self.config.dial_backoff_max_s, base * (0.5 + self._rng.random()))

    async def _persistent_loop(self, address: PeerAddress) -> None:
        failures = 0
        while True:
            peer = self._peers.get(address.node_id)
            if peer is not None:
                await peer.closed.wait()
                failures = 0
            elif self.is_banned(address.node_id):
                await trio.sleep_until(self._bans[address.node_id])
                continue
            elif address.node_id not in self._dialling:
                connected = await self._dial(address)
                failures = 0 if connected else failures + 1
            await trio.sleep(self._backoff_s(failures))

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
            if other is peer:
                continue
            if other.direction == "outbound":
                addresses.append((other.node_id, other.host, other.port))
            elif other.hello is not None and other.hello.listen_port:
                addresses.append((other.node_id, other.host, other.hello.listen_port))
            if len(addresses) >= min(self.config.pex_addresses_max, wire.PEX_ADDRESSES_MAX):
                break
        peer.enqueue(PEX, False, wire.encode_pex_addresses(addresses))

    def _learn(self, addresses: tuple[tuple[str, str, int], ...]) -> None:
        learnt = False
        for node_id, host, port in addresses:
            if node_id == self.node_id or node_id in self._book or port == 0:
                continue
            if len(self._book) >= self.config.address_book_entries_max:
                break
            try:
                address = PeerAddress(node_id, host, port)
            except ValueError as exc:
                raise FrameError(str(exc)) from exc
            self._book[node_id] = _BookEntry(address)
            learnt = True
        if learnt:
            self._pex_wakeup.set()

    def _outbound_count(self) -> int:
        persistent = {a.node_id for a in self._persistent}
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
            ):
                continue
            self._dialling.add(node_id)
            self._nursery.start_soon(self._book_dial, entry)
            free -= 1
            if free <= 0:
                return

    async def _book_dial(self, entry: _BookEntry) -> None:
        if await self._dial(entry.address):
            entry.failures = 0
        else:
            entry.failures += 1
        entry.next_dial_time = trio.current_time() + self._backoff_s(entry.failures)
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
