"""The local network behind `archipelago localnet` and `perturb`, and the cluster benchmarks.

Rooms: processes.py (homes and node processes: start, wait, stop), load.py
(the transfer load generator and its HTTP/1.1 client), display.py (watching
the nodes and drawing their progress), localnet.py (the command),
perturb.py (the perturbation runner's command), perturb_rounds.py (its
rounds) and perturb_checks.py (what it checks afterwards). Nothing under
consensus/, network/ or node/ imports this package; node/cli.py loads it
only when `localnet` or `perturb` runs.
"""

from devnet.display import NodeView
from devnet.load import WORKERS_PER_NODE, LoadGenerator, percentile
from devnet.localnet import Localnet, main
from devnet.processes import (
    LocalnetError,
    NodeProcess,
    check_ports_free,
    load_accounts,
    make_testnet,
    start_node,
    start_nodes,
    stop_nodes,
    wait_ready,
)

__all__ = [
    "WORKERS_PER_NODE",
    "LoadGenerator",
    "Localnet",
    "LocalnetError",
    "NodeProcess",
    "NodeView",
    "check_ports_free",
    "load_accounts",
    "main",
    "make_testnet",
    "percentile",
    "start_node",
    "start_nodes",
    "stop_nodes",
    "wait_ready",
]
