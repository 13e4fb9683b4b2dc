"""A node's store whose application state does not hash to its stored app hash refuses to start.

The application rebuilds its state tree from the stored pairs at start and
compares the root with the app hash stored with the chain state: a changed
value (a disk fault, a hand edit) is one operator error naming the store,
never a node that would compute app hashes the chain does not have.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisError, GenesisValidator
from consensus.sigverify import SignatureVerifier
from consensus.statetree import CHAIN_KEY
from node.chain import Chain
from node.storage import open_store

ALICE = PrivateKey(b"\x0b" * 32)
VALIDATOR = PrivateKey(b"\x01" * 32)
MAP_BYTES = 64 * 1024 * 1024


@pytest.mark.parametrize("app", ["ledger", "kvstore"])
def test_a_tampered_app_state_refuses_to_start(tmp_path: Path, app: str) -> None:
    state = {"accounts": {ALICE.address.hex(): 100}} if app == "ledger" else {}
    genesis = Genesis(
        "load-test", 0, (GenesisValidator("v", VALIDATOR.public_key, 10),), app, state
    )
    path = tmp_path / "store"
    with SignatureVerifier(threads=1) as verifier:
        with open_store(path, map_bytes=MAP_BYTES) as store:
            app_hash = Chain(genesis, store, verifier).app.app_hash
        with open_store(path, map_bytes=MAP_BYTES) as store:  # an intact store loads
            assert Chain(genesis, store, verifier).app.app_hash == app_hash
            with store._env.begin(write=True) as txn:  # a value changed behind the node's back
                txn.put(CHAIN_KEY, b"tampered", db=store._db["app"])
        with open_store(path, map_bytes=MAP_BYTES) as store, pytest.raises(GenesisError) as e:
            Chain(genesis, store, verifier)
    message = str(e.value)
    assert str(path) in message and "the store is corrupt" in message
    assert "\n" not in message
