"""GET /state/proof on a real running node: proofs verify against a certified header.

A one-validator ledger testnet runs as a real process (under each crypto
suite, the `crypto` fixture). A transfer is committed; then the node's proofs
for the recipient's account (present), an address never used (absent) and
the chain key are checked offline with consensus/ alone against the app hash
of header h + 1 from GET /commit/{h+1}, whose certificate is verified too.
Heights the node does not serve answer 404 with a JSON error; bad
parameters answer 400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apps.ledger import transfer_tx
from consensus.codec import encode
from consensus.crypto import PrivateKey
from consensus.statetree import (
    CHAIN_KEY,
    StateProofError,
    chain_value,
    decode_state_proof,
    verify_state_proof,
)
from consensus.types import Commit, Header, ValidatorSet
from tests.integration import nodes

TIMEOUT_S = 60  # generous for a loaded 2-core machine; healthy runs take a few seconds


def _verify_served(served: dict[str, Any], commit_body: dict[str, Any], chain_id: str) -> None:
    """The proof against header h + 1's app hash, that header certified by its commit."""
    header = Header.decode(bytes.fromhex(commit_body["header_encoded"]))
    commit = Commit.decode(bytes.fromhex(commit_body["commit"]["encoded"]))
    validators = ValidatorSet.decode(bytes.fromhex(commit_body["validators_encoded"]))
    assert header.height == served["header_height"] == served["height"] + 1
    assert header.hash == commit.block_hash and header.validators_hash == validators.hash
    assert commit.verify(chain_id, validators) is None
    assert header.app_hash.hex() == served["app_hash"]
    value = None if served["value"] is None else bytes.fromhex(served["value"])
    proof = decode_state_proof(bytes.fromhex(served["proof_encoded"]))
    verify_state_proof(header.app_hash, bytes.fromhex(served["key"]), value, proof)


async def test_state_proofs_verify_against_the_certified_header(
    tmp_path: Path, crypto: str
) -> None:
    net = nodes.create_testnet(tmp_path / "net", validators=1, accounts=1, crypto=crypto)
    to = PrivateKey(b"\x0b" * 32).address
    never = PrivateKey(b"\x0c" * 32).address
    account_key = b"a" + to
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 1, TIMEOUT_S)
        r = await api.submit(node, transfer_tx(net.accounts[0], net.chain_id, 0, to, 77).encode())
        assert r.status_code == 202, r.text
        # The state after the transfer's block is served once the next block is committed.
        served_by_key: dict[bytes, dict[str, Any]] = {}
        for key in (account_key, b"a" + never, CHAIN_KEY):

            async def probe(key: bytes = key) -> Any:
                return await api.try_get(node, f"/state/proof?key={key.hex()}")

            def ready(body: Any, key: bytes = key) -> bool:
                return body is not None and (key != account_key or body["value"] is not None)

            served_by_key[key] = await nodes.wait_for(
                probe, ready, TIMEOUT_S, "a proof of the recipient's account"
            )
        commits = {
            body["header_height"]: await api.get(node, f"/commit/{body['header_height']}")
            for body in served_by_key.values()
        }

        # Heights not served, and bad parameters.
        latest = await api.height(node)
        statuses = {}
        for query, want in (
            (f"key={account_key.hex()}&height={latest + 5}", 404),
            (f"key={account_key.hex()}&height=0", 404),
            (f"key={account_key.hex()}&height=01", 400),
            (f"key={account_key.hex()}&height=-1", 400),
            ("key=zz", 400),
            ("key=", 400),
            ("height=1", 400),
            (f"key={'00' * 1025}", 400),
        ):
            resp = await api.client.get(node.rpc + "/state/proof?" + query)
            statuses[query] = (resp.status_code, "error" in resp.json())
            assert statuses[query] == (want, True), (query, resp.text)
            if query.endswith("height=0"):
                assert "no longer kept" in resp.json()["error"]

    # Offline from here: what the node served and consensus/ alone.
    present = served_by_key[account_key]
    assert present["value"] == encode([77, 0]).hex()
    _verify_served(present, commits[present["header_height"]], net.chain_id)
    absent = served_by_key[b"a" + never]
    assert absent["value"] is None
    _verify_served(absent, commits[absent["header_height"]], net.chain_id)
    chain = served_by_key[CHAIN_KEY]
    assert chain["value"] == chain_value(net.chain_id, "ledger").hex()
    _verify_served(chain, commits[chain["header_height"]], net.chain_id)

    # Tampering with what was served is caught, naming the check.
    header = Header.decode(bytes.fromhex(commits[present["header_height"]]["header_encoded"]))
    proof = decode_state_proof(bytes.fromhex(present["proof_encoded"]))
    with pytest.raises(StateProofError, match="state value"):
        verify_state_proof(header.app_hash, account_key, encode([78, 0]), proof)
    with pytest.raises(StateProofError, match="absence"):
        verify_state_proof(header.app_hash, account_key, None, proof)
    with pytest.raises(StateProofError, match="state key"):
        verify_state_proof(header.app_hash, b"a" + never, encode([77, 0]), proof)
