"""One connected peer: prioritised send queues, the send loop, the reader, keepalive.

Why a class per connection with exactly three tasks (reader, writer, pinger):
the reader is the sans-I/O decoder's driver (one reader per connection, as in
trio-websocket); the writer owns the socket's send side so that many small
messages from any number of producers leave in one frame per channel and one
socket write, and so that the consensus channel is always drained first; the
pinger keeps idle links provably alive. No task is spawned per message.

Send queues: per channel, one deque for direct messages and one for gossip,
bounded by `send_queue_messages_max` for that channel and, across channels, by
`send_queue_bytes_max`. Policy when full: `enqueue` returns False and the
caller counts the drop ("send_queue_full"); producers that prefer to wait use
`Network.wait_send_capacity`. A write gathers frames in channel priority
order up to `write_bytes_max` plaintext bytes, so a vote queued behind a
mempool flood waits for at most one write.

Receive throttle: a token bucket per peer for bytes and one for messages;
over the rate the reader pauses, which TCP turns into backpressure on the
sender. Nothing is dropped for being fast.

Errors end the connection and only it. Wire errors the peer is accountable
for (malformed or oversized frame, protocol violation) are reported to the
host as misbehaviour; an authentication failure of a transport message is
not, because an on-path attacker can cause it (see network.service).
"""

from __future__ import annotations

import collections
import enum
import math
from typing import TYPE_CHECKING, Protocol

import trio

from network import wire
from network.config import NetworkConfig
from network.errors import (
    ConnectionClosed,
    FrameError,
    FrameTooLarge,
    NoiseError,
    PeerIdleTimeout,
    ProtocolViolation,
)
from network.wire import CHANNELS, PAYLOAD_OVERHEAD_BYTES, Batch, Hello, Ping, Pong

if TYPE_CHECKING:
    from network.secure import SecureConnection


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


class PeerHost(Protocol):
    """What a peer needs from the service that owns it."""

    async def deliver(self, peer: Peer, batch: Batch) -> None: ...

    def on_hello(self, peer: Peer, hello: Hello) -> None: ...

    def on_pex(self, peer: Peer, payloads: list[bytes]) -> None: ...

    def on_misbehaviour(self, peer: Peer, reason: Misbehaviour, detail: str) -> None: ...


class _TokenBucket:
    """`rate` tokens per second, burst of one second's worth."""

    __slots__ = ("_last", "_tokens", "rate")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._last = now

    def debt_s(self, amount: float, now: float) -> float:
        """Take `amount` tokens; the time to wait before taking more."""
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate) - amount
        self._last = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Peer:
    """A live, authenticated connection. Created by the service after the handshake."""

    __slots__ = (
        "_bytes_queued",
        "_conn",
        "_control",
        "_counters",
        "_direct",
        "_gossip",
        "_host",
        "_limits",
        "_ping_nonce",
        "_progress",
        "_queued",
        "_scope",
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
        service: PeerHost,
        dial_address: object = None,
    ) -> None:
        assert direction in ("inbound", "outbound")
        self._conn = conn
        self.node_id = conn.remote_node_id
        self.direction = direction
        self.host = host
        self.port = port
        self.config = config
        self.dial_address = dial_address
        self._counters = counters
        self._host = service
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
        self.closed = trio.Event()
        self.close_reason = ""
        self.connected_since = trio.current_time()
        self.hello: Hello | None = None
        self.pex_requested = False
        self.last_pex_answer_time = -math.inf
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.messages_received = 0

    # -- producers -----------------------------------------------------------

    def enqueue(self, channel: int, gossip: bool, payload: bytes) -> bool:
        """Queue one payload; False (nothing queued) when the channel or byte limit is hit."""
        size = len(payload)
        if (
            self._queued[channel] >= self._limits[channel]
            or self._bytes_queued + size > self.config.send_queue_bytes_max
            or self.close_reason
        ):
            return False
        (self._gossip if gossip else self._direct)[channel].append(payload)
        self._queued[channel] += 1
        self._bytes_queued += size
        self._wake.set()
        return True

    def enqueue_control(self, frame: bytes) -> None:
        """HELLO / PING / PONG frames; bounded by their origin (one per ping, per hello)."""
        self._control.append(frame)
        self._wake.set()

    def queue_over_half(self, channel: int) -> bool:
        return (
            self._queued[channel] * 2 > self._limits[channel]
            or self._bytes_queued * 2 > self.config.send_queue_bytes_max
        )

    @property
    def queued_messages(self) -> int:
        return sum(self._queued)

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
            self.closed.set()
            self._progress.set()
            self._counters.disconnects[self.close_reason or "closed"] += 1
            await trio.aclose_forcefully(self._conn.stream)

    async def _guard(self, loop: object) -> None:
        assert callable(loop)
        try:
            await loop()
        except FrameTooLarge as exc:
            self._misbehaved(Misbehaviour.OVERSIZED_MESSAGE, str(exc))
        except FrameError as exc:
            self._misbehaved(Misbehaviour.MALFORMED_FRAME, str(exc))
        except ProtocolViolation as exc:
            self._misbehaved(Misbehaviour.PROTOCOL_VIOLATION, str(exc))
        except NoiseError:
            self.close("authentication_failed")
        except PeerIdleTimeout:
            self.close("idle_timeout")
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.close("disconnected")

    def _misbehaved(self, reason: Misbehaviour, detail: str) -> None:
        self.close(reason.value)
        self._host.on_misbehaviour(self, reason, detail)

    async def _send_loop(self) -> None:
        conn = self._conn
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while True:
                plaintext = self._gather()
                if not plaintext:
                    break
                await conn.send(plaintext)
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
        counters = self._counters
        queued = self._queued
        for channel in CHANNELS:
            if not queued[channel]:
                continue
            for gossip, queue in ((False, self._direct[channel]), (True, self._gossip[channel])):
                if not queue:
                    continue
                items: list[bytes] = []
                size = 0
                payload_bytes = 0
                while queue:
                    payload = queue[0]
                    cost = len(payload) + PAYLOAD_OVERHEAD_BYTES
                    if items and size + cost > budget:
                        break
                    queue.popleft()
                    items.append(payload)
                    size += cost
                    payload_bytes += len(payload)
                parts.append(wire.encode_batch(gossip, channel, items))
                count = len(items)
                queued[channel] -= count
                self._bytes_queued -= payload_bytes
                self.messages_sent += count
                counters.messages_sent[channel] += count
                counters.bytes_sent[channel] += payload_bytes
                budget -= size
                if budget <= 0:
                    break
            if budget <= 0:
                break
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _ping_loop(self) -> None:
        while True:
            await trio.sleep(self.config.ping_interval_s)
            self._ping_nonce += 1
            self.enqueue_control(wire.encode_ping(self._ping_nonce))

    async def _receive_loop(self) -> None:
        conn = self._conn
        config = self.config
        decoder = wire.FrameDecoder(config.frame_bytes_max)
        now = trio.current_time()
        byte_bucket = _TokenBucket(config.rate_bytes_per_s_max, now)
        message_bucket = _TokenBucket(config.rate_messages_per_s_max, now)
        idle_s = config.idle_timeout_s
        with trio.CancelScope(deadline=now + idle_s) as idle:
            while True:
                data = await conn.receive()
                idle.deadline = math.inf
                self.bytes_received = conn.bytes_received
                messages = decoder.feed(data)
                count = 0
                for message in messages:
                    count += await self._handle(message)
                now = trio.current_time()
                wait_s = max(
                    byte_bucket.debt_s(len(data), now), message_bucket.debt_s(count, now)
                )
                if wait_s > 0:
                    self._counters.throttled += 1
                    await trio.sleep(wait_s)
                idle.deadline = trio.current_time() + idle_s
        raise PeerIdleTimeout(f"nothing received for {idle_s} s")

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
            self.enqueue_control(wire.encode_pong(message.nonce))
        elif type(message) is Hello:
            if self.hello is not None:
                raise ProtocolViolation("second hello")
            if message.version != wire.PROTOCOL_VERSION:
                raise ProtocolViolation(f"unsupported protocol version {message.version}")
            self.hello = message
            self._host.on_hello(self, message)
        else:
            assert type(message) is Pong
        return 1
