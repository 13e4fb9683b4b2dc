"""One seeded run, a batch of runs, and the `archipelago simulate` command.

`simulate` builds a `Simulation` (sim/engine.py) in a temporary folder (on
/dev/shm when there is one) with the adversaries of sim/scenarios.py, runs
it and returns its checked result (sim/checks.py). A failing run's report
names its seed: `archipelago simulate --seed-start S --seeds 1` (or
`python -m sim ...`) replays it byte for byte.

A batch may run on several processes (`--jobs`): each run depends on its
seed only, so the results are the same as on one, and come back in seed
order. `--regressions FILE` appends every failing run to FILE
(sim/regressions.py) as soon as it is seen; the test suite replays the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from consensus.crypto import DEFAULT_SUITE, SUITES, SigItem, Suite, using
from consensus.machine import ConsensusMachine
from node.driver import Driver
from sim.checks import BatchResult, RunResult
from sim.engine import Simulation
from sim.faults import MODES, SCRIPTED_MODES, Faults
from sim.regressions import Regression, failure_reason, record_regression
from sim.scenarios import Attacker, LockAttack

# Runs handed to a worker process at a time: large enough that the pickling
# round trip is small next to the runs (a 4-validator run takes about 0.4 s),
# small enough that results (and failures) come back as the batch goes.
JOB_CHUNK_RUNS = 8
PROGRESS_EVERY_RUNS = 500  # a line on stderr this often in a batch with --progress


def simulate(
    seed: int,
    *,
    validators: int = 4,
    byzantine: int = 1,
    heights: int = 5,
    faults: Faults | None = None,
    byzantine_mode: str | None = None,
    driver_class: type[Driver] = Driver,
    machine_class: type[ConsensusMachine] | None = None,
    equal_power: bool = False,
    idle: bool = False,
    crypto: str = DEFAULT_SUITE.name,
) -> RunResult:
    """One run.

    `byzantine_mode` is one of MODES (None: "equivocate" or "twins", chosen by
    the seed); the scripted modes need 4 validators and 1 Byzantine and bring
    their own faults and equal powers. `crypto` names the chain's suite, active
    in this process for the run. `driver_class` and `machine_class`
    plant other code in every node (the checker's own tests). `idle` runs every
    driver with create_empty_blocks = false and bursts of transactions between
    idle gaps (sim/idle.py); not with the scripted modes. Raises ValueError for
    a cluster that breaks n > 3f or an unknown mode.
    """
    if validators < 1 or not (0 <= 3 * byzantine < validators or validators == 1):
        raise ValueError("need validators >= 1 and 3 * byzantine < validators")
    if byzantine_mode is not None and byzantine_mode not in MODES:
        raise ValueError(f"unknown mode {byzantine_mode!r}, expected one of {', '.join(MODES)}")
    if byzantine_mode in SCRIPTED_MODES and (validators, byzantine) != (4, 1):
        raise ValueError(f"{byzantine_mode} runs 4 validators with 1 Byzantine")
    if idle and byzantine_mode in SCRIPTED_MODES:
        raise ValueError(f"{byzantine_mode} has no idle mode")
    if machine_class is not None:
        driver_class = type("PlantedDriver", (driver_class,), {"machine_class": machine_class})
    shm = Path("/dev/shm")
    with using(verified_once(SUITES[crypto])), tempfile.TemporaryDirectory(
        prefix="archipelago-sim-", dir=shm if shm.is_dir() else None
    ) as tmp:
        sim = Simulation(
            seed,
            validators,
            byzantine,
            heights,
            Faults() if faults is None else faults,
            byzantine_mode,
            driver_class,
            equal_power,
            Path(tmp),
            LockAttack,
            Attacker,
            idle=idle,
        )
        try:
            return sim.run()
        finally:
            sim.close()


def verified_once(suite: Suite) -> Suite:
    """`suite` with each distinct (key, message, signature) verified once: one run's suite.

    Why: every simulated node checks every vote and certificate it receives, so a
    run of n nodes verified each signature about n times, most of a 10-validator
    run's CPU. Verification is a pure function of its three inputs, so one answer
    serves every node and the run's outcome is unchanged (the regression seeds
    replay as before); every signature is still really verified, once. The
    memory lives as long as the run.
    """
    known: dict[tuple[bytes, bytes, bytes], bool] = {}
    verify_one, verify_items = suite.verify_one, suite.verify_items

    def one(public_key: bytes, message: bytes, signature: bytes) -> bool:
        key = (public_key, message, signature)
        ok = known.get(key)
        if ok is None:
            ok = known[key] = verify_one(public_key, message, signature)
        return ok

    def items(batch: Sequence[SigItem]) -> Sequence[int]:
        keys = [(pk, msg, sig) for _, pk, msg, sig in batch]
        new = [item for item, key in zip(batch, keys, strict=True) if key not in known]
        if new:
            for (_, pk, msg, sig), good in zip(new, verify_items(new), strict=True):
                known[pk, msg, sig] = bool(good)
        return [int(known[key]) for key in keys]

    return dataclasses.replace(suite, verify_one=one, verify_items=items)


def run_batch(
    validators: int,
    byzantine: int,
    seeds: range,
    heights: int,
    faults: Faults | None = None,
    *,
    byzantine_mode: str | None = None,
    driver_class: type[Driver] = Driver,
    machine_class: type[ConsensusMachine] | None = None,
    equal_power: bool = False,
    idle: bool = False,
    jobs: int = 1,
    on_result: Callable[[RunResult], None] | None = None,
    crypto: str = DEFAULT_SUITE.name,
) -> BatchResult:
    """One run per seed, on `jobs` processes; see BatchResult.summary() for the report.

    `on_result` sees each result as it arrives, in seed order. With jobs > 1
    the planted classes must be importable by name (module level), as pickle
    needs.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    one = partial(
        simulate,
        validators=validators,
        byzantine=byzantine,
        heights=heights,
        faults=faults,
        byzantine_mode=byzantine_mode,
        driver_class=driver_class,
        machine_class=machine_class,
        equal_power=equal_power,
        idle=idle,
        crypto=crypto,
    )
    results: list[RunResult] = []
    for result in _map_runs(one, seeds, jobs):
        results.append(result)
        if on_result is not None:
            on_result(result)
    return BatchResult(seeds, tuple(results))


def _map_runs(one: Callable[[int], RunResult], seeds: range, jobs: int) -> Iterator[RunResult]:
    if jobs == 1 or len(seeds) <= 1:
        yield from map(one, seeds)
        return
    # spawn: workers start from a clean interpreter, not a fork of a parent
    # that may hold threads (the signature verifier's) or open stores; and they
    # are this process's children, so their CPU time is counted in its
    # RUSAGE_CHILDREN once the pool is shut down (main's cpu_s_per_run).
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        yield from pool.map(one, seeds, chunksize=JOB_CHUNK_RUNS)


def _cpu_s() -> float:
    """CPU seconds of this process and of its reaped children (the workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def replay(entry: Regression) -> RunResult:
    """Run a recorded regression again (sim/regressions.py)."""
    return simulate(
        entry.seed,
        validators=entry.validators,
        byzantine=entry.byzantine,
        heights=entry.heights,
        faults=entry.faults,
        byzantine_mode=entry.byzantine_mode,
        equal_power=entry.equal_power,
        idle=entry.idle,
    )


def main(argv: list[str] | None = None) -> int:
    """`archipelago simulate`: exit 0 when no run violated safety or liveness, else 1."""
    parser = argparse.ArgumentParser(
        prog="archipelago simulate",
        description="A deterministic whole-cluster simulator that runs the node's own code.",
    )
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--byzantine", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=100, help="number of runs")
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--heights", type=int, default=5, help="target height per run")
    parser.add_argument("--no-faults", action="store_true", help="no drops, partitions, crashes")
    parser.add_argument(
        "--no-peer-faults",
        action="store_true",
        help="no hostile peer and no mass restarts (network faults and crashes only)",
    )
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument(
        "--crypto",
        choices=tuple(SUITES),
        default=DEFAULT_SUITE.name,
        help="the chain's signatures and hashes (default %(default)s)",
    )
    parser.add_argument("--equal-power", action="store_true", help="power 1 for every validator")
    parser.add_argument(
        "--no-empty-blocks",
        action="store_true",
        help="create_empty_blocks = false, transactions in bursts between idle gaps",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="worker processes (default 1; results are the same)"
    )
    parser.add_argument(
        "--regressions",
        type=Path,
        default=None,
        metavar="FILE",
        help="append every failing run to FILE (a JSON list the test suite replays)",
    )
    parser.add_argument(
        "--progress", action="store_true", help=f"a line on stderr every {PROGRESS_EVERY_RUNS} runs"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.validators < 1 or not 0 <= 3 * args.byzantine < args.validators:
        parser.error("need validators >= 1 and 3 * byzantine < validators")
    if args.mode in SCRIPTED_MODES and (args.validators, args.byzantine) != (4, 1):
        parser.error(f"--mode {args.mode} needs --validators 4 --byzantine 1")
    if args.no_empty_blocks and args.mode in SCRIPTED_MODES:
        parser.error(f"--mode {args.mode} has no --no-empty-blocks")
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    if args.no_faults:
        faults = Faults.none()
    elif args.no_peer_faults:
        faults = Faults()
    else:
        faults = Faults.everything()
    started = time.monotonic()
    done = [0]

    def on_result(result: RunResult) -> None:
        done[0] += 1
        if not result.ok:
            print(result.describe(), file=sys.stderr, flush=True)
            if args.regressions is not None:
                entry = Regression(
                    result.seed,
                    args.validators,
                    args.byzantine,
                    args.heights,
                    faults,
                    args.mode,
                    args.equal_power,
                    args.no_empty_blocks,
                    why=failure_reason(result),
                )
                if record_regression(args.regressions, entry):
                    print(f"recorded seed {result.seed} in {args.regressions}", file=sys.stderr)
        if args.progress and done[0] % PROGRESS_EVERY_RUNS == 0:
            elapsed = time.monotonic() - started
            print(
                f"{done[0]}/{len(seeds)} runs, {elapsed:.0f} s, "
                f"{elapsed / done[0]:.3f} s per run (wall, {args.jobs} jobs)",
                file=sys.stderr,
                flush=True,
            )

    batch = run_batch(
        args.validators,
        args.byzantine,
        seeds,
        args.heights,
        faults,
        byzantine_mode=args.mode,
        equal_power=args.equal_power,
        idle=args.no_empty_blocks,
        jobs=args.jobs,
        on_result=on_result,
        crypto=args.crypto,
    )
    elapsed = time.monotonic() - started
    runs = max(1, len(seeds))
    print(batch.summary())
    print(
        f"validators={args.validators} byzantine={args.byzantine} jobs={args.jobs} "
        f"wall_s={elapsed:.1f} wall_s_per_run={elapsed / runs:.3f} "
        f"cpu_s_per_run={_cpu_s() / runs:.3f}"
    )
    return 0 if batch.ok else 1
