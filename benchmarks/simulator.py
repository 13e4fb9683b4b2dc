"""Simulator throughput: simulated blocks and virtual seconds per CPU second.

Runs the deterministic cluster simulator (sim/engine.py: every node is
the daemon's consensus driver, chain, LMDB store, WAL and sign state, on a
virtual clock and network) without faults, with network faults, with every
fault kind (network, crashes, a mass restart, a hostile peer), and under the
scripted lock-attack, and prints blocks per CPU second for each next to the
no-fault figure measured in the same run: the ratio says what the faults
cost per block (recovery, retries, timeouts spent waiting). Human lines go
to stderr; the last line on stdout is a JSON object.

    .venv/bin/python benchmarks/simulator.py [--seeds 20] [--heights 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim import Faults, run_batch


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
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--heights", type=int, default=10)
    args = parser.parse_args()
    seeds = range(args.seeds)
    runs = [
        measure("no-faults", seeds, args.heights, Faults.none()),
        measure("faults", seeds, args.heights, Faults()),
        measure("everything", seeds, args.heights, Faults.everything()),
        measure("lock-attack", seeds, args.heights, Faults(), "lock-attack"),
    ]
    baseline = runs[0]["blocks_per_cpu_s"]
    report: dict[str, object] = {
        "validators": 4,
        "byzantine": 1,
        "seeds": args.seeds,
        "heights": args.heights,
    }
    for r in runs:
        ratio = r["blocks_per_cpu_s"] / baseline
        print(
            f"{r['name']:>11}: {r['blocks_per_cpu_s']:8.1f} blocks/cpu-s  "
            f"{r['virtual_s_per_cpu_s']:7.1f} virtual-s/cpu-s  "
            f"({r['blocks']:.0f} blocks, {r['txs']:.0f} txs in {r['cpu_s']:.2f} cpu-s; "
            f"{ratio:.2f} of the no-fault rate)",
            file=sys.stderr,
        )
        report[f"{r['name']}_blocks_per_cpu_s"] = round(r["blocks_per_cpu_s"], 1)
        report[f"{r['name']}_virtual_s_per_cpu_s"] = round(r["virtual_s_per_cpu_s"], 1)
        report[f"{r['name']}_ratio_to_no_faults"] = round(ratio, 3)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
