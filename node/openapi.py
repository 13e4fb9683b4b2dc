"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Kept beside the handlers (node/rpc.py) and checked against them on a live
node: a test compares its routes with the app's, and schemathesis
(tests/integration/test_schemathesis.py) sends requests generated from it and
checks every answer's status and body against it. So every constraint a
handler enforces is stated here (formats, lengths, ranges, content types),
every status a route answers is listed with its body's full schema, and the
protocol objects' schemas refuse fields they do not name.

The status policy (docs/PROTOCOL.md, section 12): 400 when a request does not
follow this description; 422 when it does but the protocol or the application
refuses its content (a transaction that does not decode or fails its checks,
an octet-stream batch that is not a msgpack array of byte strings, a query the
application does not answer); 404 when what is asked for does not exist.

Over 600 lines because it is one document: the schemas are data, one per
object and route, and splitting them would only scatter what a reader compares.
"""

from __future__ import annotations

from typing import Any

from consensus.types import HEIGHT_MAX, ROUND_MAX, TIME_MS_MAX, LightClientAttackEvidence


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _hex_bytes(count: int, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "pattern": f"^[0-9a-f]{{{2 * count}}}$"}
    if description:
        out["description"] = description
    return out


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object with exactly these properties, all required but `optional`."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


_HEX = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}
# Keys, signatures and hashes are the chain's crypto suite's (genesis "crypto",
# consensus/crypto.py): one description serves a chain of either.
_HASH = _hex_bytes(32, "the chain's hash (SHA-256 or SM3), 32 bytes")
_HASH_OR_EMPTY = {"type": "string", "pattern": "^([0-9a-f]{64})?$"}
_ADDRESS = _hex_bytes(20, "first 20 bytes of the chain's hash of the public key")
_PUBLIC_KEY = {
    "type": "string",
    "pattern": "^(0[23])?[0-9a-f]{64}$",
    "description": "the chain's suite: Ed25519, 32 bytes; or SM2, 33 (a compressed point)",
}
_SIGNATURE = _hex_bytes(64, "the chain's suite: Ed25519 (R || S) or SM2 (r || s)")
_HEIGHT = {"type": "integer", "minimum": 1, "maximum": HEIGHT_MAX}
_HEIGHT_OR_ZERO = {"type": "integer", "minimum": 0, "maximum": HEIGHT_MAX}
_COUNT = {"type": "integer", "minimum": 0}
_ENCODED = {**_HEX, "description": "canonical encoding (docs/PROTOCOL.md, section 1), hex"}
_RESULT = _object({"code": {"type": "integer"}, "log": {"type": "string"}})
_MEMPOOL_REASONS = [
    "too_large",
    "malformed",
    "duplicate",
    "committed",
    "full",
    "bad_signature",
    "check_failed",
]

# Input formats, exactly as node/rpc.py matches them (upper-case hex digits are accepted).
_IN_HASH = {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}
_IN_ADDRESS = {"type": "string", "pattern": "^[0-9a-fA-F]{40}$"}
_IN_HEX_TX = {
    "type": "string",
    "pattern": "^([0-9a-fA-F]{2})*$",
    "maxLength": 2 * 64 * 1024,  # node/rpc.py HEX_TX_CHARS_MAX
    "description": "an encoded transaction (docs/PROTOCOL.md, section 3), hex",
}
_IN_HEIGHT_PATH = {
    "name": "height",
    "in": "path",
    "required": True,
    "description": "A height in decimal (no sign, no leading zero) or `latest`; "
    "a height above the latest block answers 404",
    "schema": {"type": "string", "pattern": "^(latest|[1-9][0-9]{0,18})$"},
}
_WAIT = {"type": "string", "enum": ["check", "commit"]}


def _json(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("Error"))


_BAD_REQUEST = _error("The request does not follow this description (the error says how)")
_NOT_FOUND = _error("No such object (or the height is above the latest)")

SCHEMAS: dict[str, Any] = {
    "StateProof": _object(
        {
            "key": {**_HEX, "minLength": 2},
            "height": _HEIGHT_OR_ZERO,
            "value": {
                "oneOf": [_HEX, {"type": "null"}],
                "description": "the stored bytes, hex; null when the key is absent",
            },
            "proof_encoded": {
                **_HEX,
                "maxLength": 2 * 9000,
                "description": "the proof's canonical encoding (section 11), hex",
            },
            "app_hash": _HASH,
            "header_height": _HEIGHT,
        }
    ),
    "Error": _object(
        {
            "error": {"type": "string", "description": "what was wrong, for a person"},
            "reason": {
                "type": "string",
                "enum": _MEMPOOL_REASONS,
                "description": "why a transaction was refused, for a program",
            },
        },
        optional=("reason",),
    ),
    "Header": _object(
        {
            "chain_id": {"type": "string"},
            "height": _HEIGHT,
            "time_ms": {"type": "integer", "minimum": 0, "maximum": TIME_MS_MAX},
            "last_block_hash": {**_HASH_OR_EMPTY, "description": "empty at height 1"},
            "last_commit_hash": {**_HASH_OR_EMPTY, "description": "empty at height 1"},
            "data_hash": _HASH,
            "validators_hash": _HASH,
            "next_validators_hash": _HASH,
            "app_hash": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"},
            "last_results_hash": _HASH,
            "evidence_hash": _HASH,
            "proposer_address": _ADDRESS,
        }
    ),
    "Commit": _object(
        {
            "height": _HEIGHT,
            "round": {"type": "integer", "minimum": 0, "maximum": ROUND_MAX},
            "block_hash": _HASH,
            "signatures": {
                "type": "array",
                "items": _object(
                    {"validator_index": _COUNT, "signature": _SIGNATURE},
                ),
            },
            "encoded": _ENCODED,
        }
    ),
    "Vote": _object(
        {
            "type": {"type": "string", "enum": ["prevote", "precommit"]},
            "height": _HEIGHT,
            "round": {"type": "integer", "minimum": 0, "maximum": ROUND_MAX},
            "block_hash": {**_HASH_OR_EMPTY, "description": "empty: a vote for nil"},
            "validator_address": _ADDRESS,
            "validator_index": _COUNT,
            "signature": _SIGNATURE,
        }
    ),
    "Evidence": {
        "oneOf": [_ref("DuplicateVoteEvidence"), _ref("LightClientAttackEvidence")],
        "discriminator": {"propertyName": "type"},
    },
    "DuplicateVoteEvidence": _object(
        {
            "type": {"type": "string", "const": "duplicate_vote"},
            "hash": {**_HASH, "description": "hash of `encoded`"},
            "vote_a": _ref("Vote"),
            "vote_b": _ref("Vote"),
            "encoded": _ENCODED,
        }
    ),
    "LightClientAttackEvidence": _object(
        {
            "type": {"type": "string", "const": "light_client_attack"},
            "hash": {**_HASH, "description": "hash of `encoded`"},
            "height": _HEIGHT,
            "common_height": _HEIGHT,
            "conflicting_header": _ref("Header"),
            "conflicting_block_hash": _HASH,
            "conflicting_commit": _ref("Commit"),
            "conflicting_validators_encoded": _ENCODED,
            "byzantine_validators": {"type": "array", "items": _ADDRESS},
            "encoded": _ENCODED,
        }
    ),
    "EvidenceAccepted": _object(
        {
            "hash": _HASH,
            "type": {"type": "string", "enum": ["duplicate_vote", "light_client_attack"]},
            "height": _HEIGHT,
        }
    ),
    "BlockTx": _object(
        {"hash": {**_HASH, "description": "SHA-256 of `encoded`"}, "encoded": _ENCODED}
    ),
    "Block": _object(
        {
            "hash": {**_HASH, "description": "SHA-256 of header_encoded"},
            "header": _ref("Header"),
            "header_encoded": _ENCODED,
            "tx_count": _COUNT,
            "last_commit": {"oneOf": [_ref("Commit"), {"type": "null"}]},
            "evidence": {"type": "array", "items": _ref("Evidence")},
            "txs": {"type": "array", "items": _ref("BlockTx")},
            "encoded": _ENCODED,
        }
    ),
    "CommitAnswer": _object(
        {
            "height": _HEIGHT,
            "header": _ref("Header"),
            "header_encoded": _ENCODED,
            "commit": _ref("Commit"),
            "validators_encoded": {
                "oneOf": [_ENCODED, {"type": "null"}],
                "description": "the validator set of this height, which signed the commit",
            },
        }
    ),
    "CommittedTx": _object(
        {
            "hash": _HASH,
            "encoded": _ENCODED,
            "sender": _PUBLIC_KEY,
            "sender_address": _ADDRESS,
            "nonce": _COUNT,
            "payload": _HEX,
            "signature": _SIGNATURE,
            "status": {"const": "committed"},
            "height": _HEIGHT,
            "index": _COUNT,
            "result": _RESULT,
            "proof": _object(
                {
                    "index": _COUNT,
                    "total": {"type": "integer", "minimum": 1},
                    "aunts": {"type": "array", "items": _HASH},
                    "data_hash": _HASH,
                    "block_hash": _HASH,
                }
            ),
            "result_proof": {
                "oneOf": [
                    _object(
                        {
                            "index": _COUNT,
                            "total": {"type": "integer", "minimum": 1},
                            "aunts": {"type": "array", "items": _HASH},
                            "result_encoded": {
                                **_ENCODED,
                                "description": "the results-hash leaf item: canonical [code, data]",
                            },
                            "results_hash": _HASH,
                            "header_height": _HEIGHT,
                        }
                    ),
                    {"type": "null"},
                ],
                "description": "the result's Merkle path to last_results_hash of header "
                "height + 1; null until height + 1 is committed",
            },
        }
    ),
    "PendingTx": _object({"hash": _HASH, "status": {"const": "pending"}}),
    "Submitted": _object(
        {
            "hash": _HASH,
            "check": _RESULT,
            "height": _HEIGHT,
            "index": _COUNT,
            "result": _RESULT,
            "error": {"type": "string"},
        },
        optional=("height", "index", "result", "error"),
    ),
    "Validators": _object(
        {
            "height": _HEIGHT,
            "total_power": _COUNT,
            "hash": _HASH,
            "validators": {
                "type": "array",
                "items": _object({"address": _ADDRESS, "public_key": _PUBLIC_KEY, "power": _COUNT}),
            },
            "encoded": _ENCODED,
        }
    ),
    "Query": _object(
        {
            "path": {"type": "string"},
            "height": _HEIGHT_OR_ZERO,
            "value": {**_HEX, "description": "the application's answer, hex"},
            "balance": _COUNT,
            "nonce": _COUNT,
        },
        optional=("balance", "nonce"),
    ),
    "Health": _object(
        {
            "healthy": {"type": "boolean"},
            "problems": {"type": "array", "items": {"type": "string"}},
            "height": _HEIGHT_OR_ZERO,
        }
    ),
    "Status": _object(
        {
            "node_id": _hex_bytes(20),
            "chain_id": {"type": "string"},
            "genesis_hash": {**_HASH, "description": "SHA-256 of the genesis file's bytes"},
            "moniker": {"type": "string"},
            "version": {"type": "string"},
            "latest_height": _HEIGHT_OR_ZERO,
            "latest_block_hash": _HASH_OR_EMPTY,
            "latest_app_hash": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"},
            "latest_block_time_ms": {"type": "integer", "minimum": 0},
            "catching_up": {"type": "boolean"},
            "sync": _object(
                {
                    "mode": {"type": "string", "enum": ["consensus", "blocksync"]},
                    "reason": {"type": "string"},
                    "peer_max_height": _HEIGHT_OR_ZERO,
                    "lag_blocks": _COUNT,
                }
            ),
            "validator": _object(
                {
                    "address": _ADDRESS,
                    "public_key": _PUBLIC_KEY,
                    "in_set": {"type": "boolean"},
                    "signing": {"type": "boolean"},
                    "doppelganger_watch": {
                        "oneOf": [
                            _object(
                                {
                                    "until_height": _HEIGHT,
                                    "ends_by_time_ms": {"type": "integer"},
                                }
                            ),
                            {"type": "null"},
                        ]
                    },
                    "sign_state_error": {"type": ["string", "null"]},
                }
            ),
            "consensus": {
                "oneOf": [
                    _object(
                        {
                            "height": _HEIGHT,
                            "round": {"type": "integer", "minimum": 0},
                            "step": {
                                "type": "string",
                                "enum": [
                                    "new_height",
                                    "propose",
                                    "prevote",
                                    "precommit",
                                    "commit",
                                ],
                            },
                            "locked_round": {"type": "integer", "minimum": -1},
                            "valid_round": {"type": "integer", "minimum": -1},
                            "proposer": _ADDRESS,
                            "waiting_for_txs": {"type": "boolean"},
                        }
                    ),
                    {"type": "null"},
                ]
            },
            "mempool": _object(
                {"txs": _COUNT, "bytes": _COUNT, "txs_max": _COUNT, "bytes_max": _COUNT}
            ),
            "peers": _COUNT,
            "time_ms": {"type": "integer", "minimum": 0},
            "diagnosis": {
                "type": "array",
                "items": _object(
                    {
                        "severity": {"type": "string", "enum": ["info", "warning", "critical"]},
                        "problem": {"type": "string"},
                        "advice": {"type": "string"},
                    }
                ),
            },
        }
    ),
    "NetInfo": _object(
        {
            "listening": {"type": "boolean"},
            "listen": {"type": "string"},
            "peers": {
                "type": "array",
                "items": _object(
                    {
                        "node_id": _hex_bytes(20),
                        "host": {"type": "string"},
                        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                        "direction": {"type": "string", "enum": ["inbound", "outbound"]},
                        "connected_since": {
                            "type": "number",
                            "description": "the node's monotonic clock, seconds",
                        },
                        "bytes_sent": _COUNT,
                        "bytes_received": _COUNT,
                        "height": {"oneOf": [_HEIGHT_OR_ZERO, {"type": "null"}]},
                    }
                ),
            },
            "peer_count": _COUNT,
            "bytes_sent_by_channel": {"type": "object", "additionalProperties": _COUNT},
            "bytes_received_by_channel": {"type": "object", "additionalProperties": _COUNT},
        }
    ),
    "OpenAPI": {
        "type": "object",
        "properties": {
            "openapi": {"type": "string"},
            "info": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "version": {"type": "string"}},
                "required": ["title", "version"],
            },
            "paths": {"type": "object", "additionalProperties": {"type": "object"}},
            "components": {"type": "object"},
        },
        "required": ["openapi", "info", "paths"],
    },
}

_TX_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"tx": _IN_HEX_TX, "wait": _WAIT},
                "required": ["tx"],
            }
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "the encoded transaction itself",
            }
        },
    },
}

_TXS_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "txs": {
                        "type": "array",
                        "items": _IN_HEX_TX,
                        "maxItems": 10_000,  # node/rpc.py TXS_PER_REQUEST_MAX
                    }
                },
                "required": ["txs"],
            }
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "the canonical msgpack array of encoded transactions "
                "(at most 10,000); anything else answers 422",
            }
        },
    },
}

_EVIDENCE_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "evidence": {
                        "type": "string",
                        "pattern": "^([0-9a-fA-F]{2})*$",
                        # node/rpc.py HEX_EVIDENCE_CHARS_MAX
                        "maxLength": 2 * LightClientAttackEvidence.BYTES_MAX,
                        "description": "the canonical encoding of the evidence, hex",
                    }
                },
                "required": ["evidence"],
            }
        },
        "application/octet-stream": {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "the canonical encoding of the evidence itself "
                "(docs/PROTOCOL.md section 3); anything else answers 422",
            }
        },
    },
}

_BODY_ERRORS = {
    "408": _error("The body did not arrive within the body timeout (10 s)"),
    "413": _error("The body is over [rpc] request_body_bytes_max (default 1 MiB)"),
    "415": _error("The content type is neither application/json nor application/octet-stream"),
}


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Archipelago node API",
        "description": (
            "Status, transactions, blocks, commit certificates and validator sets of an "
            "Archipelago node. Byte strings are lowercase hex (inputs may use upper case). "
            "Each block, header, commit, transaction, evidence and validator set is also "
            "given in its canonical encoding (the `encoded` and `*_encoded` fields, hex), "
            "specified in docs/PROTOCOL.md, so that clients verify hashes, signatures and "
            "Merkle proofs offline. Statuses: 400 when a request does not follow this "
            "description; 422 when it does but the protocol or the application refuses its "
            "content; 404 when what is asked for does not exist; 405 (with Allow) for a "
            "method a path does not serve. docs/PROTOCOL.md section 12 says what each "
            "field means to a verifier."
        ),
        "version": "0",
    },
    "components": {"schemas": SCHEMAS},
    "paths": {
        "/health": {
            "get": {
                "operationId": "getHealth",
                "summary": "Liveness and readiness",
                "responses": {
                    "200": _json("The node is healthy", _ref("Health")),
                    "503": _json(
                        "The node is up but unhealthy; `problems` says why", _ref("Health")
                    ),
                },
            }
        },
        "/status": {
            "get": {
                "operationId": "getStatus",
                "summary": "Node identity, genesis hash, latest block, sync state and diagnosis",
                "responses": {
                    "200": _json(
                        "Status",
                        _ref("Status"),
                        links={
                            "LatestBlock": _link(
                                "getBlock", height="$response.body#/latest_height"
                            ),
                            "LatestCommit": _link(
                                "getCommit", height="$response.body#/latest_height"
                            ),
                            "LatestValidators": _link(
                                "getValidators", height="$response.body#/latest_height"
                            ),
                        },
                    )
                },
            }
        },
        "/tx": {
            "post": {
                "operationId": "submitTx",
                "summary": "Submit a transaction",
                "description": "The body's `wait` overrides the query's.",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {**_WAIT, "default": "check"},
                        "description": "Answer after admission (check) or after the commit",
                    }
                ],
                "requestBody": _TX_REQUEST_BODY,
                "responses": {
                    "200": _json(
                        "Committed (wait=commit): hash, check, height, index, result",
                        _ref("Submitted"),
                        links={
                            "Tx": _link("getTx", hash="$response.body#/hash"),
                            "Block": _link("getBlock", height="$response.body#/height"),
                        },
                    ),
                    "202": _json(
                        "Admitted to the mempool (wait=check): hash, check result",
                        _ref("Submitted"),
                        links={"Tx": _link("getTx", hash="$response.body#/hash")},
                    ),
                    "400": _BAD_REQUEST,
                    **_BODY_ERRORS,
                    "409": _error("Already in the mempool or committed (`reason`)"),
                    "422": _error(
                        "Refused: does not decode, bad signature, or the application's check "
                        "failed (`reason`)"
                    ),
                    "503": _json(
                        "The mempool is full (reason `full`), or too many requests wait for "
                        "a commit (the transaction is admitted: hash, check, error)",
                        {"oneOf": [_ref("Error"), _ref("Submitted")]},
                    ),
                    "504": _json(
                        "Admitted, but not committed within [rpc] tx_wait_timeout_ms",
                        _ref("Submitted"),
                    ),
                },
            }
        },
        "/evidence": {
            "post": {
                "operationId": "submitEvidence",
                "summary": "Submit evidence (a duplicate vote or a light-client attack)",
                "description": (
                    "The node judges the evidence against its own chain (docs/PROTOCOL.md "
                    "section 9.7), signatures last; valid new evidence is pooled, gossiped "
                    "to every peer and included in a block. A refusal names the failed check."
                ),
                "requestBody": _EVIDENCE_REQUEST_BODY,
                "responses": {
                    "202": _json(
                        "Valid and new: pooled and gossiped (hash, type, height)",
                        _ref("EvidenceAccepted"),
                    ),
                    "400": _BAD_REQUEST,
                    **_BODY_ERRORS,
                    "409": _error("Already pending or committed"),
                    "422": _error(
                        "Refused: does not decode, or fails a check (the error begins with "
                        "the check's name, e.g. `certificate signature`)"
                    ),
                    "503": _error("The node's consensus inbox is full; try again"),
                },
            }
        },
        "/txs": {
            "post": {
                "operationId": "submitTxs",
                "summary": "Submit many transactions in one request",
                "description": (
                    "Each transaction is admitted on its own; the answer lists every "
                    "one's hash and outcome, in order. At most 10,000 per request."
                ),
                "requestBody": _TXS_REQUEST_BODY,
                "responses": {
                    "200": _json(
                        "The count admitted and each transaction's outcome, in order",
                        _object(
                            {
                                "accepted": _COUNT,
                                "results": {
                                    "type": "array",
                                    "items": {
                                        "oneOf": [
                                            _object({"hash": _HASH, "code": {"type": "integer"}}),
                                            _object(
                                                {
                                                    "hash": _HASH,
                                                    "error": {"type": "string"},
                                                    "reason": {
                                                        "type": "string",
                                                        "enum": _MEMPOOL_REASONS,
                                                    },
                                                }
                                            ),
                                        ]
                                    },
                                },
                            }
                        ),
                    ),
                    "400": _BAD_REQUEST,
                    **_BODY_ERRORS,
                    "422": _error("The octet-stream body is not a msgpack array of byte strings"),
                },
            }
        },
        "/tx/{hash}": {
            "get": {
                "operationId": "getTx",
                "summary": "A committed transaction with its result and Merkle inclusion proof",
                "description": "A transaction still in the mempool is answered as pending.",
                "parameters": [
                    {"name": "hash", "in": "path", "required": True, "schema": _IN_HASH}
                ],
                "responses": {
                    "200": _json(
                        "The transaction",
                        {"oneOf": [_ref("CommittedTx"), _ref("PendingTx")]},
                    ),
                    "400": _BAD_REQUEST,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/block/{height}": {
            "get": {
                "operationId": "getBlock",
                "summary": "A block, with its canonical encoding",
                "parameters": [_IN_HEIGHT_PATH],
                "responses": {
                    "200": _json(
                        "The block",
                        _ref("Block"),
                        links={
                            "Commit": _link("getCommit", height="$response.body#/header/height")
                        },
                    ),
                    "400": _BAD_REQUEST,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/commit/{height}": {
            "get": {
                "operationId": "getCommit",
                "summary": "The commit certificate of a block, its header and validator set",
                "parameters": [_IN_HEIGHT_PATH],
                "responses": {
                    "200": _json(
                        "The commit",
                        _ref("CommitAnswer"),
                        links={"Block": _link("getBlock", height="$response.body#/height")},
                    ),
                    "400": _BAD_REQUEST,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/validators": {
            "get": {
                "operationId": "getValidators",
                "summary": "The validator set of a height (default: the next height)",
                "description": "Known up to two heights above the latest block.",
                "parameters": [{"name": "height", "in": "query", "schema": _HEIGHT}],
                "responses": {
                    "200": _json("The validator set", _ref("Validators")),
                    "400": _BAD_REQUEST,
                    "404": _NOT_FOUND,
                },
            }
        },
        "/net_info": {
            "get": {
                "operationId": "getNetInfo",
                "summary": "Connected peers and network counters",
                "responses": {"200": _json("Peers", _ref("NetInfo"))},
            }
        },
        "/account/{address}": {
            "get": {
                "operationId": "getAccount",
                "summary": "A ledger account's balance and next nonce (zero for a new account)",
                "parameters": [
                    {"name": "address", "in": "path", "required": True, "schema": _IN_ADDRESS}
                ],
                "responses": {
                    "200": _json("The account", _ref("Query")),
                    "400": _BAD_REQUEST,
                    "404": _error("The application has no accounts"),
                },
            }
        },
        "/query": {
            "get": {
                "operationId": "query",
                "summary": "An application query",
                "description": "docs/PROTOCOL.md section 11 lists each application's paths.",
                "parameters": [
                    {
                        "name": "path",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                    },
                    {
                        "name": "data",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": "^([0-9a-fA-F]{2})*$",
                            "maxLength": 2 * 1024,  # node/rpc.py QUERY_DATA_BYTES_MAX
                        },
                    },
                ],
                "responses": {
                    "200": _json("The answer", _ref("Query")),
                    "400": _BAD_REQUEST,
                    "404": _NOT_FOUND,
                    "422": _error("The application does not answer this path with this data"),
                },
            }
        },
        "/state/proof": {
            "get": {
                "operationId": "getStateProof",
                "summary": "A state key's value or absence, with its proof against an app hash",
                "description": (
                    "docs/PROTOCOL.md section 11 (the state tree) gives the proof's encoding "
                    "and how to verify it; check it against header_height's header.app_hash "
                    "from /commit/{header_height}. The node keeps the latest two states: "
                    "height = latest block - 1 (the default) is served."
                ),
                "parameters": [
                    {
                        "name": "key",
                        "in": "query",
                        "required": True,
                        "description": "The whole state key, 1 to 1024 bytes, hex",
                        "schema": {
                            "type": "string",
                            "pattern": "^([0-9a-fA-F]{2})+$",
                            "minLength": 2,
                            "maxLength": 2 * 1024,  # node/rpc.py STATE_KEY_BYTES_MAX
                        },
                    },
                    {
                        "name": "height",
                        "in": "query",
                        "description": "The state after this block (0: genesis); "
                        "default the latest block's height - 1",
                        "schema": {"type": "string", "pattern": "^(0|[1-9][0-9]{0,18})$"},
                    },
                ],
                "responses": {
                    "200": _json("The value (null when absent) and its proof", _ref("StateProof")),
                    "400": _BAD_REQUEST,
                    "404": _error(
                        "No committed header carries the app hash of this height yet "
                        "(height >= the latest block), or the node no longer keeps its state"
                    ),
                },
            }
        },
        "/stream": {
            "get": {
                "operationId": "stream",
                "summary": "Websocket: committed blocks in order, resumable with from_height",
                "description": (
                    "Upgrade to a websocket. Each text message is a JSON block event: type "
                    '"block", height, hash, time_ms, tx_count, header, header_encoded and '
                    "txs (each with hash, encoded, sender, sender_address, nonce, payload, "
                    "signature, index and result). `from_height` replays from the store "
                    "first, then continues live with no gap and no duplicate; `sender` "
                    "(comma-separated addresses) filters the transactions listed. A client "
                    "too slow to keep up is closed with code 1008 and a reason naming the "
                    "height to resume from. A request without the websocket handshake is "
                    "answered 426."
                ),
                "parameters": [
                    {"name": "from_height", "in": "query", "schema": _HEIGHT},
                    {
                        "name": "sender",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": "^[0-9a-fA-F]{40}(,[0-9a-fA-F]{40}){0,15}$",
                        },
                    },
                ],
                "responses": {
                    "101": {"description": "Switching to the websocket protocol"},
                    "400": _BAD_REQUEST,
                    "426": _error("Not a websocket handshake (the Upgrade header says which)"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This description",
                "responses": {"200": _json("OpenAPI 3.1", _ref("OpenAPI"))},
            }
        },
    },
}
