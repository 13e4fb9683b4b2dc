"""Proof files: how big they are and how long the offline check takes, against a baseline.

Why: a proof file (docs/PROTOCOL.md section 13) is what an auditor or another
chain receives; its size and the time proofcheck/verify.py takes to check it
decide whether one can be attached to every cross-chain message. Measured:

- a tx proof (with its result) for a transaction in a block of `--txs`
  (10,000) transactions, at height `--heights` - 1 of a chain whose set of 4
  validators moves one key every `--shift-every` heights, hops chosen by the
  builder's bisection (node/proofs.py `select_hops`) from genesis;
- a state proof for one account in a state of `--accounts` keys (section 11's
  state tree, built from the protocol text by tests/unit/proofcheck/smt.py)
  against the last header.

Baselines in the same run, timed interleaved with the verifications (the
machine is shared): verifying the file's signatures alone with the
verifier's own primitive (so the ratio is what decoding, hashing and the
Merkle walks add), one signature verification, and a SHA-256 of the file.
Everything is built in process with real signatures (no node), the chain by
the proof-file tests' builder (tests/unit/proofcheck/chain.py):

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

from consensus.crypto import SUITES, PrivateKey, Suite, using
from consensus.light import LightBlock
from consensus.types import Transaction
from node.proofs import LightSource, select_hops
from proofcheck.verify import Suite as VerifierSuite
from proofcheck.verify import suite_named, verify_proof
from tests.unit.proofcheck import smt
from tests.unit.proofcheck.chain import make_chain

CHAIN_ID = "bench-proofs"
# Keys in the pool of the moving validator set: with --shift-every 10, a set comes
# back only after 640 heights, so a skip past it cannot land on an old set again.
POOL_SIZE = 64


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


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
    # The state: --accounts ledger accounts; its root is every header's app hash.
    state = {
        b"a" + hashlib.sha256(b"%d" % i).digest()[:20]: msgpack.packb([i, 1])
        for i in range(ns.accounts)
    }
    key = next(iter(state))
    # The big block, at height - 1; its results are in the header above it.
    big_h = ns.heights - 1
    sender = PrivateKey(hashlib.sha256(b"bench sender").digest(), suite)
    big_txs = [
        Transaction.create(sender, CHAIN_ID, i, msgpack.packb(["transfer", bytes(20), i])).encode()
        for i in range(ns.txs)
    ]
    chain = make_chain(
        suite,
        ns.heights,
        shift_every=ns.shift_every,
        chain_id=CHAIN_ID,
        seed=b" bench",
        app_hash=smt.root(suite, state),
        pool_size=POOL_SIZE,
        txs={big_h: big_txs},
    )
    source = LightSource("in-process", suite, {})
    for h in range(1, ns.heights + 1):
        light = LightBlock(chain.headers[h], chain.commits[h], chain.sets[h], chain.sets[h + 1])
        source.cache[h] = (light, chain.hop(h))
    hops = select_hops(source, ns.heights, CHAIN_ID, None)
    target = [key, state[key], smt.prove(suite, state, key)]
    return {
        "genesis": chain.genesis_text,
        "tx": chain.file("tx", hops, chain.tx_target(big_h, ns.txs // 3)),
        "state": chain.file("state", hops, target),
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
