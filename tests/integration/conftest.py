"""The `crypto` fixture: a node test that takes it runs once under each crypto suite.

Why opt-in rather than every test twice: a testnet costs seconds, so only the
representative tests of consensus, sync and the API take it (the suite
changes what is signed, hashed and verified, not how the node is driven). The
suite is also made active in the test's own process, so what the test hashes,
signs or verifies offline (tx ids, Merkle proofs, commit certificates) is the
chain's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consensus.crypto import SUITES, using


@pytest.fixture(params=tuple(SUITES))
def crypto(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    with using(SUITES[name]):
        yield name
