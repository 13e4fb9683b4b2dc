"""`archipelago localnet`, run as a real subprocess of the installed script.

Four real validator processes on loopback, real signed transfers over HTTP,
real signals. The tests read only what the command prints, as a newcomer
running `make run` would. The transfers run under each crypto suite; Ctrl-C
and a dying node test the command's supervision of its processes, which no
suite reaches, so they run with the default one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import trio

from tests.integration import nodes

RUN_TIMEOUT_S = 120  # 20 s of load plus start and stop on a loaded 2-core machine
# The admitted transfers a stop may leave uncommitted: the last seconds of load.
PENDING_AT_STOP_S = 5


def _base_port() -> str:
    """The --base-port of a 4-validator localnet on free ports."""
    return str(nodes.free_ports(4 * nodes.PORTS_PER_NODE))


async def _open_localnet(*args: str) -> trio.Process:
    """`archipelago localnet` of 4 validators on free ports, its output on one pipe."""
    return await trio.lowlevel.open_process(
        [
            str(nodes.ARCHIPELAGO),
            "localnet",
            "--validators",
            "4",
            "--base-port",
            _base_port(),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=nodes.env(),
    )


async def _read_until(process: trio.Process, seen: bytes, marker: bytes) -> bytes:
    """The output so far, read on until it holds `marker` (fails if the output ends first)."""
    assert process.stdout is not None
    while marker not in seen:
        chunk = await process.stdout.receive_some(65536)
        assert chunk, seen.decode()
        seen += chunk
    return seen


async def _interrupt(process: trio.Process, seen: bytes) -> tuple[int, str]:
    """SIGINT (Ctrl-C), then the exit code and the whole output."""
    assert process.stdout is not None
    process.send_signal(signal.SIGINT)
    while chunk := await process.stdout.receive_some(65536):
        seen += chunk
    return await process.wait(), seen.decode()


def _heights(output: str, node: str) -> list[int]:
    return [int(h) for h in re.findall(rf"\b{node}=(\d+)", output)]


def test_localnet_commits_transfers_and_stops_cleanly(crypto: str) -> None:
    """A 4-validator localnet under 50 tx/s for 20 s exits 0, every node's height grows,
    transfers are committed and timed, and every node stops with exit code 0; with either
    crypto suite (`--crypto`), which it names."""
    result = subprocess.run(
        [
            *(str(nodes.ARCHIPELAGO), "localnet", "--validators", "4", "--load", "50"),
            *("--duration", "20", "--base-port", _base_port(), "--crypto", crypto),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=nodes.env(),
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for node in ("node0", "node1", "node2", "node3"):
        heights = _heights(out, node)
        assert len(heights) >= 10, out
        assert heights == sorted(heights), out
        assert heights[-1] - heights[0] >= 5, out
        assert re.search(rf"{node}: height \d+, committed \d+ txs, exit code 0", out), out
    summary = re.search(r"summary: height \d+, committed (\d+) transactions", out)
    assert summary is not None, out
    committed = int(summary[1])
    assert committed >= 100, out
    # Refusals are allowed (the load generator retries them); lost connections are not.
    load = re.search(
        r"load: (\d+) submitted, (\d+) admitted, rejected .*, 0 connection errors", out
    )
    assert load is not None, out
    # Every admitted transfer is committed but those still pending at the stop: at most
    # PENDING_AT_STOP_S of the load (a loaded machine commits slowly, but commits).
    assert int(load[2]) - PENDING_AT_STOP_S * 50 <= committed <= int(load[2]), out
    assert re.search(r"submit-to-commit latency p50 [\d.]+ s, p99 [\d.]+ s", out), out
    assert "removed (pass --keep" in out
    # Where to reach each node and the genesis, and how to keep the homes, are said.
    for node in ("node0", "node1", "node2", "node3"):
        assert re.search(rf"{node}: API http://127\.0\.0\.1:\d+ ", out), out
    assert re.search(r"genesis: \S+/node0/genesis\.json", out), out
    assert "pass --keep (or --output DIR) to keep the homes" in out
    assert re.search(rf"localnet: 4 validators, chain \S+ \({crypto}\)", out), out


async def test_localnet_stops_on_ctrl_c() -> None:
    """SIGINT (Ctrl-C) once the network is up stops every node with exit code 0,
    prints the summary, and exits 0."""
    process = await _open_localnet("--keep")
    with trio.fail_after(RUN_TIMEOUT_S):
        seen = await _read_until(process, b"", b"every node is up")
        code, out = await _interrupt(process, seen)
    assert code == 0, out
    for node in ("node0", "node1", "node2", "node3"):
        assert re.search(rf"{node}: height \d+, committed 0 txs, exit code 0", out), out
    kept = re.search(r"logs and homes in (\S+): kept", out)
    assert kept is not None, out
    folder = Path(kept[1])
    assert (folder / "node0.log").read_text().count("committed block") >= 1
    shutil.rmtree(folder)


async def test_localnet_reports_a_node_that_dies() -> None:
    """A validator killed with SIGKILL is reported with its exit code and the tail of its
    log; the rest still stop cleanly, the folder is kept, and the exit code is 1."""
    process = await _open_localnet()
    with trio.fail_after(RUN_TIMEOUT_S):
        seen = await _read_until(process, b"", b"every node is up")
        folder_match = re.search(rb"folder (\S+)", seen)
        assert folder_match is not None
        folder = Path(folder_match[1].decode())
        victim = int((folder / "node2" / "data" / "LOCK").read_text())
        os.kill(victim, signal.SIGKILL)
        seen = await _read_until(process, seen, b"exited with code")
        code, out = await _interrupt(process, seen)
    assert code == 1, out
    assert f"node2 (pid {victim}) exited with code -9; last lines of" in out
    assert '"event": "committed block"' in out  # the tail of node2's JSON log
    for node in ("node0", "node1", "node3"):
        assert re.search(rf"{node}: height \d+, committed 0 txs, exit code 0", out), out
    assert f"logs and homes in {folder}: kept" in out
    shutil.rmtree(folder)
