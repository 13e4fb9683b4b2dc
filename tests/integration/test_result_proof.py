"""GET /tx/{hash}'s result proof on a real node (issue 13: a transfer proven to have succeeded).

A transaction that failed is still in its block, so its inclusion proof does
not show that it took effect; `result_proof` is the Merkle path of its result
to the `last_results_hash` of the next header. This test proves that the
path the node serves verifies with consensus/ alone against the header that
`/commit/{h+1}` serves, that the leaf is the result's canonical [code, data],
and that a leaf claiming another code, or a changed aunt, does not verify.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apps.ledger import transfer_tx
from consensus import merkle
from consensus.codec import encode
from consensus.crypto import PrivateKey
from consensus.types import Header, tx_id
from tests.integration import nodes

TIMEOUT_S = 60  # generous for a loaded 2-core machine; healthy runs take a few seconds


async def test_result_proof_verifies_against_next_header_and_refuses_a_changed_code(
    tmp_path: Path,
) -> None:
    """A committed transfer's result_proof verifies [0, ""] against header h+1's
    last_results_hash; [1, ""] and a flipped aunt do not."""
    net = nodes.create_testnet(tmp_path / "net", validators=1, accounts=2)
    to = PrivateKey(b"\x09" * 32).address
    raws = [transfer_tx(k, net.chain_id, 0, to, 7).encode() for k in net.accounts]
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 1, TIMEOUT_S)
        for raw in raws:
            r = await api.submit(node, raw)
            assert r.status_code == 202, r.text

        def proven(body: Any) -> bool:
            return body is not None and body.get("result_proof") is not None

        records = [
            await nodes.wait_for(
                lambda raw=raw: api.try_get(node, f"/tx/{tx_id(raw).hex()}"),
                proven,
                TIMEOUT_S,
                "transfer committed with a result proof",
            )
            for raw in raws
        ]
        headers = {
            r["height"]: await api.get(node, f"/commit/{r['height'] + 1}") for r in records
        }
    for record in records:
        served = record["result_proof"]
        header = Header.decode(bytes.fromhex(headers[record["height"]]["header_encoded"]))
        assert served["header_height"] == header.height == record["height"] + 1
        assert served["results_hash"] == header.last_results_hash.hex()
        assert served["index"] == record["index"] and record["result"]["code"] == 0
        leaf = bytes.fromhex(served["result_encoded"])
        assert leaf == encode([0, b""])
        aunts = tuple(bytes.fromhex(a) for a in served["aunts"])
        proof = merkle.Proof(served["index"], served["total"], aunts)
        assert proof.verify(leaf, header.last_results_hash)
        assert not proof.verify(encode([1, b""]), header.last_results_hash)
        if aunts:
            bent = (bytes([aunts[0][0] ^ 1]) + aunts[0][1:], *aunts[1:])
            assert not merkle.Proof(proof.index, proof.total, bent).verify(
                leaf, header.last_results_hash
            )
