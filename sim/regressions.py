"""Regression seeds: runs that once failed, kept in a file and replayed by the test suite.

Why a file: a long batch (`make sim-scale`, 30,000 runs over hours) finds its
failures unattended; `archipelago simulate --regressions FILE` appends each
failing run here as soon as it is seen (a stopped batch keeps what it found),
and tests/sim/test_simulator.py replays every entry, so a failure found at
scale stays red in `make test` until it is fixed and then guards the fix.

An entry carries everything its run depends on: the seed, the cluster, the
target height, the whole `Faults` record (every field, not only those that
differ from today's defaults, so a later change of a default does not change
what the entry replays), the Byzantine mode, the powers and the idle mode. The
file is a JSON list, one object per entry; a run already in it is not added
twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sim.checks import RunResult
from sim.faults import Faults

# The file is read whole by the test suite; a batch that fails on most seeds
# (a broken build) must not grow it without bound. Policy when full: the run
# is reported as usual and not recorded.
REGRESSIONS_MAX = 1_000
WHY_CHARS_MAX = 300  # the first line of a failure's report, kept as the entry's reason


class RegressionFileError(Exception):
    """The regression file is not a JSON list of entries this module wrote."""


@dataclass(frozen=True, slots=True)
class Regression:
    """One recorded run: sim/run.py `replay(entry)` runs it again, byte for byte."""

    seed: int
    validators: int = 4
    byzantine: int = 1
    heights: int = 5
    faults: Faults = field(default_factory=Faults)
    byzantine_mode: str | None = None
    equal_power: bool = False
    idle: bool = False
    restarts_min: int = 0  # a crash regression must actually crash: at least this many restarts
    why: str = ""  # what failed (or, for older entries, what it once caught)

    @property
    def key(self) -> tuple[object, ...]:
        """What the run depends on: two entries with one key are the same run."""
        return (
            self.seed,
            self.validators,
            self.byzantine,
            self.heights,
            self.faults,
            self.byzantine_mode,
            self.equal_power,
            self.idle,
        )

    @property
    def name(self) -> str:
        mode = f"-{self.byzantine_mode}" if self.byzantine_mode else ""
        extra = "-equal" if self.equal_power else ""
        extra += "-idle" if self.idle else ""
        return f"seed{self.seed}-v{self.validators}f{self.byzantine}-h{self.heights}{mode}{extra}"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["faults"]["attacks"] = list(self.faults.attacks)
        return out

    @classmethod
    def from_json(cls, data: object) -> Regression:
        if not isinstance(data, dict):
            raise RegressionFileError(f"an entry is a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown or "seed" not in data:
            raise RegressionFileError(f"entry {data!r}: unknown keys {sorted(unknown)} or no seed")
        values = dict(data)
        faults = values.get("faults", {})
        if not isinstance(faults, dict) or set(faults) - {f.name for f in fields(Faults)}:
            raise RegressionFileError(f"entry {data!r}: faults must be Faults' fields")
        values["faults"] = Faults(**{**faults, "attacks": tuple(faults.get("attacks", ()))})
        try:
            return cls(**values)
        except TypeError as e:
            raise RegressionFileError(f"entry {data!r}: {e}") from None


def load_regressions(path: Path) -> list[Regression]:
    """The entries of `path`; none when the file does not exist yet."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise RegressionFileError(f"{path}: {e}") from None
    if not isinstance(data, list):
        raise RegressionFileError(f"{path}: expected a JSON list of entries")
    return [Regression.from_json(d) for d in data]


def save_regressions(path: Path, entries: list[Regression]) -> None:
    """Write the whole file: to a temporary name, then renamed over it (never half written)."""
    text = json.dumps([e.to_json() for e in entries], indent=1) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_regression(path: Path, entry: Regression) -> bool:
    """Append `entry` unless the same run is already there or the file is full; True if added."""
    entries = load_regressions(path)
    if len(entries) >= REGRESSIONS_MAX or any(e.key == entry.key for e in entries):
        return False
    save_regressions(path, [*entries, entry])
    return True


def failure_reason(result: RunResult) -> str:
    """The first thing a failing run reports: a safety violation, else liveness, else idle."""
    lines = [*result.safety_violations, result.liveness_failure or "", result.idle_violation or ""]
    first = next((line for line in lines if line), "")
    return first[:WHY_CHARS_MAX]
