"""The driver with light-client-attack evidence from peers: judged, then pooled and relayed.

The real `Driver` over a real WAL, at height 3 of test_light_attack.py's
ledger chain (real signed blocks, canonical certificates). Valid evidence is
pooled once and relayed as the bytes that arrived; forged evidence costs the
sender (a bad signature, a weak certificate) and goes nowhere; evidence the
node cannot judge yet is dropped without blaming anyone; what the API
verified (origin CLIENT_PEER) is never penalised. The largest legal message
decodes within the evidence channel's budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from consensus import types as types_module
from consensus.crypto import PrivateKey
from consensus.types import (
    HEIGHT_MAX,
    ROUND_MAX,
    VALIDATORS_MAX,
    VOTING_POWER_MAX,
    Commit,
    CommitSig,
    Header,
    LightClientAttackEvidence,
    Validator,
    ValidatorSet,
)
from network import Misbehaviour as PeerFault
from node.driver import CLIENT_PEER, Driver
from node.effects import Effect, Gossip, Penalise
from node.messages import EvidenceMsg, decode_message, encode_message
from tests.unit.consensus.test_light_attack import AttackedChain, sign_for
from tests.unit.node.test_driver import (
    CONFIG,
    _close_wals,  # noqa: F401  (autouse: closes the WALs open_test_wal opened)
    open_test_wal,
)

PEER = "b" * 40


class AttackedNode:
    def __init__(self, tmp: Path) -> None:
        self.attacked = AttackedChain()
        a = self.attacked
        self.driver = Driver(
            state=a.chain.state,
            validator_address=PrivateKey(b"\x09" * 32).address,  # not a validator: no signing
            can_sign=False,
            last_signed=None,
            wal=open_test_wal(tmp / "wal"),
            config=CONFIG,
            validators_at=lambda h: a.validators,
            commit_at=a.commits.get,
            now=0.0,
        )
        self.driver.start(0.0)

    def receive(
        self, ev: LightClientAttackEvidence, peer: str = PEER
    ) -> tuple[bytes, list[Effect]]:
        payload = encode_message(EvidenceMsg(ev))
        return payload, self.driver.on_message(peer, decode_message(payload), payload, 0.0)


@pytest.fixture
def attacked_node(tmp_path: Path) -> Iterator[AttackedNode]:
    n = AttackedNode(tmp_path)
    yield n
    n.attacked.chain.verifier.close()


def _penalties(effects: list[Effect]) -> list[Penalise]:
    return [e for e in effects if isinstance(e, Penalise)]


def _gossiped(effects: list[Effect]) -> list[bytes]:
    return [e.payload for e in effects if isinstance(e, Gossip)]


def test_valid_evidence_is_pooled_once_and_relayed_as_received(attacked_node: AttackedNode) -> None:
    ev = attacked_node.attacked.evidence()
    payload, effects = attacked_node.receive(ev)
    assert _gossiped(effects) == [payload] and not _penalties(effects)
    assert attacked_node.driver.evidence.pending(attacked_node.driver.state) == [ev]
    _, again = attacked_node.receive(ev, peer="c" * 40)
    assert again == []


def test_forged_evidence_costs_the_sender_and_goes_nowhere(attacked_node: AttackedNode) -> None:
    ev = attacked_node.attacked.evidence()
    s = list(ev.conflicting_commit.signatures)
    s[0] = CommitSig(s[0].validator_index, bytes(64))
    forged = dataclasses.replace(
        ev, conflicting_commit=dataclasses.replace(ev.conflicting_commit, signatures=tuple(s))
    )
    _, effects = attacked_node.receive(forged)
    assert [p.fault for p in _penalties(effects)] == [PeerFault.INVALID_SIGNATURE]
    assert not _gossiped(effects)
    weak = attacked_node.attacked.evidence(signers=2)
    _, effects = attacked_node.receive(weak)
    assert [p.fault for p in _penalties(effects)] == [PeerFault.PROTOCOL_VIOLATION]
    assert "certificate power" in _penalties(effects)[0].detail
    _, effects = attacked_node.receive(forged, peer=CLIENT_PEER)
    assert effects == []
    assert len(attacked_node.driver.evidence) == 0


def test_refused_evidence_is_remembered_and_costs_a_lookup_again(
    attacked_node: AttackedNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forged evidence is refused once by its signatures; sent again (a fresh object, as
    decoded off the wire) it is refused by its hash: no signature is verified."""
    ev = attacked_node.attacked.evidence()
    s = list(ev.conflicting_commit.signatures)
    s[0] = CommitSig(s[0].validator_index, bytes(64))
    forged = dataclasses.replace(
        ev, conflicting_commit=dataclasses.replace(ev.conflicting_commit, signatures=tuple(s))
    )
    calls: list[bytes] = []
    real = types_module.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> bool:
        calls.append(signature)
        return real(public_key, message, signature)

    monkeypatch.setattr(types_module, "verify", counting)
    _, effects = attacked_node.receive(forged)
    assert [p.fault for p in _penalties(effects)] == [PeerFault.INVALID_SIGNATURE]
    assert calls and attacked_node.driver.evidence_refusal(forged) is not None
    calls.clear()
    _, effects = attacked_node.receive(forged, peer="c" * 40)
    assert [p.fault for p in _penalties(effects)] == [PeerFault.PROTOCOL_VIOLATION]
    assert "certificate signature" in _penalties(effects)[0].detail
    assert calls == []
    assert len(attacked_node.driver.evidence) == 0


def test_one_attack_is_pooled_once_in_any_of_its_forms(attacked_node: AttackedNode) -> None:
    """Four signatures or three of them: both valid, one conflicting header. The pool
    takes the first; the second is known (no penalty, no relay); once the first is
    committed the other stays out too."""
    a = attacked_node.attacked
    whole, part = a.evidence(), a.evidence(signers=3)
    pool = attacked_node.driver.evidence
    _, effects = attacked_node.receive(whole)
    assert _gossiped(effects)
    _, effects = attacked_node.receive(part)
    assert effects == []
    assert pool.pending(attacked_node.driver.state) == [whole]
    assert not pool.add(part)
    pool.committed((whole,))
    assert len(pool) == 0 and not pool.add(part) and pool.known_item(part)


def test_evidence_the_node_cannot_judge_yet_is_dropped_without_blame(
    attacked_node: AttackedNode,
) -> None:
    """At height 3 (the node's latest) the chain's certificate is not final: no verdict."""
    a = attacked_node.attacked
    ours = a.headers[3]
    header = dataclasses.replace(ours, app_hash=hashlib.sha256(b"fork").digest())
    ev = LightClientAttackEvidence(
        header, sign_for(header, a.chain.vkeys, a.validators), a.validators, 3, ()
    )
    _, effects = attacked_node.receive(ev)
    assert effects == []


def test_the_largest_legal_attack_message_decodes() -> None:
    """Every field at its largest: 1,000 validators of the largest power, 1,000 signatures,
    1,000 accused, heights and round at their maxima."""
    keys = [hashlib.sha256(b"k%d" % i).digest() for i in range(VALIDATORS_MAX)]
    validators = ValidatorSet.of(Validator(k, VOTING_POWER_MAX) for k in keys)
    header = Header(
        "c" * 50,
        HEIGHT_MAX,
        2**53,
        b"\xee" * 32,
        b"\xee" * 32,
        b"\xee" * 32,
        validators.hash,
        b"\xee" * 32,
        b"\xee" * 64,
        b"\xee" * 32,
        b"\xee" * 32,
        b"\xdd" * 20,
    )
    commit = Commit(
        HEIGHT_MAX,
        ROUND_MAX,
        header.hash,
        tuple(CommitSig(i, b"\xff" * 64) for i in range(VALIDATORS_MAX)),
    )
    accused = tuple(sorted(v.address for v in validators))
    ev = LightClientAttackEvidence(header, commit, validators, HEIGHT_MAX, accused)
    payload = encode_message(EvidenceMsg(ev))
    assert len(payload) <= 2 + LightClientAttackEvidence.BYTES_MAX
    assert decode_message(payload) == EvidenceMsg(ev)
