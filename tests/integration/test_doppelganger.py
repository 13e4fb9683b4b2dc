"""The doppelganger watch of real validator processes: a restart, and a second instance of one key.

A validator that has signed before (sign state height > 0) watches
`[consensus] doppelganger_heights` heights at start before it signs, so that
a second instance running with the same validator key (a failover gone
wrong, a copied home) shows itself through its votes before this one can
equivocate. What the issue asks to see: a plain restart watches, stays out
of the commit certificates of the watched heights, then signs again; a copy
of a running validator's key and sign state on another node detects the
original's votes, refuses to sign (and says why on /status), and the
network never sees an equivocation.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from node.config import load_config, save_config
from node.home import HomePaths
from node.signstate import SignState
from tests.integration import nodes

TIMEOUT_S = 90  # generous for a loaded 2-core machine; healthy runs take a few seconds
WATCH_HEIGHTS = 4  # the restarted validator's [consensus] doppelganger_heights
WATCHING_EVENT = "watching for another instance of this validator before signing"
PASSED_EVENT = "doppelganger watch passed; signing"
DETECTED_EVENT = "doppelganger detected: this node stops signing"
EVIDENCE_METRIC = "archipelago_consensus_byzantine_evidence_total"


def _set_doppelganger_heights(home: Path, heights: int) -> None:
    path = home / "config.toml"
    config = load_config(path)
    save_config(
        path, replace(config, consensus=replace(config.consensus, doppelganger_heights=heights))
    )


async def _heights_signed(api: Any, node: Any, index: int) -> list[int]:
    """The heights whose certificate, as `node` serves it, holds validator `index`'s precommit."""
    top = await api.height(node)
    return [h for h in range(1, top + 1) if index in await api.signers(node, h)]


async def test_a_restarted_validator_watches_before_it_signs_again(
    tmp_path: Path, crypto: str
) -> None:
    """A validator restarted after signing logs that it watches its configured 4 heights (its
    /status says it does not sign meanwhile), is absent from the commit certificates of the
    heights it watched (at least 3: heights it only caught up on, and one whose precommit it
    signed just before the stop, show no vote of the restarted process), logs that the watch
    passed, and its precommits are in the certificates of the heights after the watch."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    restarted, others = net.validators[3], net.validators[:3]
    _set_doppelganger_heights(restarted.home, WATCH_HEIGHTS)
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 4, TIMEOUT_S)
        index = await api.validator_index(others[0], restarted)
        # It has signed: its precommit is in a certificate (so its sign state height is > 0).
        await nodes.wait_for(
            lambda: _heights_signed(api, others[0], index),
            bool,
            TIMEOUT_S,
            f"a precommit of {restarted.name}",
        )
        assert restarted.events(WATCHING_EVENT) == []  # a first start has nothing to watch for

        assert await restarted.stop() == 0
        # What the first run signed last (a precommit may leave just before the stop and
        # enter a certificate after it): heights up to it are not the restart's doing.
        signed_before = SignState.load(HomePaths(restarted.home).sign_state).last.height
        await restarted.start()
        watching = await nodes.wait_for(
            lambda: trio.to_thread.run_sync(restarted.events, WATCHING_EVENT),
            bool,
            TIMEOUT_S,
            f"{restarted.name} to log its doppelganger watch",
        )
        assert len(watching) == 1, watching
        assert watching[0]["heights"] == WATCH_HEIGHTS, watching
        until = watching[0]["until_height"]
        # The watch starts before the API listens: wait for /status to answer.
        status = await nodes.wait_for(
            lambda: api.try_get(restarted, "/status"),
            lambda s: s is not None,
            TIMEOUT_S,
            f"{restarted.name}'s API after its restart",
        )
        if status["latest_height"] < until - 1:  # still watching: /status says so
            assert status["validator"]["signing"] is False, status["validator"]
            assert status["validator"]["doppelganger_watch"]["until_height"] >= until
        passed = await nodes.wait_for(
            lambda: trio.to_thread.run_sync(restarted.events, PASSED_EVENT),
            bool,
            TIMEOUT_S,
            f"{restarted.name} to end its watch",
        )
        assert len(passed) == 1 and passed[0]["height"] >= until - 1, (passed, until)
        watched = range(max(until - WATCH_HEIGHTS, signed_before + 1), passed[0]["height"] + 1)
        assert len(watched) >= WATCH_HEIGHTS - 1, (watched, signed_before)
        until = passed[0]["height"] + 1

        async def signed_after_watch() -> list[int]:
            top = min([await api.height(n) for n in others])
            return [h for h in range(until, top + 1) if index in await api.signers(others[0], h)]

        signed = await nodes.wait_for(
            signed_after_watch, bool, TIMEOUT_S, f"a precommit of {restarted.name} after the watch"
        )
        assert min(signed) >= until
        await api.wait_height(others, until + 2, TIMEOUT_S)
        for h in watched:
            assert index not in await api.signers(others[0], h), f"signed while watching {h}"
        status = await api.status(restarted)
        assert status["validator"]["signing"] is True
        assert status["validator"]["sign_state_error"] == ""
        for n in net.validators:
            assert await api.metric(n, EVIDENCE_METRIC) == 0, n.name


async def test_a_second_instance_of_a_validator_key_detects_the_first_and_never_signs(
    tmp_path: Path, crypto: str
) -> None:
    """A second node started with a copy of a running validator's validator_key.json and
    sign_state.json (its own home and node key, same genesis and peers) sees the original's
    votes during its watch, logs the doppelganger and stops signing: /status shows signing
    false and a sign_state_error naming another instance; the original keeps signing, and no
    node ever records equivocation evidence."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    original = net.validators[3]
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 4, TIMEOUT_S)
        index = await api.validator_index(net.validators[0], original)
        # Made now (and so killed by `running` on the way out, like the validators).
        twin = await trio.to_thread.run_sync(lambda: nodes.add_full_node(net, name="twin"))
        (twin.home / "data").mkdir(exist_ok=True)
        shutil.copy2(original.home / "validator_key.json", twin.home / "validator_key.json")
        shutil.copy2(
            original.home / "data" / "sign_state.json", twin.home / "data" / "sign_state.json"
        )
        assert twin.validator_key.address == original.validator_key.address
        assert twin.node_id != original.node_id
        await trio.to_thread.run_sync(nodes.admit_member, net, twin)
        await twin.start()

        status = await nodes.wait_for(
            lambda: api.try_get(twin, "/status"),
            # While it watches it does not sign either (and says so): wait for the verdict.
            lambda s: s is not None and bool(s["validator"]["sign_state_error"]),
            TIMEOUT_S,
            f"{twin.name} to stop signing",
        )
        assert status["validator"]["in_set"] is True
        assert status["validator"]["signing"] is False
        assert status["validator"]["doppelganger_watch"] is None
        error = status["validator"]["sign_state_error"]
        assert "another instance" in error, error
        assert any(f["severity"] == "critical" for f in status["diagnosis"]), status["diagnosis"]
        detected = twin.events(DETECTED_EVENT)
        assert len(detected) == 1, detected
        assert detected[0]["height"] >= 1
        # It had watched first: it never reached the point of signing.
        assert twin.events(WATCHING_EVENT) and not twin.events(PASSED_EVENT)

        # The chain goes on with the original signing; still no evidence anywhere.
        from_height = max([await api.height(n) for n in net.validators])

        async def original_signed() -> list[int]:
            top = min([await api.height(n) for n in net.validators])
            return [
                h
                for h in range(from_height + 1, top + 1)
                if index in await api.signers(net.validators[0], h)
            ]

        await nodes.wait_for(original_signed, bool, TIMEOUT_S, f"a precommit of {original.name}")
        await api.wait_height([*net.validators, twin], from_height + 5, TIMEOUT_S)
        for n in [*net.validators, twin]:
            assert await api.metric(n, EVIDENCE_METRIC) == 0, n.name
        status = await api.status(twin)
        assert status["validator"]["signing"] is False
        assert not twin.events(PASSED_EVENT)
        for n in net.validators:
            assert not n.events("equivocation detected"), n.name


HALT_MS = 4000  # the restarted validator's [consensus] doppelganger_halt_ms (default 20 s)
ENDED_EARLY_EVENT = "doppelganger watch ended early: no block committed"
COMMITTED_EVENT = "committed block"
# The node's own log times the watch, so process start-up is not in it; this is the
# event loop's lateness on a loaded 2-core machine, far below HALT_MS.
LATENESS_MAX_S = 1.5


def _set_halt_ms(home: Path, halt_ms: int) -> None:
    path = home / "config.toml"
    config = load_config(path)
    save_config(
        path, replace(config, consensus=replace(config.consensus, doppelganger_halt_ms=halt_ms))
    )


def _ts(event: dict[str, object]) -> float:
    stamp = event["ts"]
    assert isinstance(stamp, str), event
    return datetime.fromisoformat(stamp).timestamp()


async def test_on_a_halted_chain_the_watch_ends_halt_after_the_last_block(
    tmp_path: Path,
) -> None:
    """node3 is killed (-9) and the chain goes on without it; node0 is then paused
    (SIGSTOP), so 2 of 4 validators sign and nothing can commit. node3 restarts, catches up
    the heights it missed (blocks applied during its watch) and watches a chain that cannot
    commit. Its watch must end `doppelganger_halt_ms` after the later of its start and the
    last block it applied: not before (nothing a peer says ends it), and not a whole
    `doppelganger_halt_ms` later (it ended at twice the bound when the catch-up committed a
    block early in the watch). Then node3 signs and, with 3 of 4, the chain commits again
    while node0 stays paused."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1)
    paused, restarted, others = net.validators[0], net.validators[3], net.validators[1:3]
    _set_halt_ms(restarted.home, HALT_MS)
    async with nodes.running(net), nodes.open_api() as api:
        await api.wait_height(net.validators, 3, TIMEOUT_S)
        index = await api.validator_index(others[0], restarted)
        # It must have signed (sign state height > 0) or its restart has nothing to
        # watch for: a node3 that only caught up on heights 1-3 when killed never signed.
        await nodes.wait_for(
            lambda: _heights_signed(api, others[0], index),
            bool,
            TIMEOUT_S,
            f"a precommit of {restarted.name}",
        )
        await restarted.kill()
        await api.wait_height(others, await api.height(others[0]) + 2, TIMEOUT_S)
        assert paused.process is not None
        paused.process.send_signal(signal.SIGSTOP)
        try:
            before = len(restarted.log_events())
            await restarted.start()
            started = trio.current_time()
            status = await nodes.wait_for(
                lambda: api.try_get(restarted, "/status"),
                lambda s: s is not None and s["validator"]["signing"],
                TIMEOUT_S,
                f"{restarted.name} to sign again",
            )
            to_signing_s = trio.current_time() - started
            events = restarted.log_events()[before:]
            names = [e.get("event") for e in events]
            watching = events[names.index(WATCHING_EVENT)]
            ended = events[names.index(ENDED_EARLY_EVENT)]
            applied = [
                e
                for e in events[names.index(WATCHING_EVENT) : names.index(ENDED_EARLY_EVENT)]
                if e.get("event") == COMMITTED_EVENT
            ]
            assert applied, "node3 caught up no block during its watch: nothing tested"
            since = max(_ts(watching), _ts(applied[-1]))
            waited_s = _ts(ended) - since
            print(
                f"watch {_ts(ended) - _ts(watching):.2f} s from its start, {waited_s:.2f} s "
                f"after the last of {len(applied)} blocks applied (halt {HALT_MS / 1000} s); "
                f"restart to signing {to_signing_s:.2f} s"
            )
            assert HALT_MS / 1000 <= waited_s <= HALT_MS / 1000 + LATENESS_MAX_S, (
                f"the watch ended {waited_s:.2f} s after its last block "
                f"(doppelganger_halt_ms {HALT_MS})"
            )
            top = status["latest_height"]

            async def signed_while_paused() -> list[int]:
                now_top = await api.height(others[0])
                return [
                    h
                    for h in range(top + 1, now_top + 1)
                    if index in await api.signers(others[0], h)
                ]

            await nodes.wait_for(
                signed_while_paused, bool, TIMEOUT_S, f"a block signed by {restarted.name}"
            )
        finally:
            paused.process.send_signal(signal.SIGCONT)
