"""The node's durable store: blocks, commits, tx index, validator sets, chain and app state.

Why one store and one transaction: after kill -9 or power loss at any instant,
the node must restart without repair steps and never lose a committed block.
CometBFT keeps the block store, the state store and the application's own
database apart and reconciles them at start ("handshake"), replaying blocks
the application missed. Here the application keeps its state in this store
too, and `save_block` writes the block, its commit certificate, the tx index,
the results, the application's writes and the new `ChainState` in ONE LMDB
transaction, durable when it returns. The store is therefore never half-way
between two heights; an application that keeps state elsewhere (in memory)
reloads it with `iter_app_state` or replays blocks with `iter_blocks` from
its own last height (the handshake by height).

LMDB was chosen over SQLite by measurement (benchmarks/storage.py and the
"Storage" section of benchmarks/README.md): about 2x the durable block
writes per second. LMDB is a copy-on-write B+tree: a commit writes new pages,
fsyncs them, then flips the meta page and fsyncs again (sync=True,
metasync=True), so a crash leaves the previous or the new commit, never a mix.

Layout, one environment in `data/store/` (LMDB's data.mdb and lock.mdb):

    meta          b"schema" -> version, b"state" -> ChainState, b"genesis" -> genesis hash
    blocks        height (u64 BE) -> Block encoding
    block_hashes  block hash -> height
    seen_commits  height -> the Commit this node saw for the block (stored with it)
    commits       height -> the Commit carried in block height + 1 (canonical)
    tx_index      tx id -> [height, index]
    tx_results    height || index (u32 BE) -> result bytes (the app's)
    valset_ptr    height -> height at which that height's validator set was stored
    valsets       height -> ValidatorSet encoding (only where the set changed)
    app           application key -> value

Limits (each checked before a write; a write over a limit raises
StorageLimitError and nothing of it is stored): `map_bytes` (the LMDB map,
sparse; when full, StorageFullError and the write is rolled back), block
bytes, result bytes, app key and value bytes, app writes per block. Readers
return one block, commit or value at a time and never the whole chain.

Calls are synchronous (LMDB is a memory map; only `save_block` waits on
fsync). One writer at a time, by LMDB's design; readers may run in threads.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lmdb

from consensus.codec import DecodeError, Reader, decode_with, encode
from consensus.state import ChainState
from consensus.types import (
    BLOCK_BYTES_MAX,
    BLOCK_TXS_MAX,
    HEIGHT_MAX,
    Block,
    Commit,
    ValidatorSet,
)
from node.durable import fsync_directory

__all__ = [
    "APP_KEY_BYTES_MAX",
    "APP_VALUE_BYTES_MAX",
    "APP_WRITES_MAX",
    "MAP_BYTES_DEFAULT",
    "TX_RESULT_BYTES_MAX",
    "BlockStore",
    "StorageConflictError",
    "StorageCorruptError",
    "StorageError",
    "StorageFullError",
    "StorageLimitError",
    "TxRecord",
    "open_store",
]

# 64 GiB of address space; the file is sparse and grows with the data. Raise it
# (config) for a longer chain; shrinking below the data size is refused by LMDB.
MAP_BYTES_DEFAULT = 64 * 1024**3
# LMDB's own key limit is 511 bytes; app keys are paths, not payloads.
# Above every built-in app's longest key (a one-byte prefix + kvstore's 256-byte
# key), so a key an app accepted in validation can always be stored.
APP_KEY_BYTES_MAX = 512
APP_VALUE_BYTES_MAX = 1024 * 1024
# Two writes per transaction (sender and receiver) at the protocol's largest block,
# plus the app's own bookkeeping: bounds what one commit holds in memory.
APP_WRITES_MAX = 2 * BLOCK_TXS_MAX + 1024
TX_RESULT_BYTES_MAX = 64 * 1024
STATE_BYTES_MAX = 256 * 1024  # two validator sets of VALIDATORS_MAX plus small fields
SCHEMA_VERSION = 1
READERS_MAX = 126  # LMDB's default reader-table size: concurrent read transactions

_T = TypeVar("_T")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_DBS = (
    "meta",
    "blocks",
    "block_hashes",
    "seen_commits",
    "commits",
    "tx_index",
    "tx_results",
    "valset_ptr",
    "valsets",
    "app",
)


class StorageError(Exception):
    """Base of the store's errors."""


class StorageLimitError(StorageError):
    """A value or batch exceeds a named limit; nothing was written."""


class StorageConflictError(StorageError):
    """The write does not extend the stored chain (wrong height, hash, or state)."""


class StorageCorruptError(StorageError):
    """Stored bytes do not decode: the store is damaged, or a different schema."""


class StorageFullError(StorageError):
    """The LMDB map (map_bytes) or the disk is full; the transaction was rolled back."""


def _h(height: int) -> bytes:
    return _U64.pack(height)


@dataclass(frozen=True, slots=True)
class TxRecord:
    """Where a committed transaction is, its bytes, the application's result and its block.

    The block, decoded once for the record, is what a Merkle proof is made from.
    """

    height: int
    index: int
    tx: bytes
    result: bytes
    block: Block


def open_store(path: str | os.PathLike[str], *, map_bytes: int = MAP_BYTES_DEFAULT) -> BlockStore:
    """Open (creating if needed) the store in directory `path` (e.g. `<home>/data/store`)."""
    return BlockStore(Path(path), map_bytes=map_bytes)


class BlockStore:
    """Blocks, commits, tx index, validator sets, chain state and app state in one LMDB env."""

    def __init__(self, path: Path, *, map_bytes: int = MAP_BYTES_DEFAULT) -> None:
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(path.parent)
        try:
            self._env = lmdb.open(
                str(path),
                map_size=map_bytes,
                subdir=True,
                max_dbs=len(_DBS),
                max_readers=READERS_MAX,
                sync=True,
                metasync=True,
                writemap=False,
                readahead=False,
                lock=True,
            )
        except lmdb.Error as e:
            raise StorageError(f"{path}: cannot open store: {e}") from None
        self.path = path
        self._db = {name: self._env.open_db(name.encode()) for name in _DBS}
        with self._env.begin(write=True) as txn:
            version = txn.get(b"schema", db=self._db["meta"])
            if version is None:
                txn.put(b"schema", _U32.pack(SCHEMA_VERSION), db=self._db["meta"])
            elif version != _U32.pack(SCHEMA_VERSION):
                raise StorageCorruptError(f"{path}: unknown schema version {version.hex()}")

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writes

    def init_genesis(self, state: ChainState, app_writes: Mapping[bytes, bytes | None]) -> None:
        """Store the height-0 state (sets for heights 1 and 2) and the app's genesis writes."""
        if state.last_height != 0 or state.last_block_hash:
            raise StorageConflictError("genesis state must be at height 0 with no block")
        _check_app_writes(app_writes)
        state_bytes = state.encode()
        try:
            with self._env.begin(write=True) as txn:
                if txn.get(b"state", db=self._db["meta"]) is not None:
                    raise StorageConflictError(f"{self.path}: already initialised")
                self._put_valset(txn, 1, state.validators, None)
                self._put_valset(txn, 2, state.next_validators, state.validators)
                self._apply_app_writes(txn, app_writes)
                txn.put(b"state", state_bytes, db=self._db["meta"])
        except lmdb.MapFullError:
            raise StorageFullError(f"{self.path}: map full (raise map_bytes)") from None

    def save_block(
        self,
        block: Block,
        seen_commit: Commit,
        tx_ids: Sequence[bytes],
        tx_results: Sequence[bytes],
        app_writes: Mapping[bytes, bytes | None],
        state: ChainState,
    ) -> None:
        """Commit block `h` and everything that changes with it, atomically and durably.

        The stored bytes are `block.encode()`: for a block that arrived, the
        bytes that arrived; for one built here, its encoding made once.
        `seen_commit` is the certificate this node saw for it; `tx_ids` the
        transactions' ids, in order (the validation core hashed them once);
        `tx_results` one per transaction; `app_writes` the application's state
        changes (None deletes a key); `state` the chain state after h, whose
        `next_validators` is the set for h + 2. When this returns, all of it
        survives power loss; if it raises, none of it was written.
        """
        height = block.height
        block_bytes = block.encode()
        if len(block_bytes) > BLOCK_BYTES_MAX:
            raise StorageLimitError(f"block of {len(block_bytes)} bytes over {BLOCK_BYTES_MAX}")
        if (seen_commit.height, seen_commit.block_hash) != (height, block.hash):
            raise StorageConflictError("seen commit is not for this block")
        if len(tx_results) != len(block.txs):
            raise StorageConflictError(f"{len(tx_results)} results for {len(block.txs)} txs")
        assert len(tx_ids) == len(block.txs), "one id per transaction"
        for r in tx_results:
            if len(r) > TX_RESULT_BYTES_MAX:
                raise StorageLimitError(f"tx result over {TX_RESULT_BYTES_MAX} bytes")
        if (state.last_height, state.last_block_hash) != (height, block.hash):
            raise StorageConflictError("new state is not the state after this block")
        _check_app_writes(app_writes)
        state_bytes = state.encode()
        try:
            with self._env.begin(write=True) as txn:
                current = self._state_in(txn)
                if current is None:
                    raise StorageConflictError(f"{self.path}: not initialised (init_genesis)")
                self._check_extends(current, block, state)
                self._put_block(txn, block, block_bytes, seen_commit, tx_ids, tx_results)
                self._put_valset(txn, height + 2, state.next_validators, current.next_validators)
                self._apply_app_writes(txn, app_writes)
                txn.put(b"state", state_bytes, db=self._db["meta"])
        except lmdb.MapFullError:
            raise StorageFullError(f"{self.path}: map full (raise map_bytes)") from None

    @staticmethod
    def _check_extends(current: ChainState, block: Block, state: ChainState) -> None:
        if block.height != current.last_height + 1:
            raise StorageConflictError(
                f"block {block.height} does not follow stored height {current.last_height}"
            )
        if block.header.last_block_hash != current.last_block_hash:
            raise StorageConflictError(f"block {block.height} does not link to the stored chain")
        if state.chain_id != current.chain_id or block.header.chain_id != current.chain_id:
            raise StorageConflictError("chain id differs from the stored chain")
        if state.validators != current.next_validators:
            raise StorageConflictError("validators for h+1 were fixed at h-1 and cannot change")

    def _put_block(
        self,
        txn: lmdb.Transaction,
        block: Block,
        block_bytes: bytes,
        seen_commit: Commit,
        tx_ids: Sequence[bytes],
        tx_results: Sequence[bytes],
    ) -> None:
        height = block.height
        key = _h(height)
        txn.put(key, block_bytes, db=self._db["blocks"])
        txn.put(block.hash, key, db=self._db["block_hashes"])
        txn.put(key, seen_commit.encode(), db=self._db["seen_commits"])
        if block.last_commit is not None:
            txn.put(_h(height - 1), block.last_commit.encode(), db=self._db["commits"])
        tx_index, tx_res = self._db["tx_index"], self._db["tx_results"]
        for index, (txid, result) in enumerate(zip(tx_ids, tx_results, strict=True)):
            # The first inclusion of identical bytes is the one a client asks about.
            txn.put(txid, encode([height, index]), db=tx_index, overwrite=False)
            txn.put(key + _U32.pack(index), result, db=tx_res)

    def _put_valset(
        self,
        txn: lmdb.Transaction,
        height: int,
        valset: ValidatorSet,
        previous: ValidatorSet | None,
    ) -> None:
        """Store the set for `height`, as a pointer when it equals the set at height - 1."""
        if previous is not None and valset == previous:
            stored_at = txn.get(_h(height - 1), db=self._db["valset_ptr"])
            assert stored_at is not None, "set for height - 1 was stored one block earlier"
        else:
            stored_at = _h(height)
            txn.put(stored_at, valset.encode(), db=self._db["valsets"])
        txn.put(_h(height), stored_at, db=self._db["valset_ptr"])

    def _apply_app_writes(
        self, txn: lmdb.Transaction, app_writes: Mapping[bytes, bytes | None]
    ) -> None:
        app = self._db["app"]
        for k, v in app_writes.items():
            if v is None:
                txn.delete(k, db=app)
            else:
                txn.put(k, v, db=app)

    # ------------------------------------------------------------ reads

    def _state_in(self, txn: lmdb.Transaction) -> ChainState | None:
        data = txn.get(b"state", db=self._db["meta"])
        if data is None:
            return None
        try:
            return ChainState.decode(bytes(data))
        except DecodeError as e:
            raise StorageCorruptError(f"{self.path}: chain state: {e}") from None

    def load_state(self) -> ChainState | None:
        """The chain state after the last committed block, or None before init_genesis."""
        with self._env.begin() as txn:
            return self._state_in(txn)

    def genesis_hash(self) -> bytes | None:
        """The hash of the genesis this store was started from (None: not recorded)."""
        return self._get("meta", b"genesis")

    def record_genesis_hash(self, genesis_hash: bytes) -> None:
        """Record the genesis hash once (stores made before it was recorded get it here)."""
        with self._env.begin(write=True) as txn:
            if txn.get(b"genesis", db=self._db["meta"]) is None:
                txn.put(b"genesis", genesis_hash, db=self._db["meta"])

    def latest_height(self) -> int:
        """Height of the last committed block (0 if none)."""
        state = self.load_state()
        return 0 if state is None else state.last_height

    def _get(self, db: str, key: bytes) -> bytes | None:
        with self._env.begin() as txn:
            value = txn.get(key, db=self._db[db])
        return None if value is None else bytes(value)

    def load_block_bytes(self, height: int) -> bytes | None:
        return self._get("blocks", _h(height))

    def load_block(self, height: int) -> Block | None:
        data = self.load_block_bytes(height)
        return None if data is None else _decode(Block.decode, data, f"block {height}")

    def height_of_block(self, block_hash: bytes) -> int | None:
        data = self._get("block_hashes", block_hash)
        return None if data is None else int(_U64.unpack(data)[0])

    def load_seen_commit_bytes(self, height: int) -> bytes | None:
        return self._get("seen_commits", _h(height))

    def load_seen_commit(self, height: int) -> Commit | None:
        """The certificate this node saw for block `height` (stored with the block)."""
        data = self._get("seen_commits", _h(height))
        return None if data is None else _decode(Commit.decode, data, f"seen commit {height}")

    def load_commit(self, height: int) -> Commit | None:
        """The certificate that committed block `height`.

        The one carried in block height + 1 once that block is stored (the
        canonical one every node agrees on), else the seen commit.
        """
        data = self._get("commits", _h(height))
        if data is None:
            return self.load_seen_commit(height)
        return _decode(Commit.decode, data, f"commit {height}")

    def load_validators(self, height: int) -> ValidatorSet | None:
        """The set that signs block `height` (known up to last_height + 2)."""
        with self._env.begin() as txn:
            stored_at = txn.get(_h(height), db=self._db["valset_ptr"])
            if stored_at is None:
                return None
            data = txn.get(stored_at, db=self._db["valsets"])
        if data is None:
            raise StorageCorruptError(f"{self.path}: validator set pointer for {height} dangles")
        return _decode(ValidatorSet.decode, bytes(data), f"validators {height}")

    def load_tx(self, tx_id: bytes) -> TxRecord | None:
        """A committed transaction by id: its position, bytes and result."""
        data = self._get("tx_index", tx_id)
        if data is None:
            return None
        try:
            height, index = decode_with(
                bytes(data), _read_tx_position, encode, bytes_max=32, field_bytes_max=0
            )
        except DecodeError as e:
            raise StorageCorruptError(f"{self.path}: tx index: {e}") from None
        block = self.load_block(height)
        result = self.load_tx_result(height, index)
        if block is None or index >= len(block.txs) or result is None:
            raise StorageCorruptError(f"{self.path}: tx index points at missing {height}/{index}")
        return TxRecord(height, index, block.txs[index], result, block)

    def load_tx_result(self, height: int, index: int) -> bytes | None:
        return self._get("tx_results", _h(height) + _U32.pack(index))

    def iter_block_results(self, height: int) -> Iterator[bytes]:
        """The results of block `height` in transaction order (one at a time)."""
        prefix = _h(height)
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._db["tx_results"])
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if key[:8] != prefix:
                        break
                    yield bytes(value)

    def iter_blocks(self, start: int, end: int) -> Iterator[Block]:
        """Blocks start..end inclusive, one decoded block in memory at a time (handshake replay)."""
        for height in range(start, end + 1):
            block = self.load_block(height)
            if block is None:
                raise StorageCorruptError(f"{self.path}: block {height} missing below the tip")
            yield block

    def blocks_to_replay(self, app_height: int) -> Iterator[Block]:
        """Handshake by height: the blocks an application at `app_height` must re-execute.

        An application that keeps its state in this store is always at
        `latest_height()` (its writes commit with the block) and gets nothing.
        One that keeps state elsewhere reports the last height it applied and
        re-executes these, in order. An application ahead of the store cannot
        be reconciled and raises StorageConflictError.
        """
        top = self.latest_height()
        if not 0 <= app_height <= top:
            raise StorageConflictError(f"application at height {app_height}, store at {top}")
        return self.iter_blocks(app_height + 1, top)

    def load_app_value(self, key: bytes) -> bytes | None:
        return self._get("app", key)

    def iter_app_state(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """The application's (key, value) pairs in key order, from one consistent snapshot.

        The snapshot pins LMDB pages while the iterator is alive: finish it (or
        close it) promptly, e.g. while loading the application at start.
        """
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._db["app"])
            if cursor.set_range(prefix):
                for key, value in cursor:
                    if not key.startswith(prefix):
                        break
                    yield bytes(key), bytes(value)

    def statistics(self) -> dict[str, int]:
        """Entries per table and map usage, for metrics and operators."""
        info = self._env.info()
        stat = self._env.stat()
        counts: dict[str, int] = {}
        with self._env.begin() as txn:
            for name, db in self._db.items():
                counts[f"{name}_entries"] = int(txn.stat(db)["entries"])
        counts["map_bytes"] = int(info["map_size"])
        counts["used_bytes"] = int(info["last_pgno"] + 1) * int(stat["psize"])
        return counts


def _read_tx_position(r: Reader) -> tuple[int, int]:
    """A tx index entry: [height, index in the block]."""
    r.array("tx index", length=2)
    return r.integer("tx index height", 1, HEIGHT_MAX), r.integer(
        "tx index index", 0, BLOCK_TXS_MAX - 1
    )


def _decode(decoder: Callable[[bytes], _T], data: bytes, what: str) -> _T:
    try:
        return decoder(data)
    except DecodeError as e:
        raise StorageCorruptError(f"stored {what} does not decode: {e}") from None


def _check_app_writes(app_writes: Mapping[bytes, bytes | None]) -> None:
    if len(app_writes) > APP_WRITES_MAX:
        raise StorageLimitError(f"{len(app_writes)} app writes over {APP_WRITES_MAX}")
    for k, v in app_writes.items():
        if not 1 <= len(k) <= APP_KEY_BYTES_MAX:
            raise StorageLimitError(f"app key of {len(k)} bytes outside 1..{APP_KEY_BYTES_MAX}")
        if v is not None and len(v) > APP_VALUE_BYTES_MAX:
            raise StorageLimitError(f"app value of {len(v)} bytes over {APP_VALUE_BYTES_MAX}")
