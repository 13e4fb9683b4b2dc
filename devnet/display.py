"""What the nodes of a local network are doing, watched live and drawn as a table.

Each node is followed through its websocket stream of committed blocks
(reconnecting from the next height when dropped) and its `/status` polled
once a second; the table is redrawn about once a second (ANSI redraw on a
terminal, one line per second otherwise).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import httpx
import trio
import trio_websocket

from devnet.load import SINK_ADDRESS, LoadGenerator
from devnet.processes import NodeProcess

STATUS_POLL_INTERVAL_S = 1.0
RATE_WINDOW_S = 10.0  # committed tx/s is averaged over the blocks that arrived in this window
BLOCK_HISTORY_MAX = 1_000  # blocks remembered per node for the rate window; oldest dropped


@dataclass(slots=True)
class NodeView:
    """What the display knows about one node, from its block stream and /status."""

    name: str
    height: int = 0
    block_time_ms: int = 0
    block_interval_ms: int | None = None
    committed_txs: int = 0  # in blocks seen on the stream since it connected
    peers: int | None = None
    mempool_txs: int | None = None
    mode: str = "starting"
    state: str = "starting"  # starting, up, exited(code)
    blocks: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=BLOCK_HISTORY_MAX)
    )  # (arrival time, tx count) per block

    def on_block(self, height: int, time_ms: int, tx_count: int, arrived: float) -> None:
        if self.block_time_ms and height == self.height + 1:
            self.block_interval_ms = time_ms - self.block_time_ms
        self.height, self.block_time_ms = height, time_ms
        self.committed_txs += tx_count
        self.blocks.append((arrived, tx_count))

    def tx_rate(self, now: float, window_s: float = RATE_WINDOW_S) -> float:
        """Committed tx/s over the blocks that arrived in the last `window_s`."""
        recent = [(t, n) for t, n in self.blocks if t >= now - window_s]
        if not recent:
            return 0.0
        first = self.blocks[0][0]
        span = min(window_s, now - first) if first < now else window_s
        return sum(n for _, n in recent) / max(span, 1.0)

    def txs_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.blocks if start <= t < end)


async def watch_stream(
    node: NodeProcess, view: NodeView, load: LoadGenerator | None, senders: Sequence[bytes]
) -> None:
    """Follow the node's committed blocks; reconnect (from the next height) when dropped."""
    url = f"ws://{node.rpc_host}:{node.rpc_port}/stream"
    filter_hex = ",".join(s.hex() for s in senders) or SINK_ADDRESS.hex()
    while True:
        query = f"?sender={filter_hex}"
        if view.height:
            query += f"&from_height={view.height + 1}"
        try:
            async with trio_websocket.open_websocket_url(url + query) as ws:
                while True:
                    message = await ws.get_message()
                    arrived = trio.current_time()
                    block = json.loads(message)
                    view.on_block(block["height"], block["time_ms"], block["tx_count"], arrived)
                    if load is not None and block["txs"]:
                        load.on_block([t["hash"] for t in block["txs"]], arrived)
        except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
            await trio.sleep(STATUS_POLL_INTERVAL_S)


async def poll_status(node: NodeProcess, view: NodeView) -> None:
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            try:
                r = await http.get(node.url + "/status")
                status = r.json()
                view.peers = status["peers"]
                view.mempool_txs = status["mempool"]["txs"]
                view.mode = status["sync"]["mode"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # stale values are shown; Localnet reports a dead process
            await trio.sleep(STATUS_POLL_INTERVAL_S)


# ---------------------------------------------------------------------- display


def render_table(
    views: Sequence[NodeView], load: LoadGenerator | None, now: float, header: str
) -> list[str]:
    lines = [header]
    lines.append(
        f"{'node':<7}{'height':>8}{'block time':>14}{'interval':>10}"
        f"{'tx/s':>9}{'txs':>10}{'peers':>7}{'mempool':>9}  state"
    )
    for v in views:
        when = (
            time.strftime("%H:%M:%S", time.localtime(v.block_time_ms / 1000)) if v.height else "-"
        )
        interval = "-" if v.block_interval_ms is None else f"{v.block_interval_ms} ms"
        lines.append(
            f"{v.name:<7}{v.height:>8}{when:>14}{interval:>10}{v.tx_rate(now):>9.1f}"
            f"{v.committed_txs:>10}{_dash(v.peers):>7}{_dash(v.mempool_txs):>9}  {v.state}"
        )
    lines.append(summary_line(views, load, now))
    return lines


def summary_line(views: Sequence[NodeView], load: LoadGenerator | None, now: float) -> str:
    best = max(views, key=lambda v: v.height)
    text = (
        f"total: height {best.height}, committed {best.committed_txs} txs, "
        f"{best.tx_rate(now):.1f} tx/s over {RATE_WINDOW_S:.0f} s"
    )
    if load is not None:
        stats = load.statistics(since=now - RATE_WINDOW_S)
        text += (
            f"; load {load.rate_tps:g} tx/s offered, {stats.submitted} submitted, "
            f"{stats.admitted} admitted"
        )
        if stats.rejected:
            text += ", rejected " + ", ".join(f"{k} {n}" for k, n in sorted(stats.rejected.items()))
        if stats.errors:
            text += f", {stats.errors} connection errors"
        if stats.latency_p50_s is not None:
            text += f"; latency p50 {stats.latency_p50_s:.2f} s p99 {stats.latency_p99_s:.2f} s"
    return text


def progress_line(
    views: Sequence[NodeView], load: LoadGenerator | None, now: float, t: float
) -> str:
    """The one-line-per-second form for a non-terminal stdout."""
    heights = " ".join(f"{v.name}={v.height}" for v in views)
    peers = ",".join(_dash(v.peers) for v in views)
    mempool = ",".join(_dash(v.mempool_txs) for v in views)
    return f"[{t:6.1f}s] heights {heights} peers {peers} mempool {mempool} | " + summary_line(
        views, load, now
    )


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


class Display:
    """Redraws the table in place on a terminal; prints one line per refresh otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0

    def show(self, table: list[str], line: str) -> None:
        if self.tty:
            # Move up over the previous table, clear to the end of the screen, draw.
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(up + "\x1b[J" + "\n".join(table) + "\n")
            self._drawn = len(table)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
        self._drawn = 0
