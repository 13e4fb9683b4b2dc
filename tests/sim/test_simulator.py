"""Whole-cluster simulation of the node's own consensus code: safety and liveness under faults.

Every simulated node runs the daemon's consensus driver, chain, WAL and sign
state (sim/engine.py); only the clock and the network are virtual. Every
run is deterministic from its seed; a failure message carries the seed and
each node's state, and `python -m sim --seed-start S --seeds 1`
reproduces it. The checker is itself tested: code broken on purpose, planted
here in every node, must be caught: a weak quorum; a lock that is ignored
(lock-attack); a driver that lets a peer's height claim take it out of
consensus and returns without its WAL (amnesia-attack, and a halt under
false claims: issue 10, bugs 1 and 2); a driver that starts signing after its
doppelganger watch without the round's missed steps (issue 10, bug 3); a
driver that waits for transactions (create_empty_blocks = false) although a
peer started the height (idle mode).
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import sim.run
from consensus.events import Event
from consensus.machine import ConsensusMachine
from node.driver import Driver
from node.effects import Effect, Sign
from node.signstate import SignedRecord
from sim import ATTACKS, Faults, RunResult, main, run_batch, simulate
from sim.regressions import Regression, load_regressions, record_regression
from sim.run import replay

# Runs that once failed, replayed here: the fixed regression seeds (an
# equivocator's polka seen by one honest validator only; crash seeds with their
# faults) and whatever `archipelago simulate --regressions` recorded at scale
# (`make sim-scale`). Each entry says why it is there (sim/regressions.py).
REGRESSIONS_PATH = Path(__file__).with_name("regressions.json")
REGRESSIONS = load_regressions(REGRESSIONS_PATH)


@pytest.mark.parametrize("entry", REGRESSIONS, ids=[e.name for e in REGRESSIONS])
def test_regression_seeds_hold(entry: Regression) -> None:
    """Every recorded regression run is safe and live now (and a crash regression crashed)."""
    result = replay(entry)
    assert result.ok, f"{entry.why}\n{result.describe()}"
    assert result.restarts >= entry.restarts_min


def test_regression_file_round_trip_and_no_duplicates(tmp_path: Path) -> None:
    """A failing run recorded twice is written once and reads back equal, faults included."""
    path = tmp_path / "regressions.json"
    entry = Regression(5, 7, 2, 3, Faults.everything(), why="planted")
    assert record_regression(path, entry)
    assert not record_regression(path, replace(entry, why="again"))
    assert load_regressions(path) == [entry]
    assert load_regressions(tmp_path / "absent.json") == []


def test_jobs_change_nothing() -> None:
    """A batch on 2 processes returns what it returns on one, in seed order."""
    one = run_batch(4, 1, range(900, 904), 3, Faults.everything())
    two = run_batch(4, 1, range(900, 904), 3, Faults.everything(), jobs=2)
    assert one == two and one.ok, one.summary()


def test_simulate_records_each_failing_seed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`simulate --regressions FILE` writes each failing run to FILE once, with what replays
    it; the failures come from a machine broken on purpose (a weak quorum) planted in every
    node, and the same entries replayed on the real machine pass."""

    def broken(seed: int, **options: Any) -> RunResult:
        return simulate(seed, **{**options, "machine_class": WeakQuorumMachine})

    monkeypatch.setattr(sim.run, "simulate", broken)
    path = tmp_path / "found.json"
    argv = ["--seeds", "2", "--heights", "4", "--no-peer-faults", "--regressions", str(path)]
    assert main(argv) == 1
    assert main(argv) == 1
    entries = load_regressions(path)
    assert [e.seed for e in entries] == [0, 1]
    assert all(e.faults == Faults() and e.heights == 4 for e in entries)
    assert all(e.why.startswith(("agreement: ", "validity: ")) for e in entries)
    monkeypatch.undo()
    assert all(replay(e).ok for e in entries)


def test_batch_with_every_fault_and_one_byzantine_of_four() -> None:
    """Drops, duplicates, a partition, a crash, a mass restart and a hostile peer, with 1
    Byzantine of 4: safe and live; equivocation evidence reached blocks, and the hostile
    peers were penalised."""
    batch = run_batch(4, 1, range(100, 160), 5, Faults.everything())
    assert batch.ok, batch.summary()
    assert all(r.blocks >= 5 for r in batch.results)
    assert sum(r.restarts for r in batch.results) > 60
    assert sum(r.evidence_committed for r in batch.results) > 0
    assert sum(r.txs_committed for r in batch.results) > 0
    assert sum(r.penalties for r in batch.results) > 0
    assert {r.attack for r in batch.results} == set(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_peer_attack_changes_nothing(attack: str) -> None:
    """Each hostile-peer attack alone (with network faults) leaves every run safe and live."""
    faults = Faults(attacks=(attack,))
    batch = run_batch(4, 1, range(700, 712), 5, faults)
    assert batch.ok, batch.summary()
    assert all(r.attack == attack for r in batch.results)


def test_a_node_far_behind_catches_up_by_block_sync_and_returns() -> None:
    """A node down while the others commit many heights comes back through block sync (its
    driver switches modes only on verified certificates) and then votes again; runs with a
    hostile peer claiming false heights mixed in."""
    faults = Faults(partitions=0, crashes=2, attacks=("claims",), window_ms=12_000)
    batch = run_batch(4, 1, range(800, 815), 30, faults)
    assert batch.ok, batch.summary()
    assert sum(r.synced_blocks for r in batch.results) > 0


def test_unequal_power_and_validator_set_changes() -> None:
    """Seed-chosen powers and kvstore ["val", pk, power] txs change the set; still safe and live."""
    batch = run_batch(4, 1, range(500, 530), 4, Faults())
    assert batch.ok, batch.summary()
    powers = {n.power for r in batch.results for n in r.nodes}
    assert len(powers) > 3  # unequal, and changed (0 is a removed validator)
    assert sum(r.validator_changes for r in batch.results) > 10


def test_random_seeds() -> None:
    """Twenty seeds from a fresh random start; a failure names the seeds that reproduce it."""
    start = random.SystemRandom().randrange(10**9)
    batch = run_batch(4, 1, range(start, start + 20), 4, Faults.everything())
    assert batch.ok, batch.summary()


def test_twins() -> None:
    """Two nodes run with the Byzantine validator's key and separate sign states: still safe."""
    batch = run_batch(4, 1, range(200, 230), 4, Faults(), byzantine_mode="twins")
    assert batch.ok, batch.summary()
    assert all(r.byzantine_mode == "twins" for r in batch.results)


def test_seven_validators_two_byzantine() -> None:
    """n = 7, f = 2, both modes, every fault kind."""
    batch = run_batch(7, 2, range(300, 310), 3, Faults.everything())
    assert batch.ok, batch.summary()


def test_mass_restarts_of_up_to_every_validator() -> None:
    """Restarting several validators at once, up to all of them (each watches for a double
    before it signs), never halts the chain."""
    faults = Faults(partitions=0, crashes=0, mass_restarts=2)
    batch = run_batch(4, 0, range(400, 430), 5, faults)
    assert batch.ok, batch.summary()
    assert sum(r.restarts for r in batch.results) >= 120


def test_same_seed_same_run() -> None:
    """A seed reproduces its run exactly: same chains, messages and restarts."""
    a = simulate(7, heights=4, faults=Faults.everything())
    b = simulate(7, heights=4, faults=Faults.everything())
    assert a == b
    assert simulate(8, heights=4).chain_digest != a.chain_digest


# ---------------------------------------------------------------- the checker has teeth


class WeakQuorumMachine(ConsensusMachine):
    """Broken on purpose: treats f + 1 of the power as a quorum instead of 2f + 1."""

    def _quorum(self, power: int) -> bool:
        return self.validators.has_one_honest(power)


def test_checker_catches_a_broken_machine() -> None:
    """A machine that miscounts quorums decides on f + 1: the checker reports it, with the seed."""
    batch = run_batch(4, 1, range(0, 5), 4, Faults(), machine_class=WeakQuorumMachine)
    assert len(batch.safety_failures) == 5
    failure = batch.safety_failures[0]
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
    summary = batch.summary()
    assert "safety_violations=8" in summary
    assert "seed 5 (lock-attack):" in summary


def test_lock_attack_real_machine_stays_safe() -> None:
    """Under the same scenario the real machine's lock holds: every seed safe, live, armed."""
    batch = run_batch(4, 1, range(0, 30), 3, byzantine_mode="lock-attack")
    assert batch.ok, batch.summary()
    assert all(r.attack_armed and r.blocks >= 3 for r in batch.results)


class AmnesiaDriver(Driver):
    """Broken on purpose, as the node was at b186c6b: a peer's height claim alone takes the
    node out of consensus, it comes back with a fresh machine without replaying its WAL,
    and a vote its sign state refuses is never sent (what it did sign stays unsent)."""

    _replayed = False

    def _sync_step(self, out: list[Effect]) -> None:
        lag = self.sync.peer_max(self._now) - self.state.last_height
        if self.mode == "consensus" and lag > self.config.fallback_lag_heights:
            self.mode, self.mode_reason = "blocksync", "a peer says it is ahead"
        super()._sync_step(out)

    def _replay_records(self, height: int) -> list[Event]:
        if self._replayed:
            return []
        self._replayed = True
        return super()._replay_records(height)

    def _recover(self, request: Sign, last: SignedRecord) -> tuple[Sign, bytes] | None:
        return None


def test_amnesia_attack_catches_a_driver_that_forgets_its_lock() -> None:
    """Bug 1: a keyless peer's false claim makes the amnesiac driver drop c's lock; c then
    prevotes and commits another block than b committed. The checker reports the fork."""
    batch = run_batch(
        4, 1, range(0, 6), 3, byzantine_mode="amnesia-attack", driver_class=AmnesiaDriver
    )
    assert batch.safety_failures, batch.summary()
    failure = batch.safety_failures[0]
    assert failure.safety_violations[0].startswith("agreement: ")
    assert f"seed {failure.seed} (amnesia-attack)" in batch.summary()


def test_amnesia_attack_real_driver_keeps_its_lock() -> None:
    """The same scenario against the real driver: the claim changes nothing; safe and live."""
    batch = run_batch(4, 1, range(0, 6), 3, byzantine_mode="amnesia-attack")
    assert batch.ok, batch.summary()
    assert all(r.attack_armed for r in batch.results)


def test_false_claims_halt_the_amnesiac_driver_and_not_the_real_one() -> None:
    """Bug 2: false height claims to one or two nodes halt a chain of amnesiac drivers (a
    victim pulled out mid-round cannot sign again what it signed, and never re-sends it); the
    checker reports the halt with its seed. The real driver stays live on the same seeds."""
    faults = Faults(partitions=0, crashes=0, attacks=("claims",), window_ms=15_000)
    seeds = range(0, 12)
    broken = run_batch(4, 0, seeds, 5, faults, driver_class=AmnesiaDriver, equal_power=True)
    assert broken.liveness_failures, broken.summary()
    assert "liveness" in broken.summary()
    real = run_batch(4, 0, seeds, 5, faults, equal_power=True)
    assert real.ok, real.summary()


class SignsLateDriver(Driver):
    """Broken on purpose, as the node was at b186c6b: when the doppelganger watch ends it
    switches signing on but does not perform the steps its round already passed."""

    def _start_signing(self, out: list[Effect]) -> None:
        if self.machine is not None and not self._stopped_signing:
            self.machine.own_address = self.validator_address


def test_mass_restart_catches_a_driver_that_skips_the_missed_steps() -> None:
    """Bug 3: restarting half the power together, a driver that starts signing without its
    round's missed prevote leaves the round short of 2f + 1 prevotes forever; the checker
    reports the halt with the seed. The real driver is live on the same seeds."""
    faults = Faults(partitions=0, crashes=0, mass_restarts=1, drop_probability=0.0)
    seeds = range(0, 12)
    broken = run_batch(4, 0, seeds, 5, faults, driver_class=SignsLateDriver, equal_power=True)
    assert broken.liveness_failures, broken.summary()
    real = run_batch(4, 0, seeds, 5, faults, equal_power=True)
    assert real.ok, real.summary()


def test_idle_mode_batch_with_every_fault() -> None:
    """create_empty_blocks = false on every node, transactions in bursts between idle gaps,
    every fault kind, 1 Byzantine of 4: safe, every burst committed in time, and after the
    heal no empty block while idle but the follow-up of a block with transactions."""
    batch = run_batch(4, 1, range(900, 930), 5, Faults.everything(), idle=True)
    assert batch.ok, batch.summary()
    for r in batch.results:
        assert r.idle is not None and r.idle.bursts >= 3
        assert r.idle.idle_blocks >= 1  # a follow-up block, then the chain waited
    assert sum(r.txs_committed for r in batch.results) > 100
    assert "idle_failures=0 bursts=" in batch.summary()


class IgnoresPeersWhileIdleDriver(Driver):
    """Broken on purpose: a held height starts on its own mempool's transactions only, never
    on a peer's proposal or vote of that height."""

    def _step_peer(self, peer: str, event: Event, payload: bytes, out: list[Effect]) -> None:
        waiting, started = self.waiting_for_txs, self._peer_started
        self.waiting_for_txs = False
        super()._step_peer(peer, event, payload, out)
        self.waiting_for_txs, self._peer_started = waiting, started


def test_idle_mode_catches_a_driver_that_ignores_peers_while_waiting() -> None:
    """Bursts that reach only some mempools (gossip lost) halt a chain of drivers that wait
    for their own transactions: nodes without them never join. The checker reports the burst
    never committed, with the seed; the real driver commits it on the same seeds."""
    seeds = range(0, 8)
    faults = Faults.everything()
    broken = run_batch(4, 1, seeds, 5, faults, idle=True, driver_class=IgnoresPeersWhileIdleDriver)
    assert broken.liveness_failures, broken.summary()
    failure = broken.liveness_failures[0]
    assert failure.liveness_failure is not None and "not committed" in failure.liveness_failure
    assert f"seed {failure.seed} (" in broken.summary()
    real = run_batch(4, 1, seeds, 5, faults, idle=True)
    assert real.ok, real.summary()


class NeverWaitsDriver(Driver):
    """Broken on purpose: starts every height at once, as if create_empty_blocks were true."""

    def _holds_start(self, height: int, now: float) -> bool:
        return False


def test_idle_mode_catches_a_driver_that_never_waits() -> None:
    """A driver that ignores create_empty_blocks = false makes empty blocks while no
    transaction waits: the idle check reports the first one, with the seed, and ends the run."""
    batch = run_batch(4, 1, range(0, 3), 5, Faults.none(), idle=True, driver_class=NeverWaitsDriver)
    assert len(batch.idle_failures) == 3 and not batch.liveness_failures, batch.summary()
    assert "idle_failures=3 " in batch.summary()
    assert "seed 0 (" in batch.summary() and "  idle: height " in batch.summary()


def test_single_validator_under_default_faults() -> None:
    """One validator, no Byzantine: a partition has nobody to split; crashes and replays still."""
    result = simulate(0, validators=1, byzantine=0, heights=3, faults=Faults(window_ms=2_000))
    assert result.ok, result.describe()
    assert result.byzantine_mode == "none" and result.blocks >= 3


def test_bad_arguments_raise() -> None:
    """Clusters breaking n > 3f, unknown modes and a scripted attack on another size are refused."""
    for kwargs in (
        {"validators": 3, "byzantine": 1},
        {"byzantine_mode": "chaos"},
        {"validators": 7, "byzantine": 2, "byzantine_mode": "lock-attack"},
        {"byzantine_mode": "lock-attack", "idle": True},
    ):
        with pytest.raises(ValueError):
            simulate(0, **kwargs)


def test_command_line(capsys: object) -> None:
    """`archipelago simulate` equivalent: one summary line and exit status 0 when all runs pass."""
    assert main(["--validators", "4", "--byzantine", "1", "--seeds", "3", "--heights", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("runs=3 seeds=0..2 safety_violations=0 liveness_failures=0")
    assert main(["--mode", "amnesia-attack", "--seeds", "2", "--heights", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("runs=2 seeds=0..1 safety_violations=0 liveness_failures=0")
    assert main(["--no-empty-blocks", "--seeds", "2", "--heights", "2"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("runs=2 seeds=0..1 safety_violations=0 liveness_failures=0")
    assert " idle_failures=0 bursts=" in out
