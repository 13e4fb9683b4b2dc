"""Serve an ASGI app on hypercorn's protocol code with an accept loop that contains each connection.

Why not `hypercorn.trio.serve`: it runs every connection in one nursery, so an
exception escaping any one connection cancels the server, and the daemon with
it. Hypercorn 0.18 raises one on an ordinary path: when a client ends its
connection (EOF, or bytes h11 rejects) while a request whose body was not read
waits for its answer, hypercorn's reader task writes its own 400 while the
application's task, having answered, calls `send_eof` outside hypercorn's send
lock; trio's `send_eof` holds the stream's conflict detector across a
checkpoint, so the reader's `send_all` raises `trio.BusyResourceError`. One
request declaring `Content-Length: 1000000000` and closing stopped a node
(issue 11); so did, now and then, an ordinary /stream client closing (the
reader answering its close frame as the app's task closed). Hypercorn also has
no connection limit, and it shields every send from cancellation, so a client
that never reads holds a task forever.

`serve_edge` serves any of the node's listeners (the API; the metrics endpoint
can use it too). Each connection runs hypercorn's `TCPServer` on a
`GuardedStream`:

- `send_all` and `send_eof` share one lock: the socket has one writer at a time;
- a send that moves no bytes for `send_stall_timeout_s` closes the connection
  (a nested deadline still fires inside hypercorn's shield);
- a websocket stream switches to `stream_mode`: no stall timeout (the stream's
  own queue bounds a slow reader); the client may send only control frames,
  within a byte budget; after any close frame from the node, a grace, then cut;
- on shutdown every connection is aborted, so no shielded send holds it up;
- an exception escaping a connection closes that connection only; it is
  logged (at most once per `ERROR_LOG_INTERVAL_S` per kind) and counted.

At most `connections_max` connections are open. At the limit, the connection
idle longest (no request in progress: between keep-alive requests or still
sending its headers) is closed to make room; when none is idle the new one is
closed at once. Either is counted.

`ContainErrors` logs and counts an exception from the app once (kind
"handler"); the request ends with a 500, or a websocket with 1011.
`DrainBeforeAnswer` wraps the app so that an answer given before the request
body was read (413, 405, 404, 408, 500) is delivered: hypercorn closes the
connection as soon as such an answer is complete, and closing a socket with
unread bytes makes the kernel send a reset that can destroy the answer at the
client (issue 15). So the unread body is first read and discarded, up to a
bound, and an answer that still leaves body unread says `connection: close`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as HypercornEvent
from hypercorn.events import RawData, Updated
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app

from node.logging import get_logger

log = get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

# Key under which a request's scope["state"] carries its connection's GuardedStream.
CONNECTION_STATE_KEY = "archipelago.connection"
# A send is cut into pieces of this size; each must leave within the stall timeout.
SEND_CHUNK_BYTES = 64 * 1024
# Contained failures of one kind are logged at most once per interval (a hostile client
# can cause one per request); the rest are counted and the next line says how many.
ERROR_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The limits of one listener; the defaults are the API's (docs/OPERATIONS.md, API limits)."""

    # Open connections (HTTP and websocket). Policy when full: close the connection idle
    # longest, else refuse the new one. Far below the process's descriptor limit.
    connections_max: int = 512
    # A connection must send a request's headers within this long of opening or of its
    # previous answer (hypercorn's keep-alive timeout, which also covers headers).
    idle_timeout_s: float = 10.0
    # A send that moves no bytes for this long closes the connection.
    send_stall_timeout_s: float = 10.0
    # Request line plus headers (h11's incomplete-event limit); over it: 431 or 400, close.
    header_bytes_max: int = 16 * 1024
    # A websocket message from a client; over it: close code 1009. A second line: on
    # /stream a client's data frame is refused before hypercorn sees it.
    websocket_message_bytes_max: int = 4 * 1024
    # Bytes a /stream client may send (control frames only: close, ping, pong): a burst,
    # then a sustained rate. Over it, or any data frame: the connection is cut.
    websocket_client_burst_bytes: int = 4 * 1024
    websocket_client_bytes_per_s: float = 128.0
    # After the node sends a websocket close frame, the client has this long to take what
    # is queued and close; then the connection is cut.
    websocket_close_grace_s: float = 30.0
    # Concurrent HTTP/2 streams on one connection (cleartext prior knowledge or h2c).
    h2_streams_max: int = 16
    # Connections the kernel queues before accept.
    backlog: int = 128
    # A request body must arrive whole within this long of the request's start, whether the
    # handler reads it (else 408) or it is read and discarded before an early answer.
    body_timeout_s: float = 10.0
    # An unread body is read and discarded before an early answer up to this many bytes
    # (a larger declared length is not even tried); past it, or past the body timeout,
    # the answer goes out with `connection: close`.
    drain_bytes_max: int = 8 * 1024 * 1024


class EdgeObserver(Protocol):
    """What a listener reports: contained failures, refusals, the open connection count."""

    def failed(self, kind: str, error: BaseException) -> None: ...

    def refused(self, reason: str) -> None: ...

    def connections(self, count: int) -> None: ...


class LoggingObserver:
    """Logs contained failures, at most once per ERROR_LOG_INTERVAL_S per kind."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def failed(self, kind: str, error: BaseException) -> None:
        now = trio.current_time()
        last = self._last_logged.get(kind)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._last_logged[kind] = now
        log.error(
            f"{self.service} {kind} failed",  # contained: that request or connection only
            kind=kind,
            error=_describe(error),
            similar_unlogged=self._unlogged.pop(kind, 0),
            exc_info=error,
        )

    def refused(self, reason: str) -> None:
        pass

    def connections(self, count: int) -> None:
        pass


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        return _describe(error.exceptions[0])
    return repr(error)


class GuardedStream(trio.abc.HalfCloseableStream):
    """A client's socket as hypercorn sees it: one writer, bounded stalls, abortable.

    It has no `do_handshake`, which is how hypercorn's TCPServer tells a plain
    socket from TLS.
    """

    def __init__(
        self, inner: trio.SocketStream, limits: EdgeLimits, refused: Callable[[str], None]
    ):
        self._inner = inner
        self._limits = limits
        self._refused = refused
        self._send_lock = trio.Lock()
        self._send_scope: trio.CancelScope | None = None
        self._stall_timeout_s: float | None = limits.send_stall_timeout_s
        self._abort_at = float("inf")
        self._aborted = False
        self._client_frames: _ClientFrames | None = None  # set in stream mode
        self.idle = True  # no request in progress (hypercorn's Updated events keep it current)
        self.idle_since = trio.current_time()

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._inner.socket

    @property
    def aborted(self) -> bool:
        return self._aborted

    @property
    def close_grace_s(self) -> float:
        return self._limits.websocket_close_grace_s

    @property
    def streaming(self) -> bool:
        return self._client_frames is not None

    def stream_mode(self) -> None:
        """A server-to-client websocket stream, from the handshake's answer on: sends may wait
        on a slow reader (the stream's own queue bounds it), and the client may send only
        control frames, within a byte budget."""
        self._stall_timeout_s = None
        self._client_frames = _ClientFrames(self._limits)

    def abort_after(self, seconds: float) -> None:
        """Close the connection if a send is still blocked `seconds` from now."""
        self._abort_at = min(self._abort_at, trio.current_time() + seconds)
        if self._send_scope is not None:
            self._send_scope.deadline = min(self._send_scope.deadline, self._abort_at)

    def abort(self) -> None:
        """Close the socket now; blocked sends and receives fail, hypercorn then cleans up."""
        self._aborted = True
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._inner.socket.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            if self._aborted:
                raise trio.ClosedResourceError("connection aborted")
            view = memoryview(data)
            if not view:
                await self._inner.send_all(b"")
                return
            for start in range(0, len(view), SEND_CHUNK_BYTES):
                await self._send_chunk(view[start : start + SEND_CHUNK_BYTES])

    async def _send_chunk(self, chunk: memoryview) -> None:
        deadline = self._abort_at
        if self._stall_timeout_s is not None:
            deadline = min(deadline, trio.current_time() + self._stall_timeout_s)
        with trio.CancelScope(deadline=deadline) as scope:
            self._send_scope = scope
            try:
                await self._inner.send_all(chunk)
            finally:
                self._send_scope = None
        if scope.cancelled_caught:
            if not self._aborted:
                self._refused("send_stalled")
                self.abort()
            raise trio.BrokenResourceError("the client did not read; connection closed")

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        async with self._send_lock:
            await self._inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        frames = self._client_frames
        if frames is not None and max_bytes is not None:
            max_bytes = min(max_bytes, self._limits.websocket_client_burst_bytes)
        data = await self._inner.receive_some(max_bytes)
        # Checked after the read, which may have begun before stream mode: bytes that break
        # the rules are never handed on to hypercorn.
        frames = self._client_frames
        if frames is not None and (refusal := frames.check(data)) is not None:
            self._refused(refusal)
            self.abort()
            raise trio.BrokenResourceError(f"websocket client refused: {refusal}")
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


# RFC 6455 opcodes a /stream client may send: close, ping, pong (control frames carry at
# most 125 bytes and cannot be compressed).
_CONTROL_OPCODES = frozenset((0x8, 0x9, 0xA))
_CONTROL_PAYLOAD_BYTES_MAX = 125


class _ClientFrames:
    """What a stream's client sends, walked frame header by frame header before hypercorn
    sees it: a data frame (the stream takes no messages) or bytes over the budget refuse
    the client. So hypercorn never buffers a client message (it would keep growing its
    buffer past its own size limit) and never inflates one (permessage-deflate may be
    negotiated; one 64 KiB frame inflates to 64 MiB)."""

    def __init__(self, limits: EdgeLimits) -> None:
        self._limits = limits
        self._budget_bytes = float(limits.websocket_client_burst_bytes)
        self._budget_at = trio.current_time()
        self._header = bytearray()  # the current frame's header, while incomplete
        self._payload_left = 0

    def check(self, data: bytes) -> str | None:
        """None if `data` keeps to the rules, else the refusal's reason."""
        now = trio.current_time()
        self._budget_bytes = min(
            float(self._limits.websocket_client_burst_bytes),
            self._budget_bytes
            + (now - self._budget_at) * self._limits.websocket_client_bytes_per_s,
        )
        self._budget_at = now
        self._budget_bytes -= len(data)
        if self._budget_bytes < 0:
            return "websocket_client_bytes"
        i = 0
        while i < len(data):
            if self._payload_left:
                step = min(self._payload_left, len(data) - i)
                self._payload_left -= step
                i += step
                continue
            self._header.append(data[i])
            i += 1
            if self._header[0] & 0x0F not in _CONTROL_OPCODES:
                return "websocket_client_message"
            if len(self._header) < 2:
                continue
            length = self._header[1] & 0x7F
            if length > _CONTROL_PAYLOAD_BYTES_MAX:
                return "websocket_client_message"
            if len(self._header) < 2 + (4 if self._header[1] & 0x80 else 0):  # masking key
                continue
            self._payload_left = length
            self._header.clear()
        return None


class _Connection(TCPServer):
    """Hypercorn's connection handler, telling the guard when a request is in progress."""

    def __init__(
        self,
        app: AppWrapper,
        config: HypercornConfig,
        context: WorkerContext,
        state: ConnectionState,
        guard: GuardedStream,
    ) -> None:
        super().__init__(app, config, context, state, guard)  # type: ignore[arg-type]
        self._guard = guard

    async def protocol_send(self, event: HypercornEvent) -> None:
        if isinstance(event, Updated):
            self._guard.idle = event.idle
            self._guard.idle_since = trio.current_time()
        elif isinstance(event, RawData) and self._guard.streaming and event.data[:1] == b"\x88":
            # A close frame from us (ours, or hypercorn's own, which the app never hears of):
            # the client has the grace to take what is queued and answer, then it is cut.
            self._guard.abort_after(self._guard.close_grace_s)
        await super().protocol_send(event)


def hypercorn_config(limits: EdgeLimits) -> HypercornConfig:
    """The protocol settings hypercorn applies inside each connection."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = None  # failures are logged by the EdgeObserver, in the node's format
    config.keep_alive_timeout = limits.idle_timeout_s
    config.h11_max_incomplete_size = limits.header_bytes_max
    config.h2_max_header_list_size = limits.header_bytes_max
    config.h2_max_concurrent_streams = limits.h2_streams_max
    config.websocket_max_message_size = limits.websocket_message_bytes_max
    config.include_server_header = False
    return config


class EdgeServer:
    """Accepts connections on `listeners` and serves `app` on each, contained."""

    def __init__(self, app: Asgi, limits: EdgeLimits, observer: EdgeObserver) -> None:
        self.limits = limits
        self.observer = observer
        self._config = hypercorn_config(limits)
        self._app = wrap_app(app, self._config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        self._context = WorkerContext(None)
        self._open: dict[GuardedStream, None] = {}  # in accept order

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        """Serve until cancelled; then abort every connection."""
        async with trio.open_nursery() as nursery:
            try:
                await trio.serve_listeners(
                    self._serve_connection, listeners, handler_nursery=nursery
                )
            finally:
                for guard in list(self._open):
                    guard.abort()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        if len(self._open) >= self.limits.connections_max and not self._evict_idle():
            self.observer.refused("connections_max")
            return  # trio.serve_listeners closes the stream
        guard = GuardedStream(stream, self.limits, self.observer.refused)
        self._open[guard] = None
        self.observer.connections(len(self._open))
        state = ConnectionState({CONNECTION_STATE_KEY: guard})
        try:
            await _Connection(self._app, self._config, self._context, state, guard)
        except* Exception as group:
            if not guard.aborted:  # after an abort, errors are its consequence, counted already
                self.observer.failed("connection", group)
        finally:
            self._open.pop(guard, None)
            self.observer.connections(len(self._open))
            guard.abort()

    def _evict_idle(self) -> bool:
        """Close the connection idle longest; False if every connection is busy."""
        idle = [g for g in self._open if g.idle and not g.aborted]
        if not idle:
            return False
        oldest = min(idle, key=lambda g: g.idle_since)
        del self._open[oldest]
        oldest.abort()
        self.observer.refused("idle_evicted")
        return True


async def open_edge_listeners(
    host: str, port: int, limits: EdgeLimits
) -> list[trio.SocketListener]:
    """Bind `host:port` (port 0: any free port); raises OSError if it cannot."""
    return await trio.open_tcp_listeners(port, host=host, backlog=limits.backlog)


async def serve_edge(
    app: Asgi, listeners: list[trio.SocketListener], limits: EdgeLimits, observer: EdgeObserver
) -> None:
    """Serve `app` on `listeners` until cancelled, every request and connection contained.

    Raises only if accepting fails for a reason other than a full descriptor
    table or memory (which trio waits out): a listener that cannot accept
    cannot serve anyone.
    """
    contained = ContainErrors(DrainBeforeAnswer(app, limits), observer)
    await EdgeServer(contained, limits, observer).serve(listeners)


class ContainErrors:
    """ASGI middleware: an exception from the app (HTTP or websocket) ends that request only.

    It is logged and counted here, once: Starlette has already answered an HTTP
    request with its 500 and re-raised; hypercorn closes a websocket with 1011
    once the app returns.
    """

    def __init__(self, app: Asgi, observer: EdgeObserver) -> None:
        self.app = app
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            self.observer.failed("handler", e)


class DrainBeforeAnswer:
    """ASGI middleware: read and discard an unread request body (bounded) before answering."""

    def __init__(self, app: Asgi, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _BodyTracker(scope, receive, trio.current_time() + self.limits.body_timeout_s)

        async def send_after_body(message: Message) -> None:
            if message["type"] == "http.response.start" and not body.complete:
                await body.drain(self.limits)
                if not body.complete:
                    headers = [(k, v) for k, v in message.get("headers", []) if k != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, body.receive, send_after_body)


class _BodyTracker:
    def __init__(self, scope: Scope, receive: Receive, deadline: float) -> None:
        self._receive = receive
        self._deadline = deadline
        self.declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                self.declared = int(value)
            elif name == b"transfer-encoding":
                chunked = True
        self.complete = not chunked and not self.declared

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            self.complete = True
        return message

    async def drain(self, limits: EdgeLimits) -> None:
        if self.declared is not None and self.declared > limits.drain_bytes_max:
            return  # not worth reading; the answer says connection: close
        drained = 0
        with trio.move_on_at(self._deadline):
            while not self.complete and drained <= limits.drain_bytes_max:
                drained += len((await self.receive()).get("body", b""))
