"""When a restarted validator's doppelganger watch ends on a halted chain.

A validator that signed before starts watching (node/driver.py). If the chain
commits nothing for `watch_halt_s`, the watch ends early: a halted chain can
show no other instance and may be waiting for this validator's vote. The
bound an operator reads in docs/OPERATIONS.md is: the watch ends by
`watch_halt_s` after the later of its start and the last block the node
committed, and not before. These tests drive the real `Driver` on a virtual
clock (steps of 1/8 s, exact in binary) and read when it starts signing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.effects import Sign
from node.messages import StatusMsg, SyncStatusMsg, encode_message
from node.signstate import SignedRecord, SignStep
from tests.unit.node.test_driver import (
    CONFIG,
    Node,
    _close_wals,  # noqa: F401  (autouse: closes Nodes' WALs)
    _state_after,
    block,
)

STEP_S = 0.125
HALT_S = CONFIG.watch_halt_s


def restarted(tmp_path: Path) -> Node:
    """A validator that signed at height 1 before it restarted at time 0: it watches."""
    node = Node(tmp_path, last_signed=SignedRecord(1, 0, SignStep.PROPOSE, b"", b""))
    assert node.driver.status().watch_until_height == 3
    assert not node.driver.status().signing
    return node


def run_until_signing(node: Node, limit_s: float, before_each_step: object = None) -> float:
    """Advance the clock in steps until the node signs; the time it began (inf: never)."""
    while node.now < limit_s:
        if callable(before_each_step):
            before_each_step()
        node.advance(STEP_S)
        if node.driver.status().signing:
            return node.now
    return float("inf")


@pytest.mark.parametrize("commit_at_s", [0.5, 1.0, 2.5, 4.875])
def test_a_halted_watch_ends_halt_after_the_last_commit(tmp_path: Path, commit_at_s: float) -> None:
    """Block 1 commits shortly after the restart (the node catches up on the height it
    missed), then the chain halts. The watch must end `watch_halt_s` after that commit,
    the time /status announced, and not a whole further `watch_halt_s` later."""
    node = restarted(tmp_path)
    node.now = commit_at_s
    node.driver.on_time(node.now)
    a = block(b"a")
    node.driver.on_applied(a, _state_after(a), node.now)
    assert node.driver.status().watch_until_height == 4  # a synced height is not counted
    announced = node.driver.status().watch_halt_at
    began = run_until_signing(node, 4 * HALT_S)
    assert began == announced == commit_at_s + HALT_S, (
        f"block committed at {commit_at_s} s, watch_halt_s {HALT_S} s: signing began at "
        f"{began} s (announced {announced} s)"
    )


def test_with_no_commit_the_watch_ends_halt_after_its_start(tmp_path: Path) -> None:
    """No block commits after the restart: the watch ends `watch_halt_s` after it began,
    and the round's missed step is signed then."""
    node = restarted(tmp_path)
    assert node.driver.status().watch_halt_at == HALT_S
    began = run_until_signing(node, 4 * HALT_S)
    assert began == HALT_S


def test_height_claims_neither_end_the_watch_early_nor_prolong_it(tmp_path: Path) -> None:
    """Peers claim heights far ahead every step (and serve nothing): a claim commits no
    block, so it neither ends the watch before `watch_halt_s` nor holds it past that."""
    node = restarted(tmp_path)
    signs: list[Sign] = []

    def claim() -> None:
        for peer in ("a" * 40, "b" * 40):
            for msg in (StatusMsg(1000, 3), SyncStatusMsg(1, 999)):
                payload = encode_message(msg)
                signs.extend(e for e in node.receive(payload, peer=peer) if isinstance(e, Sign))

    began = run_until_signing(node, 4 * HALT_S, claim)
    assert began == HALT_S
    assert not signs  # nothing was signed in answer to a claim while watching
    assert node.driver.mode == "consensus"
