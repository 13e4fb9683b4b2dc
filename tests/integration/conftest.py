"""The `crypto` fixture: a node test that takes it runs once under each crypto suite.

Every integration test about consensus, sync or the API takes it (issue 14):
the suite changes what is signed, hashed and verified, so each of those runs
with `ed25519` and `sm2` in its id. The suite is also made active in the
test's own process, so what the test hashes, signs or verifies offline (tx
ids, Merkle proofs, commit certificates, keys it makes) is the chain's. Tests
that never start a chain or that test plumbing no suite reaches (deploy
files, Ansible, the namespace wire) do not take it; each module says why.

`module_crypto` is the same for a module whose tests share one network
(tests/integration/test_hostile_peer.py): pytest runs the module's tests
under one suite, then all of them under the other.

`make test` runs the suite on pytest-xdist workers with `--dist loadfile` (a
module's tests on one worker). A module marked `xdist_group(NAME)` also holds
the lock NAME while it runs, so no two modules of one group run at once on
different workers (`--dist loadgroup` would do that, but pytest-xdist 3.8
sets the group through `item._nodeid`, which pytest 9.2 no longer reads).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from typing import Final

import pytest

from consensus.crypto import SUITES, using
from node.daemon import raise_fd_limit

# The hostile-client tests open more connections than the API's limit (512)
# from this process, alongside the nodes' pipes and logs: more than a login
# shell's usual soft limit of 1,024 open files. Raise it to the hard limit, as
# the node itself does at start (a newcomer's `make test` hit EMFILE).
raise_fd_limit()

SUITE_NAMES: Final = tuple(SUITES)
# Test ids: the key type ("ed25519", "sm2"), short and unambiguous.
SUITE_IDS: Final = tuple(SUITES[name].key_type for name in SUITE_NAMES)


@pytest.fixture(params=SUITE_NAMES, ids=SUITE_IDS)
def crypto(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    with using(SUITES[name]):
        yield name


@pytest.fixture(scope="module", params=SUITE_NAMES, ids=SUITE_IDS)
def module_crypto(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    with using(SUITES[name]):
        yield name


@pytest.fixture(scope="module", autouse=True)
def _xdist_group_lock(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Under pytest-xdist, a module marked xdist_group(NAME) runs holding the lock NAME.

    The lock file is in the run's base temporary folder, which its workers share
    (each has its own subfolder); an autouse module fixture is set up before the
    module's other module fixtures (test_hostile_peer.py's network) and torn down
    after them, so a worker holds at most one group's lock at a time.
    """
    marker = request.node.get_closest_marker("xdist_group")
    if marker is None or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    run_root = tmp_path_factory.getbasetemp().parent
    with open(run_root / f"xdist-group-{marker.args[0]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield
