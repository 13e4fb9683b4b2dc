"""Votes replayed from a past height are no proof that the chain's tip is there.

A commit certificate holds the precommit signatures of its height, and a vote's
sign bytes are (chain id, type, height, round, block hash): anyone who fetched a
block and its certificate by block sync (served to any peer) can rebuild those
precommits, validly signed, without any key. So only prevotes count as evidence
of the tip (`Driver._tip_proven`), and precommits rebuilt from certificates
neither end block sync nor keep a lagging node out of it.
"""

from __future__ import annotations

import collections
from pathlib import Path

from consensus.types import Commit, Vote, VoteType
from node.effects import Apply, Effect, Send, Sign, VerifySynced
from node.messages import SyncBlockMsg, SyncRequestMsg, SyncStatusMsg, VoteMsg, decode_message
from tests.unit.node.test_sync_between_drivers import (  # noqa: F401  (chain is a fixture)
    HEIGHTS,
    KEYS,
    SERVER,
    Certified,
    _driver,
    chain,
)

REPLAYER = "r" * 40


def _rebuilt_precommits(commit: Commit, c: Certified) -> list[VoteMsg]:
    """The precommits a commit certificate holds, as votes: no key needed."""
    validators = c.states[commit.height - 1].validators
    return [
        VoteMsg(
            Vote(
                VoteType.PRECOMMIT,
                commit.height,
                commit.round,
                commit.block_hash,
                validators[s.validator_index].address,
                s.validator_index,
                s.signature,
            )
        )
        for s in commit.signatures
    ]


def test_precommits_rebuilt_from_a_served_certificate_do_not_end_block_sync(
    tmp_path: Path,
    chain: Certified,  # noqa: F811
) -> None:
    """A validator 400 heights behind block-syncs from an honest server. A keyless peer
    sends it, each time its height moves, the precommits of the next height rebuilt from
    that block's certificate (which any node serves to anyone). The victim must stay in
    block sync until it is near the tip; instead it leaves block sync at every other
    height (and must sign nothing for heights long decided)."""
    victim = _driver(tmp_path / "w", chain.states[0], KEYS[3].address, can_sign=True)
    now = 0.0
    stale_exits: list[int] = []
    stale_signs: list[int] = []

    def run(effects: list[Effect]) -> None:
        queue = collections.deque([effects])
        while queue:
            for e in queue.popleft():
                if isinstance(e, Send) and e.peer == SERVER:
                    msg = decode_message(e.payload)
                    if isinstance(msg, SyncRequestMsg):
                        for h in range(msg.height, min(HEIGHTS, msg.height + msg.count - 1) + 1):
                            served = SyncBlockMsg(chain.blocks[h - 1], chain.commits[h - 1])
                            queue.append(victim.on_message(SERVER, served, b"", now))
                elif isinstance(e, VerifySynced):
                    queue.append(victim.on_synced(e.block, e.commit, e.peer, None, now))
                elif isinstance(e, Apply):
                    queue.append(victim.on_applied(e.block, chain.states[e.block.height], now))
                    queue.extend(replay())
                elif isinstance(e, Sign) and victim.state.last_height < HEIGHTS - 20:
                    stale_signs.append(e.height)

    def replay() -> list[list[Effect]]:
        # Gossip from the keyless peer, as soon as the victim's height moves.
        last = victim.state.last_height
        if victim.mode != "blocksync" or last >= HEIGHTS:
            return []
        answers = [
            victim.on_message(REPLAYER, vote, b"", now)
            for vote in _rebuilt_precommits(chain.commits[last], chain)
        ]
        if victim.mode == "consensus" and last < HEIGHTS - 20:
            stale_exits.append(last)
        return answers

    run(victim.start(now))
    while now < 60 and victim.state.last_height < HEIGHTS:
        now = round(now + 0.1, 1)
        run(victim.on_message(SERVER, SyncStatusMsg(1, HEIGHTS), b"", now))
        run(victim.on_time(now))
    assert stale_exits == [], (
        f"replayed precommits ended block sync {len(stale_exits)} times far below the tip "
        f"(first at height {stale_exits[:1]}, tip {HEIGHTS}); it signed for "
        f"{len(stale_signs)} long-decided heights {sorted(set(stale_signs))[:5]}..."
    )
    assert stale_signs == [], f"signed for {len(stale_signs)} long-decided heights"


def test_precommits_rebuilt_from_a_served_certificate_do_not_keep_a_lagging_node_voting(
    tmp_path: Path,
    chain: Certified,  # noqa: F811
) -> None:
    """A validator 400 heights behind, in consensus mode, fetches its first blocks (the
    16-block consensus window) from an honest server and must switch to block sync: peers
    are far ahead. A keyless peer sends it, at each height, two precommits (half the
    power: over a third, short of a decision) of the height it works on, rebuilt from
    that block's certificate. They prove nothing about the tip, yet the victim stays in
    consensus mode for the whole catch-up."""
    victim = _driver(tmp_path / "w", chain.states[0], KEYS[3].address, can_sign=True)
    now = 0.0
    entered_blocksync = False

    def replay() -> list[list[Effect]]:
        last = victim.state.last_height
        if victim.mode != "consensus" or last >= HEIGHTS:
            return []
        votes = _rebuilt_precommits(chain.commits[last], chain)[:2]
        return [victim.on_message(REPLAYER, vote, b"", now) for vote in votes]

    def run(effects: list[Effect]) -> None:
        nonlocal entered_blocksync
        queue = collections.deque([effects])
        while queue:
            for e in queue.popleft():
                if isinstance(e, Send) and e.peer == SERVER:
                    msg = decode_message(e.payload)
                    if isinstance(msg, SyncRequestMsg):
                        for h in range(msg.height, min(HEIGHTS, msg.height + msg.count - 1) + 1):
                            served = SyncBlockMsg(chain.blocks[h - 1], chain.commits[h - 1])
                            queue.append(victim.on_message(SERVER, served, b"", now))
                elif isinstance(e, VerifySynced):
                    queue.append(victim.on_synced(e.block, e.commit, e.peer, None, now))
                elif isinstance(e, Apply):
                    queue.append(victim.on_applied(e.block, chain.states[e.block.height], now))
                    entered_blocksync |= victim.mode == "blocksync"
                    queue.extend(replay())

    run(victim.start(now))
    for effects in replay():
        run(effects)
    while now < 60 and victim.state.last_height < HEIGHTS:
        now = round(now + 0.1, 1)
        run(victim.on_message(SERVER, SyncStatusMsg(1, HEIGHTS), b"", now))
        run(victim.on_time(now))
    assert entered_blocksync, (
        f"never left consensus mode while {HEIGHTS} heights behind: replayed precommits of "
        f"each height it worked on counted as proof of the tip (reached "
        f"{victim.state.last_height} in {now:.1f} s)"
    )
