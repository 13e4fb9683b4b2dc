"""One chain checks another: two local chains of real processes and `archipelago relay`.

Chain A and chain B are one-validator testnets (`archipelago testnet`, real
`archipelago start` processes on loopback); B's admin creates B's light
client of A with `archipelago relay --create-client --once`, then a relay
process follows A. What this proves: a send_out on A is debited there (into
B's escrow account) and credited on B by the relay's proof, with nobody
trusting the relay; the relay carries on after both chains are restarted;
receives built from A's real API answers but tampered (a tx byte, a Merkle
step, a header of another chain, a replay of the credited proof) are refused
with the check named, and B's balances do not move; a send_out that failed
on A (it is in its block, with code 2) is not relayed, and its proof is
refused as `result code`; Ctrl-C stops the relay with exit code 0.

To commit a failed send_out on demand, A takes one transaction per block
and does not recheck its mempool after a commit: a send_out admitted after
a commit, while a transaction of the same nonce waits in the mempool, runs
after it and fails.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from apps.interchain import (
    ReceiveProof,
    client_update_payload,
    escrow_address,
    receive_payload,
    send_out_payload,
)
from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from consensus.light import LightBlock
from consensus.types import Commit, Header, Transaction, ValidatorSet
from node.config import load_config, save_config
from tests.integration import nodes

TIMEOUT_S = 90  # generous for a loaded 2-core machine; healthy runs take a few seconds
CHAIN_A, CHAIN_B = "two-chains-a", "two-chains-b"
RECIPIENT = PrivateKey(b"\x31" * 32).address
FORGER = PrivateKey(b"\x32" * 32)  # signs the tampered receives on B
PADDING_TXS = 12  # blocks of A before the conflicting transfer runs: time to admit the send_out


def _one_tx_per_block_without_recheck(net: nodes.Testnet) -> None:
    home = net.nodes[0].home
    genesis = json.loads((home / "genesis.json").read_text())
    genesis.setdefault("consensus_params", {})["block_txs_max"] = 1
    (home / "genesis.json").write_text(json.dumps(genesis, indent=2))
    config = load_config(home / "config.toml")
    mempool = dataclasses.replace(config.mempool, recheck=False)
    save_config(home / "config.toml", dataclasses.replace(config, mempool=mempool))


async def _failed_send_out(api: nodes.Api, net: nodes.Testnet) -> str:
    """Commit a send_out that fails (code 2) on A; its tx id."""
    a = net.nodes[0]
    spender, padders = net.accounts[1], net.accounts[2:]
    for padder in padders:  # one sender each: without recheck, one sender's nonces could clash
        raw = transfer_tx(padder, net.chain_id, 0, padder.address, 1).encode()
        assert (await api.submit(a, raw)).status_code == 202
    conflicting = Transaction.create(
        spender, net.chain_id, 0, send_out_payload("elsewhere", RECIPIENT, 1)
    ).encode()
    assert (await api.submit(a, conflicting)).status_code == 202
    # The next commit empties the mempool's view while the conflicting tx still waits.
    await api.wait_height([a], await api.height(a) + 1, TIMEOUT_S)
    failing = Transaction.create(
        spender, net.chain_id, 0, send_out_payload(CHAIN_B, RECIPIENT, 7)
    ).encode()
    r = await api.submit(a, failing)
    assert r.status_code == 202, r.text
    record = await nodes.wait_for(
        lambda: api.try_get(a, f"/tx/{r.json()['hash']}"),
        lambda body: body is not None and body.get("result_proof") is not None,
        TIMEOUT_S,
        "the failing send_out committed",
    )
    assert record["result"]["code"] == 2, record
    return str(record["hash"])


async def _send_out(api: nodes.Api, net: nodes.Testnet, nonce: int, amount: int) -> Any:
    raw = Transaction.create(
        net.accounts[0], net.chain_id, nonce, send_out_payload(CHAIN_B, RECIPIENT, amount)
    ).encode()
    r = await api.submit(net.nodes[0], raw, wait="commit")
    assert r.status_code == 200 and r.json()["result"]["code"] == 0, r.text
    return r.json()


async def _proof(api: nodes.Api, node: nodes.NodeProcess, txid: str) -> ReceiveProof:
    """The receive proof of a committed send_out, from A's API as a relay builds it."""
    record = await nodes.wait_for(
        lambda: api.try_get(node, f"/tx/{txid}"),
        lambda body: body is not None and body.get("result_proof") is not None,
        TIMEOUT_S,
        "the send_out's result proof",
    )
    height = record["height"]
    headers = [await api.get(node, f"/commit/{h}") for h in (height, height + 1)]
    served = record["result_proof"]
    return ReceiveProof(
        bytes.fromhex(record["encoded"]),
        Header.decode(bytes.fromhex(headers[0]["header_encoded"])),
        Header.decode(bytes.fromhex(headers[1]["header_encoded"])),
        record["index"],
        record["proof"]["total"],
        tuple(bytes.fromhex(a) for a in record["proof"]["aunts"]),
        bytes.fromhex(served["result_encoded"]),
        tuple(bytes.fromhex(a) for a in served["aunts"]),
    )


async def _update_client(
    api: nodes.Api, a: nodes.NodeProcess, b: nodes.NodeProcess, height: int
) -> None:
    """client_update on B to A's `height`, signed by FORGER (nonce 0), committed."""
    served = await api.get(a, f"/commit/{height}")
    following = await api.get(a, f"/validators?height={height + 1}")
    block = LightBlock(
        Header.decode(bytes.fromhex(served["header_encoded"])),
        Commit.decode(bytes.fromhex(served["commit"]["encoded"])),
        ValidatorSet.decode(bytes.fromhex(served["validators_encoded"])),
        ValidatorSet.decode(bytes.fromhex(following["encoded"])),
    )
    tx = Transaction.create(FORGER, CHAIN_B, 0, client_update_payload(CHAIN_A, block))
    r = await api.submit(b, tx.encode(), wait="commit")
    assert r.status_code == 200 and r.json()["result"]["code"] == 0, r.text


async def _balance(api: nodes.Api, node: nodes.NodeProcess, address: bytes) -> int:
    return (await api.account(node, address))[0]


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


async def test_a_send_out_on_a_is_credited_on_b_through_the_relay_and_forgeries_are_refused(
    tmp_path: Path,
) -> None:
    """send_out of 250 then 40 on A reach B (the second after both chains restart); four
    tampered receives are refused naming their check; B's balances stay put; SIGINT ends
    the relay with 0."""
    # A lone validator restarted here is the only instance of its key: no doppelganger watch.
    consensus = dataclasses.replace(nodes.FAST_CONSENSUS, doppelganger_heights=0)
    net_a, net_b = (
        nodes.create_testnet(
            tmp_path / name, validators=1, accounts=accounts, chain_id=chain, consensus=consensus
        )
        for name, chain, accounts in (("a", CHAIN_A, 2 + PADDING_TXS), ("b", CHAIN_B, 1))
    )
    _one_tx_per_block_without_recheck(net_a)
    a, b = net_a.nodes[0], net_b.nodes[0]
    relay_log = tmp_path / "relay.log"
    async with nodes.running(net_a), nodes.running(net_b), nodes.open_api() as api:
        await api.wait_height([a, b], 2, TIMEOUT_S)
        admin_key = b.home / "validator_key.json"
        create = nodes.run_cli(
            "relay", "--from", a.rpc, "--to", b.rpc, "--key", admin_key, "--create-client",
            "--once", "--log-format", "json",
        )  # fmt: skip
        assert create.returncode == 0, create.stdout + create.stderr
        relayer_key = net_b.root / "accounts" / "account0.json"
        with open(relay_log, "ab") as out:
            command = [str(nodes.ARCHIPELAGO), "relay", "--from", a.rpc, "--to", b.rpc]
            command += ["--key", str(relayer_key), "--log-format", "json"]
            relay = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=nodes.env(),
                start_new_session=True,
            )
        try:
            sender = net_a.accounts[0].address
            before = await _balance(api, a, sender)
            sent = await _send_out(api, net_a, 0, 250)
            await nodes.wait_for(
                lambda: _balance(api, b, RECIPIENT), lambda v: v == 250, TIMEOUT_S, "credit on B"
            )
            assert await _balance(api, a, sender) == before - 250
            assert await _balance(api, a, escrow_address(CHAIN_B)) == 250

            genuine = await _proof(api, a, sent["hash"])
            failed = await _proof(api, a, await _failed_send_out(api, net_a))
            # The relay does not prove a failed send_out, so nor does it verify its h + 1
            # on B: anyone may, with A's header and certificate.
            await _update_client(api, a, b, failed.next_header.height)
            served_b = await api.get(b, f"/commit/{genuine.header.height}")
            other_header = Header.decode(bytes.fromhex(served_b["header_encoded"]))
            aunt = genuine.tx_aunts[0] if genuine.tx_aunts else b""
            cases: list[tuple[str, ReceiveProof]] = [
                # The last byte flipped (set to 0, it was a no-op 1 time in 256: the tx's
                # signature ended in 0, and B refused the proof as a replay).
                ("tx Merkle step", dataclasses.replace(genuine, tx=_flip_last(genuine.tx))),
                ("chain id", dataclasses.replace(genuine, header=other_header)),
                ("replay", genuine),
                ("result code", failed),
            ]
            if aunt:
                bent = (bytes([aunt[0] ^ 1]) + aunt[1:], *genuine.tx_aunts[1:])
                cases.append(("tx Merkle step", dataclasses.replace(genuine, tx_aunts=bent)))
            else:  # one tx in its block: no aunt to bend, so claim a second leaf
                cases.append(("tx Merkle step", dataclasses.replace(genuine, total=2)))
            forger_nonce = 1
            for check, proof in cases:
                tx = Transaction.create(
                    FORGER, CHAIN_B, forger_nonce, receive_payload(CHAIN_A, proof)
                )
                r = await api.submit(b, tx.encode())
                assert r.status_code == 422, (check, r.text)
                assert r.json()["error"].startswith(check + ":"), (check, r.text)
            assert await _balance(api, b, RECIPIENT) == 250
            assert await _balance(api, b, FORGER.address) == 0

            # Both chains restart under the relay; it carries on where it was.
            heights = [await api.height(a), await api.height(b)]
            for node in (a, b):
                await node.kill()
                await node.start()
            await api.wait_height([a], heights[0] + 1, TIMEOUT_S)
            await api.wait_height([b], heights[1] + 1, TIMEOUT_S)
            await _send_out(api, net_a, 1, 40)
            await nodes.wait_for(
                lambda: _balance(api, b, RECIPIENT), lambda v: v == 290, TIMEOUT_S, "2nd credit"
            )
        finally:
            relay.send_signal(signal.SIGINT)
            with trio.fail_after(nodes.STOP_TIMEOUT_S):
                code = await relay.wait()
    text = relay_log.read_text()
    assert code == 0, text
    assert '"relay stopped"' in text and '"transfer credited"' in text, text
    assert '"send_out failed on the source chain, not relayed"' in text, text


async def test_the_relay_refuses_two_chains_of_different_suites_in_one_line(
    tmp_path: Path,
) -> None:
    """A on sm2-sm3, B on ed25519-sha256: `relay --once` exits 1 with one line naming both."""
    net_a = nodes.create_testnet(tmp_path / "a", validators=1, accounts=1, crypto="sm2-sm3")
    net_b = nodes.create_testnet(tmp_path / "b", validators=1, accounts=1, chain_id=CHAIN_B)
    a, b = net_a.nodes[0], net_b.nodes[0]
    async with nodes.running(net_a), nodes.running(net_b), nodes.open_api() as api:
        await api.wait_height([a, b], 1, TIMEOUT_S)
        key = b.home / "validator_key.json"
        result = nodes.run_cli("relay", "--from", a.rpc, "--to", b.rpc, "--key", key, "--once")
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("archipelago relay:")]
    assert "sm2-sm3" in line and "ed25519-sha256" in line, result.stderr
