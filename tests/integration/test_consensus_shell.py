"""The consensus driver in real processes: restarts of a third or more of the power, and a
peer that claims to be far ahead (issue 10, bugs 1-3, at the process level).

At b186c6b, restarting 2 of 4 validators with SIGTERM halted the chain for good (the
restarted ones ended their doppelganger watch without performing the round's steps they
had passed), and a keyless peer re-sending `sync_status` with a height a million ahead
pulled its targets out of consensus and, sent to two of them, halted the chain beyond the
attack. Each test asserts outcomes on the live network: heights advance on every node,
identical block hashes, /status truthful.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from consensus.crypto import PrivateKey, digest
from network import BLOCKSYNC, Network, NetworkConfig, PeerAddress
from node.config import load_config
from node.messages import SyncStatusMsg, encode_message
from tests.integration import nodes

TIMEOUT_S = 120  # generous for a loaded 2-core machine; healthy runs take seconds
HALT_MS = 20_000  # [consensus] doppelganger_halt_ms (the default): long enough for the doctor
CLAIM_S = 15.0  # how long the liar keeps claiming
CLAIM_INTERVAL_S = 0.5


def _p2p_port(node: Any) -> int:
    port: int = load_config(node.config_path).p2p.listen.port
    return port


async def _same_chain(api: Any, net: Any) -> None:
    top = min([await api.height(n) for n in net.validators])
    reference = await api.headers(net.validators[0], top)
    for n in net.validators[1:]:
        assert await api.headers(n, top) == reference, n.name


async def test_restarting_half_then_all_of_the_validators_resumes_commits(
    tmp_path: Path, crypto: str
) -> None:
    """Two of four validators stopped with SIGTERM and started again together: they watch for
    a double of their key, which halts the chain (half the power does not sign), and the
    other validators' doctor names them as watching (by their signed word), not as silent;
    the watch ends after doppelganger_halt_ms without a commit, they cast the votes their
    round is waiting for, and blocks commit again. Then all four at once: the same."""
    consensus = replace(nodes.FAST_CONSENSUS, doppelganger_halt_ms=HALT_MS)
    net = nodes.create_testnet(
        tmp_path / "net", validators=4, accounts=1, consensus=consensus, crypto=crypto
    )
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 4, TIMEOUT_S)
        for group in (net.validators[2:], net.validators):
            for v in group:
                assert await v.stop() == 0
            for v in group:
                await v.start()
            for v in group:
                status = await api.wait_serving(v)
                assert status["validator"]["signing"] is False, status["validator"]
                assert status["validator"]["doppelganger_watch"] is not None
            if len(group) < len(net.validators):
                watcher = group[0].validator_key.address.hex()[:12]
                found = await nodes.wait_for(
                    lambda: api.status(net.validators[0]),
                    lambda st: any(
                        "watching for another instance" in f["problem"] for f in st["diagnosis"]
                    ),
                    TIMEOUT_S,
                    "the doctor to name the restarted validators as watching",
                )
                for f in found["diagnosis"]:
                    silent = f["problem"].partition("silent validators:")[2]
                    assert watcher not in silent, f
            heights = await api.wait_height(net.validators, 1, TIMEOUT_S)
            await api.wait_height(net.validators, max(heights.values()) + 3, TIMEOUT_S)
            for v in group:
                status = await api.status(v)
                assert status["validator"]["signing"] is True, (v.name, status["validator"])
        await _same_chain(api, net)


async def test_a_peer_claiming_a_height_far_ahead_changes_nothing(
    tmp_path: Path, crypto: str
) -> None:
    """A peer without a validator key connects to two validators and tells them, twice a
    second for 15 s, that it holds a million more blocks (and never serves one). Neither
    leaves consensus, every node keeps committing during and after, and the chain is one."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    victims = net.validators[:2]
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 3, TIMEOUT_S)
        liar = Network(
            identity=PrivateKey(digest(b"liar")),
            chain_id=net.chain_id,
            listen=("127.0.0.1", 0),
            persistent_peers=[PeerAddress(v.node_id, "127.0.0.1", _p2p_port(v)) for v in victims],
            config=NetworkConfig(),
        )
        modes: set[str] = set()
        async with trio.open_nursery() as nursery:
            await nursery.start(liar.run)
            with trio.fail_after(TIMEOUT_S):
                await liar.wait_peers(len(victims))
            before = await api.wait_height(net.validators, 1, TIMEOUT_S)
            deadline = trio.current_time() + CLAIM_S
            while trio.current_time() < deadline:
                claim = encode_message(SyncStatusMsg(1, max(before.values()) + 10**6))
                for v in victims:
                    liar.send(v.node_id, BLOCKSYNC, claim)
                for v in victims:
                    status = await api.status(v)
                    modes.add(status["sync"]["mode"])
                await trio.sleep(CLAIM_INTERVAL_S)  # the attack's own pace, not a wait
            during = await api.wait_height(net.validators, 1, TIMEOUT_S)
            nursery.cancel_scope.cancel()
        assert modes == {"consensus"}, modes
        assert min(during.values()) > max(before.values()), (before, during)
        await api.wait_height(net.validators, max(during.values()) + 3, TIMEOUT_S)
        await _same_chain(api, net)
