"""Proof files: how big they are and how long the offline check takes, against a baseline.

Why: a proof file (docs/PROTOCOL.md section 13) is what an auditor or another
chain receives; its size and the time proofcheck/verify.py takes to check it
decide whether one can be attached to every cross-chain message. Measured:

- a tx proof (with its result) for a transaction in a block of `--txs`
  (10,000) transactions, at height `--heights` - 1 of a chain whose set of 4
  validators moves one key every `--shift-every` heights, hops chosen by the
  builder's bisection (node/proofs.py `select_hops`) from genesis;
- a state proof for one account in a state of `--accounts` keys (section 11's
  state tree, built here from the protocol text) against the last header.

Baselines in the same run, timed interleaved with the verifications (the
machine is shared): verifying the file's signatures alone with the
verifier's own primitive (so the ratio is what decoding, hashing and the
Merkle walks add), one signature verification, and a SHA-256 of the file.
Everything is built in process with real signatures (no node):

    .venv/bin/python benchmarks/proofs.py [--txs 10000] [--heights 1000]
        [--shift-every 10] [--accounts 100000] [--crypto ed25519-sha256|sm2-sm3]

Readable lines on stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack

from consensus import merkle
from consensus.crypto import SUITES, PrivateKey, Suite, using
from consensus.genesis import Genesis, GenesisValidator
from consensus.light import LightBlock
from consensus.types import (
    Commit,
    CommitSig,
    Header,
    Transaction,
    Validator,
    ValidatorSet,
    precommit_sign_bytes,
)
from node.proofs import LightSource, select_hops
from proofcheck.verify import FORMAT_TAG, suite_named, verify_proof
from proofcheck.verify import Suite as VerifierSuite

SET_SIZE = 4
CHAIN_ID = "bench-proofs"
GENESIS_MS = 1_764_000_000_000
E = bytes(32)


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _bit(path: bytes, i: int) -> int:
    return (path[i // 8] >> (7 - i % 8)) & 1


def _smt(
    suite: Suite, leaves: list[tuple[bytes, bytes]], depth: int, path: bytes
) -> tuple[bytes, list[bytes], Any]:
    """Section 11's tree over sorted (P, V): (subtree hash, siblings below, leaf) on `path`."""
    if not leaves:
        return E, [], None
    if len(leaves) == 1:
        p, v = leaves[0]
        return suite.hash(b"\x10" + p + v), [], [p, v]
    split = next((i for i, (p, _) in enumerate(leaves) if _bit(p, depth)), len(leaves))
    left, right = leaves[:split], leaves[split:]
    mine, other = (left, right) if _bit(path, depth) == 0 else (right, left)
    m_hash, siblings, leaf = _smt(suite, mine, depth + 1, path)
    o_hash = _root(suite, other, depth + 1)
    l_hash, r_hash = (m_hash, o_hash) if _bit(path, depth) == 0 else (o_hash, m_hash)
    return suite.hash(b"\x11" + l_hash + r_hash), [b"" if o_hash == E else o_hash, *siblings], leaf


def _root(suite: Suite, leaves: list[tuple[bytes, bytes]], depth: int) -> bytes:
    if not leaves:
        return E
    if len(leaves) == 1:
        return suite.hash(b"\x10" + leaves[0][0] + leaves[0][1])
    split = next((i for i, (p, _) in enumerate(leaves) if _bit(p, depth)), len(leaves))
    return suite.hash(
        b"\x11" + _root(suite, leaves[:split], depth + 1) + _root(suite, leaves[split:], depth + 1)
    )


def _measure(
    data: bytes, genesis: bytes, suite: VerifierSuite, signatures: int, runs: int
) -> dict[str, float]:
    """Median seconds of: verifying the file; its signatures alone; one; a sha256 of it.

    The baselines use the verifier's own primitive (pynacl, or its SM2) and are
    timed interleaved with the verifications, so that all see the same load.
    """
    key = PrivateKey(hashlib.sha256(b"baseline").digest(), SUITES[suite.name])
    message = b"archipelago/vote/v1 baseline message of a precommit's length"
    signature = key.sign(message)
    times: dict[str, list[float]] = {"verify": [], "sigs": [], "one": [], "sha": []}
    for _ in range(runs):
        times["verify"].append(_timed(lambda: verify_proof(data, genesis)))
        times["sigs"].append(
            _timed(
                lambda: [
                    suite.verify(key.public_key, message, signature) for _ in range(signatures)
                ]
            )
        )
        times["one"].append(_timed(lambda: suite.verify(key.public_key, message, signature)))
        times["sha"].append(_timed(lambda: hashlib.sha256(data).digest()))
    return {k: statistics.median(v) for k, v in times.items()}


def build(ns: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    pool = [PrivateKey(hashlib.sha256(b"bench %d" % i).digest(), suite) for i in range(64)]

    def keys_at(h: int) -> list[PrivateKey]:
        start = (h - 1) // ns.shift_every
        return [pool[(start + i) % len(pool)] for i in range(SET_SIZE)]

    genesis = Genesis(
        CHAIN_ID, GENESIS_MS,
        tuple(GenesisValidator(f"v{i}", k.public_key, 10) for i, k in enumerate(keys_at(1))),
        "ledger", {"accounts": {}}, crypto=suite.name,
    )  # fmt: skip
    # The state: --accounts ledger accounts; its root is every header's app hash.
    state = {
        b"a" + hashlib.sha256(b"%d" % i).digest()[:20]: msgpack.packb([i, 1])
        for i in range(ns.accounts)
    }
    leaves = sorted((suite.hash(k), suite.hash(v)) for k, v in state.items())
    key = next(iter(state))
    app_hash, siblings, leaf = _smt(suite, leaves, 0, suite.hash(key))
    state_proof = msgpack.packb([siblings, leaf], use_bin_type=True)
    # The big block, at height - 1, and its results.
    big_h = ns.heights - 1
    sender = pool[-1]
    big_txs = [
        Transaction.create(sender, CHAIN_ID, i, msgpack.packb(["transfer", bytes(20), i])).encode()
        for i in range(ns.txs)
    ]
    results = [msgpack.packb([0, b""], use_bin_type=True)] * ns.txs
    sets = {
        h: ValidatorSet.of(Validator(k.public_key, 10) for k in keys_at(h))
        for h in range(1, ns.heights + 2)
    }
    source = LightSource("in-process", suite, {})
    previous, headers = b"", {}
    empty = merkle.root([])
    for h in range(1, ns.heights + 1):
        header = Header(
            CHAIN_ID, h, GENESIS_MS + h * 1000, previous, b"" if h == 1 else suite.hash(b"c%d" % h),
            merkle.root(big_txs) if h == big_h else empty, sets[h].hash, sets[h + 1].hash, app_hash,
            merkle.root(results) if h == big_h + 1 else empty, empty, sets[h][0].address,
        )  # fmt: skip
        message = precommit_sign_bytes(CHAIN_ID, h, 0, header.hash)
        by_address = {k.address: k for k in keys_at(h)}
        commit = Commit(
            h,
            0,
            header.hash,
            tuple(CommitSig(i, by_address[v.address].sign(message)) for i, v in enumerate(sets[h])),
        )
        vset, nxt = sets[h].encode(), sets[h + 1].encode()
        hop = [header.encode(), commit.encode(), vset, None if nxt == vset else nxt]
        source.cache[h] = (LightBlock(header, commit, sets[h], sets[h + 1]), hop)
        headers[h] = header
        previous = header.hash
    hops = select_hops(source, ns.heights, CHAIN_ID, None)
    index = ns.txs // 3
    tx_proof, r_proof = merkle.prove(big_txs, index), merkle.prove(results, index)
    tx_target = [
        big_txs[index], suite.hash(big_txs[index]), headers[big_h].encode(),
        [tx_proof.index, tx_proof.total, list(tx_proof.aunts)],
        [results[index], [r_proof.index, r_proof.total, list(r_proof.aunts)]],
    ]  # fmt: skip

    def file(kind: str, target: list[Any]) -> bytes:
        packed: bytes = msgpack.packb(
            [FORMAT_TAG, kind, CHAIN_ID, genesis.hash, None, hops, target], use_bin_type=True
        )
        return packed

    return {
        "genesis": genesis.to_json().encode(),
        "tx": file("tx", tx_target),
        "state": file("state", [key, state[key], state_proof]),
        "hops": len(hops),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--txs", type=int, default=10_000)
    p.add_argument("--heights", type=int, default=1000)
    p.add_argument("--shift-every", type=int, default=10)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--crypto", choices=sorted(SUITES), default="ed25519-sha256")
    p.add_argument("--runs", type=int, default=20)
    ns = p.parse_args()
    suite = SUITES[ns.crypto]
    t = time.perf_counter()
    with using(suite):
        built = build(ns, suite)
    print(
        f"built in {time.perf_counter() - t:.1f} s: {built['hops']} hops from genesis",
        file=sys.stderr,
    )
    out: dict[str, Any] = {
        "benchmark": "proofs", "crypto": ns.crypto, "txs": ns.txs, "heights": ns.heights,
        "shift_every": ns.shift_every, "accounts": ns.accounts, "hops": built["hops"],
    }  # fmt: skip
    for kind in ("tx", "state"):
        data = built[kind]
        said = verify_proof(data, built["genesis"])
        signatures = sum(
            len(msgpack.unpackb(hop[1])[3]) for hop in msgpack.unpackb(data, raw=False)[5]
        )
        m = _measure(data, built["genesis"], suite_named(ns.crypto), signatures, ns.runs)
        print(
            f"{kind}: {len(data):,} bytes, {signatures} signatures; "
            f"verify {m['verify'] * 1e3:.2f} ms = {m['verify'] / m['sigs']:.2f} x verifying "
            f"its signatures alone ({m['sigs'] * 1e3:.2f} ms) = "
            f"{m['verify'] / m['one']:.0f} x one signature ({m['one'] * 1e6:.0f} us) = "
            f"{m['verify'] / m['sha']:.0f} x a sha256 of the file; {said}",
            file=sys.stderr,
        )
        out |= {
            f"{kind}_bytes": len(data), f"{kind}_signatures": signatures,
            f"{kind}_verify_ms": round(m["verify"] * 1e3, 3),
            f"{kind}_signatures_alone_ms": round(m["sigs"] * 1e3, 3),
            f"{kind}_over_signatures_alone": round(m["verify"] / m["sigs"], 2),
            f"{kind}_one_signature_us": round(m["one"] * 1e6, 1),
            f"{kind}_over_one_signature": round(m["verify"] / m["one"], 1),
            f"{kind}_over_sha256": round(m["verify"] / m["sha"], 1),
        }  # fmt: skip
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(f"load average {out['loadavg_1m']}", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
