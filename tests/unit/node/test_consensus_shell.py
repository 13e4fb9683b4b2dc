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

import trio
import trio.testing

from node.config import Address, load_config, save_config
from node.daemon import Node
from node.home import init_home
from node.sdnotify import Notifier

HALT_MS = 20_000  # the default doppelganger_halt_ms: virtual time here
HEIGHT_TIMEOUT_S = 600.0  # virtual seconds


def _home(root: Path) -> Path:
    init_home(root, chain_id="shell-test", moniker="solo", app="kvstore")
    path = root / "config.toml"
    config = load_config(path)
    config = replace(
        config,
        p2p=replace(config.p2p, listen=Address("127.0.0.1", 0)),
        rpc=replace(config.rpc, listen=Address("127.0.0.1", 0)),
        metrics=replace(config.metrics, enabled=False),
        consensus=replace(config.consensus, doppelganger_halt_ms=HALT_MS),
    )
    save_config(path, config)
    return root


async def _run_until(node: Node, height: int) -> int:
    """Run the node until its chain reaches `height`; return the virtual seconds it took."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        core = node.core
        assert core is not None
        started = trio.current_time()
        with trio.fail_after(HEIGHT_TIMEOUT_S):
            while core.chain.height < height:
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
    core = second.core
    assert core is not None
    assert core.sign_state is not None and core.sign_state.last.height >= 6
