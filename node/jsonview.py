"""JSON views of the canonical types, for the HTTP API and the CLI.

Bytes are lowercase hex; every view also offers the canonical encoding in hex
(`encoded`) where a client may want to verify hashes and signatures offline
with docs/PROTOCOL.md instead of trusting this rendering.
"""

from __future__ import annotations

from typing import Any

from consensus.app import QueryResult
from consensus.codec import DecodeError, decode
from consensus.types import (
    Block,
    Commit,
    DuplicateVoteEvidence,
    Evidence,
    Header,
    LightClientAttackEvidence,
    Transaction,
    Vote,
    tx_id,
)


def header_json(h: Header) -> dict[str, Any]:
    return {
        "chain_id": h.chain_id,
        "height": h.height,
        "time_ms": h.time_ms,
        "last_block_hash": h.last_block_hash.hex(),
        "last_commit_hash": h.last_commit_hash.hex(),
        "data_hash": h.data_hash.hex(),
        "validators_hash": h.validators_hash.hex(),
        "next_validators_hash": h.next_validators_hash.hex(),
        "app_hash": h.app_hash.hex(),
        "last_results_hash": h.last_results_hash.hex(),
        "evidence_hash": h.evidence_hash.hex(),
        "proposer_address": h.proposer_address.hex(),
    }


def commit_json(c: Commit) -> dict[str, Any]:
    return {
        "height": c.height,
        "round": c.round,
        "block_hash": c.block_hash.hex(),
        "signatures": [
            {"validator_index": s.validator_index, "signature": s.signature.hex()}
            for s in c.signatures
        ],
        "encoded": c.encode().hex(),
    }


def vote_json(v: Vote) -> dict[str, Any]:
    return {
        "type": v.type.name.lower(),
        "height": v.height,
        "round": v.round,
        "block_hash": v.block_hash.hex(),
        "validator_address": v.validator_address.hex(),
        "validator_index": v.validator_index,
        "signature": v.signature.hex(),
    }


def evidence_json(e: Evidence) -> dict[str, Any]:
    """Either kind, told apart by `type`; `hash` is the suite's hash of `encoded`."""
    if isinstance(e, LightClientAttackEvidence):
        return {
            "type": "light_client_attack",
            "hash": e.hash.hex(),
            "height": e.height,
            "common_height": e.common_height,
            "conflicting_header": header_json(e.conflicting_header),
            "conflicting_block_hash": e.conflicting_header.hash.hex(),
            "conflicting_commit": commit_json(e.conflicting_commit),
            "conflicting_validators_encoded": e.conflicting_validators.encode().hex(),
            "byzantine_validators": [a.hex() for a in e.byzantine_validators],
            "encoded": e.encode().hex(),
        }
    return _duplicate_vote_json(e)


def _duplicate_vote_json(e: DuplicateVoteEvidence) -> dict[str, Any]:
    return {
        "type": "duplicate_vote",
        "hash": e.hash.hex(),
        "vote_a": vote_json(e.vote_a),
        "vote_b": vote_json(e.vote_b),
        "encoded": e.encode().hex(),
    }


def tx_json(raw: bytes, tx: Transaction | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"hash": tx_id(raw).hex(), "encoded": raw.hex()}
    if tx is not None:
        out.update(
            sender=tx.sender.hex(),
            sender_address=tx.sender_address.hex(),
            nonce=tx.nonce,
            payload=tx.payload.hex(),
            signature=tx.signature.hex(),
        )
    return out


def block_json(b: Block) -> dict[str, Any]:
    """A block with its canonical encoding (`encoded`) and its header's (`header_encoded`:
    its SHA-256 is the block hash)."""
    return {
        "hash": b.hash.hex(),
        "header": header_json(b.header),
        "header_encoded": b.header.encode().hex(),
        "tx_count": len(b.txs),
        "last_commit": None if b.last_commit is None else commit_json(b.last_commit),
        "evidence": [evidence_json(e) for e in b.evidence],
        "txs": [tx_json(raw) for raw in b.txs],
        "encoded": b.encode().hex(),
    }


def query_json(path: str, result: QueryResult) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "height": result.height, "value": result.value.hex()}
    if path != "account":
        return out  # other values are the application's (or a client's) bytes: shown as hex
    try:
        value = decode(result.value)
    except DecodeError:
        return out
    if isinstance(value, tuple) and len(value) == 2:
        out.update(balance=value[0], nonce=value[1])
    return out
