"""`archipelago doctor --home DIR` against real nodes: a healthy chain, a halted one, a dead node.

What an operator relies on: on a healthy 4-validator testnet the doctor
exits 0 and says there is nothing wrong; with half the voting power stopped
it exits 1, names the silent validators and says the chain cannot commit,
and /status `diagnosis` (what the doctor prints) carries the same findings;
pointed at a home whose node is not running it exits 1 with a short
explanation and what to do, never a traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import trio

from tests.integration import nodes

TIMEOUT_S = 90  # generous for a loaded 2-core machine; healthy runs take a few seconds
HEALTHY_TEXT = "No problems found"
HALTED_TEXT = "the chain cannot commit"


async def _doctor(home: Path) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = await trio.to_thread.run_sync(
        nodes.run_cli, "doctor", "--home", home
    )
    return result


async def test_doctor_on_a_healthy_testnet_then_on_a_halted_one(
    tmp_path: Path, crypto: str
) -> None:
    """Healthy: `doctor` exits 0, prints "No problems found", and /status has an empty diagnosis.
    Two of four validators stopped (half the power silent, the chain halted): `doctor` on a
    survivor exits 1, names both stopped validators and says the chain cannot commit; the
    survivor's /status diagnosis has the same critical finding and advice, and its /health
    fails once no block has committed for the configured number of block intervals."""
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=1, crypto=crypto)
    async with nodes.running(net), nodes.open_api() as api:
        validators = net.validators
        await api.wait_height(validators, 3, TIMEOUT_S)
        watched = validators[0]

        async def healthy() -> tuple[subprocess.CompletedProcess[str], Any]:
            return await _doctor(watched.home), await api.try_get(watched, "/status")

        # Polled: a round that times out on a loaded machine is a (correct) warning, so the
        # healthy verdict is awaited rather than expected from the first call.
        result, status = await nodes.wait_for(
            healthy,
            lambda rs: (
                rs[0].returncode == 0
                and HEALTHY_TEXT in rs[0].stdout
                and rs[1] is not None
                and rs[1]["diagnosis"] == []
            ),
            TIMEOUT_S,
            "doctor to report a healthy node",
        )
        assert result.stderr == ""
        assert "[warning]" not in result.stdout and "[critical]" not in result.stdout
        assert status["peers"] == 3

        stopped = validators[2:]
        silent = [v.validator_key.address.hex()[:12] for v in stopped]
        for v in stopped:
            assert await v.stop() == 0

        async def halted() -> tuple[subprocess.CompletedProcess[str], Any]:
            return await _doctor(watched.home), await api.try_get(watched, "/status")

        # Waited for by its text: the exit code is asserted below, after the findings.
        result, status = await nodes.wait_for(
            halted,
            lambda rs: HALTED_TEXT in rs[0].stdout and rs[1] is not None,
            TIMEOUT_S,
            "doctor to report the halted chain",
        )
        out = result.stdout
        for address in silent:
            assert address in out, out
        named = out.split("silent validators:")[1].split("\n")[0]
        for v in validators[:2]:
            assert v.validator_key.address.hex()[:12] not in named, out
        assert "20 of 40 voting power" in named, out

        # /status carries the same findings the doctor printed.
        halted_at = status["latest_height"]
        stall = [f for f in status["diagnosis"] if "silent validators" in f["problem"]]
        assert len(stall) == 1, status["diagnosis"]
        finding = stall[0]
        assert HALTED_TEXT in finding["advice"]
        assert all(a in finding["problem"] for a in silent), finding
        assert f"height {halted_at + 1}" in finding["problem"], finding
        peers = [f for f in status["diagnosis"] if "persistent peers connected" in f["problem"]]
        assert len(peers) == 1 and peers[0]["severity"] == "warning", status["diagnosis"]
        for v in stopped:
            assert v.node_id[:12] in peers[0]["problem"]
        for f in status["diagnosis"]:
            assert f"[{f['severity']}] " in out and f["advice"] in out, (f, out)
        # Halted for real: the survivors stay at the height they reached.
        assert await api.height(watched) == halted_at

        # A chain that cannot commit is critical, and critical findings make the exit code 1.
        assert finding["severity"] == "critical", finding
        assert f"[critical] height {halted_at + 1}" in out, out
        assert result.returncode == 1, out

        # /health fails once no block has committed for [consensus] health_stall_intervals
        # block intervals (it answered 200 on a halted chain before).
        r = await nodes.wait_for(
            lambda: api.client.get(watched.rpc + "/health"),
            lambda r: r.status_code == 503,
            TIMEOUT_S,
            "/health to fail on the halted chain",
        )
        assert any("no block committed for" in p for p in r.json()["problems"]), r.json()


async def test_doctor_on_a_home_whose_node_is_not_running(tmp_path: Path) -> None:
    """`doctor --home` for a node that is not running exits 1 with one line saying the node
    does not answer at its API address, one line saying what to do, and nothing on stderr."""
    net = nodes.create_testnet(tmp_path / "net", validators=1, accounts=1)
    node = net.validators[0]
    result = await _doctor(node.home)
    assert result.returncode == 1, result
    assert result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"The node is not answering at {node.rpc}"), lines
    assert "-> start it" in lines[1] and "archipelago start --home" in lines[1], lines
    assert "Traceback" not in result.stdout
