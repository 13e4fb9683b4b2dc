"""Admitting queued batches together (one screen, one signature pass) gives what admitting
them one after the other did: the same outcomes, pool, gossip and refusal counts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.sigverify import SignatureVerifier
from node.mempool import Candidate, Mempool, MempoolError
from node.metrics import Metrics
from node.resources import Resources
from tests.strategies import mutated
from tests.unit.node.test_mempool import ALICE, BOB, CHAIN, _pool, _tx

_SIGNED = [_tx(key, n, amount) for key in (ALICE, BOB) for n in range(4) for amount in (1, 7)]
_FORGED = [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in _SIGNED[:4]]


def _fake_resources(pool: Mempool) -> Any:
    """What mempool_add_batches touches of Resources, recording the gossip it queues."""
    gossip: list[tuple[str | None, list[bytes]]] = []
    return SimpleNamespace(
        mempool=pool,
        verifier=SignatureVerifier(threads=2),
        genesis=SimpleNamespace(chain_id=CHAIN),
        queue_gossip=lambda txs, origin: gossip.append((origin, list(txs))),
        _mempool_metrics=lambda: None,
        gossip=gossip,
    )


def _one_by_one(res: Any, batches: list[tuple[str | None, list[bytes]]]) -> list[list[object]]:
    """The admission before batches were merged: per batch, screen each, verify, admit each."""
    outcomes: list[list[object]] = []
    for origin, raws in batches:
        out: list[object] = []
        screened: list[tuple[int, Candidate]] = []
        for raw in raws:
            try:
                screened.append((len(out), res.mempool.screen(raw)))
                out.append(None)
            except MempoolError as e:
                out.append(e)
        oks = res.verifier.verify_txs([(c.txid, c.tx, c.raw) for _, c in screened], CHAIN)
        admitted = []
        for (i, c), ok in zip(screened, oks, strict=True):
            try:
                out[i] = (c.txid, res.mempool.admit(c, ok))
                admitted.append(c.raw)
            except MempoolError as e:
                out[i] = e
        if admitted:
            res.queue_gossip(admitted, origin=origin)
        outcomes.append(out)
    return outcomes


def _plain(r: object) -> object:
    return ("refused", r.reason, r.message) if isinstance(r, MempoolError) else r


def _alike(got: object, expected: object) -> bool:
    """The same outcome; a transaction refused for room in one order may be refused for a
    fault of its own (malformed, forged) in the other, found before the pool filled."""
    if isinstance(got, MempoolError) and isinstance(expected, MempoolError):
        return "full" in (got.reason, expected.reason) or _plain(got) == _plain(expected)
    return _plain(got) == _plain(expected)


_batch = st.tuples(
    st.sampled_from(["peer-a", "peer-b", None]),
    st.lists(
        st.one_of(
            st.sampled_from(_SIGNED),
            st.sampled_from(_FORGED),
            st.sampled_from(_SIGNED).flatmap(mutated),
        ),
        max_size=8,
    ),
)


@settings(max_examples=150, deadline=None)
@given(batches=st.lists(_batch, max_size=5), txs_max=st.sampled_from([4, 100]))
def test_batches_admitted_together_as_one_after_the_other(
    batches: list[tuple[str | None, list[bytes]]], txs_max: int
) -> None:
    """Duplicates across batches, forged signatures, malformed bytes, nonce order and a
    full pool: each transaction gets the outcome it got when the batches went one by one."""
    slow, fast = (_fake_resources(_pool(txs_max=txs_max)) for _ in range(2))
    try:
        expected = _one_by_one(slow, batches)
        got = trio.run(Resources.mempool_add_batches, fast, batches)
    finally:
        slow.verifier.close()
        fast.verifier.close()
    assert [len(o) for o in got] == [len(o) for o in expected]
    for g, e in zip(got, expected, strict=True):
        assert all(map(_alike, g, e)), ([_plain(r) for r in g], [_plain(r) for r in e])
    assert fast.gossip == slow.gossip
    # Counted per reason, as the outcomes say (a later batch's refusals may now come first).
    for res, outcomes in ((fast, got), (slow, expected)):
        reasons = [r.reason for o in outcomes for r in o if isinstance(r, MempoolError)]
        assert sorted(res.mempool.rejected) == sorted(reasons)
    assert fast.mempool.reap(bytes_max=1 << 20, txs_max=100) == slow.mempool.reap(
        bytes_max=1 << 20, txs_max=100
    )


def test_refusals_are_counted_by_reason() -> None:
    """The refusal counter (its children looked up once) exports one sample per reason."""
    res: Any = SimpleNamespace(metrics=Metrics(), _rejected_children={})
    for reason in ("duplicate", "duplicate", "full"):
        Resources._count_rejected(res, reason)
    exposition = res.metrics.exposition().decode()
    assert 'archipelago_mempool_rejected_txs_total{reason="duplicate"} 2.0' in exposition
    assert 'archipelago_mempool_rejected_txs_total{reason="full"} 1.0' in exposition
