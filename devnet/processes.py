"""`archipelago localnet`: a whole validator network on this machine, with load and live progress.

Why it exists: a newcomer runs `make run` and sees a 4-validator network
commit transactions, with one command and nothing to configure. It is also
the machinery `benchmarks/cluster.py` measures the cluster with, so the
demo and the benchmark start, load and watch nodes the same way.

What it does, in order: create a testnet (node/home.py `create_testnet`) in
a temporary folder; start one `archipelago start` process per validator
(its own session, so Ctrl-C in the terminal reaches only this process, which
then stops the nodes in order); wait until every node answers and has
committed a block; optionally drive ledger transfers at a fixed offered rate;
and redraw a table of every node's progress about once a second (ANSI redraw
on a terminal, one line per second otherwise). Ctrl-C or SIGTERM stops the
load, SIGTERMs every node, kills any still running after
`NODE_STOP_TIMEOUT_S`, and prints a summary.

The load generator runs in this process, not in the nodes. It keeps one
nonce counter per account (the mempool admits only a sender's next nonce, in
order), pins each account to one node (a sender's next transaction must
reach the node that has its previous one), and submits over kept-alive
HTTP/1.1 connections with the raw-bytes body (`application/octet-stream`).
The hot path uses a small HTTP/1.1 client instead of httpx: httpx costs
several hundred microseconds of CPU per request, which on a 2-core machine
shared with four nodes would make the load generator the bottleneck.
Submit-to-commit latency is measured on a sample of accounts: each node's
websocket stream is filtered on the accounts pinned to it, and a sampled
transaction's latency runs from just before its POST to the moment its block
arrives on that stream.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TextIO

import httpx
import trio
import trio_websocket

from consensus.apps.ledger import transfer_tx
from consensus.codec import encode
from consensus.crypto import PrivateKey
from consensus.types import tx_id
from node.config import load_config, save_config
from node.home import (
    DEFAULT_TESTNET_CHAIN_ID,
    PORT_STRIDE,
    TESTNET_VALIDATORS_MAX,
    HomeError,
    NodeHome,
    create_testnet,
)
from node.keys import load_key

PROG = "archipelago localnet"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEFAULT_VALIDATORS = 4
DEFAULT_LOCALNET_BASE_PORT = 26800
# Funded accounts in a localnet: load is spread over them, and each has at
# most one request in flight, so this bounds the useful submit concurrency.
DEFAULT_LOCALNET_ACCOUNTS = 256

NODE_START_TIMEOUT_S = 60.0  # generous: four nodes starting on a loaded 2-core machine
NODE_STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL after this long
STATUS_POLL_INTERVAL_S = 1.0
READY_POLL_INTERVAL_S = 0.2
DISPLAY_INTERVAL_S = 1.0
RATE_WINDOW_S = 10.0  # committed tx/s is averaged over the blocks that arrived in this window
BLOCK_HISTORY_MAX = 1_000  # blocks remembered per node for the rate window; oldest dropped
LOG_TAIL_LINES = 20

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


class LocalnetError(Exception):
    """An operating problem running the local network (ports in use, a node that will not start)."""


# ---------------------------------------------------------------------- the nodes


def archipelago_command() -> list[str]:
    """How to run the `archipelago` CLI from this interpreter: the console script next to it."""
    script = Path(sys.executable).parent / "archipelago"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]


def _node_env() -> dict[str, str]:
    # The nodes must not notify a service manager this tool may itself run under.
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    return {k: v for k, v in os.environ.items() if k not in drop}


def check_ports_free(base_port: int, validators: int) -> None:
    """Refuse early, with the port's name, instead of letting a node fail to bind."""
    for i in range(validators):
        for offset, what in ((0, "p2p"), (1, "rpc"), (2, "metrics")):
            port = base_port + PORT_STRIDE * i + offset
            with socket.socket() as s:
                # As the node's listeners do: a port held only by connections in
                # TIME_WAIT (a previous run's) is free to listen on.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise LocalnetError(
                        f"port {port} (node{i} {what}) is in use; pass another --base-port"
                    ) from None


def make_testnet(
    folder: Path,
    *,
    validators: int,
    base_port: int,
    accounts: int = DEFAULT_LOCALNET_ACCOUNTS,
    log_format: str = "json",
    timeout_commit_ms: int | None = None,
    mempool_txs_max: int | None = None,
) -> list[NodeHome]:
    """`archipelago testnet` into `folder`, then the few config changes a local run wants."""
    homes = create_testnet(folder, validators=validators, base_port=base_port, accounts=accounts)
    for home in homes:
        config = load_config(home.paths.config)
        config = replace(config, log=replace(config.log, format=log_format))
        if timeout_commit_ms is not None:
            config = replace(
                config, consensus=replace(config.consensus, timeout_commit_ms=timeout_commit_ms)
            )
        if mempool_txs_max is not None:
            config = replace(config, mempool=replace(config.mempool, txs_max=mempool_txs_max))
        save_config(home.paths.config, config)
    return homes


def load_accounts(folder: Path) -> list[PrivateKey]:
    """The funded account keys `create_testnet` wrote, in account-number order."""
    paths = sorted(
        (folder / "accounts").glob("account*.json"),
        key=lambda p: int(p.stem.removeprefix("account")),
    )
    return [load_key(p) for p in paths]


@dataclass(slots=True)
class NodeProcess:
    """One running `archipelago start` and where to reach it."""

    index: int
    home: Path
    rpc_host: str
    rpc_port: int
    log_path: Path
    process: trio.Process
    log_file: IO[bytes]
    exit_code: int | None = None
    stopping: bool = False

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def url(self) -> str:
        return f"http://{self.rpc_host}:{self.rpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_bytes(self) -> int | None:
        """VmHWM from /proc: the most resident memory this node has used; None once it exited."""
        return _proc_status_bytes(self.pid, "VmHWM")

    def rss_bytes(self) -> int | None:
        return _proc_status_bytes(self.pid, "VmRSS")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _proc_status_bytes(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


async def start_node(index: int, home: NodeHome, log_path: Path) -> NodeProcess:
    """Start `archipelago start --home HOME` with its stderr (the log) going to `log_path`."""
    log_file = open(log_path, "ab")  # closed in stop_nodes, once the process is gone
    process = await trio.lowlevel.open_process(
        [*archipelago_command(), "start", "--home", str(home.paths.root)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        env=_node_env(),
        # Its own session: a Ctrl-C in the terminal reaches this tool only, which stops
        # the nodes itself, in order, and can then report on them.
        start_new_session=True,
    )
    listen = home.config.rpc.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    return NodeProcess(index, home.paths.root, host, listen.port, log_path, process, log_file)


async def start_nodes(homes: Sequence[NodeHome], log_dir: Path) -> list[NodeProcess]:
    nodes = []
    for i, home in enumerate(homes):
        nodes.append(await start_node(i, home, log_dir / f"node{i}.log"))
    return nodes


async def wait_ready(nodes: Sequence[NodeProcess], timeout_s: float = NODE_START_TIMEOUT_S) -> None:
    """Until every node answers /status and has committed a block; LocalnetError otherwise."""
    pending = {n.index for n in nodes}
    with trio.move_on_after(timeout_s):
        async with httpx.AsyncClient(timeout=2.0) as http:
            while pending:
                for node in nodes:
                    if node.process.poll() is not None:
                        raise LocalnetError(_death_report(node))
                    if node.index not in pending:
                        continue
                    try:
                        r = await http.get(node.url + "/status")
                        if r.status_code == 200 and r.json()["latest_height"] >= 1:
                            pending.discard(node.index)
                    except httpx.HTTPError:
                        pass  # not listening yet
                if pending:
                    await trio.sleep(READY_POLL_INTERVAL_S)
            return
    names = ", ".join(f"node{i}" for i in sorted(pending))
    raise LocalnetError(f"{names} did not commit a first block within {timeout_s:.0f} s")


def _death_report(node: NodeProcess) -> str:
    code = node.process.returncode
    tail = "\n".join("    " + line for line in node.log_tail())
    return (
        f"{node.name} (pid {node.pid}) exited with code {code}; "
        f"last lines of {node.log_path}:\n{tail}"
    )


async def stop_nodes(nodes: Sequence[NodeProcess], timeout_s: float = NODE_STOP_TIMEOUT_S) -> None:
    """SIGTERM every node, wait for all of them, SIGKILL any still running after `timeout_s`."""
    for node in nodes:
        node.stopping = True
        if node.process.returncode is None:
            node.process.send_signal(signal.SIGTERM)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(timeout_s):
            for node in nodes:
                await node.process.wait()
        for node in nodes:
            if node.process.returncode is None:
                node.process.kill()
                await node.process.wait()
            node.exit_code = node.process.returncode
            node.log_file.close()


# ---------------------------------------------------------------------- a small HTTP/1.1 client


class SubmitError(Exception):
    """The node could not be reached or answered something that is not HTTP."""


class TxConnection:
    """One kept-alive HTTP/1.1 connection that POSTs transactions to /tx or batches to /txs."""

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


# ---------------------------------------------------------------------- watching the nodes


@dataclass(slots=True)
class NodeView:
    """What the display knows about one node, from its block stream and /status."""

    name: str
    height: int = 0
    block_time_ms: int = 0
    block_interval_ms: int | None = None
    committed_txs: int = 0  # in blocks seen on the stream since it connected
    peers: int | None = None
    mempool_txs: int | None = None
    mode: str = "starting"
    state: str = "starting"  # starting, up, exited(code)
    blocks: deque[tuple[float, int]] = field(
        default_factory=lambda: deque(maxlen=BLOCK_HISTORY_MAX)
    )  # (arrival time, tx count) per block

    def on_block(self, height: int, time_ms: int, tx_count: int, arrived: float) -> None:
        if self.block_time_ms and height == self.height + 1:
            self.block_interval_ms = time_ms - self.block_time_ms
        self.height, self.block_time_ms = height, time_ms
        self.committed_txs += tx_count
        self.blocks.append((arrived, tx_count))

    def tx_rate(self, now: float, window_s: float = RATE_WINDOW_S) -> float:
        """Committed tx/s over the blocks that arrived in the last `window_s`."""
        recent = [(t, n) for t, n in self.blocks if t >= now - window_s]
        if not recent:
            return 0.0
        first = self.blocks[0][0]
        span = min(window_s, now - first) if first < now else window_s
        return sum(n for _, n in recent) / max(span, 1.0)

    def txs_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.blocks if start <= t < end)


async def watch_stream(
    node: NodeProcess, view: NodeView, load: LoadGenerator | None, senders: Sequence[bytes]
) -> None:
    """Follow the node's committed blocks; reconnect (from the next height) when dropped."""
    url = f"ws://{node.rpc_host}:{node.rpc_port}/stream"
    filter_hex = ",".join(s.hex() for s in senders) or SINK_ADDRESS.hex()
    while True:
        query = f"?sender={filter_hex}"
        if view.height:
            query += f"&from_height={view.height + 1}"
        try:
            async with trio_websocket.open_websocket_url(url + query) as ws:
                while True:
                    message = await ws.get_message()
                    arrived = trio.current_time()
                    block = json.loads(message)
                    view.on_block(block["height"], block["time_ms"], block["tx_count"], arrived)
                    if load is not None and block["txs"]:
                        load.on_block([t["hash"] for t in block["txs"]], arrived)
        except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
            await trio.sleep(STATUS_POLL_INTERVAL_S)


async def poll_status(node: NodeProcess, view: NodeView) -> None:
    async with httpx.AsyncClient(timeout=5.0) as http:
        while True:
            try:
                r = await http.get(node.url + "/status")
                status = r.json()
                view.peers = status["peers"]
                view.mempool_txs = status["mempool"]["txs"]
                view.mode = status["sync"]["mode"]
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # shown as stale values; a dead process is reported by watch_process
            await trio.sleep(STATUS_POLL_INTERVAL_S)


# ---------------------------------------------------------------------- display


def render_table(
    views: Sequence[NodeView], load: LoadGenerator | None, now: float, header: str
) -> list[str]:
    lines = [header]
    lines.append(
        f"{'node':<7}{'height':>8}{'block time':>14}{'interval':>10}"
        f"{'tx/s':>9}{'txs':>10}{'peers':>7}{'mempool':>9}  state"
    )
    for v in views:
        when = (
            time.strftime("%H:%M:%S", time.localtime(v.block_time_ms / 1000)) if v.height else "-"
        )
        interval = "-" if v.block_interval_ms is None else f"{v.block_interval_ms} ms"
        lines.append(
            f"{v.name:<7}{v.height:>8}{when:>14}{interval:>10}{v.tx_rate(now):>9.1f}"
            f"{v.committed_txs:>10}{_dash(v.peers):>7}{_dash(v.mempool_txs):>9}  {v.state}"
        )
    lines.append(summary_line(views, load, now))
    return lines


def summary_line(views: Sequence[NodeView], load: LoadGenerator | None, now: float) -> str:
    best = max(views, key=lambda v: v.height)
    text = (
        f"total: height {best.height}, committed {best.committed_txs} txs, "
        f"{best.tx_rate(now):.1f} tx/s over {RATE_WINDOW_S:.0f} s"
    )
    if load is not None:
        stats = load.statistics(since=now - RATE_WINDOW_S)
        text += (
            f"; load {load.rate_tps:g} tx/s offered, {stats.submitted} submitted, "
            f"{stats.admitted} admitted"
        )
        if stats.rejected:
            text += ", rejected " + ", ".join(f"{k} {n}" for k, n in sorted(stats.rejected.items()))
        if stats.errors:
            text += f", {stats.errors} connection errors"
        if stats.latency_p50_s is not None:
            text += f"; latency p50 {stats.latency_p50_s:.2f} s p99 {stats.latency_p99_s:.2f} s"
    return text


def progress_line(
    views: Sequence[NodeView], load: LoadGenerator | None, now: float, t: float
) -> str:
    """The one-line-per-second form for a non-terminal stdout."""
    heights = " ".join(f"{v.name}={v.height}" for v in views)
    peers = ",".join(_dash(v.peers) for v in views)
    mempool = ",".join(_dash(v.mempool_txs) for v in views)
    return f"[{t:6.1f}s] heights {heights} peers {peers} mempool {mempool} | " + summary_line(
        views, load, now
    )


def _dash(value: int | None) -> str:
    return "-" if value is None else str(value)


class Display:
    """Redraws the table in place on a terminal; prints one line per refresh otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0

    def show(self, table: list[str], line: str) -> None:
        if self.tty:
            # Move up over the previous table, clear to the end of the screen, draw.
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(up + "\x1b[J" + "\n".join(table) + "\n")
            self._drawn = len(table)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
        self._drawn = 0


# ---------------------------------------------------------------------- the run


@dataclass(slots=True)
class Localnet:
    """A started local network: its folder, processes, per-node views and optional load."""

    folder: Path
    chain_id: str
    nodes: list[NodeProcess]
    views: list[NodeView]
    load: LoadGenerator | None
    died: list[str] = field(default_factory=list)

    async def watch(self, nursery: trio.Nursery) -> None:
        """Start the stream, status and process watchers for every node."""
        for node, view in zip(self.nodes, self.views, strict=True):
            senders = self.load.sample_senders(node.index) if self.load is not None else []
            nursery.start_soon(watch_stream, node, view, self.load, senders)
            nursery.start_soon(poll_status, node, view)
            nursery.start_soon(self._watch_process, node, view)

    async def _watch_process(self, node: NodeProcess, view: NodeView) -> None:
        code = await node.process.wait()
        view.state = f"exited({code})"
        if not node.stopping:
            self.died.append(_death_report(node))


@contextmanager
def localnet_folder(output: Path | None, keep: bool) -> Iterator[tuple[Path, list[bool]]]:
    """The folder to build the testnet in; a temporary one is removed unless kept.

    Yields the folder and a one-element flag list a caller sets to keep it anyway
    (a node died: its log is the evidence).
    """
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        yield output, [True]
        return
    tmp = tempfile.TemporaryDirectory(prefix="archipelago-localnet-")
    keep_flag = [keep]
    try:
        yield Path(tmp.name), keep_flag
    finally:
        if keep_flag[0]:
            tmp._finalizer.detach()  # type: ignore[attr-defined]
        else:
            tmp.cleanup()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a local network of validators, one process each, in a temporary "
        "folder; optionally drive ledger transfers; show each node's progress live. "
        "Ctrl-C stops everything cleanly.",
    )
    parser.add_argument(
        "--validators",
        type=int,
        default=DEFAULT_VALIDATORS,
        help=f"validators to run (default {DEFAULT_VALIDATORS})",
    )
    parser.add_argument(
        "--load",
        type=float,
        default=0.0,
        metavar="TPS",
        help="offered load in transfers per second (default 0: none)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after this many seconds of running (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_LOCALNET_BASE_PORT,
        help=f"node i uses base+10i (p2p), +1 (rpc), +2 (metrics) "
        f"(default {DEFAULT_LOCALNET_BASE_PORT})",
    )
    parser.add_argument(
        "--accounts",
        type=int,
        default=DEFAULT_LOCALNET_ACCOUNTS,
        help=f"funded accounts to spread the load over (default {DEFAULT_LOCALNET_ACCOUNTS})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (homes and logs)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the testnet in DIR instead of a temporary folder (kept)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run `archipelago localnet`; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not 1 <= ns.validators <= TESTNET_VALIDATORS_MAX:
        parser.error(f"--validators: expected 1..{TESTNET_VALIDATORS_MAX}")
    if ns.load < 0 or (ns.duration is not None and ns.duration <= 0):
        parser.error("--load must be >= 0 and --duration > 0")
    if ns.accounts < 1:
        parser.error("--accounts must be at least 1")
    try:
        check_ports_free(ns.base_port, ns.validators)
        with localnet_folder(ns.output, ns.keep) as (folder, keep):
            return trio.run(_run, ns, folder, keep)
    except (LocalnetError, HomeError) as e:
        print(f"archipelago: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


async def _run(ns: argparse.Namespace, folder: Path, keep: list[bool]) -> int:
    display = Display(sys.stdout)
    homes = make_testnet(
        folder, validators=ns.validators, base_port=ns.base_port, accounts=ns.accounts
    )
    chain_id = DEFAULT_TESTNET_CHAIN_ID
    display.message(f"localnet: {ns.validators} validators, chain {chain_id}, folder {folder}")
    started = trio.current_time()
    nodes = await start_nodes(homes, folder)
    net: Localnet | None = None
    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_on_signal, signals, nursery.cancel_scope)
                net = await _bring_up(ns, folder, chain_id, nodes, display)
                await net.watch(nursery)
                if net.load is not None:
                    nursery.start_soon(net.load.run)
                nursery.start_soon(_refresh, ns, net, display, nursery.cancel_scope)
    except LocalnetError as e:
        display.message(f"localnet: {e}")
        keep[0] = True
        return EXIT_FAILURE
    finally:
        display.message("localnet: stopping the nodes (SIGTERM)")
        await stop_nodes(nodes)
    if net is None:
        display.message("localnet: interrupted before the network was up")
        return EXIT_OK
    if net.died:
        keep[0] = True
    _print_summary(net, display, trio.current_time() - started, keep[0])
    return EXIT_FAILURE if net.died else EXIT_OK


async def _bring_up(
    ns: argparse.Namespace,
    folder: Path,
    chain_id: str,
    nodes: list[NodeProcess],
    display: Display,
) -> Localnet:
    await wait_ready(nodes)
    display.message("localnet: every node is up and has committed a block")
    load = None
    if ns.load > 0:
        targets = [(n.rpc_host, n.rpc_port) for n in nodes]
        load = LoadGenerator(load_accounts(folder), chain_id, targets, ns.load)
    views = [NodeView(n.name, state="up") for n in nodes]
    return Localnet(folder, chain_id, nodes, views, load)


async def _on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _refresh(
    ns: argparse.Namespace, net: Localnet, display: Display, scope: trio.CancelScope
) -> None:
    started = trio.current_time()
    reported = 0
    while True:
        await trio.sleep(DISPLAY_INTERVAL_S)
        now = trio.current_time()
        for report in net.died[reported:]:
            display.message(report)
        reported = len(net.died)
        header = (
            f"localnet: {len(net.nodes)} validators, up {now - started:.0f} s, "
            f"folder {net.folder} (Ctrl-C stops)"
        )
        table = render_table(net.views, net.load, now, header)
        display.show(table, progress_line(net.views, net.load, now, now - started))
        if ns.duration is not None and now - started >= ns.duration:
            scope.cancel()
            return


def _print_summary(net: Localnet, display: Display, elapsed_s: float, kept: bool) -> None:
    display.message(f"localnet: stopped after {elapsed_s:.1f} s")
    for node, view in zip(net.nodes, net.views, strict=True):
        display.message(
            f"  {node.name}: height {view.height}, committed {view.committed_txs} txs, "
            f"exit code {node.exit_code}, log {node.log_path}"
        )
    best = max(net.views, key=lambda v: v.height)
    display.message(f"summary: height {best.height}, committed {best.committed_txs} transactions")
    if net.load is not None:
        stats = net.load.statistics()
        rejected = ", ".join(f"{k} {n}" for k, n in sorted(stats.rejected.items())) or "none"
        latency = (
            "no samples"
            if stats.latency_p50_s is None
            else f"p50 {stats.latency_p50_s:.2f} s, p99 {stats.latency_p99_s:.2f} s "
            f"({stats.latency_samples} samples)"
        )
        display.message(
            f"load: {stats.submitted} submitted, {stats.admitted} admitted, rejected {rejected}, "
            f"{stats.errors} connection errors; submit-to-commit latency {latency}"
        )
    for report in net.died:
        display.message(report)
    where = "kept" if kept else "removed (pass --keep to keep them)"
    display.message(f"logs and homes in {net.folder}: {where}")
