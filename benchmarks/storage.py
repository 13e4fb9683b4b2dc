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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--txs", type=int, default=5000)
    parser.add_argument("--tx-bytes", type=int, default=200)
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
    for name, run in (("lmdb", run_lmdb), ("sqlite", run_sqlite)):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            elapsed = run(Path(tmp), blocks)
            du = sum(p.stat().st_blocks * 512 for p in Path(tmp).iterdir()) / 1e6
        results[name] = {
            "blocks_per_s": round(args.blocks / elapsed, 2),
            "block_mb_per_s": round(block_mb / elapsed, 2),
            "ms_per_block": round(1000 * elapsed / args.blocks, 1),
            "disk_mb": round(du, 1),
        }
        print(f"{name:7s} {results[name]}", file=sys.stderr)
    ratio = results["lmdb"]["blocks_per_s"] / results["sqlite"]["blocks_per_s"]
    print(f"lmdb/sqlite throughput ratio: {ratio:.2f}", file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "storage",
                "blocks": args.blocks,
                "txs_per_block": args.txs,
                "tx_bytes": args.tx_bytes,
                **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items()},
                "lmdb_over_sqlite": round(ratio, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
