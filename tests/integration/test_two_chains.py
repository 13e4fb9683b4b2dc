"""One chain checks another: two local chains of real processes and `archipelago relay`.

Chain A and chain B are one-validator testnets (`archipelago testnet`, real
`archipelago start` processes on loopback); B's admin creates B's light
client of A with `archipelago relay --create-client --once`, then a relay
process follows A. What this proves: a send_out on A is debited there (into
B's escrow account) and credited on B by the relay's proof, with nobody
trusting the relay; the relay carries on after both chains are restarted;
receives built from A's real API answers but tampered (a tx byte, a Merkle
step, a header of another chain, a replay of the credited proof) are refused
with the check named, and B's balances do not move; Ctrl-C stops the relay
with exit code 0. (A failed tx on A cannot be made by honest nodes on demand;
tests/unit/apps/test_interchain.py proves its refusal on a real executed chain.)
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from apps.interchain import ReceiveProof, escrow_address, receive_payload, send_out_payload
from consensus.crypto import PrivateKey
from consensus.types import Header, Transaction
from tests.integration import nodes

TIMEOUT_S = 90  # generous for a loaded 2-core machine; healthy runs take a few seconds
CHAIN_A, CHAIN_B = "two-chains-a", "two-chains-b"
RECIPIENT = PrivateKey(b"\x31" * 32).address
FORGER = PrivateKey(b"\x32" * 32)  # signs the tampered receives on B


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


async def _balance(api: nodes.Api, node: nodes.NodeProcess, address: bytes) -> int:
    return (await api.account(node, address))[0]


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
            tmp_path / name, validators=1, accounts=1, chain_id=chain, consensus=consensus
        )
        for name, chain in (("a", CHAIN_A), ("b", CHAIN_B))
    )
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
            served_b = await api.get(b, f"/commit/{genuine.header.height}")
            other_header = Header.decode(bytes.fromhex(served_b["header_encoded"]))
            aunt = genuine.tx_aunts[0] if genuine.tx_aunts else b""
            cases: list[tuple[str, ReceiveProof]] = [
                ("tx Merkle step", dataclasses.replace(genuine, tx=genuine.tx[:-1] + b"\x00")),
                ("chain id", dataclasses.replace(genuine, header=other_header)),
                ("replay", genuine),
            ]
            if aunt:
                bent = (bytes([aunt[0] ^ 1]) + aunt[1:], *genuine.tx_aunts[1:])
                cases.append(("tx Merkle step", dataclasses.replace(genuine, tx_aunts=bent)))
            else:  # one tx in its block: no aunt to bend, so claim a second leaf
                cases.append(("tx Merkle step", dataclasses.replace(genuine, total=2)))
            forger_nonce = 0
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
