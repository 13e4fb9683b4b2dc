"""The reactor's queue of peers' transaction batches: a share per peer, a total, counted drops."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from node.metrics import Metrics
from node.reactor import (
    TX_BATCHES_BYTES_MAX,
    TX_BATCHES_PER_PEER_MAX,
    TX_BATCHES_QUEUED_MAX,
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
