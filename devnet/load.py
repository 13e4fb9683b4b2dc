"""Ledger transfers offered to a local network at a fixed rate, and what became of them.

The load generator runs in the tool's process, not in the nodes. It keeps
one nonce counter per account (the mempool admits only a sender's next
nonce, in order), pins each account to one node (a sender's next transaction
must reach the node that has its previous one), and submits batches over
kept-alive HTTP/1.1 connections with the raw-bytes body
(`application/octet-stream`). Submit-to-commit latency is measured on a
sample of accounts: each node's websocket stream (devnet/display.py) is
filtered on the accounts pinned to it, and a sampled transaction's latency
runs from just before its POST to the moment its block arrives on that
stream.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import trio

from apps.ledger import transfer_tx
from consensus.codec import encode
from consensus.crypto import PrivateKey
from consensus.types import tx_id

WORKERS_PER_NODE = 2  # concurrent submitters per node, each with its own connection
BATCH_TXS_MAX = 500  # transactions per POST /txs
BATCH_INTERVAL_S = 0.05  # a submitter gathers send slots this long into one request
SAMPLE_ACCOUNTS_PER_NODE = 16  # the stream's sender filter allows at most 16
LATENCY_SAMPLES_MAX = 200_000  # kept for percentiles; policy when full: drop the oldest
SENT_AT_MAX = 100_000  # sampled txs awaiting their block; policy when full: forget the oldest
PACE_BURST_S = 0.05  # credit a late submitter may catch up on, so a stall is not made up at once
FULL_BACKOFF_S = 0.05  # after "mempool full", wait this long before retrying that transaction
ERROR_BACKOFF_S = 0.5  # after a connection error or a refused nonce
# A refused nonce is retried as is this many times before the account's nonce is
# read back from its node: the node can refuse a correct next nonce for a moment
# while it applies a block (see the report on the mempool view in the README).
NONCE_RETRIES_MAX = 5
HTTP_HEADER_BYTES_MAX = 16 * 1024  # a response header larger than this is a broken server
HTTP_BODY_BYTES_MAX = 1024 * 1024
HTTP_TIMEOUT_S = 30.0
TRANSFER_AMOUNT = 1
# Where transfers go: an address no account uses, so balances only go down by the amount.
SINK_ADDRESS = bytes.fromhex("00000000000000000000000000000000000051a7")


class SubmitError(Exception):
    """The node could not be reached or answered something that is not HTTP."""


class TxConnection:
    """One kept-alive HTTP/1.1 connection that POSTs transactions to /tx or batches to /txs.

    Why not httpx (a dependency, and what node/client.py uses): measured on
    this machine against a loopback server answering a 20-result JSON body,
    an `httpx.AsyncClient` POST costs 660-730 us of client CPU, this class
    45 us (3 KB batch) to 110 us (75 KB). The generator sends a batch per
    submitter every BATCH_INTERVAL_S, about 160 requests per second for 4
    nodes: httpx would take a tenth of a core from the two the nodes share,
    and the cluster benchmark is CPU-bound at saturation. It reads only what
    the node's API sends back: a status line, headers, a Content-Length body.
    """

    def __init__(self, host: str, port: int, path: str = "/tx") -> None:
        self.host = host
        self.port = port
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: "
        ).encode()

    async def submit(self, raw: bytes) -> tuple[int, bytes]:
        """(HTTP status, body) for one transaction; SubmitError when the connection fails."""
        try:
            with trio.fail_after(HTTP_TIMEOUT_S):
                if self._stream is None:
                    self._stream = await trio.open_tcp_stream(self.host, self.port)
                    self._buffer.clear()
                await self._stream.send_all(self._head + b"%d\r\n\r\n" % len(raw) + raw)
                return await self._read_response()
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, SubmitError) as e:
            await self.aclose()
            raise SubmitError(f"{self.host}:{self.port}: {e!r}") from None

    async def _read_response(self) -> tuple[int, bytes]:
        buf = self._buffer
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > HTTP_HEADER_BYTES_MAX:
                raise SubmitError("response header too large")
            await self._receive()
        header = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        try:
            status = int(header[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise SubmitError(f"not an HTTP response: {header[0]!r}") from None
        length = 0
        close = False
        for line in header[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length > HTTP_BODY_BYTES_MAX:
            raise SubmitError(f"response body of {length} bytes")
        while len(buf) < length:
            await self._receive()
        body = bytes(buf[:length])
        del buf[:length]
        if close:
            await self.aclose()
        return status, body

    async def _receive(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise SubmitError("connection closed by the node")
        self._buffer += chunk

    async def aclose(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()


# ---------------------------------------------------------------------- load


@dataclass(slots=True)
class Account:
    """One sender: its next nonce to sign and its pre-signed transactions, in nonce order."""

    key: PrivateKey
    node: int  # index of the node this account's transactions go to
    sampled: bool  # its transactions' latencies are measured
    next_nonce: int = 0  # the nonce the next transaction signed for it gets
    refused: int = 0  # consecutive "nonce is not the sender's next" refusals
    signed: deque[bytes] = field(default_factory=deque)  # signed, not yet admitted

    def sign(self, chain_id: str, count: int) -> None:
        for _ in range(count):
            tx = transfer_tx(self.key, chain_id, self.next_nonce, SINK_ADDRESS, TRANSFER_AMOUNT)
            self.signed.append(tx.encode())
            self.next_nonce += 1

    def peek(self, chain_id: str) -> bytes:
        if not self.signed:
            self.sign(chain_id, 1)
        return self.signed[0]


@dataclass(frozen=True, slots=True)
class LoadStatistics:
    submitted: int  # POSTs answered (any status)
    admitted: int  # 202 (or 409: it was already there)
    rejected: dict[str, int]  # refusals by reason
    errors: int  # connection failures
    latency_samples: int
    latency_p50_s: float | None
    latency_p99_s: float | None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class LoadGenerator:
    """Ledger transfers at `rate_tps` offered transactions per second, spread over nodes.

    Workers (WORKERS_PER_NODE per node) each own a disjoint set of accounts
    pinned to their node and submit one transaction at a time, so one
    sender's nonces reach its node in order. A shared pacer hands out send
    slots at `rate_tps`; a worker that is late may catch up on at most
    PACE_BURST_S of slots, so "offered" is what was actually sent.
    """

    def __init__(
        self,
        accounts: Sequence[PrivateKey],
        chain_id: str,
        nodes: Sequence[tuple[str, int]],
        rate_tps: float = 0.0,
        *,
        workers_per_node: int = WORKERS_PER_NODE,
    ) -> None:
        if not nodes:
            raise ValueError("load needs at least one node")
        self.chain_id = chain_id
        self.nodes = list(nodes)
        self.accounts: list[Account] = []
        per_node_sampled = [0] * len(nodes)
        for i, key in enumerate(accounts):
            node = i % len(nodes)
            sampled = per_node_sampled[node] < SAMPLE_ACCOUNTS_PER_NODE
            per_node_sampled[node] += sampled
            self.accounts.append(Account(key, node, sampled))
        self.workers = self._assign_workers(workers_per_node)
        self._rate_tps = rate_tps
        self._rate_changed = trio.Event()
        self._next_slot = 0.0
        self.submitted = 0
        self.admitted = 0
        self.rejected: dict[str, int] = {}
        self.errors = 0
        self.last_error = ""
        self.resyncs = 0  # accounts whose nonce was read back from the node
        self._sent_at: dict[bytes, float] = {}
        self.latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES_MAX)

    def _assign_workers(self, workers_per_node: int) -> list[tuple[int, list[Account]]]:
        workers: list[tuple[int, list[Account]]] = []
        for node in range(len(self.nodes)):
            mine = [a for a in self.accounts if a.node == node]
            count = max(1, min(workers_per_node, len(mine)))
            for w in range(count):
                workers.append((node, mine[w::count]))
        return workers

    @property
    def rate_tps(self) -> float:
        return self._rate_tps

    def set_rate(self, rate_tps: float) -> None:
        self._rate_tps = rate_tps
        self._next_slot = 0.0
        self._rate_changed.set()
        self._rate_changed = trio.Event()

    def presign(self, count: int) -> None:
        """Sign `count` more transactions ahead, spread evenly over the accounts."""
        per_account, extra = divmod(count, len(self.accounts))
        for i, account in enumerate(self.accounts):
            account.sign(self.chain_id, per_account + (1 if i < extra else 0))

    def sample_senders(self, node: int) -> list[bytes]:
        """Addresses whose transactions to `node` are timed (its stream's sender filter)."""
        return [a.key.address for a in self.accounts if a.node == node and a.sampled]

    def on_block(self, tx_hashes: Sequence[str], arrived: float) -> None:
        """A block with these (sampled) transactions arrived on a stream at `arrived`."""
        for h in tx_hashes:
            sent = self._sent_at.pop(bytes.fromhex(h), None)
            if sent is not None:
                self.latencies.append((sent, arrived - sent))

    def awaiting_commit(self) -> int:
        """Sampled transactions admitted whose block has not arrived yet."""
        return len(self._sent_at)

    def statistics(self, since: float = float("-inf")) -> LoadStatistics:
        """Counters so far; latency percentiles over samples submitted at or after `since`."""
        values = sorted(lat for sent, lat in self.latencies if sent >= since)
        return LoadStatistics(
            submitted=self.submitted,
            admitted=self.admitted,
            rejected=dict(self.rejected),
            errors=self.errors,
            latency_samples=len(values),
            latency_p50_s=percentile(values, 50),
            latency_p99_s=percentile(values, 99),
        )

    async def run(self) -> None:
        """Submit until cancelled."""
        async with trio.open_nursery() as nursery:
            for node, accounts in self.workers:
                nursery.start_soon(self._worker, node, accounts)

    async def _pace(self, slots_max: int) -> int:
        """Wait for the next send slot; returns how many slots are due now (at most slots_max)."""
        while True:
            while self._rate_tps <= 0:
                await self._rate_changed.wait()
            now = trio.current_time()
            slot = max(self._next_slot, now - PACE_BURST_S)
            if slot > now:
                await trio.sleep_until(slot)
                continue  # the rate may have changed while we slept
            due = min(slots_max, 1 + int((now - slot) * self._rate_tps))
            self._next_slot = slot + due / self._rate_tps
            return due

    async def _worker(self, node: int, accounts: list[Account]) -> None:
        host, port = self.nodes[node]
        conn = TxConnection(host, port, "/txs")
        try:
            turn = 0
            while True:
                await trio.sleep(BATCH_INTERVAL_S)  # let slots accumulate into one request
                due = await self._pace(BATCH_TXS_MAX)
                batch: list[Account] = []
                for _ in range(due):
                    batch.append(accounts[turn % len(accounts)])
                    turn += 1
                await self._submit_batch(conn, batch)
        finally:
            await conn.aclose()

    async def _submit_batch(self, conn: TxConnection, batch: list[Account]) -> None:
        """One POST /txs; each account's transactions go in nonce order."""
        taken: dict[int, int] = {}  # id(account) -> how many of its signed txs are in the batch
        raws: list[bytes] = []
        for account in batch:
            k = taken.get(id(account), 0)
            while len(account.signed) <= k:
                account.sign(self.chain_id, 1)
            raws.append(account.signed[k])
            taken[id(account)] = k + 1
        sent = trio.current_time()
        try:
            status, body = await conn.submit(encode(raws))
        except SubmitError as e:
            self.errors += 1
            self.last_error = str(e)
            await trio.sleep(ERROR_BACKOFF_S)
            return
        self.submitted += len(raws)
        try:
            results = json.loads(body)["results"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            results = None
        if not isinstance(results, list) or len(results) != len(raws):
            self.errors += 1
            self.last_error = f"POST /txs answered HTTP {status}"
            await trio.sleep(ERROR_BACKOFF_S)
            return
        refused: set[int] = set()
        for account, raw, result in zip(batch, raws, results, strict=True):
            if id(account) in refused:
                continue  # a later nonce after a refused one is refused too
            reason = result.get("reason")
            if reason is None or reason == "duplicate":
                account.signed.popleft()
                account.refused = 0
                self.admitted += 1
                if account.sampled:
                    self._remember(tx_id(raw), sent)
                continue
            refused.add(id(account))
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            if reason == "check_failed":
                account.refused += 1
                if account.refused >= NONCE_RETRIES_MAX:
                    # Our nonce and the node's really disagree (e.g. a restart lost
                    # its mempool): start this account over from the node's view.
                    await self._resync(conn, account)
                    account.refused = 0
        if refused:
            await trio.sleep(FULL_BACKOFF_S)

    def _remember(self, txid: bytes, sent: float) -> None:
        if len(self._sent_at) >= SENT_AT_MAX:
            self._sent_at.pop(next(iter(self._sent_at)))
        self._sent_at[txid] = sent

    async def _resync(self, conn: TxConnection, account: Account) -> None:
        url = f"http://{conn.host}:{conn.port}/account/{account.key.address.hex()}"
        try:
            async with httpx.AsyncClient(timeout=5.0, verify=False) as http:
                r = await http.get(url)
            nonce = int(r.json()["nonce"]) if r.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, KeyError):
            return
        self.resyncs += 1
        account.signed.clear()
        account.next_nonce = nonce
