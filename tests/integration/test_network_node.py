"""A 4-validator testnet of real `archipelago start` processes on loopback (issue 5).

What the issue asks the assembled node to show: the validators commit and
agree block for block; transfers sent to different nodes are committed
exactly once; a validator killed with SIGKILL does not stop the other three,
and once restarted it catches up by block sync and signs again; a new full
node syncs the chain from genesis and then follows it. Under each crypto suite
(the `crypto` fixture, tests/integration/conftest.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from tests.integration import nodes

HEIGHT_TIMEOUT_S = 90  # generous: a loaded 2-core machine; healthy runs take a few seconds
TRANSFERS_PER_ACCOUNT = 5


async def test_four_validators_commit_each_transfer_once_and_agree_on_every_block(
    tmp_path: Path, crypto: str
) -> None:
    """4 validators reach height 20; transfers sent to different nodes (each also re-sent to a
    second node) are each committed once, at the same height and index on every node; every
    node shows the same receiver balances, and the same block and app hash at every height."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=4, crypto=crypto)
    rng = random.Random(5)
    receivers = [PrivateKey(rng.randbytes(32)).address for _ in net.accounts]
    async with nodes.running(net), nodes.open_api() as api:
        validators = net.validators
        await api.wait_height(validators, 2, HEIGHT_TIMEOUT_S)

        sent: dict[str, bytes] = {}  # tx hash hex -> raw transaction
        amounts: dict[bytes, int] = dict.fromkeys(receivers, 0)
        for k, key in enumerate(net.accounts):
            for nonce in range(TRANSFERS_PER_ACCOUNT):
                amount = 1 + rng.randrange(1000)
                raw = transfer_tx(key, net.chain_id, nonce, receivers[k], amount).encode()
                r = await api.submit(validators[k], raw)  # account k's transfers go to node k
                assert r.status_code == 202, r.text
                sent[r.json()["hash"]] = raw
                amounts[receivers[k]] += amount

        # Each transfer again, to another node once that node has it (from gossip or a
        # block): refused as a duplicate (409), so it cannot be committed a second time.
        for n, (txhash, raw) in enumerate(sent.items()):
            other = validators[(n // TRANSFERS_PER_ACCOUNT + 1) % 4]
            await nodes.wait_for(
                lambda other=other, txhash=txhash: api.try_get(other, f"/tx/{txhash}"),
                lambda body: body is not None and body["status"] in ("pending", "committed"),
                HEIGHT_TIMEOUT_S,
                f"{other.name} to learn of {txhash}",
            )
            again = await api.submit(other, raw)
            assert again.status_code == 409, again.text
            assert again.json()["reason"] in ("duplicate", "committed")

        async def where_committed() -> dict[str, set[tuple[int, int]]]:
            seen: dict[str, set[tuple[int, int]]] = {}
            for txhash in sent:
                for v in validators:
                    body = await api.get(v, f"/tx/{txhash}")
                    if body["status"] == "committed":
                        seen.setdefault(txhash, set()).add((body["height"], body["index"]))
                    else:
                        seen.setdefault(txhash, set()).add((-1, -1))
            return seen

        placed = await nodes.wait_for(
            where_committed,
            lambda seen: all(len(s) == 1 and (-1, -1) not in s for s in seen.values()),
            HEIGHT_TIMEOUT_S,
            "every transfer committed on every node",
        )
        heights = await api.wait_height(validators, 20, HEIGHT_TIMEOUT_S)
        top = min(heights.values())

        # Exactly once: each hash occurs once in the whole chain, where /tx/{hash} says.
        occurrences: dict[str, list[tuple[int, int]]] = {}
        for h in range(1, top + 1):
            block = await api.get(validators[0], f"/block/{h}")
            for i, tx in enumerate(block["txs"]):
                occurrences.setdefault(tx["hash"], []).append((h, i))
        for txhash in sent:
            assert occurrences.get(txhash) == sorted(placed[txhash]), txhash
        assert len(occurrences) == len(sent)

        for v in validators:
            for address, total in amounts.items():
                assert await api.account(v, address) == (total, 0), v.name
            for key in net.accounts:
                _balance, nonce = await api.account(v, key.address)
                assert nonce == TRANSFERS_PER_ACCOUNT
            assert sum([(await api.account(v, a))[0] for a in receivers]) == sum(amounts.values())

        reference = await api.headers(validators[0], top)
        assert len(set(reference)) == top  # hashes really differ by height
        for v in validators[1:]:
            assert await api.headers(v, top) == reference, v.name


async def test_a_killed_validator_does_not_stop_the_others_and_rejoins_after_restart(
    tmp_path: Path, crypto: str
) -> None:
    """SIGKILL one validator: the other three keep committing. Restarted, it catches up by
    block sync (its /status shows sync mode "blocksync" once a synced block's certificate
    verified, then "consensus") and its own precommits appear again in later commit
    certificates."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    async with nodes.running(net), nodes.open_api() as api:
        victim, others = net.validators[3], net.validators[:3]
        await api.wait_height(net.validators, 5, HEIGHT_TIMEOUT_S)
        index = await api.validator_index(others[0], victim)

        await victim.kill()
        killed_at = max((await api.wait_height(others, 1, HEIGHT_TIMEOUT_S)).values())
        # The three survivors hold 30 of 40 voting power (> 2/3): they keep deciding.
        # Far enough ahead that the restarted node has to sync, not just follow.
        await api.wait_height(others, killed_at + 25, HEIGHT_TIMEOUT_S)

        await victim.start()
        modes: list[tuple[str, int]] = []

        async def victim_status() -> dict[str, Any] | None:
            status: dict[str, Any] | None = await api.try_get(victim, "/status")
            if status is not None:
                mode = (status["sync"]["mode"], status["latest_height"])
                if not modes or modes[-1][0] != mode[0]:
                    modes.append(mode)
            return status

        target = max((await api.wait_height(others, 1, HEIGHT_TIMEOUT_S)).values())
        await nodes.wait_for(
            victim_status,
            lambda s: (
                s is not None and s["sync"]["mode"] == "consensus" and s["latest_height"] >= target
            ),
            HEIGHT_TIMEOUT_S,
            f"{victim.name} caught up to {target} and back in consensus",
        )
        assert modes[-1][0] == "consensus", modes
        # The switches are in its log (a /status poll can miss a short block sync phase).
        changes = victim.events("mode changed")
        into_sync = [e for e in changes if e.get("mode") == "blocksync"]
        assert into_sync and into_sync[0]["height"] < target, changes
        back = [e for e in changes if e.get("mode") == "consensus"]
        assert back and "caught up" in back[-1]["reason"], changes

        # Rejoined: its own precommits are in certificates of heights after the catch-up.
        rejoined_from = (await api.status(victim))["latest_height"]

        async def signed_since() -> list[int]:
            top = min([await api.height(n) for n in net.validators])
            return [
                h for h in range(rejoined_from, top + 1) if index in await api.signers(others[0], h)
            ]

        signed = await nodes.wait_for(
            signed_since, bool, HEIGHT_TIMEOUT_S, f"a commit signed by {victim.name}"
        )
        assert min(signed) >= rejoined_from
        for h in range(killed_at + 3, killed_at + 25):
            assert index not in await api.signers(others[0], h)  # it was really down


async def test_a_new_full_node_syncs_the_whole_chain_from_genesis_then_follows(
    tmp_path: Path, crypto: str
) -> None:
    """A non-validator started from the testnet's genesis after height 30 syncs every block
    (same hashes as the validators), leaves block sync, and keeps following new heights."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 30, HEIGHT_TIMEOUT_S)
        # Made now (and so killed by `running` on the way out, like the validators).
        full = await trio.to_thread.run_sync(lambda: nodes.add_full_node(net, name="full"))
        await trio.to_thread.run_sync(nodes.admit_member, net, full)
        await full.start()
        target = max((await api.wait_height(net.validators, 30, HEIGHT_TIMEOUT_S)).values())
        synced = await nodes.wait_for(
            lambda: api.try_get(full, "/status"),
            lambda s: (
                s is not None and s["latest_height"] >= target and s["sync"]["mode"] == "consensus"
            ),
            HEIGHT_TIMEOUT_S,
            f"the full node synced to {target}",
        )
        assert synced["validator"]["in_set"] is False
        assert synced["peers"] == 4
        top = synced["latest_height"]
        assert await api.headers(full, top) == await api.headers(net.validators[0], top)

        # Following: new heights arrive at the full node as the validators commit them.
        await api.wait_height([full], top + 10, HEIGHT_TIMEOUT_S)
        h = top + 10
        assert (await api.get(full, f"/block/{h}"))["hash"] == (
            await api.get(net.validators[1], f"/block/{h}")
        )["hash"]
