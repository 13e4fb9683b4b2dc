"""The node's services over `NodeCore`: reactor, block sync, gossip loops, metrics endpoint.

- `Reactor` reads the network's inbox, decodes each payload at the edge
  (node/messages.py) and hands it to the part of the node it is for; a
  malformed payload is reported as the peer's misbehaviour and goes no
  further.
- `BlockSync` catches the node up from peers' stores and switches the node
  between "blocksync" and "consensus" mode in both directions.
- `Announcer` tells peers where we are (heights for sync, height and round
  for consensus) and re-sends our own votes to peers stuck at our height.
- `MempoolGossip` sends newly admitted transactions in batches.
- `MetricsServer` serves Prometheus' exposition on `[metrics] listen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from consensus.codec import DecodeError
from consensus.events import CommitReceived, ProposalReceived, VoteReceived
from consensus.validation import BlockInvalid
from network import BLOCKSYNC, CONSENSUS, EVIDENCE, MEMPOOL, Envelope
from network import Misbehaviour as PeerFault
from node.core import PeerStatus
from node.logging import get_logger
from node.mempool import MempoolError
from node.messages import (
    BLOCKS_PER_REQUEST_MAX,
    DecidedMsg,
    EvidenceMsg,
    ProposalMsg,
    StatusMsg,
    SyncBlockMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    TxsMsg,
    VoteMsg,
    decode_message,
    encode_message,
)

if TYPE_CHECKING:
    from consensus.types import Block, Commit
    from node.core import NodeCore

log = get_logger(__name__)

ANNOUNCE_INTERVAL_S = 1.0
# A height without progress for this long makes us re-send our own messages.
RESEND_AFTER_S = 3.0
# A peer at most this many heights behind is sent decided blocks; further behind,
# it catches up by block sync.
DECIDED_HEIGHTS_BEHIND_MAX = 2
# Peers' transaction batches waiting for admission (up to 1,000 txs each, so
# at most 64,000 transactions' bytes). Policy when full: drop the batch.
TX_BATCHES_QUEUED_MAX = 64


class Reactor:
    name = "reactor"

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.decided_sent: dict[str, int] = {}  # peer -> height we last sent it
        self._txs_send, self._txs_recv = trio.open_memory_channel[tuple[str, tuple[bytes, ...]]](
            TX_BATCHES_QUEUED_MAX
        )
        self.dropped_tx_batches = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ingest_txs)
            task_status.started()
            async for envelope in self.core.net.inbox:
                try:
                    await self._handle(envelope)
                except DecodeError as e:
                    log.warning(
                        "malformed message from peer",
                        peer=envelope.peer_id,
                        channel=envelope.channel,
                        error=str(e),
                    )
                    self.core.net.report_misbehaviour(envelope.peer_id, PeerFault.INVALID_MESSAGE)

    async def _handle(self, env: Envelope) -> None:
        msg = decode_message(env.payload)
        core = self.core
        peer = env.peer_id
        expected = {
            ProposalMsg: CONSENSUS,
            VoteMsg: CONSENSUS,
            StatusMsg: CONSENSUS,
            DecidedMsg: CONSENSUS,
            EvidenceMsg: EVIDENCE,
            SyncStatusMsg: BLOCKSYNC,
            SyncRequestMsg: BLOCKSYNC,
            SyncBlockMsg: BLOCKSYNC,
            SyncNoneMsg: BLOCKSYNC,
            TxsMsg: MEMPOOL,
        }[type(msg)]
        if expected != env.channel:
            raise DecodeError(f"{type(msg).__name__} on the wrong channel {env.channel}")
        consensus = core.consensus
        match msg:
            case ProposalMsg(proposal, block):
                if consensus is not None:
                    consensus.submit_from_peer(peer, ProposalReceived(proposal, block), env.payload)
            case VoteMsg(vote):
                if consensus is not None:
                    consensus.submit_from_peer(peer, VoteReceived(vote), env.payload)
            case StatusMsg(height, round_):
                status = core.peer_status.setdefault(peer, PeerStatus())
                status.height, status.round = height, round_
                status.updated_at = trio.current_time()
                self._help_peer_behind(peer, height)
            case DecidedMsg(block, commit):
                machine = consensus.machine if consensus is not None else None
                if consensus is not None and machine is not None and block.height == machine.height:
                    consensus.submit_from_peer(
                        peer,
                        CommitReceived(block, commit),  # type: ignore[arg-type]
                        env.payload,
                    )
            case EvidenceMsg(evidence):
                self._on_evidence(peer, env.payload, evidence)
            case SyncStatusMsg(base, height):
                status = core.peer_status.setdefault(peer, PeerStatus())
                status.base, status.synced = base, height
                status.updated_at = trio.current_time()
                if core.blocksync is not None:
                    core.blocksync.wake()
            case SyncRequestMsg(height, count):
                self._serve_blocks(peer, height, count)
            case SyncBlockMsg(block, commit):
                if core.blocksync is not None:
                    core.blocksync.on_block(peer, block, commit)
            case SyncNoneMsg(height):
                if core.blocksync is not None:
                    core.blocksync.on_none(peer, height)
            case TxsMsg(txs):
                self._on_txs(peer, txs)

    def _help_peer_behind(self, peer: str, height: int) -> None:
        """A peer working on a height we committed gets that block and its certificate."""
        core = self.core
        if not 1 <= height <= core.height or self.decided_sent.get(peer) == height:
            return
        if core.height - height > DECIDED_HEIGHTS_BEHIND_MAX:
            return  # far behind: block sync's job
        block = core.store.load_block(height)
        commit = core.store.load_seen_commit(height)
        if block is None or commit is None:
            return
        self.decided_sent[peer] = height
        core.net.send(peer, CONSENSUS, encode_message(DecidedMsg(block, commit)))

    def _on_evidence(self, peer: str, payload: bytes, evidence: object) -> None:
        from consensus.types import DuplicateVoteEvidence

        assert isinstance(evidence, DuplicateVoteEvidence)
        core = self.core
        validators = core.store.load_validators(evidence.height)
        if validators is None:
            return  # a height we do not know yet (or pruned): cannot judge it
        reason = evidence.verify(core.genesis.chain_id, validators)
        if reason is not None:
            log.warning("invalid evidence from peer", peer=peer, reason=reason)
            core.net.report_misbehaviour(peer, PeerFault.INVALID_SIGNATURE)
            return
        if core.evidence.add(evidence):
            core.metrics.evidence.inc()
            log.warning(
                "equivocation evidence received",
                validator=evidence.validator_address.hex(),
                height=evidence.height,
            )
            core.net.gossip(EVIDENCE, payload, exclude_peer=peer)

    def _serve_blocks(self, peer: str, height: int, count: int) -> None:
        core = self.core
        for h in range(height, height + min(count, BLOCKS_PER_REQUEST_MAX)):
            block = core.store.load_block(h)
            commit = core.store.load_seen_commit(h)
            if block is None or commit is None:
                core.net.send(peer, BLOCKSYNC, encode_message(SyncNoneMsg(h)))
                return
            core.net.send(peer, BLOCKSYNC, encode_message(SyncBlockMsg(block, commit)))

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


@dataclass(slots=True)
class _Pending:
    peer: str
    asked_at: float


class BlockSync:
    """Fetch committed blocks from peers, verify and apply them in order.

    Requests go out for a window of heights above ours, spread over the
    peers that have them; responses are kept (bounded by the window) until
    the next height to apply arrives. Each block's certificate is verified
    against the validator set our state says signs it, then the block goes
    through the full validation core and `apply_block`, exactly as a decided
    block would. A peer that sends an invalid block is banned and its
    heights are asked of someone else.
    """

    name = "blocksync"
    WINDOW_BLOCKS = 128  # heights requested ahead of ours; bounds memory to 128 blocks
    REQUEST_TIMEOUT_S = 10.0
    STARTUP_WAIT_S = 3.0  # at start, how long to wait for peers' heights before consensus

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.lag_heights = core.config.blocksync.fallback_lag_heights
        self.pending: dict[int, _Pending] = {}
        self.received: dict[int, tuple[Block, Commit, str]] = {}
        self._wakeup = trio.Event()
        self.started_at = 0.0

    def wake(self) -> None:
        self._wakeup.set()

    def on_block(self, peer: str, block: Block, commit: Commit) -> None:
        h = block.height
        p = self.pending.get(h)
        if p is None or p.peer != peer or h in self.received:
            return  # unsolicited or late: ignore (bounded by what we asked for)
        del self.pending[h]
        self.received[h] = (block, commit, peer)
        self.wake()

    def on_none(self, peer: str, height: int) -> None:
        p = self.pending.get(height)
        if p is not None and p.peer == peer:
            del self.pending[height]
            status = self.core.peer_status.get(peer)
            if status is not None:
                status.synced = min(status.synced, height - 1)
            self.wake()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = trio.current_time()
        task_status.started()
        while True:
            self._wakeup = trio.Event()
            await self._step()
            with trio.move_on_after(0.5):
                await self._wakeup.wait()

    async def _step(self) -> None:
        core = self.core
        peer_max = core.peer_max_height()
        lag = max(0, peer_max - core.height)
        core.metrics.blocksync_lag.set(lag)
        core.metrics.peer_max_height.set(peer_max)
        if core.mode == "consensus":
            if core.config.blocksync.enabled and lag > self.lag_heights:
                core.set_mode(
                    "blocksync", f"peers are {lag} blocks ahead (limit {self.lag_heights})"
                )
            return
        if not core.config.blocksync.enabled:
            core.set_mode("consensus", "block sync disabled")
            return
        heard = any(s.updated_at > 0 for s in core.peer_status.values())
        waited = trio.current_time() - self.started_at >= self.STARTUP_WAIT_S
        if core.height >= peer_max and (heard or waited):
            self.pending.clear()
            self.received.clear()
            reason = "caught up with peers" if heard else "no peer is ahead"
            core.set_mode("consensus", f"{reason} at height {core.height}")
            return
        await self._apply_ready()
        self._request()
        core.set_mode("blocksync", f"fetching blocks {core.height + 1}..{peer_max} from peers")

    async def _apply_ready(self) -> None:
        core = self.core
        while (item := self.received.pop(core.height + 1, None)) is not None:
            block, commit, peer = item
            try:
                async with core.chain.lock:  # up to 1,000 signatures: not on the event loop
                    await trio.to_thread.run_sync(core.chain.verify_commit, commit, block)
                await core.apply_block(block, commit)
            except BlockInvalid as e:
                log.warning(
                    "invalid block from peer during sync",
                    peer=peer,
                    height=block.height,
                    reason=str(e),
                )
                core.net.report_misbehaviour(peer, PeerFault.PROTOCOL_VIOLATION)
                core.peer_status.pop(peer, None)
                return
            core.metrics.blocksync_blocks.inc()
            if block.height % 100 == 0:
                log.info(
                    "block sync progress", height=block.height, peer_max=core.peer_max_height()
                )

    def _request(self) -> None:
        core = self.core
        now = trio.current_time()
        for h, p in list(self.pending.items()):
            if now - p.asked_at > self.REQUEST_TIMEOUT_S or p.peer not in core.peer_status:
                del self.pending[h]
                status = core.peer_status.get(p.peer)
                if status is not None:
                    # It claimed this height and did not serve it: believe it no further.
                    status.synced = min(status.synced, h - 1)
        connected = {p.node_id for p in core.net.peers()}
        candidates = [
            (peer, s) for peer, s in core.peer_status.items() if peer in connected and s.synced > 0
        ]
        if not candidates:
            return
        start = core.height + 1
        stop = min(core.peer_max_height(), core.height + self.WINDOW_BLOCKS)
        turn = 0
        h = start
        while h <= stop:
            if h in self.pending or h in self.received:
                h += 1
                continue
            holders = [peer for peer, s in candidates if s.base <= h <= s.synced]
            if not holders:
                h += 1
                continue
            peer = holders[turn % len(holders)]
            turn += 1
            count = 1
            while (
                count < BLOCKS_PER_REQUEST_MAX
                and h + count <= stop
                and h + count not in self.pending
                and h + count not in self.received
            ):
                count += 1
            if not core.net.send(peer, BLOCKSYNC, encode_message(SyncRequestMsg(h, count))):
                return
            for k in range(h, h + count):
                self.pending[k] = _Pending(peer, now)
            h += count


class Announcer:
    """Tell peers our heights; re-send our own messages when the height is stuck."""

    name = "announcer"

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self._last_height = -1
        self._height_since = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._announce()
            await trio.sleep(ANNOUNCE_INTERVAL_S)

    def _announce(self) -> None:
        core = self.core
        now = trio.current_time()
        connected = {p.node_id for p in core.net.peers()}
        for gone in [p for p in core.peer_status if p not in connected]:
            del core.peer_status[gone]  # bounded by the connection limits, not by history
        if core.reactor is not None:
            for gone in [p for p in core.reactor.decided_sent if p not in connected]:
                del core.reactor.decided_sent[gone]
        if core.height != self._last_height:
            self._last_height, self._height_since = core.height, now
        machine = core.consensus.machine if core.consensus is not None else None
        sync_status = encode_message(SyncStatusMsg(1 if core.height else 0, core.height))
        consensus_status = None
        if machine is not None:
            consensus_status = encode_message(StatusMsg(machine.height, machine.round))
        stuck = machine is not None and now - self._height_since >= RESEND_AFTER_S
        for peer in core.net.peers():
            core.net.send(peer.node_id, BLOCKSYNC, sync_status)
            if consensus_status is not None:
                core.net.send(peer.node_id, CONSENSUS, consensus_status)
            if stuck and core.consensus is not None:
                for payload in core.consensus.own_messages:
                    core.net.send(peer.node_id, CONSENSUS, payload)


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
        listen = self.core.config.metrics.listen
        config = HypercornConfig()
        config.bind = [f"{listen.host}:{listen.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1
        await serve(self.app, config, task_status=task_status)  # type: ignore[arg-type]
