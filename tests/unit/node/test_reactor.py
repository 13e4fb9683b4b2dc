"""The reactor's queue of peers' transaction batches: a share per peer, a total, counted drops."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from node.metrics import Metrics
from node.reactor import (
    TX_BATCHES_BYTES_MAX,
    TX_BATCHES_PER_PEER_MAX,
    TX_BATCHES_QUEUED_MAX,
    TX_INGEST_BYTES_MAX,
    Reactor,
)


def _reactor() -> Reactor:
    # The queue touches only the metrics registry; the rest is used once batches are admitted.
    res: Any = SimpleNamespace(metrics=Metrics())
    return Reactor(res, consensus=None)  # type: ignore[arg-type]


def test_one_peer_cannot_take_the_queue_from_the_others() -> None:
    reactor = _reactor()
    for _ in range(TX_BATCHES_QUEUED_MAX):
        reactor._on_txs("flooder", (b"x" * 100,))
    assert (
        reactor.dropped_tx_batches["peer_share"] == TX_BATCHES_QUEUED_MAX - TX_BATCHES_PER_PEER_MAX
    )
    for i in range(TX_BATCHES_QUEUED_MAX // TX_BATCHES_PER_PEER_MAX - 1):
        for _ in range(TX_BATCHES_PER_PEER_MAX):
            reactor._on_txs(f"peer-{i}", (b"y" * 100,))
    assert len(reactor._batches) == TX_BATCHES_QUEUED_MAX
    reactor._on_txs("late", (b"z",))
    assert reactor.dropped_tx_batches["full"] == 1
    exposition = reactor.res.metrics.exposition().decode()
    dropped = TX_BATCHES_QUEUED_MAX - TX_BATCHES_PER_PEER_MAX
    assert f'archipelago_mempool_dropped_tx_batches_total{{reason="peer_share"}} {dropped}.0' in (
        exposition
    )


def test_queued_bytes_are_bounded() -> None:
    reactor = _reactor()
    big = (b"x" * (TX_BATCHES_BYTES_MAX // 2 + 1),)
    reactor._on_txs("a", big)
    reactor._on_txs("b", big)  # would pass the bound
    assert [p for p, _, _ in reactor._batches] == ["a"]
    assert reactor._batches_bytes == len(big[0])
    assert reactor.dropped_tx_batches["full"] == 1


def test_queued_batches_are_admitted_together_within_the_pass_bounds() -> None:
    """The batch task takes queued batches in order while they fit TX_INGEST_TXS_MAX
    transactions and TX_INGEST_BYTES_MAX bytes (a batch over either goes alone), and
    frees each peer's share as it takes them."""
    passes: list[list[tuple[str, int]]] = []
    reactor = _reactor()

    async def admit(taken: list[tuple[str, tuple[bytes, ...]]]) -> list[list[object]]:
        passes.append([(peer, len(txs)) for peer, txs in taken])
        return [[] for _ in taken]

    reactor.res.mempool_add_batches = admit
    sizes = [1500, 1500, 1500, 5000, 10, 10]
    for i, n in enumerate(sizes):
        reactor._on_txs(f"peer-{i}", (b"t",) * n)
    reactor._on_txs("big-0", (b"x" * (TX_INGEST_BYTES_MAX // 2 + 1),))
    reactor._on_txs("big-1", (b"x" * (TX_INGEST_BYTES_MAX // 2 + 1),))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reactor._ingest_txs)
            while reactor._batches:
                await trio.sleep(0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert passes == [
        [("peer-0", 1500), ("peer-1", 1500)],
        [("peer-2", 1500)],
        [("peer-3", 5000)],
        [("peer-4", 10), ("peer-5", 10), ("big-0", 1)],
        [("big-1", 1)],
    ]
    assert not reactor._queued_by_peer and reactor._batches_bytes == 0
