"""One connected peer: prioritised send queues, the send loop, the reader, keepalive.

Why a class per connection with exactly three tasks (reader, writer, pinger):
the reader is the sans-I/O decoder's driver (one reader per connection, as in
trio-websocket); the writer owns the socket's send side so that many small
messages from any number of producers leave in one frame per channel and one
socket write, and so that the consensus channel is always drained first; the
pinger keeps idle links provably alive. No task is spawned per message.

Send queues: per channel, one deque for direct messages and one for gossip,
bounded by `send_queue_messages_max` for that channel, by
`send_queue_bytes_max` across the peer's channels, and by the `SendBudget`
shared by all peers (`send_queues_bytes_max`). Policy when full: `enqueue`
returns False and counts the drop ("send_queue_full", "send_budget_full");
producers that prefer to wait use `Network.wait_send_capacity`. A write
gathers frames in channel priority order up to `write_bytes_max` plaintext
bytes, at most `BATCH_PAYLOADS_MAX` payloads per frame, so a vote queued
behind a mempool flood waits for at most one write. HELLO, PING and PONG go
in a control queue of `control_queue_frames_max` frames; a PONG that does
not fit is not queued. Each 256 KiB of a write must be taken by the peer
within `send_timeout_s`, or the peer is dropped as stalled.

Receiving: the reader decodes one message at a time and charges it to token
buckets: bytes (`rate_bytes_per_s_max`) and messages of every kind
(`rate_messages_per_s_max`); over either rate the reader pauses, which TCP
turns into backpressure on the sender, and nothing is dropped. Control
messages have no legitimate burst: PINGs beyond `rate_pings_per_s_max`
(burst `PING_BURST`), a PONG that answers none of our PINGs and a second
HELLO close the connection as a protocol violation.

Dead links: between PINGs the pinger reads the kernel's TCP_INFO every
`link_check_interval_s`; a connection that has been retransmitting
unacknowledged data for `retransmit_timeout_s` (no ACK meanwhile) is closed
as "link_dead" (see `LinkWatch`), so a cut link is left in seconds and the
dialler can reconnect once it is back, rather than after TCP's backed-off
retransmission timer or `idle_timeout_s`.

Memory held for what a peer sends: at most one read plus one partial frame.
A frame longer than `write_bytes_max` first reserves its whole length from a
`ByteBudget` shared by all peers (`large_frames_bytes_max`); while none is
available the reader does not read (TCP backpressure), and the reservation is
released once the frame's payloads are in the inbox. Once a frame's first
byte has arrived, the time spent waiting for the rest is bounded by
`frame_timeout_s` (pauses the node itself makes do not count); a stalled
frame closes the connection. Between frames, `idle_timeout_s` applies.

Errors end the connection and only it. Wire errors the peer is accountable
for (malformed or oversized frame, protocol violation) are reported to the
host as misbehaviour; an authentication failure of a transport message is
not, because an on-path attacker can cause it (see network.service), and
neither are timeouts, which a slow honest link can cause.

It is longer than the house's 600 lines on purpose: one connection's
reader, writer, rate limits and memory reservations share its state and
invariants, and split apart each half would reach into the other.
"""

from __future__ import annotations

import collections
import enum
import math
import socket
import struct
import sys
from typing import TYPE_CHECKING, Protocol

import trio

from network import wire
from network.config import NetworkConfig
from network.errors import (
    ConnectionClosed,
    FrameError,
    FrameTimeout,
    FrameTooLarge,
    NoiseError,
    PeerIdleTimeout,
    ProtocolViolation,
    RateExceeded,
    SendTimeout,
)
from network.wire import (
    BATCH_OVERHEAD_BYTES,
    BATCH_PAYLOADS_MAX,
    CHANNELS,
    PAYLOAD_OVERHEAD_BYTES,
    Batch,
    Hello,
    Ping,
    Pong,
)

if TYPE_CHECKING:
    from network.secure import SecureConnection

# PINGs accepted back to back before rate_pings_per_s_max applies: a peer's
# pinger and a reconnect can put a few close together, never more.
PING_BURST = 5
# The reader yields to other tasks after handling this many messages without
# waiting, so one peer's burst cannot hold the event loop (about 1 ms).
CHECKPOINT_MESSAGES = 256


# struct tcp_info (linux/tcp.h) up to tcpi_last_ack_recv: 8 bytes of state,
# then u32s from tcpi_rto; tcpi_retransmits is byte 2, tcpi_last_ack_recv
# (milliseconds since the peer last acknowledged anything) the 13th u32,
# after tcpi_last_data_recv.
_TCP_INFO = struct.Struct("=8B13I")
_TCP_INFO_RETRANSMITS = 2
_TCP_INFO_LAST_ACK_RECV_MS = 8 + 12


def tcp_retransmit_state(sock: object) -> tuple[int, int] | None:
    """(RTO retransmissions of the oldest unacknowledged segment, ms since the last ACK).

    None where the kernel does not say (not Linux, not a TCP socket, closed).
    The retransmission count is reset by any ACK of new data, and zero-window
    probes to a peer that is not reading do not count.
    """
    option = getattr(socket, "TCP_INFO", None)
    getsockopt = getattr(sock, "getsockopt", None)
    # The layout read here is Linux's; FreeBSD's TCP_INFO has another.
    if option is None or getsockopt is None or not sys.platform.startswith("linux"):
        return None
    try:
        raw = getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO.size)
    except OSError:
        return None
    if not isinstance(raw, bytes) or len(raw) < _TCP_INFO.size:
        return None
    fields = _TCP_INFO.unpack_from(raw)
    return fields[_TCP_INFO_RETRANSMITS], fields[_TCP_INFO_LAST_ACK_RECV_MS]


class LinkWatch:
    """Finds a dead link: the kernel retransmitting, unacknowledged, for `timeout_s`.

    Fed samples of `tcp_retransmit_state`; dead once every sample for
    `timeout_s` showed retransmissions and the last ACK is that old too. A
    sample without retransmissions restarts the clock, so one lost segment
    after an idle minute (old last ACK, one retransmission) is not a dead
    link, and a peer that acknowledges but does not read (zero window) never
    is. Late samples (a stalled event loop) only delay the verdict.
    """

    __slots__ = ("_since", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        assert timeout_s > 0
        self.timeout_s = timeout_s
        self._since: float | None = None

    def dead(self, now: float, retransmits: int, last_ack_ms: int) -> bool:
        if not retransmits:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        return now - self._since >= self.timeout_s and last_ack_ms >= self.timeout_s * 1000


class Misbehaviour(enum.Enum):
    """Why a peer is scored; MISBEHAVIOUR_SCORE gives the score each adds."""

    MALFORMED_FRAME = "malformed_frame"
    OVERSIZED_MESSAGE = "oversized_message"
    INVALID_SIGNATURE = "invalid_signature"
    PROTOCOL_VIOLATION = "protocol_violation"
    INVALID_MESSAGE = "invalid_message"


# Score added per misbehaviour; `misbehaviour_score_ban` (default 100) bans.
# Each of these is proof of a faulty or hostile peer (the bytes were
# authenticated as coming from it), so the default bans on the first one;
# a protocol violation may be a version skew, so it takes two.
MISBEHAVIOUR_SCORE: dict[Misbehaviour, int] = {
    Misbehaviour.MALFORMED_FRAME: 100,
    Misbehaviour.OVERSIZED_MESSAGE: 100,
    Misbehaviour.INVALID_SIGNATURE: 100,
    Misbehaviour.PROTOCOL_VIOLATION: 50,
    Misbehaviour.INVALID_MESSAGE: 100,
}


class Counters:
    """Mutable counters shared by the peers and the service; read via statistics()."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "disconnects",
        "dropped",
        "memory_waits",
        "messages_received",
        "messages_sent",
        "rejected",
        "throttled",
    )

    def __init__(self) -> None:
        size = max(CHANNELS) + 1
        self.bytes_sent = [0] * size
        self.bytes_received = [0] * size
        self.messages_sent = [0] * size
        self.messages_received = [0] * size
        self.dropped: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[str] = collections.Counter()
        self.throttled = 0
        self.memory_waits = 0


class _Waiter:
    __slots__ = ("amount", "event")

    def __init__(self, amount: int) -> None:
        self.amount = amount
        self.event = trio.Event()


class ByteBudget:
    """Bytes shared by many holders, granted in arrival order.

    Waiting in `take` is how a reader stops reading a peer when the shared
    memory is spoken for; `release` hands the bytes to the oldest waiters
    that fit. Waiters: at most one per peer.
    """

    __slots__ = ("_waiters", "bytes_max", "bytes_used")

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_used = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()

    def try_take(self, amount: int) -> bool:
        if self._waiters or self.bytes_used + amount > self.bytes_max:
            return False
        self.bytes_used += amount
        return True

    async def take(self, amount: int) -> None:
        assert 0 <= amount <= self.bytes_max
        if self.try_take(amount):
            return
        waiter = _Waiter(amount)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.event.is_set():
                self.release(amount)
            else:
                self._waiters.remove(waiter)
                self._grant()
            raise

    def release(self, amount: int) -> None:
        self.bytes_used -= amount
        assert self.bytes_used >= 0
        if self._waiters:
            self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.bytes_used + waiters[0].amount <= self.bytes_max:
            waiter = waiters.popleft()
            self.bytes_used += waiter.amount
            waiter.event.set()


class SendBudget:
    """Payload bytes queued for all peers, each payload object counted once.

    A gossiped payload is one bytes object in every peer's queue, so counting
    it per peer would refuse a block gossiped to 50 peers long before memory
    is short; counting by object identity measures what is really held.
    """

    __slots__ = ("_held", "bytes_max", "bytes_used")

    def __init__(self, bytes_max: int) -> None:
        self.bytes_max = bytes_max
        self.bytes_used = 0
        # id -> (payload, queues holding it). The entry keeps the payload
        # alive, so its id stays unique while held. Tuples, not objects: this
        # runs twice per payload per peer.
        self._held: dict[int, tuple[bytes, int]] = {}

    def hold(self, payload: bytes) -> bool:
        key = id(payload)
        entry = self._held.get(key)
        if entry is not None:
            self._held[key] = (payload, entry[1] + 1)
            return True
        size = len(payload)
        if self.bytes_used + size > self.bytes_max:
            return False
        self._held[key] = (payload, 1)
        self.bytes_used += size
        return True

    def release(self, payload: bytes) -> None:
        key = id(payload)
        refs = self._held[key][1]
        if refs == 1:
            del self._held[key]
            self.bytes_used -= len(payload)
        else:
            self._held[key] = (payload, refs - 1)


class PeerHost(Protocol):
    """What a peer needs from the service that owns it."""

    async def deliver(self, peer: Peer, batch: Batch) -> None: ...

    def on_hello(self, peer: Peer, hello: Hello) -> None: ...

    def on_pex(self, peer: Peer, payloads: list[bytes]) -> None: ...

    def on_misbehaviour(self, peer: Peer, reason: Misbehaviour, detail: str) -> None: ...


class TokenBucket:
    """`rate` tokens per second, holding at most `burst` (default: one second's worth)."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = rate if burst is None else burst
        self._tokens = self.burst
        self._last = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def debt_s(self, amount: float, now: float) -> float:
        """Take `amount` tokens, going into debt; the time to wait before taking more."""
        self._refill(now)
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self, now: float) -> bool:
        """Take one token if there is one; a refusal costs nothing (no debt)."""
        self._refill(now)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Peer:
    """A live, authenticated connection. Created by the service after the handshake."""

    __slots__ = (
        "_bytes_queued",
        "_conn",
        "_control",
        "_counters",
        "_direct",
        "_frames_budget",
        "_gossip",
        "_host",
        "_limits",
        "_ping_bucket",
        "_ping_nonce",
        "_pings_unanswered",
        "_progress",
        "_queued",
        "_reserved",
        "_reserved_frame",
        "_scope",
        "_send_budget",
        "_wake",
        "bytes_received",
        "bytes_sent",
        "close_reason",
        "closed",
        "config",
        "connected_since",
        "dial_address",
        "direction",
        "hello",
        "host",
        "ip",
        "last_pex_answer_time",
        "messages_received",
        "messages_sent",
        "node_id",
        "pex_requested",
        "port",
    )

    def __init__(
        self,
        conn: SecureConnection,
        *,
        direction: str,
        host: str,
        port: int,
        config: NetworkConfig,
        counters: Counters,
        ip: str,
        service: PeerHost,
        frames_budget: ByteBudget,
        send_budget: SendBudget,
        dial_address: object = None,
    ) -> None:
        assert direction in ("inbound", "outbound")
        self._conn = conn
        self.node_id = conn.remote_node_id
        self.direction = direction
        self.host = host
        self.port = port
        # The address the connection runs to (for a dialled peer, what its host resolved to).
        self.ip = ip
        self.config = config
        self.dial_address = dial_address
        self._counters = counters
        self._host = service
        self._frames_budget = frames_budget
        self._send_budget = send_budget
        size = max(CHANNELS) + 1
        self._direct: list[collections.deque[bytes]] = [collections.deque() for _ in range(size)]
        self._gossip: list[collections.deque[bytes]] = [collections.deque() for _ in range(size)]
        self._queued = [0] * size
        self._limits = [0] * size
        for channel in CHANNELS:
            self._limits[channel] = config.queue_messages_max(channel)
        self._bytes_queued = 0
        self._control: collections.deque[bytes] = collections.deque()
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._ping_nonce = 0
        self._pings_unanswered = 0
        now = trio.current_time()
        self._ping_bucket = TokenBucket(config.rate_pings_per_s_max, now, PING_BURST)
        # Bytes reserved from frames_budget, and for which frame (its index in
        # the decoder's count of frames); 0 / -1 when none.
        self._reserved = 0
        self._reserved_frame = -1
        self.closed = trio.Event()
        self.close_reason = ""
        self.connected_since = now
        self.hello: Hello | None = None
        self.pex_requested = False
        self.last_pex_answer_time = -math.inf
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    # -- producers -----------------------------------------------------------

    def enqueue(self, channel: int, gossip: bool, payload: bytes) -> bool:
        """Queue one payload; False (nothing queued, drop counted) when a limit is hit."""
        if self.close_reason:
            self._counters.dropped["peer_closing"] += 1
            return False
        size = len(payload)
        if (
            self._queued[channel] >= self._limits[channel]
            or self._bytes_queued + size > self.config.send_queue_bytes_max
        ):
            self._counters.dropped["send_queue_full"] += 1
            return False
        if not self._send_budget.hold(payload):
            self._counters.dropped["send_budget_full"] += 1
            return False
        (self._gossip if gossip else self._direct)[channel].append(payload)
        self._queued[channel] += 1
        self._bytes_queued += size
        self._wake.set()
        return True

    def enqueue_control(self, frame: bytes) -> bool:
        """Queue a HELLO / PING / PONG frame; False when the control queue is full."""
        if len(self._control) >= self.config.control_queue_frames_max:
            return False
        self._control.append(frame)
        self._wake.set()
        return True

    def queue_over_half(self, channel: int) -> bool:
        return (
            self._queued[channel] * 2 > self._limits[channel]
            or self._bytes_queued * 2 > self.config.send_queue_bytes_max
        )

    @property
    def queued_messages(self) -> int:
        return sum(self._queued)

    @property
    def control_queued_frames(self) -> int:
        return len(self._control)

    async def wait_progress(self) -> None:
        """Return after the next write completes or the peer closes."""
        if not self.closed.is_set():
            await self._progress.wait()

    def close(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    # -- tasks ---------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it fails or `close` is called; never raises wire errors."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self.close_reason:
                    scope.cancel()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._send_loop)
                    nursery.start_soon(self._guard, self._ping_loop)
                    await self._guard(self._receive_loop)
        finally:
            if not self.close_reason:
                self.close_reason = "closed"
            self._drop_queues()
            self.closed.set()
            self._progress.set()
            self._counters.disconnects[self.close_reason] += 1
            await trio.aclose_forcefully(self._conn.stream)

    def _drop_queues(self) -> None:
        release = self._send_budget.release
        for queues in (self._direct, self._gossip):
            for queue in queues:
                for payload in queue:
                    release(payload)
                queue.clear()
        self._queued = [0] * len(self._queued)
        self._bytes_queued = 0
        self._control.clear()

    async def _guard(self, loop: object) -> None:
        assert callable(loop)
        try:
            await loop()
        except FrameTooLarge as exc:
            self._misbehaved(Misbehaviour.OVERSIZED_MESSAGE, str(exc))
        except FrameError as exc:
            self._misbehaved(Misbehaviour.MALFORMED_FRAME, str(exc))
        except RateExceeded as exc:
            self._misbehaved(Misbehaviour.PROTOCOL_VIOLATION, str(exc), "rate_exceeded")
        except ProtocolViolation as exc:
            self._misbehaved(Misbehaviour.PROTOCOL_VIOLATION, str(exc))
        except NoiseError:
            self.close("authentication_failed")
        except PeerIdleTimeout:
            self.close("idle_timeout")
        except FrameTimeout:
            self.close("frame_timeout")
        except SendTimeout:
            self.close("send_timeout")
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close("disconnected")

    def _misbehaved(self, reason: Misbehaviour, detail: str, close_reason: str = "") -> None:
        self.close(close_reason or reason.value)
        self._host.on_misbehaviour(self, reason, detail)

    async def _send_loop(self) -> None:
        conn = self._conn
        timeout_s = self.config.send_timeout_s
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while True:
                plaintext = self._gather()
                if not plaintext:
                    break
                await conn.send(plaintext, timeout_s=timeout_s)
                self.bytes_sent = conn.bytes_sent
                progress, self._progress = self._progress, trio.Event()
                progress.set()

    def _gather(self) -> bytes:
        """Frames for one write: control first, then channels in priority order."""
        parts: list[bytes] = []
        budget = self.config.write_bytes_max
        control = self._control
        while control:
            frame = control.popleft()
            parts.append(frame)
            budget -= len(frame)
        queued = self._queued
        for channel in CHANNELS:
            if budget <= 0:
                break
            if not queued[channel]:
                continue
            for gossip, queue in ((False, self._direct[channel]), (True, self._gossip[channel])):
                while queue and budget > 0:
                    budget = self._gather_batch(parts, budget, channel, gossip, queue)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _gather_batch(
        self,
        parts: list[bytes],
        budget: int,
        channel: int,
        gossip: bool,
        queue: collections.deque[bytes],
    ) -> int:
        """Move one batch frame from `queue` to `parts`; the budget left (<= 0: write is full).

        The first payload is always taken, so a payload larger than the budget
        still leaves, alone in its frame.
        """
        items: list[bytes] = []
        size = BATCH_OVERHEAD_BYTES
        payload_bytes = 0
        full = False
        while queue and len(items) < BATCH_PAYLOADS_MAX:
            payload = queue[0]
            cost = len(payload) + PAYLOAD_OVERHEAD_BYTES
            if items and size + cost > budget:
                full = True
                break
            queue.popleft()
            items.append(payload)
            size += cost
            payload_bytes += len(payload)
        release = self._send_budget.release
        for payload in items:
            release(payload)
        parts.append(wire.encode_batch(gossip, channel, items))
        count = len(items)
        self._queued[channel] -= count
        self._bytes_queued -= payload_bytes
        self.messages_sent += count
        counters = self._counters
        counters.messages_sent[channel] += count
        counters.bytes_sent[channel] += payload_bytes
        return 0 if full else budget - size

    async def _ping_loop(self) -> None:
        """PING every ping_interval_s; between PINGs, check that the link is not dead."""
        config = self.config
        sock = getattr(self._conn.stream, "socket", None)
        watch = None
        if config.retransmit_timeout_s > 0 and tcp_retransmit_state(sock) is not None:
            watch = LinkWatch(config.retransmit_timeout_s)
        next_ping = trio.current_time() + config.ping_interval_s
        while True:
            if watch is None:
                await trio.sleep_until(next_ping)
            else:
                await trio.sleep_until(
                    min(next_ping, trio.current_time() + config.link_check_interval_s)
                )
                state = tcp_retransmit_state(sock)
                if state is not None and watch.dead(trio.current_time(), *state):
                    self.close("link_dead")
                    return
            if trio.current_time() < next_ping:
                continue
            next_ping = trio.current_time() + config.ping_interval_s
            self._ping_nonce += 1
            if self.enqueue_control(wire.encode_ping(self._ping_nonce)):
                self._pings_unanswered += 1
            else:
                self._counters.dropped["control_queue_full"] += 1

    async def _receive_loop(self) -> None:
        try:
            await self._read_frames()
        finally:
            if self._reserved:
                self._release_reservation()

    async def _read_frames(self) -> None:
        conn = self._conn
        config = self.config
        decoder = wire.FrameDecoder(config.frame_bytes_max)
        now = trio.current_time()
        byte_bucket = TokenBucket(config.rate_bytes_per_s_max, now)
        message_bucket = TokenBucket(config.rate_messages_per_s_max, now)
        idle_s = config.idle_timeout_s
        frame_s = config.frame_timeout_s
        small_frame_bytes = config.write_bytes_max + BATCH_OVERHEAD_BYTES
        # The frame at the head of the decoder's buffer, by index, and the time
        # it may still spend waiting for the peer's bytes.
        frame_index = -1
        frame_left_s = frame_s
        while True:
            pending = decoder.buffered_bytes > 0
            wait_s = min(idle_s, frame_left_s) if pending else idle_s
            start = trio.current_time()
            data: bytearray | None = None
            with trio.move_on_after(wait_s):
                data = await conn.receive()
            if data is None:
                if pending and frame_left_s <= idle_s:
                    raise FrameTimeout(f"frame not complete within {frame_s} s")
                raise PeerIdleTimeout(f"nothing received for {idle_s} s")
            if pending:
                frame_left_s -= trio.current_time() - start
            self.bytes_received = conn.bytes_received
            size = len(data)
            decoder.receive_data(data)
            del data
            handled = 0
            while (message := decoder.next_message()) is not None:
                count = await self._handle(message)
                if self._reserved and decoder.frames_decoded > self._reserved_frame:
                    self._release_reservation()
                handled += count
                wait = message_bucket.debt_s(count, trio.current_time())
                if wait > 0:
                    self._counters.throttled += 1
                    await trio.sleep(wait)
                    handled = 0
                elif handled >= CHECKPOINT_MESSAGES:
                    await trio.lowlevel.checkpoint()
                    handled = 0
            wait = byte_bucket.debt_s(size, trio.current_time())
            if wait > 0:
                self._counters.throttled += 1
                await trio.sleep(wait)
            if decoder.buffered_bytes:
                if decoder.frames_decoded != frame_index:
                    frame_index = decoder.frames_decoded
                    frame_left_s = frame_s
                length = decoder.partial_frame_bytes
                if length > small_frame_bytes and self._reserved_frame != frame_index:
                    await self._reserve(length, frame_index)

    async def _reserve(self, length: int, frame_index: int) -> None:
        """Reserve a large frame's length before reading it; waiting here pauses the reader."""
        budget = self._frames_budget
        if not budget.try_take(length):
            self._counters.memory_waits += 1
            await budget.take(length)
        self._reserved = length
        self._reserved_frame = frame_index

    def _release_reservation(self) -> None:
        self._frames_budget.release(self._reserved)
        self._reserved = 0
        self._reserved_frame = -1

    async def _handle(self, message: wire.Message) -> int:
        if type(message) is Batch:
            if self.hello is None:
                raise ProtocolViolation("batch before hello")
            count = len(message.payloads)
            self.messages_received += count
            counters = self._counters
            counters.messages_received[message.channel] += count
            counters.bytes_received[message.channel] += sum(map(len, message.payloads))
            if message.channel == wire.PEX:
                if message.gossip:
                    raise ProtocolViolation("pex messages are never gossiped")
                self._host.on_pex(self, message.payloads)
            else:
                await self._host.deliver(self, message)
            return count
        if type(message) is Ping:
            if not self._ping_bucket.try_take(trio.current_time()):
                raise RateExceeded(
                    f"PINGs faster than {self.config.rate_pings_per_s_max}/s (burst {PING_BURST})"
                )
            if not self.enqueue_control(wire.encode_pong(message.nonce)):
                self._counters.dropped["control_queue_full"] += 1
        elif type(message) is Hello:
            if self.hello is not None:
                raise ProtocolViolation("second hello")
            if message.version != wire.PROTOCOL_VERSION:
                raise ProtocolViolation(f"unsupported protocol version {message.version}")
            self.hello = message
            self._host.on_hello(self, message)
        else:
            assert type(message) is Pong
            # A PONG answers one of our PINGs; any other is a flood.
            if not self._pings_unanswered:
                raise RateExceeded("PONG without a PING")
            self._pings_unanswered -= 1
        return 1
