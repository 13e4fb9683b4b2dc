"""Permissioned membership on a live network: only member node ids get in (issue 11, item 7).

A testnet's genesis lists its nodes' ids as the network's members. A node id
that is not a member completes the handshake (it proves its key) and is then
refused, with one log line per node id, and holds no connection; the admin
adds a node with a set_member transaction (`archipelago tx member`), after
which it connects and syncs; removed again, it is disconnected and refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from consensus.crypto import PrivateKey
from network import Network, NetworkConfig, PeerAddress, node_id_of
from node.config import load_config
from tests.integration import nodes

TIMEOUT_S = 90
REFUSED_EVENT = (
    "peer refused: its node id is not a member of this network "
    "(genesis members, set_member transactions, [p2p] allowed_peers)"
)


def _refusals(node: Any, peer: str) -> list[dict[str, Any]]:
    return [e for e in node.events(REFUSED_EVENT) if e.get("peer") == peer]


async def _peer_ids(api: Any, node: Any) -> set[str]:
    return {p["node_id"] for p in (await api.get(node, "/net_info"))["peers"]}


def _set_validator(net: Any, node: Any, power: int) -> None:
    """`archipelago tx set-validator` by the testnet's admin (node0's validator key)."""
    admin = net.validators[0]
    result = nodes.run_cli(
        "tx",
        "set-validator",
        node.validator_key.public_key.hex(),
        "--power",
        str(power),
        "--key",
        admin.home / "validator_key.json",
        "--node",
        admin.rpc,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_only_members_get_in_and_the_admin_changes_who(tmp_path: Path, crypto: str) -> None:
    """Fresh keys dialling every validator are refused after the handshake and logged once
    each; a full node is refused until the admin's set_member commits, then syncs; removed,
    it is dropped and the validators keep committing among themselves."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 2, TIMEOUT_S)
        strangers = [PrivateKey.generate() for _ in range(3)]
        addresses = [
            PeerAddress(v.node_id, "127.0.0.1", load_config(v.config_path).p2p.listen.port)
            for v in net.validators
        ]
        async with trio.open_nursery() as nursery:
            for key in strangers:
                stranger = Network(
                    identity=key,
                    chain_id=net.chain_id,
                    listen=("127.0.0.1", 0),
                    persistent_peers=addresses,
                    config=NetworkConfig(),
                )
                await nursery.start(stranger.run)
            ids = [node_id_of(k.public_key) for k in strangers]
            for v in net.validators:
                for stranger_id in ids:
                    await nodes.wait_for(
                        lambda v=v, s=stranger_id: trio.to_thread.run_sync(_refusals, v, s),
                        bool,
                        TIMEOUT_S,
                        f"{v.name} to refuse {stranger_id[:12]}",
                    )
            nursery.cancel_scope.cancel()
        for v in net.validators:
            assert not (await _peer_ids(api, v)) & set(ids)
            for stranger_id in ids:
                assert len(_refusals(v, stranger_id)) == 1  # one line, however often it dials

        full = await trio.to_thread.run_sync(lambda: nodes.add_full_node(net, name="full"))
        await full.start()
        await nodes.wait_for(
            lambda: trio.to_thread.run_sync(_refusals, net.validators[0], full.node_id),
            bool,
            TIMEOUT_S,
            "the validators to refuse the full node",
        )
        await trio.to_thread.run_sync(nodes.admit_member, net, full)
        top = max((await api.wait_height(net.validators, 1, TIMEOUT_S)).values())
        await nodes.wait_for(
            lambda: api.try_get(full, "/status"),
            lambda s: s is not None and s["latest_height"] >= top,
            TIMEOUT_S,
            f"the admitted full node synced to {top}",
        )
        # The admin makes the member a validator with `tx set-validator`: it is in the set
        # two heights after the commit and its precommits reach the certificates; power 0
        # takes it out again.
        await trio.to_thread.run_sync(lambda: _set_validator(net, full, 10))
        address = full.validator_key.address.hex()
        listed = await nodes.wait_for(
            lambda: api.get(net.validators[1], "/validators"),
            lambda body: address in [v["address"] for v in body["validators"]],
            TIMEOUT_S,
            f"{full.name} in the validator set",
        )
        index = [v["address"] for v in listed["validators"]].index(address)

        async def signed_by_it() -> bool:
            top = await api.height(net.validators[1])
            body = await api.get(net.validators[1], f"/validators?height={top}")
            in_set = address in [v["address"] for v in body["validators"]]
            return in_set and index in await api.signers(net.validators[1], top)

        await nodes.wait_for(signed_by_it, bool, TIMEOUT_S, f"a precommit of {full.name}")
        await trio.to_thread.run_sync(lambda: _set_validator(net, full, 0))
        await nodes.wait_for(
            lambda: api.get(net.validators[1], "/validators"),
            lambda body: address not in [v["address"] for v in body["validators"]],
            TIMEOUT_S,
            f"{full.name} out of the validator set",
        )
        await trio.to_thread.run_sync(lambda: nodes.admit_member(net, full, remove=True))
        for v in net.validators:
            await nodes.wait_for(
                lambda v=v: _peer_ids(api, v),
                lambda peers: full.node_id not in peers,
                TIMEOUT_S,
                f"{v.name} to drop the removed member",
            )
        before = max((await api.wait_height(net.validators, 1, TIMEOUT_S)).values())
        await api.wait_height(net.validators, before + 3, TIMEOUT_S)
