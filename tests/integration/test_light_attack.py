"""Light-client-attack evidence on a cluster of real validator processes.

The test holds its local cluster's validator key files, so it can play an
attack: it signs, with three of the four real validator keys, a header that
conflicts with the chain's header at a committed height (another app hash,
same validator set, same round as the chain's certificate), and builds the
evidence a light client would (consensus/light.py, `attack_evidence`) from
what `/commit/{h}` serves. Posted to one node, it must be accepted (202),
relayed, committed in a block by every node's chain, shown by every node's
`/block` with type `light_client_attack` and the bytes posted, recorded by
the ledger (the accused leave the validator set), and refused when posted
again (409), as is another form of the same attack. Forged evidence (a bad
signature; a lunatic header signed by less than a third of the common height's
set) is refused with 422 naming the check (the same answer when posted again),
and never reaches a block nor another node.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from consensus.crypto import PrivateKey
from consensus.light import LightBlock, attack_evidence
from consensus.types import (
    Commit,
    CommitSig,
    Header,
    LightClientAttackEvidence,
    Validator,
    ValidatorSet,
)
from tests.integration import nodes
from tests.signing import certificate

TIMEOUT_S = 120  # a loaded 2-core machine; a quiet one commits it in a few seconds
ATTACK_HEIGHT = 2
ACCEPTED_EVENT = "light-client attack evidence accepted"


async def _light_block(api: nodes.Api, node: nodes.NodeProcess, height: int) -> LightBlock:
    body = await api.get(node, f"/commit/{height}")
    header = Header.decode(bytes.fromhex(body["header_encoded"]))
    commit = Commit.decode(bytes.fromhex(body["commit"]["encoded"]))
    validators = ValidatorSet.decode(bytes.fromhex(body["validators_encoded"]))
    return LightBlock(header, commit, validators, validators)


async def _post(api: nodes.Api, node: nodes.NodeProcess, raw: bytes) -> tuple[int, Any]:
    r = await api.client.post(
        node.rpc + "/evidence",
        content=raw,
        headers={"content-type": "application/octet-stream"},
    )
    return r.status_code, r.json()


async def _find_evidence(
    api: nodes.Api, node: nodes.NodeProcess, evidence_hash: str
) -> dict[str, Any] | None:
    """The `/block` evidence item of that hash, from any committed block of `node`."""
    top = await api.height(node)
    for h in range(1, top + 1):
        block = await api.get(node, f"/block/{h}")
        for item in block["evidence"]:
            if item["hash"] == evidence_hash:
                found: dict[str, Any] = {**item, "block_height": h}
                return found
    return None


async def test_attack_evidence_is_accepted_gossiped_and_committed_and_forgeries_refused(
    tmp_path: Path,
) -> None:
    """The valid evidence is in a block of every node's chain and `/block` shows it; the two
    forgeries are refused with 422 naming the check and appear nowhere."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1)
    async with nodes.running(net), nodes.open_api() as api:
        entry = net.validators[0]
        await api.wait_height(net.validators, ATTACK_HEIGHT + 2, TIMEOUT_S)
        mine = await _light_block(api, entry, ATTACK_HEIGHT)
        keys = [v.validator_key for v in net.validators]
        attackers = keys[:3]

        # The conflicting header: the chain's, another app hash, signed in the same round.
        fork_header = dataclasses.replace(
            mine.header, app_hash=hashlib.sha256(b"another state").digest()
        )
        fork_commit = certificate(
            net.chain_id, fork_header, attackers, mine.validators, mine.commit.round
        )
        fork = LightBlock(fork_header, fork_commit, mine.validators, mine.validators)
        evidence = attack_evidence(mine, fork, mine)
        accused = {k.address for k in attackers} & {
            mine.validators[s.validator_index].address for s in mine.commit.signatures
        }
        assert set(evidence.byzantine_validators) == accused and accused

        # Forgery 1: one signature flipped.
        sigs = list(fork_commit.signatures)
        sigs[0] = CommitSig(sigs[0].validator_index, bytes(64))
        bad_signature = dataclasses.replace(
            evidence, conflicting_commit=dataclasses.replace(fork_commit, signatures=tuple(sigs))
        )
        # Forgery 2: a lunatic header at height 3 naming a made-up set of one real validator
        # and three strangers: a quarter of the common height's set, not more than a third.
        strangers = [PrivateKey(hashlib.sha256(b"stranger %d" % i).digest()) for i in range(3)]
        made_up = ValidatorSet.of(Validator(k.public_key, 10) for k in [keys[3], *strangers])
        ours3 = await _light_block(api, entry, ATTACK_HEIGHT + 1)
        lunatic_header = dataclasses.replace(
            ours3.header,
            validators_hash=made_up.hash,
            app_hash=hashlib.sha256(b"lunatic").digest(),
        )
        lunatic_commit = certificate(
            net.chain_id, lunatic_header, [keys[3], *strangers], made_up, 0
        )
        weak = LightClientAttackEvidence(
            lunatic_header, lunatic_commit, made_up, ATTACK_HEIGHT, (keys[3].address,)
        )
        await api.wait_height(net.validators, ATTACK_HEIGHT + 3, TIMEOUT_S)

        status, body = await _post(api, entry, bad_signature.encode())
        assert status == 422 and body["error"].startswith("certificate signature"), body
        # Remembered: posted again, the same refusal (a hash lookup, no signature checked).
        assert await _post(api, entry, bad_signature.encode()) == (422, body)
        status, body = await _post(api, entry, weak.encode())
        assert status == 422 and body["error"].startswith("common set power"), body
        status, body = await _post(api, entry, b"\x95\x01")
        assert status == 422 and "does not decode" in body["error"], body

        status, body = await _post(api, entry, evidence.encode())
        assert status == 202, body
        assert body == {
            "hash": evidence.hash.hex(),
            "type": "light_client_attack",
            "height": ATTACK_HEIGHT,
        }

        found: dict[str, dict[str, Any]] = {}
        for node in net.validators:
            item = await nodes.wait_for(
                lambda n=node: _find_evidence(api, n, evidence.hash.hex()),  # type: ignore[misc]
                lambda it: it is not None,
                TIMEOUT_S,
                f"the evidence in a block of {node.name}",
            )
            assert item is not None
            found[node.name] = item
        heights = {item["block_height"] for item in found.values()}
        assert len(heights) == 1, found  # one chain: the same block everywhere
        for item in found.values():
            assert item["type"] == "light_client_attack"
            assert item["encoded"] == evidence.encode().hex()
            assert item["common_height"] == ATTACK_HEIGHT
            assert set(item["byzantine_validators"]) == {a.hex() for a in accused}

        status, body = await _post(api, entry, evidence.encode())
        assert status == 409, body
        # Another form of the same attack (all four signatures): one attack, acted on once.
        whole = certificate(net.chain_id, fork_header, keys, mine.validators, mine.commit.round)
        other_form = attack_evidence(
            mine, LightBlock(fork_header, whole, mine.validators, mine.validators), mine
        )
        assert other_form.hash != evidence.hash
        status, body = await _post(api, entry, other_form.encode())
        assert status == 409 and "same attack" in body["error"], body

        # The ledger acted on it: the accused leave the set two heights after the block.
        (committed_at,) = heights
        await api.wait_height(net.validators, committed_at + 3, TIMEOUT_S)
        validators = await api.get(entry, "/validators")
        remaining = {v["address"] for v in validators["validators"]}
        assert remaining.isdisjoint(a.hex() for a in accused), validators

        for node in net.validators:
            for forged in (bad_signature, weak, other_form):
                assert await _find_evidence(api, node, forged.hash.hex()) is None
    for node in net.validators:
        refusals = [e for e in node.events("peer message refused") if "evidence" in str(e)]
        assert refusals == [], (node.name, refusals)
    assert any(n.events(ACCEPTED_EVENT) for n in net.validators[1:]), "never relayed"
