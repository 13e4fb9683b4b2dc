"""A vote of our own key kept for the next height is checked for a doppelganger.

Votes on the height after ours are verified and kept; when the height begins
they go through `Driver._on_vote` like any vote, so a vote signed with this
validator's key by another instance stops this node signing, whether it came
before or during the height.
"""

from __future__ import annotations

from pathlib import Path

from consensus.types import VoteType
from node.effects import StopSigning
from tests.unit.node.test_driver import (
    ME,
    Node,
    _state_after,
    block,
    vote_msg,
)


def test_a_vote_of_our_key_kept_for_the_next_height_stops_signing(tmp_path: Path) -> None:
    """A validator at height 1 receives a validly signed prevote of its own key for height
    2, round 1, which it never signed (another instance runs). Height 1 then commits. The
    kept vote reaches height 2's machine: this node must stop signing, as it does when the
    same vote arrives once height 2 has begun."""
    node = Node(tmp_path)
    a = block(b"a")
    early = node.receive(vote_msg(ME, VoteType.PREVOTE, 1, b"", height=2))
    assert not [e for e in early if isinstance(e, StopSigning)]
    assert len(node.driver._next) == 1  # verified and kept for height 2
    effects = node.driver.on_applied(a, _state_after(a), node.now)
    machine = node.driver.machine
    assert machine is not None and machine.height == 2
    stopped = [e for e in early + effects if isinstance(e, StopSigning)]
    assert stopped, (
        "our key's vote for height 2 was stepped into height 2's machine without the "
        f"doppelganger check; signing: {node.driver.status().signing}"
    )


def test_control_the_same_vote_during_height_2_stops_signing(tmp_path: Path) -> None:
    """The control: the same vote, arriving once height 2 has begun, stops signing."""
    node = Node(tmp_path)
    a = block(b"a")
    node.driver.on_applied(a, _state_after(a), node.now)
    effects = node.receive(vote_msg(ME, VoteType.PREVOTE, 1, b"", height=2))
    assert [e for e in effects if isinstance(e, StopSigning)]
