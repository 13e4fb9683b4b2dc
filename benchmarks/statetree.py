"""State tree candidates, measured against the block's own costs in the same run.

For each state size (`--sizes`, accounts of the ledger's shape: key "a" +
20 bytes, value canonical [balance, nonce]) and one block of `--writes`
writes (10,000 transfers write about 20,000 accounts: half of them existing,
half new, or all existing keys when the state has fewer), prints (stderr for
people, the last line on stdout is JSON):

- the update's cost for one block: the tree after the writes and its root;
- the proof of a present key (inclusion) and of an absent key (absence):
  encoded size and verify time;
- two baselines measured in the same run: the hash chain the app hash was
  before this tree (H(prev || H(canonical sorted writes))) over the same
  writes, and the block's `--txs` signature verifications by the suite's
  batch call (`Suite.verify_items`, one thread, chunks of the verifier's size);
  each candidate's update is printed as a ratio to both.

Candidates:

- `smt`: consensus/statetree.py, the compacted sparse Merkle tree (binary,
  over H(key); a lone key's leaf sits where it is alone), batched per block.
- `bucket`: a fixed fan-out bucketed tree: 4,096 buckets by the first 12 bits
  of H(key); a bucket hashes its sorted (H(key), H(value)) pairs in one call;
  a complete binary Merkle tree over the bucket hashes. A proof is the whole
  bucket plus 12 siblings.

Every figure is this thread's CPU time, the best of `--repeat` runs.

    .venv/bin/python benchmarks/statetree.py
    .venv/bin/python benchmarks/statetree.py --sizes 10000 100000 --writes 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from consensus.codec import encode
from consensus.crypto import DEFAULT_SUITE, SUITES, PrivateKey, activate, active, digest
from consensus.sigverify import CHUNK_ITEMS
from consensus.statetree import StateTree, decode_state_proof, verify_state_proof

log = partial(print, file=sys.stderr, flush=True)
Writes = list[tuple[bytes, bytes | None]]


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The least CPU time of this thread over `repeat` runs: everything measured here
    runs on the calling thread, and other processes' load barely moves its CPU time."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def account(rnd: random.Random) -> tuple[bytes, bytes]:
    return b"a" + rnd.randbytes(20), encode([rnd.randrange(10**12), rnd.randrange(1000)])


def chain_app_hash(prev: bytes, writes: Writes) -> bytes:
    """The app hash before the state tree: one hash over the block's sorted writes."""
    return digest(prev + digest(encode([[k, v] for k, v in writes])))


# ---------------------------------------------------------------- bucketed candidate

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS


class BucketTree:
    """Fixed fan-out: bucket i holds the keys whose H(key) starts with i (12 bits)."""

    def __init__(self) -> None:
        self.buckets: list[dict[bytes, bytes]] = [{} for _ in range(BUCKETS)]
        self.levels: list[list[bytes]] = []

    def _bucket_hash(self, i: int) -> bytes:
        h = active().hash_new
        entries = sorted(self.buckets[i].items())
        return bytes(h(b"\x20" + b"".join(p + v for p, v in entries)).digest())

    def build(self, items: list[tuple[bytes, bytes]]) -> None:
        self.apply(items, range(BUCKETS))

    def apply(self, writes: Any, touched: Any = None) -> bytes:
        h = active().hash_new
        dirty = set() if touched is None else set(touched)
        for k, v in writes:
            p = h(k).digest()
            i = int.from_bytes(p[:2], "big") >> (16 - BUCKET_BITS)
            if v is None:
                self.buckets[i].pop(p, None)
            else:
                self.buckets[i][p] = h(v).digest()
            dirty.add(i)
        if not self.levels:
            self.levels = [[b""] * (BUCKETS >> d) for d in range(BUCKET_BITS + 1)]
        level0 = self.levels[0]
        for i in dirty:
            level0[i] = self._bucket_hash(i)
        for d in range(1, BUCKET_BITS + 1):
            below = self.levels[d - 1]
            here = self.levels[d]
            dirty = {i >> 1 for i in dirty}
            for i in dirty:
                here[i] = h(b"\x21" + below[2 * i] + below[2 * i + 1]).digest()
        return self.levels[BUCKET_BITS][0]

    def prove(self, key: bytes) -> bytes:
        p = active().hash(key)
        i = int.from_bytes(p[:2], "big") >> (16 - BUCKET_BITS)
        entries = sorted(self.buckets[i].items())
        siblings = [self.levels[d][(i >> d) ^ 1] for d in range(BUCKET_BITS)]
        return encode([[[q, v] for q, v in entries], siblings])

    @staticmethod
    def verify(root: bytes, key: bytes, value: bytes | None, proof: bytes) -> None:
        h = active().hash_new
        entries, siblings = __import__("msgpack").unpackb(proof)
        p = h(key).digest()
        found = dict((bytes(q), bytes(v)) for q, v in entries).get(p)
        want = None if value is None else h(value).digest()
        assert found == want, "state value"
        node = h(b"\x20" + b"".join(bytes(q) + bytes(v) for q, v in entries)).digest()
        i = int.from_bytes(p[:2], "big") >> (16 - BUCKET_BITS)
        for d in range(BUCKET_BITS):
            s = siblings[d]
            node = h(b"\x21" + (s + node if (i >> d) & 1 else node + s)).digest()
        assert node == root, "state proof step"


# ---------------------------------------------------------------- measuring


def signature_items(n: int, rnd: random.Random) -> list[tuple[int, bytes, bytes, bytes]]:
    keys = [PrivateKey.generate() for _ in range(min(n, 1000))]
    items = []
    for i in range(n):
        k = keys[i % len(keys)]
        msg = rnd.randbytes(120)
        items.append((i, k.public_key, msg, k.sign(msg)))
    return items


def verify_all(items: list[tuple[int, bytes, bytes, bytes]]) -> None:
    verify_items = active().verify_items
    for start in range(0, len(items), CHUNK_ITEMS):
        verify_items(items[start : start + CHUNK_ITEMS])


def measure_size(n: int, writes_n: int, repeat: int, base: dict[str, float]) -> dict[str, Any]:
    rnd = random.Random(n)
    state = [account(rnd) for _ in range(n)]
    existing = min(n, writes_n // 2 if n >= writes_n else n)
    writes: Writes = [(k, account(rnd)[1]) for k, _ in rnd.sample(state, existing)]
    writes += [account(rnd) for _ in range(writes_n - existing)]
    writes.sort()
    absent = b"a" + rnd.randbytes(20)
    present = writes[0][0]
    out: dict[str, Any] = {"state": n, "writes": len(writes)}

    t0 = time.thread_time()
    smt = StateTree.from_items(state)
    out["smt_build_s"] = round(time.thread_time() - t0, 3)
    out["smt_update_s"] = round(best_seconds(lambda: smt.updated(writes).root, repeat), 4)
    after = smt.updated(writes)
    root = after.root
    sizes = {}
    for name, key in (("inclusion", present), ("absence", absent)):
        value, proof = after.prove(key)
        data = proof.encode()
        sizes[name] = len(data)

        def check(key: bytes = key, value: bytes | None = value, data: bytes = data) -> None:
            verify_state_proof(root, key, value, decode_state_proof(data))

        check()
        out[f"smt_{name}_bytes"] = len(data)
        out[f"smt_{name}_verify_us"] = round(best_seconds(check, repeat * 20) * 1e6, 1)

        def prove(key: bytes = key) -> None:
            after.prove(key)

        out[f"smt_{name}_prove_us"] = round(best_seconds(prove, repeat * 20) * 1e6, 1)

    bt = BucketTree()
    t0 = time.thread_time()
    bt.build(state)
    out["bucket_build_s"] = round(time.thread_time() - t0, 3)

    def bucket_update() -> None:
        copy = BucketTree()
        copy.levels = [list(level) for level in bt.levels]
        touched = {
            int.from_bytes(active().hash(k)[:2], "big") >> (16 - BUCKET_BITS) for k, _ in writes
        }
        copy.buckets = list(bt.buckets)
        for i in touched:  # copy on write: the previous version stays whole
            copy.buckets[i] = dict(bt.buckets[i])
        copy.apply(writes)

    out["bucket_update_s"] = round(best_seconds(bucket_update, repeat), 4)
    bt.apply(writes)
    broot = bt.levels[BUCKET_BITS][0]
    for name, key, value in (("inclusion", present, writes[0][1]), ("absence", absent, None)):
        data = bt.prove(key)
        BucketTree.verify(broot, key, value, data)
        out[f"bucket_{name}_bytes"] = len(data)

        def bucket_check(key: bytes = key, value: bytes | None = value, data: bytes = data) -> None:
            BucketTree.verify(broot, key, value, data)

        out[f"bucket_{name}_verify_us"] = round(best_seconds(bucket_check, repeat * 20) * 1e6, 1)
    chain_s = best_seconds(lambda: chain_app_hash(b"\0" * 32, writes), repeat)
    out["chain_hash_s"] = round(chain_s, 4)
    for c in ("smt", "bucket"):
        out[f"{c}_update_over_chain_hash"] = round(out[f"{c}_update_s"] / chain_s, 1)
        out[f"{c}_update_over_sigs"] = round(out[f"{c}_update_s"] / base["sigs_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--writes", type=int, default=20_000)
    ap.add_argument("--txs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--crypto", choices=tuple(SUITES), default=DEFAULT_SUITE.name)
    args = ap.parse_args()
    activate(SUITES[args.crypto])
    load_before = os.getloadavg()[0]
    log(f"suite {args.crypto}; load average {load_before:.2f}")
    items = signature_items(args.txs, random.Random(0))
    base = {"sigs_s": best_seconds(lambda: verify_all(items), args.repeat)}
    log(
        f"baseline: {args.txs} signature verifications (batch call, 1 thread): "
        f"{base['sigs_s']:.3f} s"
    )
    rows = []
    for n in args.sizes:
        r = measure_size(n, args.writes, args.repeat, base)
        rows.append(r)
        log(f"\nstate {n} keys, one block of {r['writes']} writes:")
        log(f"  hash chain over the writes (old app hash)   {r['chain_hash_s'] * 1e3:8.1f} ms")
        for c in ("smt", "bucket"):
            log(
                f"  {c:6} update {r[f'{c}_update_s'] * 1e3:8.1f} ms"
                f" = {r[f'{c}_update_over_chain_hash']:6.1f}x chain hash"
                f" = {r[f'{c}_update_over_sigs']:.3f}x the {args.txs} signatures;"
                f" inclusion {r[f'{c}_inclusion_bytes']} B"
                f" verify {r[f'{c}_inclusion_verify_us']} us;"
                f" absence {r[f'{c}_absence_bytes']} B verify {r[f'{c}_absence_verify_us']} us;"
                f" build {r[f'{c}_build_s']} s"
            )
    report = {
        "crypto": args.crypto,
        "txs": args.txs,
        "sigs_s": round(base["sigs_s"], 4),
        "rows": rows,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
