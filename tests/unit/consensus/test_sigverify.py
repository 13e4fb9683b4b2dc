"""The parallel verifier and the bounded cache of verified transactions."""

from __future__ import annotations

import threading

import pytest

from apps.ledger import transfer_tx
from consensus import crypto, ed25519, merkle, sigverify
from consensus.crypto import PrivateKey
from consensus.sigverify import SignatureCache, SignatureVerifier

CHAIN = "sig-test"


def _items(n: int) -> list[tuple[bytes, bytes, bytes]]:
    keys = [PrivateKey(bytes([i % 200 + 1]) * 32) for i in range(n)]
    return [(k.public_key, b"msg %d" % i, k.sign(b"msg %d" % i)) for i, k in enumerate(keys)]


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_verify_many_marks_exactly_the_bad_items(threads: int) -> None:
    """Valid items pass and each corrupted one fails, whatever the pool size."""
    items = _items(100)
    bad = {3, 40, 41, 99}
    for i in bad:
        pk, msg, sig = items[i]
        items[i] = (pk, msg + b"!", sig)
    items.append((b"short", b"m", bytes(64)))  # wrong key length: rejected without calling C
    items.append((items[0][0], items[0][1], b"\x00" * 63))  # wrong signature length
    with SignatureVerifier(threads=threads) as v:
        ok = v.verify_many(items)
    assert [i for i, good in enumerate(ok) if not good] == [*sorted(bad), 100, 101]


def test_batch_path_matches_crypto_verify(verified: list[bytes]) -> None:
    """The per-signature cffi path accepts and rejects exactly what crypto.verify does."""
    pk, msg, sig = _items(1)[0]
    mutants = [sig, sig[:-1] + b"\x00", bytes(64), b"\xff" * 64]
    items = [(i, pk, msg, s) for i, s in enumerate(mutants)] + [(9, bytes(32), msg, sig)]
    expected = [crypto.verify(pk, m, s) for _, pk, m, s in items]
    assert [bool(ok) for ok in ed25519.verify_items(items)] == expected


def test_concurrent_passes_share_one_pool() -> None:
    """Several threads running passes at once on one verifier all get correct answers."""
    items = _items(64)
    out: list[list[bool]] = []
    with SignatureVerifier(threads=2) as v:
        ts = [threading.Thread(target=lambda: out.append(v.verify_many(items))) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert out == [[True] * 64] * 4


def test_verify_tx_caches_decoded_tx_and_leaf() -> None:
    """verify_tx stores the tx and its Merkle leaf under its id, only when valid."""
    key = PrivateKey(b"\x07" * 32)
    tx = transfer_tx(key, CHAIN, 0, b"\x01" * 20, 5)
    with SignatureVerifier(threads=0) as v:
        assert v.verify_tx(tx.hash, tx, CHAIN)
        assert v.cache.get(tx.hash) == (CHAIN, tx, merkle.leaf_hash(tx.encode()))
        other = transfer_tx(key, "elsewhere", 0, b"\x01" * 20, 5)
        assert not v.verify_tx(other.hash, other, CHAIN)
        assert other.hash not in v.cache


def test_cache_is_bounded_and_evicts_oldest() -> None:
    """A full cache evicts its oldest entry and counts it."""
    key = PrivateKey(b"\x08" * 32)
    cache = SignatureCache(entries_max=3)
    txs = [transfer_tx(key, CHAIN, n, b"\x02" * 20, 1) for n in range(5)]
    for t in txs:
        cache.add(t.hash, (CHAIN, t, b""))
    assert len(cache) == 3
    assert cache.evictions == 2
    assert [t.hash in cache for t in txs] == [False, False, True, True, True]
    cache.discard([txs[3].hash])
    assert txs[3].hash not in cache and len(cache) == 2


def test_close_is_idempotent_and_stops_threads() -> None:
    """close() joins the pool threads and may be called twice."""
    v = SignatureVerifier(threads=2)
    v.close()
    v.close()
    assert not any(t.is_alive() for t in v._pool)


def test_help_paces_the_caller_and_finish_verifies_the_rest(verified: list[bytes]) -> None:
    """help() verifies here only while the queue outlasts the caller's steps; none is lost."""
    items = _items(24)
    bad = {5, 17}
    for i in bad:
        pk, msg, sig = items[i]
        items[i] = (pk, msg + b"?", sig)
    with SignatureVerifier(threads=0) as v:
        vpass = v.open_pass()
        vpass.submit([(i, pk, msg, sig) for i, (pk, msg, sig) in enumerate(items)])
        vpass.help(steps_left=100)  # 24 queued < 100 steps left: the pool's share
        assert verified == []
        vpass.help(steps_left=10)  # the queue outlasts the caller: it verifies some
        assert len(verified) == sigverify.HELP_ITEMS
        vpass.help_now()
        assert len(verified) == 2 * sigverify.HELP_ITEMS
        assert vpass.finish() == bad
    assert sorted(verified) == sorted(sig for _, _, sig in items)


def test_help_until_empty_verifies_everything_queued() -> None:
    """help_until_empty leaves nothing queued; finish then reports exactly the bad items."""
    items = _items(20)
    pk, msg, sig = items[7]
    items[7] = (pk, msg + b"!", sig)
    with SignatureVerifier(threads=1) as v:
        vpass = v.open_pass()
        vpass.submit([(i, pk, msg, sig) for i, (pk, msg, sig) in enumerate(items)])
        vpass.help_until_empty()
        assert vpass._queue.qsize() == 0
        assert vpass.finish() == {7}


def test_compiled_chunk_loop_agrees_with_libsodium() -> None:
    """The compiled loop returns 1 exactly for the items libsodium accepts, 0 for wrong sizes."""
    if ed25519._verify_chunk is None:
        pytest.skip("built without a C compiler: the cffi path is used instead")
    key = PrivateKey(b"\x09" * 32)
    good = key.sign(b"m")
    items = [
        (0, key.public_key, b"m", good),
        (1, key.public_key, b"other", good),  # wrong message
        (2, key.public_key, b"m", good[:-1] + bytes([good[-1] ^ 1])),  # flipped bit
        (3, key.public_key[:31], b"m", good),  # short key
        (4, key.public_key, b"m", good[:63]),  # short signature
    ]
    assert ed25519._verify_chunk(ed25519.VERIFY_ADDRESS, items) == bytes([1, 0, 0, 0, 0])
    assert ed25519._verify_chunk(ed25519.VERIFY_ADDRESS, []) == b""
    with pytest.raises(TypeError):
        ed25519._verify_chunk(ed25519.VERIFY_ADDRESS, [(0, "pk", b"m", good)])
