"""Simulator throughput: simulated blocks and virtual seconds per CPU second.

Runs the deterministic cluster simulator (node/simulator.py) without faults,
with the default faults, and under the targeted lock-attack scenario, and
prints, measured in the same process, the floor set by the Ed25519 work those
runs needed: every consensus signature and client transaction signed, every
accepted message verified once, and every signature the validation core
checked (transactions, commit certificates, evidence) verified once. The
ratio shows how much of the cost is the consensus code, the kvstore
application, the validation core and the simulation around the cryptography.
Human lines go to stderr; the last line on stdout is a JSON object.

    .venv/bin/python benchmarks/simulator.py [--seeds 20] [--heights 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.crypto import PrivateKey, sha256, verify
from node.simulator import Faults, run_batch

CRYPTO_SAMPLES = 2000


def ed25519_costs_s() -> tuple[float, float]:
    """Seconds per sign and per verify of a vote-sized message, measured here."""
    key = PrivateKey(sha256(b"bench"))
    message = b"v" * 120
    start = time.process_time()
    sigs = [key.sign(message) for _ in range(CRYPTO_SAMPLES)]
    sign_s = (time.process_time() - start) / CRYPTO_SAMPLES
    start = time.process_time()
    for sig in sigs:
        assert verify(key.public_key, message, sig)
    verify_s = (time.process_time() - start) / CRYPTO_SAMPLES
    return sign_s, verify_s


def measure(
    name: str, seeds: range, heights: int, faults: Faults, mode: str | None = None
) -> dict[str, float]:
    start = time.process_time()
    batch = run_batch(4, 1, seeds, heights, faults, byzantine_mode=mode)
    cpu_s = time.process_time() - start
    assert batch.ok, batch.summary()
    rs = batch.results
    blocks = sum(r.blocks for r in rs)
    virtual_s = sum(r.virtual_ms for r in rs) / 1000
    return {
        "name": name,  # type: ignore[dict-item]
        "cpu_s": cpu_s,
        "blocks": blocks,
        "txs": sum(r.txs_committed for r in rs),
        "blocks_per_cpu_s": blocks / cpu_s,
        "virtual_s_per_cpu_s": virtual_s / cpu_s,
        "signatures": sum(r.signatures + r.tx_signatures for r in rs),
        "verifications": sum(r.accepted + r.verifications for r in rs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--heights", type=int, default=10)
    args = parser.parse_args()
    sign_s, verify_s = ed25519_costs_s()
    seeds = range(args.seeds)
    runs = [
        measure("no-faults", seeds, args.heights, Faults.none()),
        measure("faults", seeds, args.heights, Faults()),
        measure("lock-attack", seeds, args.heights, Faults(), "lock-attack"),
    ]
    report: dict[str, object] = {
        "validators": 4,
        "byzantine": 1,
        "seeds": args.seeds,
        "heights": args.heights,
        "ed25519_sign_us": sign_s * 1e6,
        "ed25519_verify_us": verify_s * 1e6,
    }
    for r in runs:
        floor_s = r["signatures"] * sign_s + r["verifications"] * verify_s
        print(
            f"{r['name']:>11}: {r['blocks_per_cpu_s']:8.1f} blocks/cpu-s  "
            f"{r['virtual_s_per_cpu_s']:7.1f} virtual-s/cpu-s  "
            f"({r['blocks']:.0f} blocks, {r['txs']:.0f} txs in {r['cpu_s']:.2f} cpu-s; "
            f"ed25519 floor {floor_s:.2f} s = {100 * floor_s / r['cpu_s']:.0f}% of it)",
            file=sys.stderr,
        )
        report[f"{r['name']}_blocks_per_cpu_s"] = round(r["blocks_per_cpu_s"], 1)
        report[f"{r['name']}_virtual_s_per_cpu_s"] = round(r["virtual_s_per_cpu_s"], 1)
        report[f"{r['name']}_ed25519_floor_share"] = round(floor_s / r["cpu_s"], 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
