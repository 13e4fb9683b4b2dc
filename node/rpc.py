"""The HTTP JSON API and websocket stream on `[rpc] listen` (Starlette on Hypercorn's trio worker).

Over 600 lines: one handler per route of /openapi.json with its exact input
checks; the edge (node/http_edge.py), the JSON views (node/jsonview.py) and
the description (node/openapi.py) are apart already.

Clients are untrusted: every handler validates its input and answers a bad
request with a 4xx and a JSON body `{"error": "..."}`: 400 when the request
does not follow /openapi.json (node/openapi.py states every format and limit
checked here, exactly), 422 when it does but the protocol or the application
refuses its content (a transaction that does not decode or fails its checks);
docs/PROTOCOL.md section 12 lists every status. The handlers only read
the store or hand a transaction to the mempool through the node's `Resources`, so a bad
request changes nothing. Request bodies are capped by `request_body_bytes_max`
before they are read whole (413) and must arrive within BODY_READ_TIMEOUT_S
(408), and waiting for a commit is capped by `tx_wait_timeout_ms` (504 when it
runs out, the transaction stays pending).

The connection-level limits (connection count, header size and time, stalled
sends, websocket client bytes) and the containment of failures are in
node/http_edge.py: a failure in one request or connection is logged, counted
in `archipelago_rpc_errors_total{kind}` and closes that connection only.

The websocket `/stream` sends committed blocks in order; with `from_height`
it first replays from the store, then continues live with no gap and no
duplicate (it subscribes before reading the store and skips what it already
sent). A client that cannot keep up is closed with code 1008 and a reason
naming the height to resume from, instead of holding the node's memory; if it
does not take what was queued and the close within the close grace
(node/http_edge.py), its connection is cut. A client that disconnects ends its
subscription at once.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from consensus import merkle
from consensus.codec import DecodeError, decode, encode
from consensus.types import (
    HEIGHT_MAX,
    Block,
    LightClientAttackEvidence,
    Transaction,
    decode_evidence,
    tx_id,
)
from node import __version__
from node.chain import decode_result
from node.http_edge import (
    CONNECTION_STATE_KEY,
    EdgeLimits,
    GuardedStream,
    LoggingObserver,
    open_edge_listeners,
    serve_edge,
)
from node.hub import CommittedBlock, Subscription, TooManySubscribers
from node.jsonview import block_json, commit_json, header_json, query_json, tx_json
from node.logging import get_logger
from node.mempool import MempoolError
from node.openapi import OPENAPI
from node.resources import Resources, TooManyWaiters
from node.status import StatusView
from node.storage import BlockStore, StorageCorruptError

if TYPE_CHECKING:
    from node.metrics import Metrics

log = get_logger(__name__)

HEX_TX_CHARS_MAX = 2 * 64 * 1024  # a hex-encoded transaction; the mempool's own limit is tighter
QUERY_PATH_CHARS_MAX = 64  # an application query's path
QUERY_DATA_BYTES_MAX = 1024  # an application query's data (the built-in apps' keys: <= 256 bytes)
STREAM_SENDER_FILTERS_MAX = 16  # sender addresses one stream subscription may filter on
RENDERED_BLOCKS_MAX = 4  # stream renderings kept (the live block and a few behind)
TXS_PER_REQUEST_MAX = 10_000  # a batch submission; the body size limit applies too
# An evidence item in hex (a light-client attack on a set of 1,000 validators is 167 KB).
HEX_EVIDENCE_CHARS_MAX = 2 * LightClientAttackEvidence.BYTES_MAX
WS_CLOSE_TOO_SLOW = 1008
WS_CLOSE_BAD_REQUEST = 1003
WS_CLOSE_OVERLOADED = 1013
# How often a stream checks whether its subscription overflowed while a send is blocked.
STREAM_OVERFLOW_CHECK_S = 1.0
API_LIMITS = EdgeLimits()
BODY_READ_TIMEOUT_S = API_LIMITS.body_timeout_s  # else 408 (and the connection is closed)


# Parameters are matched exactly as node/openapi.py states them: int() alone would also take
# "+1", "01", "1_000", " 1" and non-ASCII digits, bytes.fromhex would skip spaces.
HEIGHT_DIGITS_RE = re.compile(r"[1-9][0-9]{0,18}")
# A state key (docs/PROTOCOL.md section 11): the built-in apps' longest is "k" + 256 bytes.
STATE_KEY_BYTES_MAX = 1024
STATE_HEIGHT_RE = re.compile(r"0|[1-9][0-9]{0,18}")
HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
# The statuses of a request that follows /openapi.json but whose content the protocol or the
# application refuses (docs/PROTOCOL.md, section 12): 422, except these.
_MEMPOOL_STATUS = {"duplicate": 409, "committed": 409, "full": 503}


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _height_digits(text: str, what: str) -> int:
    if HEIGHT_DIGITS_RE.fullmatch(text) is None:
        raise HTTPException(400, f"{what} must be a positive decimal integer")
    return int(text)


def _height_param(text: str, what: str = "height") -> int:
    """A height given as a query parameter: 1..HEIGHT_MAX in decimal digits."""
    value = _height_digits(text, what)
    if value > HEIGHT_MAX:
        raise HTTPException(400, f"{what} must be at most {HEIGHT_MAX}")
    return value


def _hex_param(
    text: str, what: str, length: int | None = None, bytes_max: int | None = None
) -> bytes:
    if HEX_RE.fullmatch(text) is None:
        raise HTTPException(400, f"{what} must be hex (two digits a byte)")
    if length is not None and len(text) != 2 * length:
        raise HTTPException(400, f"{what} must be {length} bytes ({2 * length} hex characters)")
    if bytes_max is not None and len(text) > 2 * bytes_max:
        raise HTTPException(400, f"{what} must be at most {bytes_max} bytes")
    return bytes.fromhex(text)


def _mempool_refusal(e: MempoolError) -> JSONResponse:
    status = _MEMPOOL_STATUS.get(e.reason, 422)
    return JSONResponse({"error": e.message, "reason": e.reason}, status_code=status)


def _block_body(block: Block) -> bytes:
    """GET /block's JSON, rendered off the event loop (a large block takes milliseconds)."""
    return json.dumps(block_json(block), separators=(",", ":")).encode()


def _result_leaf_item(stored: bytes) -> bytes:
    """The results-hash leaf item, canonical [code, data], of a stored [code, log, data]."""
    try:
        fields = decode(stored)
    except DecodeError:
        fields = None
    if not (isinstance(fields, tuple) and len(fields) == 3 and type(fields[0]) is int):
        raise StorageCorruptError("a stored transaction result is not [code, log, data]")
    return encode([fields[0], fields[2]])


# Heights whose results trees GET /tx keeps (leaf hashes and the subtree roots proofs
# used: under 100 bytes per transaction). Policy when full: forget the least recent.
RESULT_TREES_CACHED = 8


class _ResultTree:
    """One block's results tree: its leaf hashes and, as proofs ask, its subtree roots."""

    __slots__ = ("hashes", "roots")

    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes = hashes
        self.roots: dict[tuple[int, int], bytes] = {}

    def prove(self, index: int) -> merkle.Proof:
        """merkle.prove's path, each aunt computed once per tree (at most 2n subtrees)."""
        lo, hi = 0, len(self.hashes)
        aunts: list[bytes] = []
        while hi - lo > 1:
            mid = lo + (1 << ((hi - lo - 1).bit_length() - 1))  # merkle's split
            if index < mid:
                aunts.append(self._root(mid, hi))
                hi = mid
            else:
                aunts.append(self._root(lo, mid))
                lo = mid
        return merkle.Proof(index, len(self.hashes), tuple(reversed(aunts)))

    def _root(self, lo: int, hi: int) -> bytes:
        root = self.roots.get((lo, hi))
        if root is None:
            root = merkle.root_from_leaf_hashes(self.hashes[lo:hi])
            self.roots[(lo, hi)] = root
        return root


class ResultTrees:
    """The results trees of the last RESULT_TREES_CACHED heights asked for: without them
    every GET /tx read and hashed every result of its block. Used from worker threads."""

    def __init__(self) -> None:
        self._trees: OrderedDict[int, _ResultTree] = OrderedDict()
        self._lock = threading.Lock()

    def proof(
        self, store: BlockStore, height: int, index: int, results_hash: bytes
    ) -> merkle.Proof:
        with self._lock:
            tree = self._trees.get(height)
            if tree is None:
                hashes = [
                    merkle.leaf_hash(_result_leaf_item(r)) for r in store.iter_block_results(height)
                ]
                if merkle.root_from_leaf_hashes(hashes) != results_hash:
                    raise StorageCorruptError(
                        f"results of block {height} do not match header {height + 1}"
                    )
                tree = _ResultTree(hashes)
                self._trees[height] = tree
                while len(self._trees) > RESULT_TREES_CACHED:
                    self._trees.popitem(last=False)
            self._trees.move_to_end(height)
            return tree.prove(index)


def _result_proof_json(
    store: BlockStore, height: int, index: int, stored_result: bytes, trees: ResultTrees
) -> dict[str, Any] | None:
    """The Merkle path of result `index` of block `height` to header height+1's results hash.

    None while height+1 is not committed: no header carries the results hash yet.
    A failed transaction is in its block like any other, so a client that must
    know a transaction succeeded checks this proof, not the inclusion proof alone.
    """
    next_block = store.load_block(height + 1)
    if next_block is None:
        return None
    results_hash = next_block.header.last_results_hash
    item = _result_leaf_item(stored_result)
    proof = trees.proof(store, height, index, results_hash)
    if not proof.verify(item, results_hash):
        raise StorageCorruptError(f"results of block {height} do not match header {height + 1}")
    return {
        "index": proof.index,
        "total": proof.total,
        "aunts": [a.hex() for a in proof.aunts],
        "result_encoded": item.hex(),
        "results_hash": results_hash.hex(),
        "header_height": height + 1,
    }


def _committed_tx_json(
    store: BlockStore, txid: bytes, trees: ResultTrees | None = None
) -> dict[str, Any] | None:
    """A committed transaction as GET /tx shows it, with its proof (None: not committed)."""
    record = store.load_tx(txid)
    if record is None:
        return None
    block = record.block
    proof = merkle.prove(block.txs, record.index)
    code, log_text = decode_result(record.result)
    out = tx_json(record.tx, Transaction.decode(record.tx))
    out.update(
        status="committed",
        height=record.height,
        index=record.index,
        result={"code": code, "log": log_text},
        proof={
            "index": proof.index,
            "total": proof.total,
            "aunts": [a.hex() for a in proof.aunts],
            "data_hash": block.header.data_hash.hex(),
            "block_hash": block.hash.hex(),
        },
        result_proof=_result_proof_json(
            store, record.height, record.index, record.result, trees or ResultTrees()
        ),
    )
    return out


class TooManyItems(DecodeError):
    """A batch holds more items than its limit."""


def _is_octet_stream(request: Request) -> bool:
    """True for application/octet-stream, False for JSON (or no content type); else 415.

    Checked before the body is read: a refused body is drained (node/http_edge.py).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/octet-stream":
        return True
    if ctype in ("", "application/json"):
        return False
    raise HTTPException(415, "content type must be application/json or application/octet-stream")


def _json_object(body: bytes | bytearray, refusal: str) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # "[[[[...": RecursionError
        raise HTTPException(400, refusal) from None
    if not isinstance(obj, dict):
        raise HTTPException(400, refusal)
    return obj


def _msgpack_byte_strings(data: bytes | bytearray, count_max: int) -> list[bytes]:
    """The items of a canonical msgpack array of byte strings, read from the headers alone.

    A client's batch is never handed to msgpack whole: one body of 1 MiB
    could hold a million nils, or arrays nested in an item, and msgpack
    builds every object before anything is checked (16 MiB for the nils).
    Here the count is checked before any item is read and each item is a
    slice. Canonical means the shortest header for each count and length,
    as `consensus.codec.encode` writes them. Raises DecodeError.
    """
    count, pos = _msgpack_length(data, 0, _ARRAY_HEADERS, "an array")
    if count > count_max:
        raise TooManyItems(f"at most {count_max} transactions")
    items = []
    for _ in range(count):
        length, pos = _msgpack_length(data, pos, _BIN_HEADERS, "a byte string")
        if pos + length > len(data):
            raise DecodeError("truncated")
        items.append(bytes(data[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise DecodeError("bytes after the array")
    return items


# msgpack headers: (first byte, width of the length that follows, smallest length it may
# carry in canonical form); a fix-array's length is in its first byte.
_ARRAY_HEADERS = {0xDC: (2, 16), 0xDD: (4, 1 << 16)}
_BIN_HEADERS = {0xC4: (1, 0), 0xC5: (2, 1 << 8), 0xC6: (4, 1 << 16)}


def _msgpack_length(
    data: bytes | bytearray, pos: int, headers: dict[int, tuple[int, int]], what: str
) -> tuple[int, int]:
    if pos >= len(data):
        raise DecodeError("truncated")
    first = data[pos]
    if headers is _ARRAY_HEADERS and 0x90 <= first <= 0x9F:
        return first & 0x0F, pos + 1
    if first not in headers:
        raise DecodeError(f"expected {what}")
    width, smallest = headers[first]
    if pos + 1 + width > len(data):
        raise DecodeError("truncated")
    length = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
    if length < smallest:
        raise DecodeError("non-canonical encoding")
    return length, pos + 1 + width


class RpcServer:
    """The API service: `run` serves until cancelled."""

    name = "rpc"

    def __init__(self, res: Resources, view: StatusView) -> None:
        self.res = res
        self.view = view
        rpc = res.config.rpc
        self.listen = rpc.listen
        self.body_bytes_max = rpc.request_body_bytes_max
        self.wait_timeout_s = rpc.tx_wait_timeout_ms / 1000
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/status", self.status),
                Route("/tx", self.submit_tx, methods=["POST"]),
                Route("/txs", self.submit_txs, methods=["POST"]),
                Route("/evidence", self.submit_evidence, methods=["POST"]),
                Route("/tx/{hash}", self.get_tx),
                Route("/block/{height}", self.get_block),
                Route("/commit/{height}", self.get_commit),
                Route("/validators", self.get_validators),
                Route("/net_info", self.net_info),
                Route("/account/{address}", self.get_account),
                Route("/query", self.query),
                Route("/state/proof", self.get_state_proof),
                Route("/openapi.json", self.openapi),
                # Plain HTTP to /stream: 426 (or 400 for bad parameters), and 405 with Allow.
                Route("/stream", self.stream_without_upgrade, methods=["GET"]),
                WebSocketRoute("/stream", self.stream),
            ],
            exception_handlers={
                HTTPException: self._http_error,
                ClientDisconnect: self._client_gone,
                Exception: self._internal_error,
            },
        )
        self.bound_port: int | None = None
        self._result_trees = ResultTrees()
        # Unfiltered renderings of the latest blocks, shared by every subscriber.
        self._rendered: OrderedDict[bytes, str] = OrderedDict()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_edge_listeners(self.listen.host, self.listen.port, API_LIMITS)
        self.bound_port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await serve_edge(self.app, listeners, API_LIMITS, _RpcObserver(self.res.metrics))

    # ------------------------------------------------------------ error mapping

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        # exc.headers carries the 405's Allow (RFC 9110 requires it) and the 426's Upgrade.
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        # Starlette re-raises after this answer; http_edge.ContainErrors logs and counts it.
        return _error(500, "internal error")

    async def _client_gone(self, request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # nobody reads it: the client disconnected mid-body

    # ------------------------------------------------------------ reads

    async def health(self, request: Request) -> Response:
        healthy, problems = self.view.health()
        body = {"healthy": healthy, "problems": problems, "height": self.res.height}
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def status(self, request: Request) -> Response:
        return JSONResponse(self.view.status())

    async def openapi(self, request: Request) -> Response:
        spec = dict(OPENAPI)
        spec["info"] = {**OPENAPI["info"], "version": __version__}
        return JSONResponse(spec)

    async def get_block(self, request: Request) -> Response:
        height = self._resolve_height(request.path_params["height"])
        block = self.res.store.load_block(height)
        if block is None:
            raise HTTPException(404, f"no block at height {height}")
        body = await trio.to_thread.run_sync(_block_body, block)
        return Response(body, media_type="application/json")

    async def get_commit(self, request: Request) -> Response:
        height = self._resolve_height(request.path_params["height"])
        commit = self.res.store.load_commit(height)
        block = self.res.store.load_block(height)
        if commit is None or block is None:
            raise HTTPException(404, f"no commit for height {height}")
        validators = self.res.store.load_validators(height)
        return JSONResponse(
            {
                "height": height,
                "header": header_json(block.header),
                "header_encoded": block.header.encode().hex(),
                "commit": commit_json(commit),
                "validators_encoded": None if validators is None else validators.encode().hex(),
            }
        )

    def _resolve_height(self, text: str) -> int:
        if text == "latest":
            height = self.res.height
            if height < 1:
                raise HTTPException(404, "no block committed yet")
            return height
        height = _height_digits(text, "height")
        if height > self.res.height:
            raise HTTPException(404, f"height {height} is above the latest {self.res.height}")
        return height

    async def get_validators(self, request: Request) -> Response:
        text = request.query_params.get("height")
        height = self.res.height + 1 if text is None else _height_param(text)
        if height > self.res.height + 2:
            raise HTTPException(404, f"validators for height {height} are not known yet")
        vset = self.res.store.load_validators(height)
        if vset is None:
            raise HTTPException(404, f"no validator set for height {height}")
        return JSONResponse(
            {
                "height": height,
                "total_power": vset.total_power,
                "hash": vset.hash.hex(),
                "validators": [
                    {"address": v.address.hex(), "public_key": v.public_key.hex(), "power": v.power}
                    for v in vset
                ],
                "encoded": vset.encode().hex(),
            }
        )

    async def net_info(self, request: Request) -> Response:
        return JSONResponse(self.view.net_info())

    async def get_tx(self, request: Request) -> Response:
        txid = _hex_param(request.path_params["hash"], "hash", 32)
        # Decoding the block and hashing its transactions for the proof take
        # milliseconds on a large block: not on the event loop.
        out = await trio.to_thread.run_sync(
            _committed_tx_json, self.res.store, txid, self._result_trees
        )
        if out is None:
            if txid in self.res.mempool:
                return JSONResponse({"hash": txid.hex(), "status": "pending"})
            raise HTTPException(404, "transaction not found")
        return JSONResponse(out)

    async def get_account(self, request: Request) -> Response:
        address = _hex_param(request.path_params["address"], "address", 20)
        result = self.res.chain.app.query("account", address)
        body = query_json("account", result) if result.ok else {}
        if "balance" not in body:  # an application without accounts (kvstore)
            raise HTTPException(404, result.log or "this application has no accounts")
        return JSONResponse(body)

    async def query(self, request: Request) -> Response:
        path = request.query_params.get("path", "")
        if not 1 <= len(path) <= QUERY_PATH_CHARS_MAX:
            raise HTTPException(400, f"path: 1 to {QUERY_PATH_CHARS_MAX} characters")
        data = _hex_param(
            request.query_params.get("data", ""), "data", bytes_max=QUERY_DATA_BYTES_MAX
        )
        result = self.res.chain.app.query(path, data)
        if not result.ok:
            # The request follows the description; the application does not answer it.
            status = 404 if result.code == 404 else 422
            raise HTTPException(status, result.log or "query failed")
        return JSONResponse(query_json(path, result))

    async def get_state_proof(self, request: Request) -> Response:
        """A key's value (or absence) in the state after block h, with its state proof.

        Bounded work on the event loop: one hash of the key (at most 1 KiB),
        a walk of at most 256 tree nodes, one hash of the value (at most 16 KiB).
        """
        text = request.query_params.get("key")
        if text is None:
            raise HTTPException(400, "key: required")
        key = _hex_param(text, "key", bytes_max=STATE_KEY_BYTES_MAX)
        if not key:
            raise HTTPException(400, f"key must be 1 to {STATE_KEY_BYTES_MAX} bytes")
        latest = self.res.height
        height_text = request.query_params.get("height")
        if height_text is None:
            height = latest - 1
        elif STATE_HEIGHT_RE.fullmatch(height_text) is None or int(height_text) > HEIGHT_MAX:
            raise HTTPException(400, f"height must be a decimal integer in 0..{HEIGHT_MAX}")
        else:
            height = int(height_text)
        if height >= latest or height < 0:
            raise HTTPException(
                404,
                f"the state after block {max(height, 0)} is proven by header "
                f"{max(height, 0) + 1}, which is not committed yet (latest block {latest})",
            )
        tree = self.res.chain.app.state_tree(height)
        if tree is None:
            raise HTTPException(
                404,
                f"the state after block {height} is no longer kept: this node serves "
                f"height {latest - 1} (the latest block's height - 1) only, and after a "
                "restart only once a block has been committed",
            )
        value, proof = tree.prove(key)
        return JSONResponse(
            {
                "key": key.hex(),
                "height": height,
                "value": None if value is None else value.hex(),
                "proof_encoded": proof.encode().hex(),
                "app_hash": tree.root.hex(),
                "header_height": height + 1,
            }
        )

    # ------------------------------------------------------------ writes

    async def submit_tx(self, request: Request) -> Response:
        raw, wait = await self._read_tx_request(request)
        try:
            txid, check = self.res.mempool_add(raw)
        except MempoolError as e:
            return _mempool_refusal(e)
        body: dict[str, Any] = {
            "hash": txid.hex(),
            "check": {"code": check.code, "log": check.log},
        }
        if wait != "commit":
            return JSONResponse(body, status_code=202)
        try:
            committed = await self.res.wait_for_tx(txid, self.wait_timeout_s)
        except TooManyWaiters as e:
            body["error"] = f"{e}; the transaction is admitted, poll GET /tx/{{hash}}"
            return JSONResponse(body, status_code=503)
        if committed is None:
            body["error"] = "timed out waiting for the transaction to be committed; it is pending"
            return JSONResponse(body, status_code=504)
        height, index, code, log_text = committed
        body.update(height=height, index=index, result={"code": code, "log": log_text})
        return JSONResponse(body, status_code=200)

    async def submit_txs(self, request: Request) -> Response:
        """Admit many transactions in one request (one HTTP round trip for a batch).

        Body: JSON {"txs": ["<hex>", ...]} or, as application/octet-stream,
        the canonical msgpack array of encoded transactions. Each is admitted
        on its own; the answer lists every one's hash and outcome in order.
        """
        octets = _is_octet_stream(request)
        body = await self._read_body(request)
        raws: list[bytes]
        if octets:
            # Its content is the protocol's encoding, which the description cannot check: 422.
            try:
                raws = _msgpack_byte_strings(body, TXS_PER_REQUEST_MAX)
            except DecodeError as e:
                raise HTTPException(
                    422, f"body must be a msgpack array of transactions: {e}"
                ) from None
        else:
            obj = _json_object(body, 'body must be JSON {"txs": ["<hex>", ...]}')
            if not isinstance(obj.get("txs"), list):
                raise HTTPException(400, 'body must be JSON {"txs": ["<hex>", ...]}')
            if len(obj["txs"]) > TXS_PER_REQUEST_MAX:
                raise HTTPException(400, f"at most {TXS_PER_REQUEST_MAX} transactions")
            raws = []
            for item in obj["txs"]:
                if not isinstance(item, str):
                    raise HTTPException(400, "each transaction must be a hex string")
                if len(item) > HEX_TX_CHARS_MAX:
                    raise HTTPException(400, f"tx over {HEX_TX_CHARS_MAX} hex characters")
                raws.append(_hex_param(item, "tx"))
        results: list[dict[str, Any]] = []
        accepted = 0
        for raw, outcome in zip(
            raws, await self.res.mempool_add_batch(raws, origin=None), strict=True
        ):
            if isinstance(outcome, MempoolError):
                results.append(
                    {"hash": tx_id(raw).hex(), "error": outcome.message, "reason": outcome.reason}
                )
                continue
            accepted += 1
            results.append({"hash": outcome[0].hex(), "code": outcome[1].code})
        return JSONResponse({"accepted": accepted, "results": results})

    async def submit_evidence(self, request: Request) -> Response:
        """Evidence of either kind, as its canonical bytes (octet-stream, or hex in JSON).

        Judged against this node's chain before it is stored or relayed: the
        cheap checks first, the signatures (in a worker thread) last; a valid
        new item goes to the evidence pool, to every peer, and into a block.
        A refusal names the failed check (docs/PROTOCOL.md sections 9.7, 12).
        """
        octets = _is_octet_stream(request)
        body = await self._read_body(request)
        if octets:
            raw = bytes(body)
        else:
            obj = _json_object(body, 'body must be JSON {"evidence": "<hex>"}')
            text = obj.get("evidence")
            if not isinstance(text, str):
                raise HTTPException(400, 'body must be JSON {"evidence": "<hex>"}')
            if len(text) > HEX_EVIDENCE_CHARS_MAX:
                raise HTTPException(400, f"evidence over {HEX_EVIDENCE_CHARS_MAX} hex characters")
            raw = _hex_param(text, "evidence")
        try:
            evidence = decode_evidence(raw)
        except DecodeError as e:
            raise HTTPException(422, f"evidence does not decode: {e}") from None
        refusal = await self.view.consensus.submit_evidence(evidence)
        kind = (
            "light_client_attack"
            if isinstance(evidence, LightClientAttackEvidence)
            else ("duplicate_vote")
        )
        if refusal is None:
            return JSONResponse(
                {"hash": evidence.hash.hex(), "type": kind, "height": evidence.height},
                status_code=202,
            )
        if refusal.startswith("known:"):
            raise HTTPException(409, refusal)
        if refusal.startswith("busy:"):
            raise HTTPException(503, refusal)
        raise HTTPException(422, refusal)

    async def _read_body(self, request: Request) -> bytearray:
        """The whole body: 413 over `request_body_bytes_max`, 408 if not in BODY_READ_TIMEOUT_S.

        Both are answered before the body is read whole; DrainBeforeAnswer
        makes sure such an answer reaches the client.
        """
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.body_bytes_max):
            raise HTTPException(413, f"request body over {self.body_bytes_max} bytes")
        body = bytearray()
        with trio.move_on_after(BODY_READ_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.body_bytes_max:
                    raise HTTPException(413, f"request body over {self.body_bytes_max} bytes")
            return body
        self.res.metrics.rpc_refused.labels("body_timeout").inc()
        raise HTTPException(408, f"request body not received within {BODY_READ_TIMEOUT_S:g} s")

    async def _read_tx_request(self, request: Request) -> tuple[bytes, str]:
        octets = _is_octet_stream(request)
        body = await self._read_body(request)
        wait = request.query_params.get("wait", "check")
        if octets:
            raw = bytes(body)
        else:
            obj = _json_object(body, 'body must be JSON {"tx": "<hex>"}')
            if not isinstance(obj.get("tx"), str):
                raise HTTPException(400, 'body must be JSON {"tx": "<hex>"}')
            if len(obj["tx"]) > HEX_TX_CHARS_MAX:
                raise HTTPException(400, f"tx over {HEX_TX_CHARS_MAX} hex characters")
            raw = _hex_param(obj["tx"], "tx")
            wait = obj.get("wait", wait)
        if wait not in ("check", "commit"):
            raise HTTPException(400, 'wait must be "check" or "commit"')
        return raw, str(wait)

    # ------------------------------------------------------------ stream

    async def stream_without_upgrade(self, request: Request) -> Response:
        """GET /stream without a websocket handshake: its parameters checked, then 426."""
        self._stream_params(request.query_params.get)
        raise HTTPException(
            426,
            "/stream is a websocket: send the upgrade handshake",
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    async def stream(self, ws: WebSocket) -> None:
        """Committed blocks in order from `from_height` (default: the next one), then live."""
        try:
            from_height, senders = self._stream_params(ws.query_params.get)
        except HTTPException as e:
            # Refused in the handshake, with the same 400 as plain HTTP (ASGI's websocket
            # denial response, which hypercorn supports).
            await ws.send_denial_response(_error(e.status_code, str(e.detail)))
            return
        guard = ws.scope.get("state", {}).get(CONNECTION_STATE_KEY)
        if isinstance(guard, GuardedStream):
            guard.stream_mode()  # the subscription's queue bounds a slow reader from here
        else:
            guard = None
        await ws.accept()
        try:
            with self.res.hub.subscribe() as sub:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_until_client_leaves, ws, nursery.cancel_scope)
                    if guard is not None:
                        nursery.start_soon(_cut_after_overflow, sub, guard)
                    await self._stream_from(ws, sub, from_height, senders)
                    nursery.cancel_scope.cancel()
        except TooManySubscribers:
            await ws.close(WS_CLOSE_OVERLOADED, reason="too many stream subscribers")
        except WebSocketDisconnect:
            pass

    def _stream_params(self, param: Callable[[str], str | None]) -> tuple[int, set[bytes] | None]:
        text = param("from_height")
        from_height = self.res.height + 1 if text is None else _height_param(text, "from_height")
        sender_text = param("sender")
        if sender_text is None:
            return from_height, None
        parts = sender_text.split(",")
        if len(parts) > STREAM_SENDER_FILTERS_MAX:
            raise HTTPException(400, f"at most {STREAM_SENDER_FILTERS_MAX} senders")
        return from_height, {_hex_param(p, "sender", 20) for p in parts}

    async def _stream_from(
        self,
        ws: WebSocket,
        sub: Subscription,
        from_height: int,
        senders: set[bytes] | None,
    ) -> None:
        next_height = from_height
        # Replay from the store up to what is committed now; the live queue holds the rest.
        while next_height <= self.res.height:
            event = self.res.committed_block(next_height)
            if event is None:
                await ws.close(WS_CLOSE_BAD_REQUEST, reason=f"height {next_height} not stored")
                return
            await ws.send_text(self._render_event(event, senders))
            next_height += 1
        async for event in sub.receive:
            if event.height < next_height:
                continue  # already sent from the store
            if event.height > next_height:  # missed while replaying: read it from the store
                for h in range(next_height, event.height):
                    stored = self.res.committed_block(h)
                    assert stored is not None
                    await ws.send_text(self._render_event(stored, senders))
            await ws.send_text(self._render_event(event, senders))
            next_height = event.height + 1
        if sub.overflowed:
            await ws.close(
                WS_CLOSE_TOO_SLOW,
                reason=f"client too slow; reconnect with from_height={next_height}",
            )

    def _render_event(self, event: CommittedBlock, senders: set[bytes] | None) -> str:
        """The JSON of one block event; the unfiltered one is rendered once for all clients."""
        if senders is None:
            cached = self._rendered.get(event.block.hash)
            if cached is not None:
                return cached
        block = event.block
        txs = []
        for i, raw in enumerate(block.txs):
            tx = event.txs[i]
            if senders is not None and tx.sender_address not in senders:
                continue
            code, log_text = event.tx_results[i]
            item = tx_json(raw, tx)
            item.update(index=i, result={"code": code, "log": log_text})
            txs.append(item)
        body = {
            "type": "block",
            "height": block.height,
            "hash": block.hash.hex(),
            "time_ms": block.header.time_ms,
            "tx_count": len(block.txs),
            "header": header_json(block.header),
            "header_encoded": block.header.encode().hex(),
            "txs": txs,
        }
        text = json.dumps(body)
        if senders is None:
            self._rendered[block.hash] = text
            while len(self._rendered) > RENDERED_BLOCKS_MAX:
                self._rendered.popitem(last=False)
        return text


async def _until_client_leaves(ws: WebSocket, stream_scope: trio.CancelScope) -> None:
    """Read what the client sends (ignored; its bytes are budgeted) and end the stream when it
    disconnects: sends to a gone client are dropped silently, so only this notices."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            stream_scope.cancel()
            return


async def _cut_after_overflow(sub: Subscription, guard: GuardedStream) -> None:
    """A client whose queue overflowed while a send to it is blocked gets the close grace,
    then is cut: the sender notices the overflow (and sends its 1008) only once that send
    returns, which for a client that never reads is never."""
    while not sub.overflowed:
        await trio.sleep(STREAM_OVERFLOW_CHECK_S)
    guard.abort_after(guard.close_grace_s)


class _RpcObserver(LoggingObserver):
    """Contained failures and refusals of the API, logged and counted in its metrics."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__("rpc")
        self.metrics = metrics

    def failed(self, kind: str, error: BaseException) -> None:
        self.metrics.rpc_errors.labels(kind).inc()
        super().failed(kind, error)

    def refused(self, reason: str) -> None:
        self.metrics.rpc_refused.labels(reason).inc()

    def connections(self, count: int) -> None:
        self.metrics.rpc_connections.set(count)
