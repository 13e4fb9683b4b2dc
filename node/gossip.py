"""Gossip of transactions: newly admitted ones leave in few, full frames."""

from __future__ import annotations

import trio

from network import MEMPOOL
from node.messages import TxsMsg, encode_message
from node.resources import Resources


class MempoolGossip:
    """Batch newly admitted transactions into few frames (one per origin and interval)."""

    name = "mempool-gossip"
    BATCH_INTERVAL_S = 0.02  # how long new transactions may wait to be batched

    def __init__(self, res: Resources) -> None:
        self.res = res

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        res = self.res
        mp = res.config.mempool
        while True:
            await res.gossip_ready.wait()
            await trio.sleep(self.BATCH_INTERVAL_S)
            for origin, txs in res.take_gossip():
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
        self.res.net.gossip(MEMPOOL, encode_message(TxsMsg(tuple(batch))), exclude_peer=origin)
