"""The node's services over `NodeCore`: reactor, gossip of transactions, metrics endpoint.

- `Reactor` reads the network's inbox, decodes each payload at the edge
  (node/messages.py) and hands it to the part of the node it is for: the
  consensus shell's inbox (consensus, evidence, block sync) or the mempool
  task (transactions). A malformed payload is reported as the peer's
  misbehaviour and goes no further.
- `MempoolGossip` sends newly admitted transactions in batches.
- `MetricsServer` serves Prometheus' exposition on `[metrics] listen`.

Block sync and the status announcements are the consensus driver's
(node/driver.py), so that the simulator runs them too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consensus.codec import DecodeError
from consensus.events import Fault
from network import BLOCKSYNC, CONSENSUS, EVIDENCE, MEMPOOL, Envelope
from network import Misbehaviour as PeerFault
from node.http_edge import EdgeLimits, LoggingObserver, open_edge_listeners, serve_edge
from node.logging import get_logger
from node.mempool import MempoolError
from node.messages import (
    TAG_PROPOSAL,
    DecidedMsg,
    EvidenceMsg,
    Message,
    ProposalMsg,
    StatusMsg,
    SyncBlockMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    TxsMsg,
    VoteMsg,
    VoterStateMsg,
    decode_message,
    encode_message,
    peek_proposal,
)

if TYPE_CHECKING:
    from node.core import NodeCore

log = get_logger(__name__)

# Peers' transaction batches waiting for admission. Policy when full: drop the
# batch. Memory: a batch is one decoded frame's transactions, so at most this
# many frames' worth (16 MiB each at the frame limit).
TX_BATCHES_QUEUED_MAX = 16
# Payloads larger than this (a block) are decoded in a worker thread, so that
# the event loop keeps its turn every few milliseconds meanwhile.
DECODE_ON_LOOP_BYTES_MAX = 256 * 1024
# The metrics listener serves Prometheus scrapers only: few connections.
METRICS_LIMITS = EdgeLimits(connections_max=64)
_CHANNEL_OF = {
    ProposalMsg: CONSENSUS,
    VoteMsg: CONSENSUS,
    StatusMsg: CONSENSUS,
    VoterStateMsg: CONSENSUS,
    DecidedMsg: CONSENSUS,
    EvidenceMsg: EVIDENCE,
    SyncStatusMsg: BLOCKSYNC,
    SyncRequestMsg: BLOCKSYNC,
    SyncBlockMsg: BLOCKSYNC,
    SyncNoneMsg: BLOCKSYNC,
    TxsMsg: MEMPOOL,
}


class Reactor:
    name = "reactor"

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self._txs_send, self._txs_recv = trio.open_memory_channel[tuple[str, tuple[bytes, ...]]](
            TX_BATCHES_QUEUED_MAX
        )
        self.dropped_tx_batches = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ingest_txs)
            task_status.started()
            async for envelope in self.core.net.inbox:
                if self.core.net.is_banned(envelope.peer_id):
                    continue  # read before the ban: nothing more from it is worth the work
                try:
                    payload = envelope.payload
                    if len(payload) <= DECODE_ON_LOOP_BYTES_MAX:
                        msg = decode_message(payload)
                    elif self._worth_decoding(envelope):
                        msg = await trio.to_thread.run_sync(decode_message, payload)
                    else:
                        continue
                    self._handle(envelope, msg)
                except DecodeError as e:
                    log.warning(
                        "malformed message from peer",
                        peer=envelope.peer_id,
                        channel=envelope.channel,
                        error=str(e),
                    )
                    self.core.net.report_misbehaviour(envelope.peer_id, PeerFault.INVALID_MESSAGE)

    def _worth_decoding(self, env: Envelope) -> bool:
        """A large payload is a block; a proposal's signature is checked before its block.

        A forged proposal is refused here, its sender penalised, having cost a
        few hundred bytes read instead of a block decoded.
        """
        if env.payload[1:2] != bytes([TAG_PROPOSAL]) or self.core.consensus is None:
            return True
        verdict = self.core.consensus.driver.screen_proposal(peek_proposal(env.payload))
        if isinstance(verdict, Fault):
            log.warning("peer message refused", peer=env.peer_id, fault=verdict.value)
            self.core.net.report_misbehaviour(env.peer_id, PeerFault.INVALID_SIGNATURE)
            return False
        return verdict

    def _handle(self, env: Envelope, msg: Message) -> None:
        if _CHANNEL_OF[type(msg)] != env.channel:
            raise DecodeError(f"{type(msg).__name__} on the wrong channel {env.channel}")
        if isinstance(msg, TxsMsg):
            self._on_txs(env.peer_id, msg.txs)
        elif self.core.consensus is not None:
            self.core.consensus.submit_from_peer(env.peer_id, msg, env.payload, env.digest)

    def _on_txs(self, peer: str, txs: tuple[bytes, ...]) -> None:
        """Hand a peer's transactions to the mempool task, so votes never wait behind them."""
        try:
            self._txs_send.send_nowait((peer, txs))
        except trio.WouldBlock:
            self.dropped_tx_batches += 1  # the sender will not resend; clients may retry

    async def _ingest_txs(self) -> None:
        core = self.core
        async for peer, txs in self._txs_recv:
            results = await core.mempool_add_batch(txs, origin=peer)
            for r in results:
                if isinstance(r, MempoolError) and r.reason in ("bad_signature", "malformed"):
                    # A peer relays only what it admitted: this one is faulty.
                    core.net.report_misbehaviour(peer, PeerFault.INVALID_SIGNATURE)
                    break


class MempoolGossip:
    """Batch newly admitted transactions into few frames (one per origin and interval)."""

    name = "mempool-gossip"
    BATCH_INTERVAL_S = 0.02  # how long new transactions may wait to be batched

    def __init__(self, core: NodeCore) -> None:
        self.core = core

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        core = self.core
        mp = core.config.mempool
        while True:
            await core.gossip_ready.wait()
            await trio.sleep(self.BATCH_INTERVAL_S)
            for origin, txs in core.take_gossip():
                for i in range(0, len(txs), mp.broadcast_batch_txs_max):
                    chunk = txs[i : i + mp.broadcast_batch_txs_max]
                    batch: list[bytes] = []
                    size = 0
                    for raw in chunk:
                        if batch and size + len(raw) > mp.broadcast_batch_bytes_max:
                            self._send(batch, origin)
                            batch, size = [], 0
                        batch.append(raw)
                        size += len(raw)
                    if batch:
                        self._send(batch, origin)

    def _send(self, batch: list[bytes], origin: str | None) -> None:
        self.core.net.gossip(MEMPOOL, encode_message(TxsMsg(tuple(batch))), exclude_peer=origin)


class MetricsServer:
    name = "metrics"

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.app = Starlette(routes=[Route("/metrics", self.metrics)])

    async def metrics(self, request: Request) -> Response:
        core = self.core
        core.metrics.mempool_txs.set(len(core.mempool))
        core.metrics.mempool_bytes.set(core.mempool.bytes)
        return Response(
            core.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The API's contained server (node/http_edge.py): a hostile request on the
        # metrics port closes its connection only, never the node.
        listen = self.core.config.metrics.listen
        listeners = await open_edge_listeners(listen.host, listen.port, METRICS_LIMITS)
        task_status.started()
        await serve_edge(self.app, listeners, METRICS_LIMITS, LoggingObserver("metrics"))
