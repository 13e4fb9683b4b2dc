"""A websocket /stream client that stops reading is disconnected; the others and the node go on.

The node never waits for a subscriber: each /stream subscription queues at
most SUBSCRIPTION_EVENTS_MAX (512) committed blocks, and a client that lags
further is closed with code 1008 and a reason naming the `from_height` to
resume from. To get there for real, the slow client is a raw TCP socket with
a tiny receive buffer that speaks the websocket handshake (wsproto) and then
does not read; the node (one validator, no commit pause) commits blocks that
each carry a 16 KiB kvstore write, so every block is tens of KiB of JSON and
the kernel's socket buffers hold only a few dozen of them. Once the node has
committed more blocks than the buffers plus the queue can hold, the client
reads what was sent and must find every block in order, then the close.
"""

from __future__ import annotations

import functools
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from apps.kvstore import VALUE_BYTES_MAX, set_tx
from node.config import load_config
from node.hub import SUBSCRIPTION_EVENTS_MAX
from tests.integration import nodes

TIMEOUT_S = 120  # generous for a loaded 2-core machine; a healthy run takes about 20 s
# One validator and no pause after a commit: blocks as fast as the node can make them,
# and empty ones only as a heartbeat (the first heights, before the writer starts). An
# empty block is ~1 KiB of JSON: a run of them (the writer lagging on a loaded machine)
# makes the buffers' worst case, and so the wait for an overflow below, thousands of
# blocks long, past the 30 s the node gives a client that does not read after its queue
# overflowed (it then aborts, without the 1008 asserted).
STREAM_CONSENSUS = replace(
    nodes.FAST_CONSENSUS,
    timeout_commit_ms=0,
    create_empty_blocks=False,
    create_empty_blocks_interval_ms=1000,
)
CLIENT_RCVBUF_BYTES = 4096  # the slow client's receive buffer (the kernel doubles it)
# Uncounted bytes the kernel may also hold (per-packet overhead is charged against the
# buffers, so their real payload capacity is below these limits; this is extra margin).
BUFFER_SLACK_BYTES = 256 * 1024
SUBSCRIBE_SLACK_BLOCKS = 16  # blocks the node may commit between our handshake and its subscribe
TXS_PER_BLOCK = 2  # 16 KiB writes submitted per committed block
READ_BYTES_MAX = 1 << 16
WS_CLOSE_TOO_SLOW = 1008

# Bounds on the target's responsiveness (event-loop lag, probe latency, a
# client's close within a grace): under `make test`'s workers no two modules of
# this group run at once (the group's lock, tests/integration/conftest.py).
pytestmark = pytest.mark.xdist_group("timing")


def _send_buffer_max_bytes() -> int:
    """The most a TCP socket's send buffer grows to (net.ipv4.tcp_wmem, third field)."""
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


class SlowClient:
    """A websocket client on a raw socket: handshake, then reads only when told to."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.rcvbuf_bytes = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._pending: list[Any] = []

    @classmethod
    async def connect(cls, port: int, target: str) -> SlowClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so the window it advertises is small from the first byte.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF_BYTES)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
        await client.stream.send_all(
            client.ws.send(Request(host=f"127.0.0.1:{port}", target=target))
        )
        event = await client._next_event()
        assert isinstance(event, AcceptConnection), event
        return client

    async def _next_event(self) -> Any:
        while not self._pending:
            data = await self.stream.receive_some(READ_BYTES_MAX)
            self.ws.receive_data(data if data else None)
            self._pending.extend(self.ws.events())
        return self._pending.pop(0)

    async def read_until_closed(self) -> tuple[list[dict[str, Any]], CloseConnection]:
        """Every text message (decoded) the node sent, then its close event."""
        messages: list[dict[str, Any]] = []
        text = ""
        while True:
            event = await self._next_event()
            if isinstance(event, CloseConnection):
                return messages, event
            assert isinstance(event, TextMessage), event
            text += event.data
            if event.message_finished:
                messages.append(json.loads(text))
                text = ""

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_a_client_that_never_reads_is_closed_with_1008_and_others_keep_every_block(
    tmp_path: Path, crypto: str
) -> None:
    """A /stream client that does not read while the node commits more blocks than the socket
    buffers plus the 512-block queue hold is closed with code 1008 and a reason naming
    from_height (the height after the last block it got, every block before in order); another
    client on the same node receives every block in order throughout, and the node keeps
    committing after the disconnect."""
    assert SUBSCRIPTION_EVENTS_MAX == 512
    net = await trio.to_thread.run_sync(
        functools.partial(
            nodes.create_testnet,
            tmp_path / "net",
            validators=1,
            accounts=1,
            app="kvstore",
            consensus=STREAM_CONSENSUS,
            crypto=crypto,
        )
    )
    validator = net.validators[0]
    key = net.accounts[0]
    port = load_config(validator.config_path).rpc.listen.port
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height([validator], 2, TIMEOUT_S)
        start = await api.height(validator) + 1
        target = f"/stream?from_height={start}"

        good: list[tuple[int, int]] = []  # (height, message bytes) as the good client got them
        new_block = trio.Event()
        block_seen: list[trio.Event] = [new_block]

        async def good_client(task_status: trio.TaskStatus[None]) -> None:
            async with open_websocket_url(validator.ws + target, max_message_size=1 << 24) as ws:
                task_status.started()
                while True:
                    text = await ws.get_message()
                    assert isinstance(text, str)
                    body = json.loads(text)
                    good.append((body["height"], len(text.encode())))
                    block_seen[0].set()
                    block_seen[0] = trio.Event()

        async def writer() -> None:
            """16 KiB kvstore writes, TXS_PER_BLOCK per committed block: every block is large."""
            nonce = 0
            while True:
                await block_seen[0].wait()
                raws = [
                    set_tx(
                        key, net.chain_id, nonce + i, b"k%d" % (nonce + i), bytes(VALUE_BYTES_MAX)
                    )
                    .encode()
                    .hex()
                    for i in range(TXS_PER_BLOCK)
                ]
                r = await api.client.post(validator.rpc + "/txs", json={"txs": raws})
                assert r.status_code == 200, r.text
                assert r.json()["accepted"] == TXS_PER_BLOCK, r.text
                nonce += TXS_PER_BLOCK

        async with trio.open_nursery() as nursery:
            await nursery.start(good_client)
            nursery.start_soon(writer)
            slow = await SlowClient.connect(port, target)
            try:
                subscribed_by = await api.height(validator) + SUBSCRIBE_SLACK_BLOCKS
                capacity_bytes = _send_buffer_max_bytes() + slow.rcvbuf_bytes + BUFFER_SLACK_BYTES

                def overflowed(heights: list[tuple[int, int]]) -> bool:
                    """The node has committed more blocks than buffers and queue can hold."""
                    total, fitted = 0, 0
                    for _, size in heights:
                        total += size + 16  # a frame header is at most 14 bytes
                        if total > capacity_bytes:
                            break
                        fitted += 1
                    else:
                        return False
                    # Blocks wholly in buffers, the one being written, the full queue, one more.
                    needed = fitted + 1 + SUBSCRIPTION_EVENTS_MAX + 1
                    return bool(heights) and heights[-1][0] >= subscribed_by + needed

                async def good_heights() -> list[tuple[int, int]]:
                    return list(good)

                await nodes.wait_for(
                    good_heights, overflowed, TIMEOUT_S, "the slow client's queue to overflow"
                )
                messages, close = await slow.read_until_closed()
            finally:
                await slow.aclose()

            heights = [m["height"] for m in messages]
            assert heights == list(range(start, start + len(heights))), heights[:5]
            assert SUBSCRIPTION_EVENTS_MAX <= len(heights), len(heights)
            assert close.code == WS_CLOSE_TOO_SLOW, close
            reason = close.reason or ""
            assert "from_height" in reason, close
            assert f"from_height={start + len(heights)}" in reason, close
            assert all(m["tx_count"] == len(m["txs"]) for m in messages)

            # The node goes on committing and the good client keeps getting every block.
            top = await api.height(validator)
            await api.wait_height([validator], top + 10, TIMEOUT_S)

            async def good_top() -> int:
                return good[-1][0] if good else 0

            await nodes.wait_for(good_top, lambda h: h >= top + 10, TIMEOUT_S, "the good client")
            nursery.cancel_scope.cancel()

        got = [h for h, _ in good]
        assert got == list(range(start, start + len(got)))
        assert len(got) > len(heights)
        assert sum(size for _, size in good) > capacity_bytes  # the buffers really were exceeded
