"""LMDB against SQLite for the block store's write: one durable transaction per block.

Why: node/storage.py needs an embedded transactional store, and the choice is
made by measurement on the write the node does at every commit: the block's
bytes, its commit certificate, a tx-index entry and a result per transaction,
the application's key/value writes and the new chain state, all in ONE
transaction that is durable (fsync'd) when it returns.

Each backend gets the same pre-built blocks (random transaction bytes of
`--tx-bytes` each, so compression or caching cannot flatter either), writes
them one durable transaction per block into a fresh directory, and reports
blocks/s and MB/s of block bytes. LMDB: sync=True, metasync=True (an msync
per commit). SQLite: journal_mode=WAL, synchronous=FULL (an fsync of the WAL
per commit), one table per kind of record, blobs inline.

It also measures what the node really pays: node/storage.py's
`BlockStore.save_block` on the same blocks (with its checks: re-encoding the
block, hashing every tx id), and the per-signature fsync latency of the WAL
(`append` + `sync`) and of the sign state (`check_and_sign`: temp file, fsync,
rename, directory fsync).

Usage: .venv/bin/python benchmarks/storage.py [--blocks 30] [--txs 5000] [--tx-bytes 200]
The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lmdb
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import merkle
from consensus.crypto import PrivateKey
from consensus.state import ChainState
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Header,
    Validator,
    ValidatorSet,
    VoteType,
    vote_sign_bytes,
)
from node import wal
from node.signstate import SignState, SignStep
from node.storage import open_store


@dataclass(frozen=True, slots=True)
class BlockWrite:
    height: int
    block_hash: bytes
    block_bytes: bytes
    commit_bytes: bytes
    tx_ids: list[bytes]
    results: list[bytes]
    app_writes: list[tuple[bytes, bytes]]
    state_bytes: bytes


def make_blocks(count: int, txs: int, tx_bytes: int) -> list[BlockWrite]:
    blocks = []
    for height in range(1, count + 1):
        tx_list = [os.urandom(tx_bytes) for _ in range(txs)]
        block_bytes = msgpack.packb([[height, os.urandom(300)], tx_list, None, []])
        tx_ids = [hashlib.sha256(t).digest() for t in tx_list]
        blocks.append(
            BlockWrite(
                height=height,
                block_hash=hashlib.sha256(block_bytes[:400]).digest(),
                block_bytes=block_bytes,
                commit_bytes=os.urandom(4 * 70 + 60),
                tx_ids=tx_ids,
                results=[msgpack.packb([0, b""]) for _ in range(txs)],
                # A transfer touches two accounts: sender and receiver.
                app_writes=[(b"acct/" + os.urandom(20), os.urandom(48)) for _ in range(2 * txs)],
                state_bytes=os.urandom(700),
            )
        )
    return blocks


def _h(height: int) -> bytes:
    return struct.pack(">Q", height)


def run_lmdb(directory: Path, blocks: list[BlockWrite]) -> float:
    env = lmdb.open(
        str(directory), map_size=64 << 30, max_dbs=8, sync=True, metasync=True, readahead=False
    )
    dbs = {n: env.open_db(n.encode()) for n in ("blocks", "commits", "txs", "results", "app", "m")}
    start = time.perf_counter()
    for b in blocks:
        with env.begin(write=True) as txn:
            txn.put(_h(b.height), b.block_bytes, db=dbs["blocks"])
            txn.put(_h(b.height), b.commit_bytes, db=dbs["commits"])
            for i, (tx_id, result) in enumerate(zip(b.tx_ids, b.results, strict=True)):
                txn.put(tx_id, msgpack.packb([b.height, i]), db=dbs["txs"])
                txn.put(_h(b.height) + struct.pack(">I", i), result, db=dbs["results"])
            for k, v in b.app_writes:
                txn.put(k, v, db=dbs["app"])
            txn.put(b"state", b.state_bytes, db=dbs["m"])
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def run_sqlite(directory: Path, blocks: list[BlockWrite]) -> float:
    db = sqlite3.connect(directory / "store.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(
        """
        CREATE TABLE blocks (height INTEGER PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE commits (height INTEGER PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE txs (id BLOB PRIMARY KEY, height INTEGER, idx INTEGER) WITHOUT ROWID;
        CREATE TABLE results (height INTEGER, idx INTEGER, data BLOB,
                              PRIMARY KEY (height, idx)) WITHOUT ROWID;
        CREATE TABLE app (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;
        CREATE TABLE m (k TEXT PRIMARY KEY, v BLOB);
        """
    )
    start = time.perf_counter()
    for b in blocks:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO blocks VALUES (?, ?)", (b.height, b.block_bytes))
        db.execute("INSERT INTO commits VALUES (?, ?)", (b.height, b.commit_bytes))
        db.executemany(
            "INSERT INTO txs VALUES (?, ?, ?)", [(t, b.height, i) for i, t in enumerate(b.tx_ids)]
        )
        db.executemany(
            "INSERT INTO results VALUES (?, ?, ?)",
            [(b.height, i, r) for i, r in enumerate(b.results)],
        )
        db.executemany("INSERT OR REPLACE INTO app VALUES (?, ?)", b.app_writes)
        db.execute("INSERT OR REPLACE INTO m VALUES ('state', ?)", (b.state_bytes,))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def run_blockstore(directory: Path, blocks: list[BlockWrite]) -> float:
    """node/storage.py itself: real Block objects holding the same tx bytes."""
    key = PrivateKey(b"\x01" * 32)
    valset = ValidatorSet.of([Validator(key.public_key, 1)])
    empty = merkle.root([])
    state = ChainState(
        chain_id="bench",
        last_height=0,
        last_block_hash=b"",
        last_block_time_ms=0,
        last_validators=None,
        validators=valset,
        next_validators=valset,
        app_hash=b"",
        last_results_hash=empty,
    )
    store = open_store(directory / "store", map_bytes=64 << 30)
    store.init_genesis(state, {})
    prepared = []
    last_commit: Commit | None = None
    for b in blocks:
        txs = tuple(msgpack.unpackb(b.block_bytes)[1])
        header = Header(
            "bench", b.height, b.height, state.last_block_hash,
            b"" if last_commit is None else last_commit.hash, empty, valset.hash,
            valset.hash, b"", empty, empty, key.address,
        )  # fmt: skip
        block = Block(header, txs, last_commit)
        commit = Commit(b.height, 0, block.hash, (CommitSig(0, b"\x00" * 64),))
        state = ChainState(
            chain_id="bench",
            last_height=b.height,
            last_block_hash=block.hash,
            last_block_time_ms=0,
            last_validators=valset,
            validators=valset,
            next_validators=valset,
            app_hash=b"",
            last_results_hash=empty,
        )
        block.encode()  # made once where a block is built or received, then carried
        prepared.append((block, commit, b, state))
        last_commit = commit
    start = time.perf_counter()
    for block, commit, b, new_state in prepared:
        store.save_block(block, commit, b.tx_ids, b.results, dict(b.app_writes), new_state)
    elapsed = time.perf_counter() - start
    store.close()
    return elapsed


def fsync_latencies(directory: Path, count: int) -> dict[str, float]:
    """Median and p99 ms of one WAL append+sync and one durable sign-state update."""
    key = PrivateKey(b"\x02" * 32)
    w = wal.open_wal(directory / "wal")
    ss = SignState.create(directory / "sign_state.json")
    wal_ms, sign_ms = [], []
    for height in range(1, count + 1):
        t0 = time.perf_counter()
        w.append(os.urandom(200))
        w.sync()
        t1 = time.perf_counter()
        sb = vote_sign_bytes("bench", VoteType.PREVOTE, height, 0, os.urandom(32))
        ss.check_and_sign(height, 0, SignStep.PREVOTE, sb, key.sign)
        t2 = time.perf_counter()
        wal_ms.append(1000 * (t1 - t0))
        sign_ms.append(1000 * (t2 - t1))
    w.close()
    wal_ms.sort()
    sign_ms.sort()
    return {
        "wal_sync_ms_p50": round(wal_ms[count // 2], 2),
        "wal_sync_ms_p99": round(wal_ms[count * 99 // 100], 2),
        "sign_ms_p50": round(sign_ms[count // 2], 2),
        "sign_ms_p99": round(sign_ms[count * 99 // 100], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--txs", type=int, default=5000)
    parser.add_argument("--tx-bytes", type=int, default=200)
    parser.add_argument("--fsyncs", type=int, default=200, help="samples per latency")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the scratch dirs")
    args = parser.parse_args()
    blocks = make_blocks(args.blocks, args.txs, args.tx_bytes)
    block_mb = sum(len(b.block_bytes) for b in blocks) / 1e6
    print(
        f"{args.blocks} blocks of {args.txs} txs x {args.tx_bytes} B "
        f"({block_mb / args.blocks:.2f} MB each), one durable transaction per block",
        file=sys.stderr,
    )
    results: dict[str, dict[str, float]] = {}
    runs = (("lmdb", run_lmdb), ("sqlite", run_sqlite), ("blockstore", run_blockstore))
    for name, run in runs:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            elapsed = run(Path(tmp), blocks)
            du = sum(p.stat().st_blocks * 512 for p in Path(tmp).rglob("*")) / 1e6
        results[name] = {
            "blocks_per_s": round(args.blocks / elapsed, 2),
            "block_mb_per_s": round(block_mb / elapsed, 2),
            "ms_per_block": round(1000 * elapsed / args.blocks, 1),
            "disk_mb": round(du, 1),
        }
        print(f"{name:7s} {results[name]}", file=sys.stderr)
    ratio = results["lmdb"]["blocks_per_s"] / results["sqlite"]["blocks_per_s"]
    print(f"lmdb/sqlite throughput ratio: {ratio:.2f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        latencies = fsync_latencies(Path(tmp), args.fsyncs)
    print(f"fsync latencies: {latencies}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "storage",
                "blocks": args.blocks,
                "txs_per_block": args.txs,
                "tx_bytes": args.tx_bytes,
                **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
                "lmdb_over_sqlite": round(ratio, 2),
                **latencies,
            }
        )
    )


if __name__ == "__main__":
    main()
