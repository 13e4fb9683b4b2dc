"""Parallel signature verification on all cores, and the cache of already-verified transactions.

Signature checking is most of the cost of validating a block, so it gets its
own machinery. The chain's suite (consensus/crypto.py) verifies a chunk of
signatures per call with the GIL released (for Ed25519 a compiled loop over
libsodium, consensus/ed25519.py), so a pool thread takes the GIL back once per
chunk. What holds the GIL is the Python between calls: while the caller runs
Python, the pool waits for it after each chunk. So the caller submits chunks
as it produces them and, between its own short steps, verifies a couple of
signatures itself, paced so that the pool still has work when the caller's
Python is done (VerifyPass.help). Measurements: benchmarks/README.md.
Nothing here reads a clock or the OS: the caller gives the thread count.

The cache remembers transactions whose signature was verified at mempool
admission, keyed by transaction id (the suite's hash of the encoded transaction), with
the decoded transaction and its Merkle leaf hash, so block validation neither
verifies nor decodes them again.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from consensus import merkle
from consensus.crypto import SIGNATURE_BYTES, SigItem, Suite, active
from consensus.types import Transaction

__all__ = [
    "CACHE_ENTRIES_MAX",
    "CHUNK_ITEMS",
    "CachedTx",
    "SigItem",
    "SignatureCache",
    "SignatureVerifier",
    "VerifyPass",
]

# Verified transactions remembered. An entry is about 600 bytes (ids, decoded
# fields, leaf hash, dict overhead), so this bounds the cache near 120 MB; when
# full the oldest entry is evicted (a miss only costs one verification later).
CACHE_ENTRIES_MAX = 200_000

# Signatures per queue entry. A pool thread verifies a chunk in one compiled
# loop with the GIL released, so it takes the GIL back once per chunk: larger
# chunks mean fewer waits behind the caller's Python (measured: 8 -> 0.87,
# 16 -> 0.90, 32 -> 0.91 cold_ratio), while the pass still ends evenly (the
# last chunk is at most 32 * 54 us = 1.7 ms of work on one core).
CHUNK_ITEMS = 32

# Signatures the caller verifies per help() call: two halve its switches between
# Python and C (each switch costs cache misses on both sides, about 3 us a tx
# in all, measured) while its Python bursts stay one step long.
HELP_ITEMS = 2

# What the cache holds per transaction id: (chain_id, decoded tx, Merkle leaf hash).
CachedTx = tuple[str, Transaction, bytes]


class SignatureCache:
    """Transaction id -> CachedTx, at most `entries_max` entries, oldest evicted first."""

    __slots__ = ("_entries", "_lock", "entries_max", "evictions")

    def __init__(self, entries_max: int = CACHE_ENTRIES_MAX) -> None:
        assert entries_max >= 1
        self._entries: OrderedDict[bytes, CachedTx] = OrderedDict()
        self._lock = threading.Lock()  # insertions and evictions come from several threads
        self.entries_max = entries_max
        self.evictions = 0

    def get(self, tx_id: bytes) -> CachedTx | None:
        return self._entries.get(tx_id)

    def get_many(self, tx_ids: Iterable[bytes]) -> list[CachedTx | None]:
        """`get` for each id, in one C-level pass (the block validation hot path)."""
        return list(map(self._entries.get, tx_ids))

    def add(self, tx_id: bytes, entry: CachedTx) -> None:
        with self._lock:
            self._entries[tx_id] = entry
            while len(self._entries) > self.entries_max:
                self._entries.popitem(last=False)
                self.evictions += 1

    def discard(self, tx_ids: Iterable[bytes]) -> None:
        """Forget committed transactions (their ids will not be seen again)."""
        with self._lock:
            for tx_id in tx_ids:
                self._entries.pop(tx_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._entries


class VerifyPass:
    """One parallel verification pass, fed while it runs.

    The caller `submit`s items as it produces them, calls `help` between its
    own steps, and `finish`es, which returns the tags of the items that
    failed. Always `finish`, also on error paths: the pool threads wait on
    this pass until then.

    Why `help` paces itself: a pool thread needs the GIL for a moment between
    two verifications, and the only time the caller lets go of the GIL is
    inside a verification of its own. So the caller verifies one item between
    its steps (short Python bursts, the pool never waits long), but only
    while the queued work would outlast its remaining steps; past that point
    the pool alone keeps the cores busy, and the caller finishes its Python
    work instead of leaving the pool idle at the end.
    """

    __slots__ = (
        "_closed",
        "_done",
        "_done_lock",
        "_finished",
        "_mine",
        "_queue",
        "_submitted",
        "_threads",
        "_verify_items",
        "failed",
    )

    def __init__(self, verifier: SignatureVerifier) -> None:
        self._queue: queue.SimpleQueue[list[SigItem] | None] = queue.SimpleQueue()
        self._threads = verifier.threads
        self._verify_items = verifier.suite.verify_items
        self._submitted = 0
        self._done = 0
        self._closed = False
        self._done_lock = threading.Lock()
        self._finished = threading.Event()
        self._mine: list[SigItem] = []  # a chunk the caller took and verifies one by one
        self.failed: list[int] = []
        verifier._start(self)

    def submit(self, items: list[SigItem]) -> None:
        assert not self._closed
        put = self._queue.put
        for start in range(0, len(items), CHUNK_ITEMS):
            self._submitted += 1
            put(items[start : start + CHUNK_ITEMS])

    def help(self, steps_left: int, items_to_come: int = 0) -> None:
        """Verify one item here if the queue (plus `items_to_come`) outlasts `steps_left`.

        `steps_left` is how many more steps of its own work the caller has,
        `items_to_come` how many more items it expects to submit.
        """
        mine = self._mine
        if not mine:
            if self._queue.qsize() * CHUNK_ITEMS + items_to_come < steps_left:
                return
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                return
            assert chunk is not None, "end markers are only queued by finish"
            mine = self._mine = chunk[::-1]  # popped from the end, so in submission order
        take = min(HELP_ITEMS, len(mine))
        items = mine[-take:]
        del mine[-take:]
        results = self._verify_items(items)
        self.failed.extend(it[0] for it, ok in zip(items, results, strict=True) if not ok)
        if not mine:
            self._chunk_done()

    def help_until_empty(self) -> None:
        """Verify queued items here, beside the pool, until none is left queued.

        For work submitted before a stretch of Python: done on every core now,
        it does not leave the pool waiting for the GIL during that stretch.
        """
        while True:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                return
            assert chunk is not None, "end markers are only queued by finish"
            self.run_chunk(chunk)

    def help_now(self) -> None:
        """Verify one item here if any is queued: the caller is about to hold the GIL a while."""
        self.help(0)

    def run_chunk(self, chunk: list[SigItem]) -> None:
        # One call for the chunk: the GIL is taken back once, not per signature.
        results = self._verify_items(chunk)
        self.failed.extend(item[0] for item, ok in zip(chunk, results, strict=True) if not ok)
        self._chunk_done()

    def _chunk_done(self) -> None:
        with self._done_lock:
            self._done += 1
            if self._closed and self._done == self._submitted:
                self._finished.set()

    def drain(self) -> None:
        """A pool thread's part: verify chunks until this pass's end marker."""
        while (chunk := self._queue.get()) is not None:
            self.run_chunk(chunk)

    def finish(self) -> set[int]:
        """Close, verify what is still queued here, wait for the pool; the failed tags."""
        if self._mine:
            mine, self._mine = self._mine[::-1], []
            self.run_chunk(mine)
        with self._done_lock:
            self._closed = True
            if self._done == self._submitted:
                self._finished.set()
        for _ in range(self._threads + 1):  # one end marker per pool thread, one for us
            self._queue.put(None)
        while (chunk := self._queue.get()) is not None:
            self.run_chunk(chunk)
        self._finished.wait()
        return set(self.failed)


class SignatureVerifier:
    """A pool of `threads` verifying threads (the caller of a pass works too) and the cache.

    Thread-safe: the mempool, the validation core and block sync may share one.
    """

    def __init__(
        self,
        *,
        threads: int,
        cache_entries_max: int = CACHE_ENTRIES_MAX,
        suite: Suite | None = None,
    ) -> None:
        assert threads >= 0
        self.threads = threads
        self.suite = active() if suite is None else suite  # the chain's
        self.cache = SignatureCache(cache_entries_max)
        self._jobs: queue.SimpleQueue[VerifyPass | None] = queue.SimpleQueue()
        self._pool = [
            threading.Thread(target=self._work, name=f"sigverify-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._pool:
            t.start()
        self._closed = False

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.drain()

    def _start(self, job: VerifyPass) -> None:
        assert not self._closed, "verifier is closed"
        for _ in range(self.threads):
            self._jobs.put(job)

    def open_pass(self) -> VerifyPass:
        return VerifyPass(self)

    def verify_many(self, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
        """Verify (public key, message, signature) triples on all threads, in one pass."""
        ok = [True] * len(items)
        batch: list[SigItem] = []
        public_key_bytes = self.suite.public_key_bytes
        for i, (pk, msg, sig) in enumerate(items):
            if len(pk) != public_key_bytes or len(sig) != SIGNATURE_BYTES:
                ok[i] = False
            else:
                batch.append((i, pk, msg, sig))
        if len(batch) <= 1:
            for (i, *_), good in zip(batch, self.suite.verify_items(batch), strict=True):
                ok[i] = bool(good)
            return ok
        vpass = VerifyPass(self)
        try:
            vpass.submit(batch)
        finally:
            failed = vpass.finish()
        for i in failed:
            ok[i] = False
        return ok

    def verify_tx(self, tx_id: bytes, tx: Transaction, chain_id: str) -> bool:
        """True if `tx`'s signature is valid on `chain_id`; remembered for block validation.

        `tx_id` must be the id of `tx` (the suite's hash of its encoding): the mempool
        has computed it already, and it is checked here when the tx is new.
        """
        entry = self.cache.get(tx_id)
        if entry is not None and entry[0] == chain_id:
            return True
        if not self.suite.verify(tx.sender, tx.sign_bytes(chain_id), tx.signature):
            return False
        encoded = tx.encode()
        assert self.suite.hash(encoded) == tx_id, "tx_id is not the id of tx"
        self.cache.add(tx_id, (chain_id, tx, merkle.leaf_hash(encoded)))
        return True

    def verify_txs(
        self, items: Sequence[tuple[bytes, Transaction, bytes]], chain_id: str
    ) -> list[bool]:
        """`verify_tx` for many (tx id, tx, encoded tx) at once, on all threads.

        For a batch of gossiped or submitted transactions: one parallel pass
        instead of one call each, so the caller (a worker thread of the
        node) waits for the pool rather than verifying alone.
        """
        ok = [False] * len(items)
        todo: list[int] = []
        for i, (txid, _tx, _raw) in enumerate(items):
            entry = self.cache.get(txid)
            if entry is not None and entry[0] == chain_id:
                ok[i] = True
            else:
                todo.append(i)
        results = self.verify_many(
            [
                (items[i][1].sender, items[i][1].sign_bytes(chain_id), items[i][1].signature)
                for i in todo
            ]
        )
        for i, good in zip(todo, results, strict=True):
            if good:
                txid, tx, raw = items[i]
                self.cache.add(txid, (chain_id, tx, merkle.leaf_hash(raw)))
                ok[i] = True
        return ok

    def close(self) -> None:
        """Stop the pool threads (idempotent). Passes already started still finish."""
        if self._closed:
            return
        self._closed = True
        for _ in self._pool:
            self._jobs.put(None)
        for t in self._pool:
            t.join()

    def __enter__(self) -> SignatureVerifier:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
