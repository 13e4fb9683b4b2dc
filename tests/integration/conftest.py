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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pytest

from consensus.crypto import SUITES, using

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
