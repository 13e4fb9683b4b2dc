"""One seeded run, a batch of runs, and the `archipelago simulate` command.

`simulate` builds a `Simulation` (sim/engine.py) in a temporary folder (on
/dev/shm when there is one) with the adversaries of sim/scenarios.py, runs
it and returns its checked result (sim/checks.py). A failing run's report
names its seed: `archipelago simulate --seed-start S --seeds 1` (or
`python -m sim ...`) replays it byte for byte.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from consensus.crypto import DEFAULT_SUITE, SUITES, using
from consensus.machine import ConsensusMachine
from node.driver import Driver
from sim.checks import BatchResult, RunResult
from sim.engine import Simulation
from sim.faults import MODES, SCRIPTED_MODES, Faults
from sim.scenarios import Attacker, LockAttack


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
    with using(SUITES[crypto]), tempfile.TemporaryDirectory(
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
    crypto: str = DEFAULT_SUITE.name,
) -> BatchResult:
    """One run per seed; see BatchResult.summary() for the one-line report."""
    results = tuple(
        simulate(
            seed,
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
        for seed in seeds
    )
    return BatchResult(seeds, results)


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
    args = parser.parse_args(argv)
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
    batch = run_batch(
        args.validators,
        args.byzantine,
        seeds,
        args.heights,
        faults,
        byzantine_mode=args.mode,
        equal_power=args.equal_power,
        idle=args.no_empty_blocks,
        crypto=args.crypto,
    )
    print(batch.summary())
    return 0 if batch.ok else 1
