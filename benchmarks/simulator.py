"""Simulator throughput: simulated blocks and virtual seconds per CPU second.

Runs the deterministic cluster simulator (node/simulator.py) without faults
and with the default faults, and prints, measured in the same process, the
floor set by the Ed25519 work those runs needed (every signature made, every
accepted message verified once; the commit checks inside block validation are
not counted, so it is a lower bound), so the ratio shows how much of the cost
is the consensus code and the simulation around the cryptography. Human lines
go to stderr; the last line on stdout is a JSON object.

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


def measure(name: str, seeds: range, heights: int, faults: Faults) -> dict[str, float]:
    start = time.process_time()
    batch = run_batch(4, 1, seeds, heights, faults)
    cpu_s = time.process_time() - start
    assert batch.ok, batch.summary()
    blocks = sum(r.blocks for r in batch.results)
    virtual_s = sum(r.virtual_ms for r in batch.results) / 1000
    signatures = sum(r.signatures for r in batch.results)
    accepted = sum(r.accepted for r in batch.results)
    return {
        "name": name,  # type: ignore[dict-item]
        "cpu_s": cpu_s,
        "blocks": blocks,
        "blocks_per_cpu_s": blocks / cpu_s,
        "virtual_s_per_cpu_s": virtual_s / cpu_s,
        "signatures": signatures,
        "verifications": accepted,
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
            f"{r['name']:>9}: {r['blocks_per_cpu_s']:8.1f} blocks/cpu-s  "
            f"{r['virtual_s_per_cpu_s']:7.1f} virtual-s/cpu-s  "
            f"({r['blocks']:.0f} blocks in {r['cpu_s']:.2f} cpu-s; ed25519 floor "
            f"{floor_s:.2f} s = {100 * floor_s / r['cpu_s']:.0f}% of it)",
            file=sys.stderr,
        )
        report[f"{r['name']}_blocks_per_cpu_s"] = round(r["blocks_per_cpu_s"], 1)
        report[f"{r['name']}_virtual_s_per_cpu_s"] = round(r["virtual_s_per_cpu_s"], 1)
        report[f"{r['name']}_ed25519_floor_share"] = round(floor_s / r["cpu_s"], 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
