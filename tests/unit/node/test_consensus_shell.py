"""The daemon's consensus shell in process, on trio's virtual clock.

A single-validator node is built from a real home (`init_home`) and run with
`Node.run` under a MockClock that jumps ahead whenever every task has waited
for 50 ms of real time: consensus timeouts take no real time, worker threads
(fsync, validation) finish before the clock moves. It commits blocks; stopped
and started again on the same home it watches for a double of its key, and
since it alone makes the chain, no block commits while it watches: the watch
must end by `doppelganger_halt_ms` and the round's missed steps be performed,
or the chain would halt for good (issue 10, bug 3).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import trio
import trio.testing

from consensus.codec import encode
from consensus.crypto import PrivateKey, digest
from consensus.types import Transaction
from node.config import Address, load_config, save_config
from node.daemon import Node
from node.home import init_home
from node.sdnotify import Notifier

HALT_MS = 20_000  # the default doppelganger_halt_ms: virtual time here
HEIGHT_TIMEOUT_S = 600.0  # virtual seconds


def _home(root: Path, **consensus: Any) -> Path:
    init_home(root, chain_id="shell-test", moniker="solo", app="kvstore")
    path = root / "config.toml"
    config = load_config(path)
    config = replace(
        config,
        p2p=replace(config.p2p, listen=Address("127.0.0.1", 0)),
        rpc=replace(config.rpc, listen=Address("127.0.0.1", 0)),
        metrics=replace(config.metrics, enabled=False),
        consensus=replace(config.consensus, doppelganger_halt_ms=HALT_MS, **consensus),
    )
    save_config(path, config)
    return root


async def _run_until(node: Node, height: int) -> float:
    """Run the node until its chain reaches `height`; return the virtual seconds it took."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        res = node.resources
        assert res is not None
        started = trio.current_time()
        with trio.fail_after(HEIGHT_TIMEOUT_S):
            while res.chain.height < height:
                await trio.sleep(0.1)  # virtual: polls the chain without real waiting
        took = trio.current_time() - started
        node.request_stop("test done")
    return took


async def test_a_restarted_sole_validator_ends_its_watch_and_commits_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The node commits 3 blocks; restarted, it watches (nothing can commit meanwhile), ends
    the watch after doppelganger_halt_ms without a commit, casts its round's missed votes and
    commits 3 more."""
    autojump_clock.autojump_threshold = 0.05
    home = _home(tmp_path / "solo")
    first = Node.from_home(home, notifier=Notifier(None), shutdown_grace_ms=None)
    await _run_until(first, 3)
    second = Node.from_home(home, notifier=Notifier(None), shutdown_grace_ms=None)
    took = await _run_until(second, 6)
    assert took >= HALT_MS / 1000  # it did watch: nothing committed until the halt rule
    res = second.resources
    assert res is not None
    assert res.sign_state is not None and res.sign_state.last.height >= 6


async def _wait_height(node: Node, height: int) -> None:
    res = node.resources
    assert res is not None
    with trio.fail_after(30):
        while res.chain.height < height:
            await trio.sleep(0.05)


async def test_without_empty_blocks_a_height_waits_for_transactions(tmp_path: Path) -> None:
    """With create_empty_blocks = false the chain makes no block while no transaction waits
    (and /health does not call that a stall); a transaction is committed in the next block,
    one more block carries the app hash it made, and the chain idles again. (Real clock.)"""
    home = _home(
        tmp_path / "idle", create_empty_blocks=False, timeout_commit_ms=50, health_stall_intervals=1
    )
    node = Node.from_home(home, notifier=Notifier(None), shutdown_grace_ms=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        res = node.resources
        assert res is not None
        await _wait_height(node, 1)
        await trio.sleep(4)  # dozens of block intervals
        idle = res.chain.height
        view = next(s.view for s in node.services if s.name == "rpc")  # type: ignore[attr-defined]
        assert view.status()["consensus"]["waiting_for_txs"] is True
        assert view.health() == (True, [])
        tx = Transaction.create(
            PrivateKey(digest(b"idle-client")), "shell-test", 0, encode(["set", b"k", b"v"])
        )
        txid, _ = res.mempool_add(tx.encode())
        await _wait_height(node, idle + 2)
        await trio.sleep(2)
        assert res.chain.height == idle + 2
        record = res.store.load_tx(txid)
        assert record is not None and record.height == idle + 1
        assert view.status()["consensus"]["waiting_for_txs"] is True
        node.request_stop("test done")
    assert idle <= 2  # the first empty block after the start, then nothing


async def test_without_empty_blocks_the_interval_still_makes_blocks(tmp_path: Path) -> None:
    """create_empty_blocks_interval_ms makes a heartbeat block after that long without one."""
    home = _home(
        tmp_path / "beat",
        create_empty_blocks=False,
        create_empty_blocks_interval_ms=1000,
        timeout_commit_ms=50,
    )
    node = Node.from_home(home, notifier=Notifier(None), shutdown_grace_ms=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await _wait_height(node, 1)
        res = node.resources
        assert res is not None
        start = res.chain.height
        await trio.sleep(6.5)
        made = res.chain.height - start
        node.request_stop("test done")
    assert 4 <= made <= 7  # one a second
