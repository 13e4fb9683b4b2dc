"""The mempool: transactions admitted by `check_tx`, waiting for a block.

Admission checks, in order of cost: size, duplicate id (pending or recently
committed), capacity, decoding, signature (through the shared verifier, which
remembers the verified signature so the validation core will not verify it
again), then the application's `check_tx` against its mempool view (nonce,
balance). The pool keeps admission order, which is also each sender's nonce
order because the application only admits a sender's next nonce; reaping
therefore walks the pool front to back. After each committed block the
committed transactions leave the pool and the rest are checked again against
the new state (`recheck`), in order, so a transaction made invalid by the
block is dropped instead of being proposed.

Batches (a client's `POST /txs`, peers' gossip) are screened with
`screen_many`, which decodes the batch in one pass with the validation core's
bulk decoder: per transaction that decode was the largest Python cost of
admission after the signature.

Limits: `txs_max` and `bytes_max` (reject when full, reason "full"),
`tx_bytes_max` per transaction, and a bounded memory of recently committed
ids (`COMMITTED_IDS_MAX`) so a replayed transaction is refused cheaply.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consensus.app import Application, TxResult
from consensus.codec import DecodeError
from consensus.sigverify import SignatureVerifier
from consensus.types import Transaction, tx_id
from consensus.validation import decode_txs

# Committed ids remembered to refuse replays before decoding; a little over one
# full block of the default size limit (20,000 txs) at 32-byte keys: ~3 MB.
COMMITTED_IDS_MAX = 50_000


class MempoolError(Exception):
    """A transaction was refused; `reason` is a short stable code for metrics and clients."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class MempoolLimits:
    txs_max: int
    bytes_max: int
    tx_bytes_max: int
    recheck: bool = True


@dataclass(frozen=True, slots=True)
class Candidate:
    """A transaction that passed `screen`, waiting for its signature check and `admit`."""

    raw: bytes
    txid: bytes
    tx: Transaction


@dataclass(slots=True)
class _Entry:
    raw: bytes
    tx: Transaction


class Mempool:
    def __init__(
        self,
        *,
        chain_id: str,
        app: Application,
        verifier: SignatureVerifier,
        limits: MempoolLimits,
        on_reject: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.chain_id = chain_id
        self.app = app
        self.verifier = verifier
        self.limits = limits
        self._on_reject = on_reject
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self._entries

    def _reject(self, reason: str, message: str) -> MempoolError:
        self._on_reject(reason)
        return MempoolError(reason, message)

    def add(self, raw: bytes) -> tuple[bytes, TxResult]:
        """Admit one encoded transaction; returns its id and check result.

        Raises MempoolError for every refusal; nothing changes then.
        """
        c = self.screen(raw)
        return c.txid, self.admit(c, self.verifier.verify_tx(c.txid, c.tx, self.chain_id))

    def screen(self, raw: bytes) -> Candidate:
        """The cheap checks, before the signature: size, duplicate, replay, capacity, decoding."""
        if len(raw) > self.limits.tx_bytes_max:
            raise self._reject(
                "too_large", f"transaction is {len(raw)} bytes, limit {self.limits.tx_bytes_max}"
            )
        txid = tx_id(raw)
        self._check_room(txid, len(raw))
        try:
            tx = Transaction.decode(raw)
        except DecodeError as e:
            raise self._reject("malformed", f"malformed transaction: {e}") from None
        return Candidate(raw, txid, tx)

    def screen_many(self, raws: Sequence[bytes]) -> list[Candidate | MempoolError]:
        """`screen` for each of `raws`, in order, with the survivors decoded in one pass.

        Returns what `screen` would return or raise for each, and reports
        the refusals in the same order; the bulk decoder accepts exactly
        what Transaction.decode accepts (tests pin the two), and a batch
        it refuses is decoded one at a time to tell which ones are malformed.
        """
        limits = self.limits
        entries = self._entries
        committed = self._committed
        room_txs = len(entries) < limits.txs_max
        bytes_left = limits.bytes_max - self.bytes
        tx_bytes_max = limits.tx_bytes_max
        out: list[Candidate | MempoolError | None] = []
        todo: list[tuple[int, bytes, bytes]] = []  # (position, raw, id) still to decode
        for raw in raws:
            size = len(raw)
            if size > tx_bytes_max:
                out.append(
                    MempoolError("too_large", f"transaction is {size} bytes, limit {tx_bytes_max}")
                )
                continue
            txid = tx_id(raw)
            if txid in entries:
                out.append(MempoolError("duplicate", "transaction already in the mempool"))
            elif txid in committed:
                out.append(MempoolError("committed", "transaction already committed"))
            elif not room_txs or size > bytes_left:
                out.append(MempoolError("full", "mempool is full, retry later"))
            else:
                todo.append((len(out), raw, txid))
                out.append(None)
        txs = decode_txs([raw for _, raw, _ in todo])
        if txs is not None:
            for (i, raw, txid), tx in zip(todo, txs, strict=True):
                out[i] = Candidate(raw, txid, tx)
        else:
            for i, raw, txid in todo:
                try:
                    out[i] = Candidate(raw, txid, Transaction.decode(raw))
                except DecodeError as e:
                    out[i] = MempoolError("malformed", f"malformed transaction: {e}")
        done: list[Candidate | MempoolError] = []
        for r in out:
            assert r is not None
            if isinstance(r, MempoolError):
                self._on_reject(r.reason)
            done.append(r)
        return done

    def _check_room(self, txid: bytes, size: int) -> None:
        if txid in self._entries:
            raise self._reject("duplicate", "transaction already in the mempool")
        if txid in self._committed:
            raise self._reject("committed", "transaction already committed")
        limits = self.limits
        if len(self._entries) >= limits.txs_max or self.bytes + size > limits.bytes_max:
            raise self._reject("full", "mempool is full, retry later")

    def admit(self, c: Candidate, signature_ok: bool) -> TxResult:
        """Admit a screened transaction whose signature was checked (verifier, maybe in a thread).

        The room is checked again, first: other transactions may have come in
        while the signature was being verified, and a transaction screened
        after them would have been refused for room (or as a duplicate) before
        its signature was looked at.
        """
        self._check_room(c.txid, len(c.raw))
        if not signature_ok:
            raise self._reject("bad_signature", "invalid transaction signature")
        result = self.app.check_tx(c.tx)
        if not result.ok:
            raise self._reject("check_failed", result.log or f"check_tx code {result.code}")
        self._entries[c.txid] = _Entry(c.raw, c.tx)
        self.bytes += len(c.raw)
        return result

    def reap(self, *, bytes_max: int, txs_max: int) -> list[bytes]:
        """Encoded transactions for a block, in admission order, within both limits."""
        out: list[bytes] = []
        size = 0
        for entry in self._entries.values():
            if len(out) >= txs_max:
                break
            if size + len(entry.raw) > bytes_max:
                break  # stop (not skip): skipping could reorder one sender's nonces
            out.append(entry.raw)
            size += len(entry.raw)
        return out

    def update(self, committed_ids: Sequence[bytes]) -> int:
        """After a block is committed (and the app committed): drop its txs and recheck.

        Returns how many pending transactions the recheck dropped.
        """
        for txid in committed_ids:
            entry = self._entries.pop(txid, None)
            if entry is not None:
                self.bytes -= len(entry.raw)
            self._committed[txid] = None
        while len(self._committed) > COMMITTED_IDS_MAX:
            self._committed.popitem(last=False)
        if not self.limits.recheck:
            return 0
        dropped = 0
        for txid, entry in list(self._entries.items()):
            if not self.app.check_tx(entry.tx).ok:
                del self._entries[txid]
                self.bytes -= len(entry.raw)
                dropped += 1
        return dropped
