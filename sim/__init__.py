"""The seeded whole-cluster simulator (`archipelago simulate`); see sim/engine.py."""

from sim.engine import (
    ATTACKS,
    MODES,
    BatchResult,
    Faults,
    NodeReport,
    RunResult,
    main,
    run_batch,
    simulate,
)

__all__ = [
    "ATTACKS",
    "MODES",
    "BatchResult",
    "Faults",
    "NodeReport",
    "RunResult",
    "main",
    "run_batch",
    "simulate",
]
