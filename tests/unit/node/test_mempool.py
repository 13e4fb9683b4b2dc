"""The mempool admits valid transactions once, in nonce order, within its limits, and rechecks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.ledger import Ledger, transfer_tx
from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisValidator
from consensus.sigverify import SignatureVerifier
from consensus.types import Transaction, tx_id
from node.mempool import Candidate, Mempool, MempoolError, MempoolLimits
from tests.strategies import mutated

CHAIN = "mempool-test"
ALICE = PrivateKey(b"\x01" * 32)
BOB = PrivateKey(b"\x02" * 32)
VALIDATOR = PrivateKey(b"\x03" * 32)


def _genesis(balance: int = 1_000) -> Genesis:
    return Genesis(
        chain_id=CHAIN,
        genesis_time_ms=0,
        validators=(GenesisValidator("v", VALIDATOR.public_key, 10),),
        app="ledger",
        app_state={"accounts": {ALICE.address.hex(): balance, BOB.address.hex(): balance}},
    )


def _pool(txs_max: int = 100, bytes_max: int = 1 << 20, balance: int = 1_000) -> Mempool:
    rejected: list[str] = []
    pool = Mempool(
        chain_id=CHAIN,
        app=Ledger.from_genesis(_genesis(balance)),
        verifier=SignatureVerifier(threads=0),
        limits=MempoolLimits(txs_max=txs_max, bytes_max=bytes_max, tx_bytes_max=1024),
        on_reject=rejected.append,
    )
    pool.rejected = rejected  # type: ignore[attr-defined]
    return pool


def _tx(key: PrivateKey, nonce: int, amount: int = 1) -> bytes:
    return transfer_tx(key, CHAIN, nonce, BOB.address, amount).encode()


def test_admits_in_nonce_order_and_reaps_in_admission_order() -> None:
    """Consecutive nonces are admitted and reaped in that order; a gap is refused."""
    pool = _pool()
    raws = [_tx(ALICE, n) for n in range(3)]
    for raw in raws:
        pool.add(raw)
    with pytest.raises(MempoolError) as e:
        pool.add(_tx(ALICE, 5))
    assert e.value.reason == "check_failed"
    assert pool.reap(bytes_max=1 << 20, txs_max=10) == raws
    assert pool.reap(bytes_max=1 << 20, txs_max=2) == raws[:2]
    assert pool.reap(bytes_max=len(raws[0]) + 1, txs_max=10) == raws[:1]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw + b"\x00", "malformed"),
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), "bad_signature"),
        (lambda raw: b"\x00" * 2000, "too_large"),
    ],
    ids=["trailing-byte", "flipped-signature", "oversized"],
)
def test_refuses_bad_transactions_and_changes_nothing(mutate: object, reason: str) -> None:
    """Malformed, badly signed and oversized transactions are refused with their reason."""
    pool = _pool()
    raw = mutate(_tx(ALICE, 0))  # type: ignore[operator]
    with pytest.raises(MempoolError) as e:
        pool.add(raw)
    assert e.value.reason == reason
    assert len(pool) == 0 and pool.bytes == 0
    assert pool.rejected == [reason]  # type: ignore[attr-defined]
    pool.add(_tx(ALICE, 0))  # the valid one still goes in
    assert len(pool) == 1


def test_duplicates_and_capacity() -> None:
    """The same bytes twice is a duplicate; a full pool refuses with "full"."""
    pool = _pool(txs_max=2)
    pool.add(_tx(ALICE, 0))
    with pytest.raises(MempoolError, match="already") as e:
        pool.add(_tx(ALICE, 0))
    assert e.value.reason == "duplicate"
    pool.add(_tx(ALICE, 1))
    with pytest.raises(MempoolError) as e:
        pool.add(_tx(ALICE, 2))
    assert e.value.reason == "full"


def test_update_removes_committed_refuses_replays_and_rechecks() -> None:
    """After a block: committed txs leave, their replay is refused, invalidated ones drop."""
    pool = _pool(balance=10)
    a0, a1 = _tx(ALICE, 0, amount=6), _tx(ALICE, 1, amount=4)
    pool.add(a0)
    pool.add(a1)
    # Commit a block holding only a0, executed by the app as the chain would.
    app = pool.app
    from consensus.types import Header

    header = Header(
        CHAIN,
        1,
        1,
        b"",
        b"",
        b"\x00" * 32,
        b"\x00" * 32,
        b"\x00" * 32,
        b"",
        b"\x00" * 32,
        b"\x00" * 32,
        VALIDATOR.address,
    )
    other_spend = transfer_tx(ALICE, CHAIN, 0, BOB.address, 9)  # a conflicting block: spends 9
    execution = app.execute_block(header, [other_spend], ())
    app.commit(execution)
    dropped = pool.update([tx_id(other_spend.encode())])
    # a0 (nonce 0) is now stale and a1 cannot pay 4 from the 1 left: both leave on recheck.
    assert dropped == 2 and len(pool) == 0 and pool.bytes == 0
    with pytest.raises(MempoolError) as e:
        pool.add(other_spend.encode())
    assert e.value.reason == "committed"


def test_signature_verified_at_admission_is_cached() -> None:
    """Admission leaves the verified signature in the shared cache for block validation."""
    pool = _pool()
    raw = _tx(ALICE, 0)
    pool.add(raw)
    assert tx_id(raw) in pool.verifier.cache
    assert Transaction.decode(raw).sender == ALICE.public_key


# ---------------------------------------------------------------- screen_many, pinned to screen

_SIGNED = [_tx(key, n, amount) for key in (ALICE, BOB) for n in range(3) for amount in (1, 7)]


@st.composite
def _batches(draw: st.DrawFn) -> list[bytes]:
    """Valid transfers, their mutations, repeats and oversized blobs, in any order."""
    one = st.one_of(
        st.sampled_from(_SIGNED),
        st.sampled_from(_SIGNED).flatmap(lambda raw: mutated(raw)),
        st.binary(max_size=200),
        st.just(b"\x00" * 1025),
    )
    return draw(st.lists(one, max_size=12))


def _outcome(r: Candidate | MempoolError) -> tuple[object, ...]:
    if isinstance(r, MempoolError):
        return ("refused", r.reason, r.message)
    return ("screened", r.raw, r.txid, r.tx)


@settings(max_examples=300, deadline=None)
@given(batch=_batches(), admitted=st.integers(0, 4), txs_max=st.sampled_from([3, 100]))
def test_screen_many_is_screen_for_each(batch: list[bytes], admitted: int, txs_max: int) -> None:
    """The batch screen (one-pass decode) gives what `screen` gives one by one: the same
    candidates and refusals, reasons and messages, reported in the same order, over
    valid, mutated, duplicate, committed, oversized and over-capacity transactions."""
    pools = [_pool(txs_max=txs_max, bytes_max=4 * len(_SIGNED[0])) for _ in range(2)]
    for pool in pools:
        for raw in [_tx(ALICE, n) for n in range(admitted)]:
            try:
                pool.add(raw)
            except MempoolError:
                pass
        pool.update([tx_id(_SIGNED[0])])
        pool.rejected.clear()  # type: ignore[attr-defined]
    slow: list[Candidate | MempoolError] = []
    for raw in batch:
        try:
            slow.append(pools[0].screen(raw))
        except MempoolError as e:
            slow.append(e)
    fast = pools[1].screen_many(batch)
    assert list(map(_outcome, fast)) == list(map(_outcome, slow))
    assert pools[1].rejected == pools[0].rejected  # type: ignore[attr-defined]
