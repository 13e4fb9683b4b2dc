"""Whole-cluster simulation of the real consensus machine: safety and liveness under faults.

Every run is deterministic from its seed; a failure message carries the seed
and each node's state, and `python -m node.simulator --seed-start S --seeds 1`
reproduces it. The checker is itself tested: deliberately broken machines,
defined here, must be caught (a weak quorum; a lock that is ignored, under the
targeted lock-attack scenario).
"""

from __future__ import annotations

import random

import pytest

from consensus.machine import ConsensusMachine
from node.simulator import Faults, main, run_batch, simulate

# Seeds that once failed (liveness: an equivocator's polka seen by one honest
# validator only, before votes were relayed and counted per block). Keep them.
REGRESSION_SEEDS = (1, 2, 3)
# Crash seeds that once failed, with their faults (4 heights each):
# 62: a node crashed before logging StartHeight(1) and, restarted, never began
#     the height (false liveness failure; the node starts it after replay).
# 117, 121: a crash between applying a block and logging HeightCommitted; the
#     replayed BuildBlock of the committed height reached the block builder.
CRASH_REGRESSIONS = (
    (62, Faults(crashes=4, partitions=0)),
    (117, Faults(crashes=12, partitions=0)),
    (121, Faults(crashes=12, partitions=0)),
)


def test_regression_seeds_hold() -> None:
    """The fixed regression seeds hold, with and without faults, at equal and seeded powers."""
    for equal_power in (True, False):
        for faults in (Faults(), Faults.none()):
            for seed in REGRESSION_SEEDS:
                result = simulate(
                    seed, heights=5, faults=faults, equal_power=equal_power, byzantine_mode=None
                )
                assert result.ok, result.describe()


def test_crash_regression_seeds_hold() -> None:
    """The crash regressions: a restart before the first height began; a crash mid-commit."""
    for seed, faults in CRASH_REGRESSIONS:
        result = simulate(seed, heights=4, faults=faults)
        assert result.ok, result.describe()
        assert result.restarts >= 3


def test_batch_with_faults_and_one_byzantine_of_four() -> None:
    """A batch of faulty runs (drops, duplicates, a partition, a crash) with 1 Byzantine of 4."""
    batch = run_batch(4, 1, range(100, 160), 4, Faults())
    assert batch.ok, batch.summary()
    assert all(r.blocks >= 4 for r in batch.results)
    assert sum(r.restarts for r in batch.results) > 0
    assert sum(r.evidence for r in batch.results) > 0  # equivocation was seen and reported
    # ...and reached blocks through the proposers' evidence pools; every honest
    # commit was checked to carry none against an honest validator.
    assert sum(r.evidence_committed for r in batch.results) > 0
    assert sum(r.txs_committed for r in batch.results) > 0


def test_unequal_power_and_validator_set_changes() -> None:
    """Seed-chosen powers and kvstore ["val", pk, power] txs change the set; still safe and live."""
    batch = run_batch(4, 1, range(500, 530), 4, Faults())
    assert batch.ok, batch.summary()
    powers = {n.power for r in batch.results for n in r.nodes}
    assert len(powers) > 3  # unequal, and changed (0 is a removed validator)
    assert sum(r.validator_changes for r in batch.results) > 10
    assert any(n.power == 0 for r in batch.results for n in r.nodes)


def test_random_seeds() -> None:
    """Twenty seeds from a fresh random start; a failure names the seeds that reproduce it."""
    start = random.SystemRandom().randrange(10**9)
    batch = run_batch(4, 1, range(start, start + 20), 4, Faults())
    assert batch.ok, batch.summary()


def test_twins() -> None:
    """Two nodes run with the Byzantine validator's key and separate sign states: still safe."""
    batch = run_batch(4, 1, range(200, 230), 4, Faults(), byzantine_mode="twins")
    assert batch.ok, batch.summary()
    assert all(r.byzantine_mode == "twins" for r in batch.results)
    assert sum(r.evidence for r in batch.results) > 0


def test_seven_validators_two_byzantine() -> None:
    """n = 7, f = 2, both modes."""
    batch = run_batch(7, 2, range(300, 310), 3, Faults())
    assert batch.ok, batch.summary()


def test_crash_and_replay_under_many_restarts() -> None:
    """Nodes that crash and rebuild their machine by replaying their log stay safe and live."""
    faults = Faults(crashes=4, partitions=0)
    batch = run_batch(4, 1, range(400, 415), 4, faults)
    assert batch.ok, batch.summary()
    assert sum(r.restarts for r in batch.results) >= 15


def test_same_seed_same_run() -> None:
    """A seed reproduces its run exactly: same chains, steps, messages and signatures."""
    a = simulate(7, heights=4, faults=Faults(crashes=2))
    b = simulate(7, heights=4, faults=Faults(crashes=2))
    assert a == b
    assert simulate(8, heights=4).chain_digest != a.chain_digest


class WeakQuorumMachine(ConsensusMachine):
    """Broken on purpose: treats f + 1 of the power as a quorum instead of 2f + 1."""

    def _quorum(self, power: int) -> bool:
        return self.validators.has_one_honest(power)


def test_checker_catches_a_broken_machine() -> None:
    """A machine that miscounts quorums decides on f + 1: the checker reports it, with the seed."""
    batch = run_batch(4, 1, range(0, 5), 4, Faults(), machine_class=WeakQuorumMachine)
    assert len(batch.safety_failures) == 5
    failure = batch.safety_failures[0]
    assert "commit certificate invalid" in failure.safety_violations[0]
    summary = batch.summary()
    assert f"seed {failure.seed}" in summary
    assert "locked_round=" in summary


class IgnoresLockMachine(ConsensusMachine):
    """Broken on purpose: prevotes any valid proposal, whatever it is locked on (line 23)."""

    def _lock_allows(self, block_hash: bytes, pol_round: int) -> bool:
        return True


def test_lock_attack_catches_a_machine_that_ignores_its_lock() -> None:
    """The targeted scenario makes a lock-ignoring machine fork; the checker names the seed."""
    batch = run_batch(
        4, 1, range(0, 8), 3, byzantine_mode="lock-attack", machine_class=IgnoresLockMachine
    )
    assert len(batch.safety_failures) == 8
    for result in batch.results:
        assert result.attack_armed
        assert result.safety_violations[0].startswith("agreement: ")
        assert "at height 1, another honest node committed" in result.safety_violations[0]
    summary = batch.summary()
    assert "safety_violations=8" in summary
    assert "seed 5 (lock-attack):" in summary
    assert "locked_round=" in summary


def test_lock_attack_real_machine_stays_safe() -> None:
    """Under the same scenario the real machine's lock holds: every seed safe, live, armed."""
    batch = run_batch(4, 1, range(0, 30), 3, byzantine_mode="lock-attack")
    assert batch.ok, batch.summary()
    assert all(r.attack_armed and r.blocks >= 3 for r in batch.results)
    # The honest nodes saw x equivocate and committed that evidence later.
    assert all(r.evidence_committed > 0 for r in batch.results)


def test_lock_attack_is_deterministic() -> None:
    """A lock-attack seed reproduces its run exactly."""
    assert simulate(3, heights=3, byzantine_mode="lock-attack") == simulate(
        3, heights=3, byzantine_mode="lock-attack"
    )


def test_single_validator_under_default_faults() -> None:
    """One validator, no Byzantine: a partition has nobody to split; crashes and replays still."""
    result = simulate(0, validators=1, byzantine=0, heights=3, faults=Faults(window_ms=2_000))
    assert result.ok, result.describe()
    assert result.byzantine_mode == "none" and result.blocks >= 3


def test_bad_arguments_raise() -> None:
    """Clusters breaking n > 3f, unknown modes and a lock-attack on another size are refused."""
    for kwargs in (
        {"validators": 3, "byzantine": 1},
        {"byzantine_mode": "chaos"},
        {"validators": 7, "byzantine": 2, "byzantine_mode": "lock-attack"},
    ):
        with pytest.raises(ValueError):
            simulate(0, **kwargs)


def test_command_line(capsys: object) -> None:
    """`archipelago simulate` equivalent: one summary line and exit status 0 when all runs pass."""
    assert main(["--validators", "4", "--byzantine", "1", "--seeds", "3", "--heights", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("runs=3 seeds=0..2 safety_violations=0 liveness_failures=0")
    assert main(["--mode", "lock-attack", "--seeds", "2", "--heights", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("runs=2 seeds=0..1 safety_violations=0 liveness_failures=0")
