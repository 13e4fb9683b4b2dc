"""Proof files from a live chain: `archipelago proof` writes them, `verify-proof` checks them.

A 4-validator testnet (once per crypto suite) commits a transfer, then the
admin changes the validator set (node3 removed, node1's power doubled) and a
second transfer commits under the new set. Proofs of both, from genesis and
from a trusted height, hold offline against the genesis; a flipped byte, a
proof checked against another chain's genesis, or the wrong trusted header
is refused with one line naming the check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from proofcheck.verify import FORMAT_TAG
from tests.integration import nodes

TIMEOUT_S = 90


def _cli(*args: str | Path) -> Any:
    result = nodes.run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _transfer(net: nodes.Testnet, to: bytes) -> tuple[str, int]:
    body = json.loads(
        _cli(
            "tx", "transfer", "--to", to.hex(), "--amount", "5",
            "--key", net.root / "accounts" / "account0.json", "--node", net.validators[0].rpc,
        ).stdout
    )  # fmt: skip
    assert body["result"]["code"] == 0, body
    return str(body["hash"]), int(body["height"])


def _set_validator(net: nodes.Testnet, node: nodes.NodeProcess, power: int) -> None:
    admin = net.validators[0]
    _cli(
        "tx", "set-validator", node.validator_key.public_key.hex(), "--power", str(power),
        "--key", admin.home / "validator_key.json", "--node", admin.rpc,
    )  # fmt: skip


def _verify(file: Path, genesis: Path, *extra: str) -> tuple[int, str]:
    result = nodes.run_cli("verify-proof", file, "--genesis", genesis, *extra)
    assert "Traceback" not in result.stderr, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    return result.returncode, lines[0]


async def test_proofs_of_a_live_chain_across_a_validator_set_change(
    tmp_path: Path, crypto: str
) -> None:
    """Tx proofs from genesis and from a trusted height hold; each tampering is named."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=2, crypto=crypto)
    genesis = net.validators[0].home / "genesis.json"
    rpc = net.validators[0].rpc
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 2, TIMEOUT_S)
        before, _ = await trio.to_thread.run_sync(_transfer, net, net.accounts[1].address)
        set_before = (await api.get(net.validators[0], "/validators"))["hash"]
        await trio.to_thread.run_sync(_set_validator, net, net.validators[3], 0)
        await trio.to_thread.run_sync(_set_validator, net, net.validators[1], 20)
        changed = (await api.status(net.validators[0]))["latest_height"] + 3
        await api.wait_height(net.validators[:3], changed, TIMEOUT_S)
        after_set = await api.get(net.validators[0], "/validators")
        assert after_set["hash"] != set_before and len(after_set["validators"]) == 3
        after, height = await trio.to_thread.run_sync(_transfer, net, net.accounts[1].address)
        # Header height + 1 carries the results hash: with it the file proves the result too.
        await api.wait_height(net.validators[:1], height + 1, TIMEOUT_S)

        out = tmp_path / "proofs"
        out.mkdir()
        for name, tx in (("before", before), ("after", after)):
            result = await trio.to_thread.run_sync(
                lambda tx=tx, name=name: _cli(
                    "proof", "tx", tx, "--node", rpc, "--output", out / name
                )
            )
            assert f"wrote {out / name}" in result.stdout
            code, line = _verify(out / name, genesis)
            assert code == 0 and line.startswith(f"proof holds: tx {tx} is transaction"), line
            assert line.endswith("result code 0"), line

        # From a trusted header (height 2, by its hash from /commit) instead of genesis.
        trusted = (await api.get(net.validators[0], "/commit/2"))["commit"]["block_hash"]
        flags = ("--trusted-height", "2", "--trusted-hash", trusted)
        await trio.to_thread.run_sync(
            lambda: _cli("proof", "tx", after, "--node", rpc, "--output", out / "t", *flags)
        )
    # Offline from here: the nodes are gone.
    code, line = _verify(out / "t", genesis, *flags)
    assert code == 0, line
    code, line = _verify(out / "t", genesis)
    assert code == 1 and line.startswith("proof rejected: trusted header: "), line

    data = (out / "after").read_bytes()
    f = msgpack.unpackb(data, raw=False)
    assert f[0] == FORMAT_TAG and f[1] == "tx"
    tx = f[6][0]
    f[6][0] = tx[:-1] + bytes([tx[-1] ^ 1])
    (out / "tampered").write_bytes(msgpack.packb(f, use_bin_type=True))
    code, line = _verify(out / "tampered", genesis)
    assert code == 1 and line.startswith("proof rejected: tx byte: "), line

    other = nodes.create_testnet(tmp_path / "other", validators=1, accounts=1, crypto=crypto)
    code, line = _verify(out / "after", other.validators[0].home / "genesis.json")
    assert code == 1 and line.startswith("proof rejected: genesis hash: "), line


async def test_state_proofs_of_a_live_chain(tmp_path: Path, crypto: str) -> None:
    """An account's balance and an absent key, proven against a certified app hash, hold
    offline; a changed value is refused as `state value`.

    Needs a node that serves GET /state/proof (the state tree, PROTOCOL section 11).
    """
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=2, crypto=crypto)
    genesis = net.validators[0].home / "genesis.json"
    rpc = net.validators[0].rpc
    out = tmp_path / "proofs"
    out.mkdir()
    present = b"a" + net.accounts[1].address
    absent = b"a" + bytes(20)
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 2, TIMEOUT_S)
        paths = (await api.get(net.validators[0], "/openapi.json"))["paths"]
        if "/state/proof" not in paths:
            pytest.skip("this node has no GET /state/proof (the state tree is not merged)")
        _, height = await trio.to_thread.run_sync(_transfer, net, net.accounts[1].address)
        # The state after block `height` is proven by header height + 1, once height + 2
        # makes it the newest state a header carries.
        await api.wait_height(net.validators[:1], height + 2, TIMEOUT_S)
        balance, nonce = await api.account(net.validators[0], net.accounts[1].address)
        for name, key in (("present", present), ("absent", absent)):
            await trio.to_thread.run_sync(
                lambda key=key, name=name: _cli(
                    "proof", "state", key.hex(), "--node", rpc, "--output", out / name
                )
            )
    code, line = _verify(out / "present", genesis)
    value = msgpack.packb([balance, nonce]).hex()
    assert code == 0 and f"state key {present.hex()} holds {value}" in line, line
    code, line = _verify(out / "absent", genesis)
    assert code == 0 and f"state key {absent.hex()} absent" in line, line

    f = msgpack.unpackb((out / "present").read_bytes(), raw=False)
    f[6][1] = msgpack.packb([balance + 1, nonce])
    (out / "richer").write_bytes(msgpack.packb(f, use_bin_type=True))
    code, line = _verify(out / "richer", genesis)
    assert code == 1 and line.startswith("proof rejected: state value: "), line
