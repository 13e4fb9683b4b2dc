"""The application interface: the state machine that gives transactions their meaning.

The validation core runs the application's state transition in the same pass
as signature checking, so the interface lives in `consensus/` and is pure: an
application never does I/O. It returns what it would write (`BlockExecution`)
and the node persists those writes in the same storage transaction as the
block; `commit` then applies them to the in-memory state. Executing a block
never changes committed state, so a block that fails validation (or loses the
round) leaves no trace.

Consensus never chooses an application: whoever runs the validation core
passes it one. Two are built in (`apps/`, which also says how the node
creates them): `ledger` and `kvstore`. docs/PROTOCOL.md (section 11) gives
their payload formats and app hash byte-exactly: the root of the state tree
(consensus/statetree.py) over the whole state.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from consensus import merkle
from consensus.codec import encode
from consensus.statetree import PendingTree, StateTree
from consensus.types import Evidence, Header, Transaction

__all__ = [
    "CODE_OK",
    "Application",
    "BlockExecution",
    "QueryResult",
    "TxResult",
    "ValidatorUpdate",
    "results_hash",
]

CODE_OK = 0

# Application logs are for people; bounded so a hostile payload cannot bloat results.
TX_LOG_BYTES_MAX = 256


@dataclass(frozen=True, slots=True)
class TxResult:
    """The outcome of one transaction. Only `code` and `data` are hashed into results."""

    code: int
    log: str = ""
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == CODE_OK

    def to_obj(self) -> list[Any]:
        """What `results_hash` commits to: the deterministic part of the result."""
        return [self.code, self.data]


# Most transactions succeed with nothing to return: one shared object, no allocation.
TX_OK = TxResult(CODE_OK)


@dataclass(frozen=True, slots=True)
class QueryResult:
    code: int
    value: bytes = b""
    log: str = ""
    height: int = 0

    @property
    def ok(self) -> bool:
        return self.code == CODE_OK


@dataclass(frozen=True, slots=True)
class ValidatorUpdate:
    """Set `public_key`'s voting power at height + 2; power 0 removes the validator."""

    public_key: bytes
    power: int


@dataclass(frozen=True, slots=True)
class BlockExecution:
    """What executing one block would do, computed without touching committed state.

    `writes` are (key, value) sorted by key, value None for a deletion; the
    node stores them with the block and then calls `Application.commit`.
    `base_app_hash` is the app hash the block was executed on, so `commit` can
    refuse an execution computed against some other state. `state` is the
    state tree after the writes, hashed when `app_hash` is first read: the
    node reads it while it stores the block, so validating a block costs no
    tree hashing (header h + 1 carries block h's app hash; block h does not).
    """

    height: int
    tx_results: tuple[TxResult, ...]
    validator_updates: tuple[ValidatorUpdate, ...]
    writes: tuple[tuple[bytes, bytes | None], ...]
    base_app_hash: bytes
    # A function of the base state (base_app_hash) and the writes: not compared.
    state: PendingTree = field(compare=False)

    @property
    def app_hash(self) -> bytes:
        """The app hash after the block: the state tree's root (computed once)."""
        return self.state.tree().root


class Application(Protocol):
    """A deterministic state machine driven by committed blocks."""

    name: str

    @property
    def app_hash(self) -> bytes: ...

    @property
    def height(self) -> int: ...

    def check_tx(self, tx: Transaction) -> TxResult:
        """Admission against the mempool's view (committed state plus admitted txs).

        The signature is the caller's to check (through the verifier and its
        cache). An accepted transaction updates the mempool's view; `commit`
        resets that view to the committed state.
        """
        ...

    def execute_block(
        self,
        header: Header,
        txs: Iterable[Transaction],
        evidence: Sequence[Evidence],
    ) -> BlockExecution:
        """Run a block on the committed state. `txs` is iterated once, in order.

        A transaction that fails is recorded with its code and log, never
        dropped. The committed state is left unchanged. The iteration may stop
        early (the validation core stops feeding transactions once the block is
        known to be invalid); the result is then discarded.
        """
        ...

    def commit(self, execution: BlockExecution) -> bytes:
        """Apply `execution.writes` to the in-memory state and return the new app hash."""
        ...

    def query(self, path: str, data: bytes) -> QueryResult: ...

    def members(self) -> frozenset[bytes]:
        """The node ids allowed to connect, as committed (empty: anyone may connect)."""
        ...

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """The committed state as key/value pairs (what the node stores at genesis)."""
        ...

    def state_tree(self, height: int) -> StateTree | None:
        """The state tree after block `height` (its root: header height + 1's app hash),
        if the application still keeps it; it keeps the latest two heights."""
        ...


def results_hash(results: Sequence[TxResult]) -> bytes:
    """Merkle root (consensus/merkle.py) over each result's canonical `to_obj` encoding.

    Results repeat (nearly all transactions succeed identically, and apps
    share one object for the common outcome), so the results are read as
    runs of one object, and the root of a stretch inside one run is computed
    once per length: O(runs * log(n)) hashes instead of n. The root is the
    same as merkle.root's.
    """
    n = len(results)
    if n == 0:
        return merkle.root_from_leaf_hashes([])
    runs_max = n // RESULTS_RUN_LEAVES_MIN
    starts: list[int] = []
    leaves: list[bytes] = []
    leaf_of: dict[int, bytes] = {}  # id -> leaf hash, for objects seen in an earlier run
    position = 0
    for key, run in itertools.groupby(results, key=id):
        if len(starts) >= runs_max:
            return _expanded_root(results)
        group = list(run)
        leaf = leaf_of.get(key)
        if leaf is None:
            leaf = leaf_of[key] = _result_leaf(group[0])
        starts.append(position)
        leaves.append(leaf)
        position += len(group)
    return _RunTree(starts, leaves, n).root(0, n)


def _expanded_root(results: Sequence[TxResult]) -> bytes:
    """results_hash for results that barely repeat: every leaf, hashed once per run."""
    level: list[bytes] = []
    prev: TxResult | None = None
    leaf = b""
    for r in results:
        if r is not prev:
            leaf = _result_leaf(r)
            prev = r
        level.append(leaf)
    return merkle.root_from_leaf_hashes(level)


# Below this many results per run on average, expanding the runs is cheaper.
RESULTS_RUN_LEAVES_MIN = 8


def _result_leaf(r: TxResult) -> bytes:
    return merkle.leaf_hash(encode(r.to_obj()))


class _RunTree:
    """RFC 6962 roots over a run-length encoded list of leaf hashes."""

    __slots__ = ("leaves", "memo", "n", "starts")

    def __init__(self, starts: list[int], leaves: list[bytes], n: int) -> None:
        self.starts = starts
        self.leaves = leaves
        self.n = n
        self.memo: dict[tuple[bytes, int], bytes] = {}

    def root(self, lo: int, hi: int) -> bytes:
        """The root of leaves [lo, hi), hi - lo >= 1 (merkle's split at a power of two)."""
        run = bisect.bisect_right(self.starts, lo) - 1
        run_end = self.starts[run + 1] if run + 1 < len(self.starts) else self.n
        if hi <= run_end:
            return self.uniform(self.leaves[run], hi - lo)
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        return merkle.inner_hash(self.root(lo, lo + k), self.root(lo + k, hi))

    def uniform(self, leaf: bytes, count: int) -> bytes:
        """The root of `count` copies of `leaf`."""
        if count == 1:
            return leaf
        key = (leaf, count)
        node = self.memo.get(key)
        if node is None:
            k = 1 << ((count - 1).bit_length() - 1)
            node = merkle.inner_hash(self.uniform(leaf, k), self.uniform(leaf, count - k))
            self.memo[key] = node
        return node
