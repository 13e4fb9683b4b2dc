"""The reactor: every peer message is decoded at the edge and handed to its owner.

The reactor reads the network's inbox, decodes each payload
(node/messages.py) and hands it to the part of the node it is for: the
consensus shell's inbox (consensus, evidence, block sync) or the mempool task
(transactions). A malformed payload is reported as the peer's misbehaviour
and goes no further.
"""

from __future__ import annotations

import collections

import trio

from consensus.codec import DecodeError
from consensus.events import Fault
from network import BLOCKSYNC, CONSENSUS, EVIDENCE, MEMPOOL, Envelope
from network import Misbehaviour as PeerFault
from node.consensus_service import ConsensusService
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
    peek_proposal,
)
from node.metrics import PulledSample
from node.resources import Resources

log = get_logger(__name__)

# Peers' transaction batches waiting for admission, in all and per peer, and
# their bytes. A batch is one decoded frame (at most 10,000 transactions and a
# frame's bytes), so the queue holds at most TX_BATCHES_BYTES_MAX bytes of
# transactions plus about 40 bytes of object overhead per transaction (6.4 MB
# for 16 full batches): bounded whatever peers send. Policy when full: drop
# the batch (counted in archipelago_mempool_dropped_tx_batches_total).
TX_BATCHES_QUEUED_MAX = 16
TX_BATCHES_PER_PEER_MAX = 2
TX_BATCHES_BYTES_MAX = 64 * 1024 * 1024
# Queued batches admitted together, in one thread hand-off and one parallel
# signature pass, while their transactions add up to at most TX_INGEST_TXS_MAX
# and their bytes to TX_INGEST_BYTES_MAX (a larger single batch goes alone, as
# before): bounds the event loop's screening and admission stretch per pass to
# about 4,096 x ~10 us, and the bytes in flight to one frame's worth, as when
# batches went one at a time.
TX_INGEST_TXS_MAX = 4096
TX_INGEST_BYTES_MAX = 16 * 1024 * 1024
# Payloads larger than this (a block) are decoded in a worker thread, so that
# the event loop keeps its turn every few milliseconds meanwhile.
DECODE_ON_LOOP_BYTES_MAX = 256 * 1024
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

    def __init__(self, res: Resources, consensus: ConsensusService) -> None:
        self.res = res
        self.consensus = consensus
        # Queued transaction batches, and the bytes and batches each peer has queued.
        self._batches: collections.deque[tuple[str, tuple[bytes, ...], int]] = collections.deque()
        self._batches_bytes = 0
        self._queued_by_peer: collections.Counter[str] = collections.Counter()
        self._batches_ready = trio.Event()
        self.dropped_tx_batches: collections.Counter[str] = collections.Counter()
        res.metrics.add_source(self._pulled_samples)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ingest_txs)
            task_status.started()
            async for envelope in self.res.net.inbox:
                if self.res.net.is_banned(envelope.peer_id):
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
                    self.res.net.report_misbehaviour(envelope.peer_id, PeerFault.INVALID_MESSAGE)

    def _worth_decoding(self, env: Envelope) -> bool:
        """A large payload is a block; a proposal's signature is checked before its block.

        A forged proposal is refused here, its sender penalised, having cost a
        few hundred bytes read instead of a block decoded.
        """
        if env.payload[1:2] != bytes([TAG_PROPOSAL]):
            return True
        verdict = self.consensus.driver.screen_proposal(peek_proposal(env.payload))
        if isinstance(verdict, Fault):
            log.warning("peer message refused", peer=env.peer_id, fault=verdict.value)
            self.res.net.report_misbehaviour(env.peer_id, PeerFault.INVALID_SIGNATURE)
            return False
        return verdict

    def _handle(self, env: Envelope, msg: Message) -> None:
        if _CHANNEL_OF[type(msg)] != env.channel:
            raise DecodeError(f"{type(msg).__name__} on the wrong channel {env.channel}")
        if isinstance(msg, TxsMsg):
            self._on_txs(env.peer_id, msg.txs)
        else:
            self.consensus.submit_from_peer(env.peer_id, msg, env.payload, env.digest)

    def _on_txs(self, peer: str, txs: tuple[bytes, ...]) -> None:
        """Queue a peer's transactions for the mempool task, so votes never wait behind them.

        Policy when the peer's share or the total is full: drop the batch and
        count it (the sender does not resend; clients may retry).
        """
        size = sum(map(len, txs))
        if self._queued_by_peer[peer] >= TX_BATCHES_PER_PEER_MAX:
            self.dropped_tx_batches["peer_share"] += 1
            return
        if len(self._batches) >= TX_BATCHES_QUEUED_MAX or (
            self._batches and self._batches_bytes + size > TX_BATCHES_BYTES_MAX
        ):
            self.dropped_tx_batches["full"] += 1
            return
        self._batches.append((peer, txs, size))
        self._batches_bytes += size
        self._queued_by_peer[peer] += 1
        self._batches_ready.set()

    async def _ingest_txs(self) -> None:
        res = self.res
        while True:
            if not self._batches:
                self._batches_ready = trio.Event()
                await self._batches_ready.wait()
            taken: list[tuple[str, tuple[bytes, ...]]] = []
            count = taken_bytes = 0
            while self._batches and (
                not taken
                or (
                    count + len(self._batches[0][1]) <= TX_INGEST_TXS_MAX
                    and taken_bytes + self._batches[0][2] <= TX_INGEST_BYTES_MAX
                )
            ):
                peer, txs, size = self._batches.popleft()
                taken_bytes += size
                self._batches_bytes -= size
                self._queued_by_peer[peer] -= 1
                if not self._queued_by_peer[peer]:
                    del self._queued_by_peer[peer]
                taken.append((peer, txs))
                count += len(txs)
            outcomes = await res.mempool_add_batches(taken)
            for (peer, _), results in zip(taken, outcomes, strict=True):
                for r in results:
                    if isinstance(r, MempoolError) and r.reason in ("bad_signature", "malformed"):
                        # A peer relays only what it admitted: this one is faulty.
                        res.net.report_misbehaviour(peer, PeerFault.INVALID_SIGNATURE)
                        break

    def _pulled_samples(self) -> list[PulledSample]:
        return [
            PulledSample(
                "archipelago_mempool_dropped_tx_batches",
                "Peers' transaction batches dropped before admission: the peer's share "
                "(peer_share) or the whole queue (full) was taken.",
                "counter",
                (("reason", reason),),
                self.dropped_tx_batches[reason],
            )
            for reason in ("peer_share", "full")
        ]
