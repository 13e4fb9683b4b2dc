"""Light client: skipping 1,000 heights of a chain whose validator set keeps changing.

The chain is the light client tests' (tests/unit/consensus/test_light.py): 4
validators of equal power, the window of keys moving by one every
`--shift-every` heights, every certificate signed by the whole set. Prints the
bisection's time and the headers it fetched, next to the baseline measured in
the same run: verifying every header sequentially from the same trusted one.

    python benchmarks/light.py --heights 1000 --shift-every 10
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.light import TrustOptions, verify_adjacent, verify_to
from tests.unit.consensus import test_light as fixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heights", type=int, default=1000)
    parser.add_argument("--shift-every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    blocks = fixture.make_chain(args.heights, shift_every=args.shift_every)
    now = (args.heights + 1) * fixture.BLOCK_MS
    options = TrustOptions(trusting_period_ms=fixture.HOUR_MS)
    chain = fixture.CHAIN
    best_skip = best_seq = float("inf")
    fetched: list[int] = []
    for _ in range(args.repeat):
        fetched.clear()
        started = time.perf_counter()

        def fetch(h: int) -> fixture.LightBlock:
            fetched.append(h)
            return blocks[h - 1]

        trace = verify_to(blocks[0], args.heights, fetch, chain, now, options)
        best_skip = min(best_skip, time.perf_counter() - started)
        assert trace[-1].height == args.heights
        started = time.perf_counter()
        for a, b in itertools.pairwise(blocks):
            verify_adjacent(a, b, chain, now, options)
        best_seq = min(best_seq, time.perf_counter() - started)
    sets = (args.heights - 1) // args.shift_every + 1
    print(
        f"light client: 1 -> {args.heights} ({sets} validator sets, 4 validators each): "
        f"bisection {best_skip * 1000:.1f} ms fetching {len(fetched)} headers; "
        f"sequential {best_seq * 1000:.1f} ms over {args.heights - 1} headers; "
        f"ratio {best_skip / best_seq:.3f}"
    )


if __name__ == "__main__":
    main()
