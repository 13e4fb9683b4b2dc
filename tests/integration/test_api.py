"""The HTTP API and websocket stream of a real running node (issue 5 bad input, issue 6).

Each test runs a one-validator testnet (`archipelago testnet --validators 1`)
as a real process with fast consensus timeouts, and talks to it over
loopback exactly as a client would: httpx for HTTP, trio-websocket for the
stream. What they prove: bad requests get a clear 4xx with a JSON error and
leave the node committing; Merkle proofs and commit certificates the API
serves verify offline with consensus/ alone; the OpenAPI description names
every route the app serves; the stream delivers every block in order, resumes
without gap or duplicate, and filters by sender. Each runs under each crypto
suite (the `crypto` fixture, tests/integration/conftest.py).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from starlette.routing import Route, WebSocketRoute
from trio_websocket import ConnectionRejected, open_websocket_url

from apps.ledger import transfer_tx
from consensus import merkle
from consensus.codec import encode
from consensus.crypto import SUITES, PrivateKey
from consensus.genesis import Genesis
from consensus.types import Commit, Header, Transaction, Validator, ValidatorSet, tx_id
from node.config import load_config
from node.rpc import RpcServer
from tests.integration import nodes

TIMEOUT_S = 60  # generous for a loaded 2-core machine; healthy runs take a few seconds
STREAM_BLOCKS = 50


def _single(tmp_path: Path, crypto: str, accounts: int = 2) -> Any:
    return nodes.create_testnet(tmp_path / "net", validators=1, accounts=accounts, crypto=crypto)


async def _next_block(ws: Any) -> dict[str, Any]:
    with trio.fail_after(TIMEOUT_S):
        event: dict[str, Any] = json.loads(await ws.get_message())
    assert event["type"] == "block"
    return event


async def test_bad_requests_get_a_4xx_json_error_and_leave_the_node_committing(
    tmp_path: Path, crypto: str
) -> None:
    """Malformed JSON, bad hex, bad signature, wrong nonce, oversized tx and body, unknown
    heights and hashes, wrong methods and content types, /stream without a handshake: each
    answers its 4xx with {"error": "<message>"} (a 405 with Allow); the node then still
    commits blocks and a valid transfer, and logged no handler failure. A transfer signed
    with a key of the other crypto suite is refused too."""
    net = _single(tmp_path, crypto)
    key = net.accounts[0]
    to = PrivateKey(b"\x07" * 32).address
    good = transfer_tx(key, net.chain_id, 0, to, 5)
    forged = Transaction(
        good.sender, 0, good.payload, bytes([good.signature[0] ^ 1]) + good.signature[1:]
    )
    wrong_nonce = transfer_tx(key, net.chain_id, 7, to, 5)
    (other_suite,) = (s for name, s in SUITES.items() if name != crypto)
    foreign = transfer_tx(PrivateKey(b"\x05" * 32, other_suite), net.chain_id, 0, to, 5)
    # Signed, but its payload is over the protocol's 32 KiB: not a transaction at all.
    oversized = Transaction.create(key, net.chain_id, 0, b"\x00" * (40 * 1024))
    too_big_hex = encode([key.public_key, 0, b"\x00" * (80 * 1024), b"\x00" * 64]).hex()

    def tx_body(raw: bytes) -> dict[str, Any]:
        return {"json": {"tx": raw.hex()}}

    cases: list[tuple[str, str, str, dict[str, Any], int]] = [
        (
            "malformed JSON",
            "POST",
            "/tx",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("JSON without tx", "POST", "/tx", {"json": {"transaction": "00"}}, 400),
        ("tx not hex", "POST", "/tx", {"json": {"tx": "zz"}}, 400),
        # 422: the request follows /openapi.json, the protocol refuses the transaction.
        ("tx not a transaction", "POST", "/tx", {"json": {"tx": "c0ffee"}}, 422),
        ("bad signature", "POST", "/tx", tx_body(forged.encode()), 422),
        ("wrong nonce", "POST", "/tx", tx_body(wrong_nonce.encode()), 422),
        ("key of the other suite", "POST", "/tx", tx_body(foreign.encode()), 422),
        ("oversized tx", "POST", "/tx", tx_body(oversized.encode()), 422),
        ("tx hex over the limit", "POST", "/tx", {"json": {"tx": too_big_hex}}, 400),
        (
            "body over 1 MiB",
            "POST",
            "/tx",
            {"content": b" " * (1024 * 1024 + 1), "headers": {"content-type": "application/json"}},
            413,
        ),
        ("bad wait", "POST", "/tx?wait=forever", tx_body(good.encode()), 400),
        ("unknown height: block", "GET", "/block/999999", {}, 404),
        ("unknown height: commit", "GET", "/commit/999999", {}, 404),
        ("unknown height: validators", "GET", "/validators?height=999999", {}, 404),
        ("height zero", "GET", "/block/0", {}, 400),
        ("height with a sign", "GET", "/block/+1", {}, 400),
        ("hash with a space", "GET", "/tx/" + "00" * 31 + "%2000", {}, 400),
        ("form content type", "POST", "/tx", {"data": {"tx": "00"}}, 415),
        ("stream without a handshake", "GET", "/stream", {}, 426),
        ("stream with a bad from_height", "GET", "/stream?from_height=0", {}, 400),
        ("wrong method: POST /stream", "POST", "/stream", {}, 405),
        ("height not a number", "GET", "/block/tall", {}, 400),
        ("tx hash not hex", "GET", "/tx/xyz", {}, 400),
        ("tx hash too short", "GET", "/tx/abcd", {}, 400),
        ("unknown tx", "GET", "/tx/" + "00" * 32, {}, 404),
        ("address not hex", "GET", "/account/nothex", {}, 400),
        ("wrong method: GET /tx", "GET", "/tx", {}, 405),
        ("wrong method: DELETE /status", "DELETE", "/status", {}, 405),
        ("wrong method: PUT /block", "PUT", "/block/1", {}, 405),
        ("unknown route", "GET", "/nothing-here", {}, 404),
    ]
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 2, TIMEOUT_S)
        for what, method, path, kwargs, expected in cases:
            r = await api.client.request(method, node.rpc + path, **kwargs)
            assert r.status_code == expected, f"{what}: {r.status_code} {r.text}"
            assert r.headers["content-type"].startswith("application/json"), what
            body = r.json()
            assert isinstance(body.get("error"), str) and len(body["error"]) > 3, f"{what}: {body}"
            if expected == 405:
                assert r.headers.get("allow"), f"{what}: a 405 names the allowed methods"
        # The refused transactions were not admitted: the account's nonce 0 is still free.
        before = await api.height(node)
        r = await api.submit(node, good.encode(), wait="commit")
        assert r.status_code == 200, r.text
        assert r.json()["result"]["code"] == 0
        assert await api.account(node, to) == (5, 0)
        await api.wait_height([node], before + 3, TIMEOUT_S)
        status = await api.status(node)
        assert status["chain_id"] == net.chain_id and status["sync"]["mode"] == "consensus"
        assert (await api.client.get(node.rpc + "/health")).status_code == 200
    events = [e.get("event") for e in net.nodes[0].log_events()]
    assert "rpc handler failed" not in events


async def test_tx_merkle_proof_and_commit_certificate_verify_offline(
    tmp_path: Path, crypto: str
) -> None:
    """For each transfer in a multi-tx block: GET /tx/{hash}'s proof verifies with
    consensus.merkle against the data_hash of the header from GET /commit/{h}; that header
    hashes to the certified block hash; the commit verifies against the served validator set,
    which is the genesis set. A tampered tx, chain id or validator set fails."""
    net = _single(tmp_path, crypto, accounts=3)
    to = PrivateKey(b"\x09" * 32).address
    raws = [
        transfer_tx(k, net.chain_id, 0, to, 10 + i).encode() for i, k in enumerate(net.accounts)
    ]
    raws += [transfer_tx(net.accounts[0], net.chain_id, n, to, 1).encode() for n in (1, 2, 3)]
    genesis = Genesis.from_json((net.nodes[0].home / "genesis.json").read_text())
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 1, TIMEOUT_S)
        for raw in raws:
            r = await api.submit(node, raw)
            assert r.status_code == 202, r.text
        records = [
            await nodes.wait_for(
                lambda raw=raw: api.try_get(node, f"/tx/{tx_id(raw).hex()}"),
                lambda body: body is not None and body["status"] == "committed",
                TIMEOUT_S,
                "transfer committed",
            )
            for raw in raws
        ]
        commits = {r["height"]: await api.get(node, f"/commit/{r['height']}") for r in records}

    # Offline from here: the node is gone; only what it served and consensus/ remain.
    assert max(r["proof"]["total"] for r in records) > 1, "want a block with several txs"
    for height, served in commits.items():
        header = Header.decode(bytes.fromhex(served["header_encoded"]))
        commit = Commit.decode(bytes.fromhex(served["commit"]["encoded"]))
        validators = ValidatorSet.decode(bytes.fromhex(served["validators_encoded"]))
        assert header.height == commit.height == height
        assert header.hash == commit.block_hash
        assert header.validators_hash == validators.hash == genesis.validator_set.hash
        assert commit.verify(net.chain_id, validators) is None
        assert commit.verify("another-chain", validators) is not None
        stranger = ValidatorSet.of([Validator(PrivateKey(b"\x01" * 32).public_key, 10)])
        assert commit.verify(net.chain_id, stranger) is not None
    for raw, record in zip(raws, records, strict=True):
        assert record["encoded"] == raw.hex()
        header = Header.decode(bytes.fromhex(commits[record["height"]]["header_encoded"]))
        proof = merkle.Proof(
            index=record["proof"]["index"],
            total=record["proof"]["total"],
            aunts=tuple(bytes.fromhex(a) for a in record["proof"]["aunts"]),
        )
        assert proof.index == record["index"]
        assert record["proof"]["data_hash"] == header.data_hash.hex()
        assert proof.verify(raw, header.data_hash)
        tampered = raw[:-1] + bytes([raw[-1] ^ 1])
        assert not proof.verify(tampered, header.data_hash)


async def test_openapi_lists_every_route_the_app_serves(tmp_path: Path, crypto: str) -> None:
    """GET /openapi.json on a running node documents exactly the (path, method) pairs of the
    Starlette app's routes (the websocket /stream as a GET), each with responses."""
    net = _single(tmp_path, crypto, accounts=0)
    # The routes are declared in RpcServer.__init__, which reads only config.rpc.
    config = load_config(net.nodes[0].config_path)
    app_routes: set[tuple[str, str]] = set()
    for route in RpcServer(cast(Any, SimpleNamespace(config=config)), cast(Any, None)).app.routes:
        if isinstance(route, WebSocketRoute):
            app_routes.add((route.path, "get"))
        else:
            assert isinstance(route, Route)
            methods = (route.methods or set()) - {"HEAD"}
            app_routes |= {(route.path, m.lower()) for m in methods}
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_serving(net.nodes[0])
        spec = await api.get(net.nodes[0], "/openapi.json")
    documented = {(path, m) for path, item in spec["paths"].items() for m in item}
    assert documented == app_routes
    assert spec["openapi"].startswith("3.")
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)


async def test_stream_sends_every_block_in_order_and_resumes_without_gap_or_duplicate(
    tmp_path: Path, crypto: str
) -> None:
    """A websocket client from height 1 receives blocks 1..50 in order, each the block GET
    /block/{h} serves; after closing at a height it reconnects with from_height = the next
    one and receives the following blocks (replayed, then live) with no gap and no repeat."""
    net = _single(tmp_path, crypto, accounts=0)
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 1, TIMEOUT_S)
        received: list[dict[str, Any]] = []
        async with open_websocket_url(node.ws + "/stream?from_height=1") as ws:
            while len(received) < STREAM_BLOCKS:
                received.append(await _next_block(ws))
        assert [e["height"] for e in received] == list(range(1, STREAM_BLOCKS + 1))
        for event in received:
            block = await api.get(node, f"/block/{event['height']}")
            assert event["hash"] == block["hash"]
            assert event["header"] == block["header"]
        for parent, child in itertools.pairwise(received):
            assert child["header"]["last_block_hash"] == parent["hash"]

        # Resume just below the tip, so the second connection replays and then goes live.
        resume_at = await api.height(node) - 2
        first: list[int] = []
        async with open_websocket_url(node.ws + "/stream?from_height=1") as ws:
            while not first or first[-1] < resume_at - 1:
                first.append((await _next_block(ws))["height"])
        second: list[int] = []
        async with open_websocket_url(node.ws + f"/stream?from_height={resume_at}") as ws:
            while len(second) < 20:
                second.append((await _next_block(ws))["height"])
        joined = first + second
        assert joined == list(range(1, resume_at + 20)), joined
        assert second[-1] > await api.height(node) - 20  # the tail really was live


async def test_stream_sender_filter_returns_only_that_senders_transactions(
    tmp_path: Path, crypto: str
) -> None:
    """With ?sender=<address>, each block event lists only that sender's transactions (all of
    them), while tx_count still counts the block's others. A bad filter refuses the handshake
    with a 400 and a JSON error."""
    net = _single(tmp_path, crypto, accounts=2)
    alice, bob = net.accounts
    to = PrivateKey(b"\x0b" * 32).address
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        start = await api.wait_height([node], 1, TIMEOUT_S)
        mine: set[str] = set()
        theirs: set[str] = set()
        for nonce in range(3):
            for key, bucket in ((alice, mine), (bob, theirs)):
                raw = transfer_tx(key, net.chain_id, nonce, to, 1).encode()
                r = await api.submit(node, raw)
                assert r.status_code == 202, r.text
                bucket.add(r.json()["hash"])
        last = await nodes.wait_for(
            lambda: _committed_heights(api, node, mine | theirs),
            lambda hs: None not in hs,
            TIMEOUT_S,
            "all transfers committed",
        )
        top = max(h for h in last if h is not None)
        seen: list[dict[str, Any]] = []
        url = f"{node.ws}/stream?from_height={start[node.name]}&sender={alice.address.hex()}"
        async with open_websocket_url(url) as ws:
            while not seen or seen[-1]["height"] < top:
                seen.append(await _next_block(ws))
        for bad in ("sender=", "sender=abcd", "from_height=0", "from_height=01"):
            with pytest.raises(ConnectionRejected) as refused:
                async with open_websocket_url(f"{node.ws}/stream?{bad}"):
                    pass
            assert refused.value.status_code == 400, bad
            assert refused.value.body is not None and b'"error"' in refused.value.body, bad
    streamed = [tx for event in seen for tx in event["txs"]]
    assert {tx["hash"] for tx in streamed} == mine
    assert {tx["sender_address"] for tx in streamed} == {alice.address.hex()}
    assert sum(event["tx_count"] for event in seen) == len(mine) + len(theirs)


async def _committed_heights(api: Any, node: Any, hashes: set[str]) -> list[int | None]:
    out: list[int | None] = []
    for h in hashes:
        body = await api.try_get(node, f"/tx/{h}")
        out.append(body["height"] if body is not None and body["status"] == "committed" else None)
    return out
