"""The OpenAPI 3.1 description of the HTTP API, served at /openapi.json.

Kept beside the handlers (node/rpc.py) and checked against their routes by a
test, so a client generated from it talks to the API that actually runs.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "Bad request, unknown object or refused transaction",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_HEX = {"type": "string", "pattern": "^[0-9a-f]*$"}
_HEIGHT = {
    "name": "height",
    "in": "path",
    "required": True,
    "description": "A height (positive integer) or `latest`",
    "schema": {"type": "string"},
}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Archipelago node API",
        "description": (
            "Status, transactions, blocks, commit certificates and validator sets of an "
            "Archipelago node. Byte strings are lowercase hex. Canonical encodings (the "
            "`encoded` fields) are described in docs/PROTOCOL.md so that clients can verify "
            "hashes, signatures and Merkle proofs offline."
        ),
        "version": "0",
    },
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness and readiness",
                "responses": {
                    "200": _ok("The node is healthy"),
                    "503": _ok("The node is up but unhealthy; `problems` says why"),
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Node identity, latest block, sync state and diagnosis",
                "responses": {
                    "200": _ok(
                        "Status",
                        {
                            "type": "object",
                            "properties": {
                                "node_id": _HEX,
                                "chain_id": {"type": "string"},
                                "latest_height": {"type": "integer"},
                                "latest_block_hash": _HEX,
                                "catching_up": {"type": "boolean"},
                            },
                            "required": [
                                "node_id",
                                "chain_id",
                                "latest_height",
                                "latest_block_hash",
                                "catching_up",
                            ],
                        },
                    )
                },
            }
        },
        "/tx": {
            "post": {
                "summary": "Submit a transaction",
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"enum": ["check", "commit"], "default": "check"},
                        "description": "Answer after admission (check) or after the commit",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "tx": {**_HEX, "description": "encoded transaction"},
                                    "wait": {"enum": ["check", "commit"]},
                                },
                                "required": ["tx"],
                            }
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": _ok("Committed (wait=commit): hash, height, index, result"),
                    "202": _ok("Admitted to the mempool (wait=check): hash, check result"),
                    "400": _ERROR,
                    "408": _ERROR,
                    "409": _ERROR,
                    "413": _ERROR,
                    "503": _ERROR,
                    "504": _ok("Admitted, but not committed within the wait timeout"),
                },
            }
        },
        "/txs": {
            "post": {
                "summary": "Submit many transactions in one request",
                "description": (
                    "Each transaction is admitted on its own; the answer lists every "
                    'one\'s hash and outcome, in order. Body: JSON {"txs": [hex, ...]} or '
                    "application/octet-stream holding the canonical msgpack array of "
                    "encoded transactions. At most 10,000 per request."
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"txs": {"type": "array", "items": _HEX}},
                                "required": ["txs"],
                            }
                        },
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": _ok("accepted count and a result per transaction"),
                    "400": _ERROR,
                    "408": _ERROR,
                    "413": _ERROR,
                },
            }
        },
        "/tx/{hash}": {
            "get": {
                "summary": "A committed transaction with its result and Merkle inclusion proof",
                "parameters": [{"name": "hash", "in": "path", "required": True, "schema": _HEX}],
                "responses": {"200": _ok("Transaction"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/block/{height}": {
            "get": {
                "summary": "A block",
                "parameters": [_HEIGHT],
                "responses": {"200": _ok("Block"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/commit/{height}": {
            "get": {
                "summary": "The commit certificate of a block, its header and validator set",
                "parameters": [_HEIGHT],
                "responses": {"200": _ok("Commit"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/validators": {
            "get": {
                "summary": "The validator set of a height (default: the next height)",
                "parameters": [{"name": "height", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": _ok("Validator set"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/net_info": {
            "get": {
                "summary": "Connected peers and network counters",
                "responses": {"200": _ok("Peers")},
            }
        },
        "/account/{address}": {
            "get": {
                "summary": "A ledger account's balance and next nonce",
                "parameters": [{"name": "address", "in": "path", "required": True, "schema": _HEX}],
                "responses": {"200": _ok("Account"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/query": {
            "get": {
                "summary": "An application query",
                "parameters": [
                    {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "data", "in": "query", "schema": _HEX},
                ],
                "responses": {"200": _ok("Query result"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/stream": {
            "get": {
                "summary": "Websocket: committed blocks in order, resumable with from_height",
                "description": (
                    "Upgrade to a websocket. Each text message is a JSON block event. "
                    "`from_height` replays from the store first, then continues live with "
                    "no gap and no duplicate; `sender` (comma-separated addresses) filters "
                    "the transactions listed. A client too slow to keep up is closed with "
                    "code 1008 and a reason naming the height to resume from."
                ),
                "parameters": [
                    {"name": "from_height", "in": "query", "schema": {"type": "integer"}},
                    {"name": "sender", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"101": {"description": "Switching to the websocket protocol"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This description", "responses": {"200": _ok("OpenAPI")}}
        },
    },
}
