"""Block sync between real drivers over a real chain of certified blocks.

Each test builds a chain with the real `Chain` (kvstore, LMDB in a temporary
folder, real signatures) and drives the real `Driver` of a node that catches
up, answering its block requests as an honest server (another real `Driver`)
or as a peer that follows the chain would. Each docstring says what holds.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consensus.config import ConsensusConfig
from consensus.crypto import PrivateKey, digest
from consensus.genesis import Genesis, GenesisValidator
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.types import Block, Commit, CommitSig, Vote, VoteType, vote_sign_bytes
from node.chain import Chain
from node.driver import Driver
from node.effects import (
    Apply,
    DriverConfig,
    Effect,
    Penalise,
    Send,
    ServeBlocks,
    VerifySynced,
)
from node.messages import (
    DecidedMsg,
    Message,
    StatusMsg,
    SyncBlockMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    VoteMsg,
    decode_message,
    encode_message,
)
from node.storage import open_store
from tests.unit.node.test_driver import (
    _close_wals,  # noqa: F401  (autouse: closes the WALs open_test_wal opened)
    open_test_wal,
)

CHAIN = "sync-between-drivers"
KEYS = [PrivateKey(digest(b"sync-key-%d" % i)) for i in range(4)]
GENESIS = Genesis(
    CHAIN,
    0,
    tuple(GenesisValidator(f"v{i}", k.public_key, 1) for i, k in enumerate(KEYS)),
    "kvstore",
    {},
)
CONFIG = DriverConfig(consensus=ConsensusConfig(), fallback_lag_heights=10)
HEIGHTS = 400
SERVER, ASKER, LIAR = "s" * 40, "a" * 40, "l" * 40


@dataclass
class Certified:
    """A chain of certified empty blocks and the state after each (states[h]: after h)."""

    blocks: list[Block] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    states: list[ChainState] = field(default_factory=list)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certified]:
    folder = tmp_path_factory.mktemp("chain")
    store = open_store(folder / "store", map_bytes=1 << 28)
    c = Chain(GENESIS, store, SignatureVerifier(threads=0))
    out = Certified(states=[c.state])
    for h in range(1, HEIGHTS + 1):
        s = c.state
        b = c.build(
            txs=[], evidence=(), time_ms=1000 + h, proposer_address=s.schedule.proposer(0).address
        )
        sign_bytes = vote_sign_bytes(CHAIN, VoteType.PRECOMMIT, h, 0, b.hash)
        sigs = []
        for k in KEYS[:3]:
            index = s.validators.index_of(k.address)
            assert index is not None
            sigs.append(CommitSig(index, k.sign(sign_bytes)))
        commit = Commit(h, 0, b.hash, tuple(sorted(sigs, key=lambda x: x.validator_index)))
        c.finish(c.persist(b, commit))
        out.blocks.append(b)
        out.commits.append(commit)
        out.states.append(c.state)
    yield out
    store.close()


def _driver(tmp: Path, state: ChainState, me: bytes, *, can_sign: bool) -> Driver:
    driver = Driver(
        state=state,
        validator_address=me,
        can_sign=can_sign,
        last_signed=None,
        wal=open_test_wal(tmp),
        config=CONFIG,
        validators_at=lambda h: None,
        now=0.0,
    )
    return driver


def test_an_honest_node_catching_up_is_not_cut_off_by_an_honest_server(
    tmp_path: Path, chain: Certified
) -> None:
    """A full node 400 heights behind syncs from one honest peer (a real driver serving its
    stored blocks). Applying a block takes 20 ms. No honest server penalises it: the asker
    sends only whole requests (never one block each time the window slides by one), so it
    stays under the server's 8 requests a second with a debt of 64, and it catches up."""
    server = _driver(tmp_path / "w1", chain.states[-1], KEYS[0].address, can_sign=False)
    asker = _driver(tmp_path / "w2", chain.states[0], digest(b"full")[:20], can_sign=False)
    server.start(0.0)
    asker.start(0.0)
    now = 0.0
    blamed: list[str] = []

    def run(effects: list[Effect]) -> None:
        nonlocal now
        queue = collections.deque([effects])
        while queue:
            for e in queue.popleft():
                if isinstance(e, Send) and e.peer == SERVER:
                    msg = decode_message(e.payload)
                    if not isinstance(msg, SyncRequestMsg):
                        continue
                    for s in server.on_message(ASKER, msg, e.payload, now):
                        if isinstance(s, Penalise):
                            blamed.append(s.detail)
                        elif isinstance(s, ServeBlocks):
                            for h in range(s.height, s.height + s.count):
                                served = SyncBlockMsg(chain.blocks[h - 1], chain.commits[h - 1])
                                queue.append(asker.on_message(SERVER, served, b"", now))
                elif isinstance(e, VerifySynced):
                    queue.append(asker.on_synced(e.block, e.commit, e.peer, None, now))
                elif isinstance(e, Apply):
                    now += 0.02
                    queue.append(asker.on_applied(e.block, chain.states[e.block.height], now))

    while now < 60 and asker.state.last_height < HEIGHTS:
        now += 0.1
        run(asker.on_message(SERVER, SyncStatusMsg(1, HEIGHTS), b"", now))
        run(asker.on_time(now))
    assert blamed == []
    assert asker.state.last_height == HEIGHTS


def test_a_peer_claiming_one_height_above_the_tip_cannot_hold_a_validator_in_block_sync(
    tmp_path: Path, chain: Certified
) -> None:
    """A validator restarts 20 heights behind (a legitimate reason to block-sync). The chain
    then commits a block a second. An honest peer claims the tip; a keyless peer that
    follows the chain claims the tip + 1 and answers the request for that height as soon
    as the block is decided (well within REQUEST_TIMEOUT_S), never with sync_none. The
    other validators' prevotes on the height they work on reach the victim, as gossip
    does. Those votes prove the victim is at the tip: it must leave block sync at once
    and vote, although the liar always keeps a claim above it and a request pending."""
    victim = _driver(tmp_path / "w", chain.states[0], KEYS[3].address, can_sign=True)
    now = 0.0

    def tip() -> int:
        return min(HEIGHTS, 20 + int(now))

    held: list[int] = []
    blocksync_s = 0.0

    def run(effects: list[Effect]) -> None:
        queue = collections.deque([effects])
        while queue:
            for e in queue.popleft():
                if isinstance(e, Send) and e.peer is None:
                    # An honest peer answers a status one height behind with the decided block.
                    status = decode_message(e.payload)
                    if isinstance(status, StatusMsg) and status.height == tip():
                        h = status.height
                        decided = DecidedMsg(chain.blocks[h - 1], chain.commits[h - 1])
                        queue.append(victim.on_message(SERVER, decided, b"", now))
                elif isinstance(e, Send) and e.peer in (SERVER, LIAR):
                    msg = decode_message(e.payload)
                    if not isinstance(msg, SyncRequestMsg):
                        continue
                    for h in range(msg.height, msg.height + msg.count):
                        answer: Message
                        if h <= tip():
                            answer = SyncBlockMsg(chain.blocks[h - 1], chain.commits[h - 1])
                        elif e.peer == LIAR:
                            held.append(h)  # served once decided
                            continue
                        else:
                            answer = SyncNoneMsg(h)
                        queue.append(victim.on_message(e.peer, answer, b"", now))
                elif isinstance(e, VerifySynced):
                    queue.append(victim.on_synced(e.block, e.commit, e.peer, None, now))
                elif isinstance(e, Apply):
                    queue.append(victim.on_applied(e.block, chain.states[e.block.height], now))

    run(victim.start(now))
    while now < 150:
        now = round(now + 0.1, 1)
        if now == int(now):
            run(victim.on_message(SERVER, SyncStatusMsg(1, tip()), b"", now))
            run(victim.on_message(LIAR, SyncStatusMsg(1, tip() + 1), b"", now))
        if round(now % 1, 1) == 0.5:
            # Gossip: mid-height, the other validators' prevotes on it reach every peer.
            for k in KEYS[:3]:
                index = chain.states[tip()].validators.index_of(k.address)
                assert index is not None
                vote = Vote.create(k, CHAIN, VoteType.PREVOTE, tip() + 1, 0, b"", index)
                run(victim.on_message(SERVER, VoteMsg(vote), encode_message(VoteMsg(vote)), now))
        for h in [h for h in held if h <= tip()]:
            held.remove(h)
            run(
                victim.on_message(
                    LIAR, SyncBlockMsg(chain.blocks[h - 1], chain.commits[h - 1]), b"", now
                )
            )
        run(victim.on_time(now))
        blocksync_s += 0.1 if victim.mode == "blocksync" else 0.0
    assert victim.state.last_height >= tip() - 1  # it did catch up
    assert victim.mode == "consensus", f"in block sync {blocksync_s:.0f} s of 150"
    assert blocksync_s < 10, f"in block sync {blocksync_s:.0f} s of 150"
    assert victim.machine is not None and victim.machine.own_address == KEYS[3].address


def test_serving_budgets_of_a_disconnected_peer_are_forgotten(
    tmp_path: Path, chain: Certified
) -> None:
    """A peer that asks for one block and sends one status (never a sync_status) and then
    disconnects leaves nothing behind: its serving budgets (token buckets) go with it, so
    memory does not grow with every fresh key that connects or every reconnect."""
    node = _driver(tmp_path / "w", chain.states[5], KEYS[0].address, can_sign=False)
    node.start(0.0)
    for i in range(1000):
        peer = f"{i:040x}"
        for msg in (SyncRequestMsg(1, 1), StatusMsg(2, 0)):
            node.on_message(peer, msg, encode_message(msg), 0.0)
    node.on_peers([], 1.0)
    assert len(node.sync._buckets) + len(node.sync._decided_buckets) == 0
