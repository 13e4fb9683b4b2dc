"""The seeded whole-cluster simulator behind `archipelago simulate`.

Rooms: engine.py (virtual clock and network driving the node's own driver),
checks.py (what must hold after every run, and its reports), faults.py (what
a seed may make go wrong), scenarios.py (the hostile peer and the scripted
Byzantine attacks), workload.py (keys and client transactions), idle.py (the
`--no-empty-blocks` mode: mempools filled by bursts of transactions between
idle gaps), run.py (one run, a batch on one or more processes, the command),
regressions.py (failing runs recorded to a file the test suite replays). Nothing under
consensus/, network/ or node/ imports this package; node/cli.py loads it
only when `simulate` runs.
"""

from sim.checks import BatchResult, NodeReport, RunResult
from sim.faults import ATTACKS, MODES, Faults
from sim.run import main, run_batch, simulate

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
