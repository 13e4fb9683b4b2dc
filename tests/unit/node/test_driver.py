"""The consensus driver in process: what a peer's messages can and cannot make a node do.

Each test drives the real `Driver` (the code the daemon's shell and the
simulator run) over a real write-ahead log in a temporary folder, with real
signatures, and reads its effects. The regressions of issue 10 are here at
the unit level: a peer's claim never moves the node (bugs 1, 2), signing
resumes with the round's missed steps (bug 3), a body that is not its
header's is the sender's fault and never displaces the genuine proposal (bug
4), nothing unverified or repeated reaches the WAL (bug 5), next-height
messages are verified before they take a place (bug 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.kvstore import KVStore
from consensus.config import ConsensusConfig
from consensus.crypto import PrivateKey, digest
from consensus.genesis import Genesis, GenesisValidator
from consensus.state import ChainState
from consensus.types import Block, Commit, CommitSig, Proposal, Vote, VoteType, vote_sign_bytes
from consensus.validation import build_block, next_chain_state
from network import BLOCKSYNC
from network import Misbehaviour as PeerFault
from node import wal as wal_module
from node.driver import Driver
from node.effects import (
    Apply,
    DriverConfig,
    Effect,
    Gossip,
    Log,
    Penalise,
    Send,
    Sign,
    StopSigning,
    Validate,
)
from node.messages import (
    VOTER_WATCHING,
    DecidedMsg,
    ProposalMsg,
    StatusMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    VoteMsg,
    decode_message,
    encode_message,
)
from node.signstate import SignedRecord, SignStep
from node.syncplan import REQUEST_TIMEOUT_S
from node.wal import WAL

CHAIN = "driver-test"
KEYS = [PrivateKey(digest(b"driver-key-%d" % i)) for i in range(4)]
GENESIS = Genesis(
    CHAIN,
    0,
    tuple(GenesisValidator(f"v{i}", k.public_key, 1) for i, k in enumerate(KEYS)),
    "kvstore",
    {},
)
STATE = ChainState.from_genesis(GENESIS, KVStore.from_genesis(GENESIS).app_hash)
KEY_OF = {k.address: k for k in KEYS}
CONFIG = DriverConfig(
    consensus=ConsensusConfig(timeout_commit_ms=0, skip_timeout_commit=True),
    watch_heights=2,
    watch_halt_s=5.0,
    fallback_lag_heights=3,
)
PEER = "a" * 40


def proposer_key(round: int, state: ChainState = STATE) -> PrivateKey:
    return KEY_OF[state.schedule.proposer(round).address]


ME = next(k for k in KEYS if k is not proposer_key(0))


def block(tag: bytes, state: ChainState = STATE, round: int = 0) -> Block:
    """A valid, empty block of height 1; `tag` picks its time, so blocks differ."""
    return build_block(
        state,
        [],
        time_ms=1000 + int.from_bytes(digest(tag)[:2], "big"),
        proposer_address=proposer_key(round, state).address,
        last_commit=None,
    )


def proposal_msg(b: Block, round: int = 0, key: PrivateKey | None = None) -> bytes:
    signer = key or proposer_key(round)
    p = Proposal.create(signer, CHAIN, b.height, round, -1, b.hash)
    return encode_message(ProposalMsg(p, b))


def vote_msg(
    key: PrivateKey, vote_type: VoteType, round: int, block_hash: bytes, height: int = 1
) -> bytes:
    index = STATE.validators.index_of(key.address)
    assert index is not None
    return encode_message(
        VoteMsg(Vote.create(key, CHAIN, vote_type, height, round, block_hash, index))
    )


# Every WAL a test opens through open_test_wal is closed after it (each holds two
# descriptors: 2 per test leaked until a pytest worker ran out of them under a
# 1,024 limit). Modules that use it import _close_wals too, which makes it autouse there.
_opened: list[WAL] = []


@pytest.fixture(autouse=True)
def _close_wals() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def open_test_wal(path: Path) -> WAL:
    wal = wal_module.open_wal(path)
    _opened.append(wal)
    return wal


class Node:
    """A driver over a real WAL, fed decoded messages as the shell feeds it."""

    def __init__(
        self, tmp: Path, me: PrivateKey = ME, last_signed: SignedRecord | None = None
    ) -> None:
        self.wal: WAL = open_test_wal(tmp / "wal")
        self.now = 0.0
        self.driver = Driver(
            state=STATE,
            validator_address=me.address,
            can_sign=True,
            last_signed=last_signed,
            wal=self.wal,
            config=CONFIG,
            validators_at=lambda h: STATE.validators if h <= 2 else None,
            now=self.now,
        )
        self.effects = self.driver.start(self.now)
        self.effects += self.driver.on_time(self.now)  # round 0 starts at once

    def records(self) -> int:
        return len(list(self.wal.replay_from_last_height()))

    def receive(self, payload: bytes, peer: str = PEER) -> list[Effect]:
        return self.driver.on_message(peer, decode_message(payload), payload, self.now)

    def advance(self, seconds: float) -> list[Effect]:
        self.now += seconds
        return self.driver.on_time(self.now)


def penalties(effects: list[Effect]) -> list[Penalise]:
    return [e for e in effects if isinstance(e, Penalise)]


def gossiped(effects: list[Effect]) -> list[bytes]:
    return [e.payload for e in effects if isinstance(e, Gossip)]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_only_verified_first_seen_messages_reach_the_wal(node: Node) -> None:
    """A forged proposal, a proposal larger than the chain allows and copies of a counted
    vote add nothing to the WAL; the forger is penalised; the first genuine vote is logged
    once and relayed once."""
    before = node.records()
    a = block(b"a")
    forged = proposal_msg(a, key=ME)  # signed by a validator that is not the proposer
    effects = node.receive(forged)
    assert [p.fault for p in penalties(effects)] == [PeerFault.INVALID_SIGNATURE]
    assert node.records() == before
    other = next(k for k in KEYS if k is not ME)
    vote = vote_msg(other, VoteType.PREVOTE, 0, a.hash)
    assert gossiped(node.receive(vote)) == [vote]
    assert node.records() == before + 1
    for _ in range(10):
        assert node.receive(vote) == []
    assert node.records() == before + 1
    huge = build_block(
        STATE,
        [b"x" * 30_000] * 200,  # 6 MB: over the 4 MiB genesis default
        time_ms=1000,
        proposer_address=proposer_key(0).address,
        last_commit=None,
    )
    effects = node.receive(proposal_msg(huge))
    assert len(penalties(effects)) == 1
    assert node.records() == before + 1


def test_a_swapped_body_is_refused_and_the_genuine_proposal_is_relayed_as_received(
    node: Node,
) -> None:
    """A relayer that pairs the genuine signed proposal and header with other transactions is
    penalised, nothing is logged, and the genuine proposal, arriving next, is accepted,
    validated and relayed as the exact bytes that arrived."""
    before = node.records()
    a = block(b"a")
    genuine = proposal_msg(a)
    signed = decode_message(genuine)
    assert isinstance(signed, ProposalMsg)
    swapped = encode_message(ProposalMsg(signed.proposal, Block(a.header, (b"evil",), None, ())))
    effects = node.receive(swapped, peer="b" * 40)
    assert [(p.peer, p.detail) for p in penalties(effects)] == [("b" * 40, "block_mismatch")]
    assert node.records() == before
    effects = node.receive(genuine)
    assert Validate(a) in effects
    assert gossiped(effects) == [genuine]
    assert node.records() == before + 1


def test_each_message_is_relayed_as_the_very_bytes_logged(node: Node) -> None:
    """A peer's proposal and vote are relayed as the objects that arrived, and our own
    prevote as the object the WAL logged: nothing is encoded again for the network (whose
    seen-cache digest of a received payload then travels with it, in the shell)."""
    a = block(b"a")
    genuine = proposal_msg(a)
    effects = node.receive(genuine)
    [relayed] = gossiped(effects)
    assert relayed is genuine
    effects = node.driver.on_validated(a.hash, True, "", node.now)
    request = next(e for e in effects if isinstance(e, Sign))
    signature = ME.sign(request.sign_bytes)
    [own] = gossiped(node.driver.on_signed(request, signature, None, node.now))
    assert list(node.wal.replay_from_last_height())[-1] == own
    assert own in node.driver.own_messages
    sent = decode_message(own)
    assert isinstance(sent, VoteMsg) and (sent.vote.block_hash, sent.vote.signature) == (
        a.hash,
        signature,
    )
    other = next(k for k in KEYS if k not in (ME, proposer_key(0)))
    vote = vote_msg(other, VoteType.PREVOTE, 0, a.hash)
    [relayed] = gossiped(node.receive(vote))
    assert relayed is vote


def test_forged_decided_blocks_are_the_senders_fault(node: Node) -> None:
    """A decided message whose certificate nobody signed, or whose block is not the one its
    certificate names, is penalised and logs nothing."""
    before = node.records()
    a, b = block(b"a"), block(b"b")
    fake = Commit(1, 0, a.hash, (CommitSig(0, b"\x01" * 64),))
    assert penalties(node.receive(encode_message(DecidedMsg(a, fake))))
    sigs = []
    for k in KEYS[:3]:
        index = STATE.validators.index_of(k.address)
        assert index is not None
        sig = k.sign(vote_sign_bytes(CHAIN, VoteType.PRECOMMIT, 1, 0, a.hash))
        sigs.append(CommitSig(index, sig))
    real = Commit(1, 0, a.hash, tuple(sorted(sigs, key=lambda s: s.validator_index)))
    assert penalties(node.receive(encode_message(DecidedMsg(b, real))))
    assert node.records() == before
    effects = node.receive(encode_message(DecidedMsg(a, real)))
    assert [e for e in effects if isinstance(e, Apply)] == [Apply(a, real)]


def test_next_height_messages_are_verified_before_they_are_kept(node: Node) -> None:
    """Forged votes for the next height (wrong signature, or carrying our own address) are
    penalised and kept nowhere; genuine ones are kept and counted once the height starts."""
    forger = PrivateKey(digest(b"forger"))
    for k in KEYS:
        index = STATE.validators.index_of(k.address)
        assert index is not None
        forged = Vote(VoteType.PREVOTE, 2, 0, b"", k.address, index, forger.sign(b"x"))
        effects = node.receive(encode_message(VoteMsg(forged)))
        assert [p.fault for p in penalties(effects)] == [PeerFault.INVALID_SIGNATURE]
        assert not [e for e in effects if isinstance(e, StopSigning)]
    genuine = [vote_msg(k, VoteType.PREVOTE, 0, b"", height=2) for k in KEYS if k is not ME]
    for payload in genuine:
        assert node.receive(payload) == []
    # Commit height 1 through a certificate, then the kept votes count at height 2.
    a = block(b"a")
    commit = _certificate(a)
    effects = node.receive(encode_message(DecidedMsg(a, commit)))
    assert Apply(a, commit) in effects
    state2 = _state_after(a)
    effects = node.driver.on_applied(a, state2, node.now)
    machine = node.driver.machine
    assert machine is not None and machine.height == 2
    assert machine.votes.round(0).prevotes.power_for(b"") == 3
    assert set(gossiped(effects)) == set(genuine)


def test_a_false_height_claim_moves_nothing(node: Node) -> None:
    """A peer saying it is a million heights ahead gets a few block requests, never the node:
    the node stays in consensus, and after the requests time out the peer's claim is no
    longer believed (it is not asked again while it keeps claiming)."""
    node.receive(encode_message(SyncStatusMsg(1, 10**6)))
    effects = node.advance(1.0)
    requests = [
        e for e in effects if isinstance(e, Send) and e.channel == BLOCKSYNC and e.peer == PEER
    ]
    assert requests
    assert isinstance(decode_message(requests[0].payload), SyncRequestMsg)
    assert node.driver.mode == "consensus"
    for _ in range(int(REQUEST_TIMEOUT_S) + 5):
        node.receive(encode_message(SyncStatusMsg(1, 10**6)))
        effects = node.advance(1.0)
        assert node.driver.mode == "consensus"
    asks = [e for e in effects if isinstance(e, Send) and e.peer == PEER]
    assert asks == []
    assert node.driver.status().peer_max_height <= STATE.last_height


def test_a_refused_signature_sends_what_was_signed_before(node: Node) -> None:
    """The sign state refuses a conflicting prevote at the step it signed before a restart:
    the driver feeds back and gossips the prevote that was signed then (it is this
    validator's vote for that step), so the round is not left without it."""
    a = block(b"a")
    signed_bytes = vote_sign_bytes(CHAIN, VoteType.PREVOTE, 1, 0, a.hash)
    last = SignedRecord(1, 0, SignStep.PREVOTE, signed_bytes, ME.sign(signed_bytes))
    effects = node.advance(3.5)  # timeout_propose: the machine wants a nil prevote
    request = next(e for e in effects if isinstance(e, Sign))
    assert request.block_hash == b""
    effects = node.driver.on_signed(request, None, last, node.now)
    sent = [decode_message(p) for p in gossiped(effects)]
    assert [m.vote.block_hash for m in sent if isinstance(m, VoteMsg)] == [a.hash]


def test_signing_resumes_with_the_missed_prevote_when_the_watch_ends(tmp_path: Path) -> None:
    """A restarted validator (it signed before) watches; no block commits, so after
    watch_halt_s the watch ends and the prevote of the round it passed without voting is
    asked for at once, instead of never."""
    # It signed before: a proposal at height 1, round 0, say (only the step matters here).
    last = SignedRecord(1, 0, SignStep.PROPOSE, b"", b"")
    node = Node(tmp_path, last_signed=last)
    assert not [e for e in node.effects if isinstance(e, Sign)]
    assert node.driver.status().watch_until_height == 3
    assert not node.driver.status().signing
    effects = node.advance(3.5)  # timeout_propose while watching: no vote
    assert not [e for e in effects if isinstance(e, Sign)]
    effects = node.advance(CONFIG.watch_halt_s)
    assert any(isinstance(e, Log) and "watch" in e.event for e in effects)
    signs = [e for e in effects if isinstance(e, Sign)]
    assert [(s.vote_type, s.round, s.block_hash) for s in signs] == [(VoteType.PREVOTE, 0, b"")]
    assert node.driver.status().signing


def test_a_vote_of_our_key_we_did_not_sign_stops_signing(node: Node) -> None:
    """A validly signed vote with our key above what we signed: another instance runs; this
    node stops signing. A forged one (bad signature) only costs its sender a penalty."""
    index = STATE.validators.index_of(ME.address)
    assert index is not None
    forged = Vote(VoteType.PRECOMMIT, 1, 5, b"", ME.address, index, b"\x02" * 64)
    effects = node.receive(encode_message(VoteMsg(forged)))
    assert penalties(effects) and not [e for e in effects if isinstance(e, StopSigning)]
    effects = node.receive(vote_msg(ME, VoteType.PRECOMMIT, 5, b""))
    assert [e for e in effects if isinstance(e, StopSigning)]
    assert not node.driver.status().signing


def test_late_precommits_complete_the_next_blocks_certificate(tmp_path: Path) -> None:
    """Precommits for the decided block that arrive after the decision go into the last
    commit the next block is built with, so a healthy network's certificates carry every
    signature. (The node here is a full node: all four precommits come from peers.)"""
    node = Node(tmp_path, me=PrivateKey(digest(b"full node")))
    a = block(b"a")
    node.receive(proposal_msg(a))
    node.driver.on_validated(a.hash, True, "", node.now)
    for k in KEYS[:3]:
        node.receive(vote_msg(k, VoteType.PRECOMMIT, 0, a.hash))
    machine = node.driver.machine
    assert machine is not None and machine.decision == a
    node.receive(vote_msg(KEYS[3], VoteType.PRECOMMIT, 0, a.hash))  # late
    state2 = _state_after(a)
    node.driver.on_applied(a, state2, node.now)
    commit = node.driver._last_commit
    assert commit is not None and len(commit.signatures) == 4


def test_status_of_a_peer_behind_is_answered_with_the_decided_block_at_a_bounded_rate(
    node: Node,
) -> None:
    """A peer whose status shows it working on a height we committed is sent that block
    (ServeDecided); asking over and over for different heights is answered at the serving
    rate only."""
    a = block(b"a")
    node.driver.on_applied(a, _state_after(a), node.now)
    served = 0
    for i in range(200):
        effects = node.receive(encode_message(StatusMsg(1, i % 7)))
        served += sum(1 for e in effects if type(e).__name__ == "ServeDecided")
        node.receive(encode_message(StatusMsg(2, 0)))
    assert 1 <= served <= 20


def _certificate(b: Block, height: int = 1) -> Commit:
    sigs = []
    for k in KEYS[:3]:
        index = STATE.validators.index_of(k.address)
        assert index is not None
        sigs.append(
            CommitSig(index, k.sign(vote_sign_bytes(CHAIN, VoteType.PRECOMMIT, height, 0, b.hash)))
        )
    return Commit(height, 0, b.hash, tuple(sorted(sigs, key=lambda s: s.validator_index)))


def _state_after(b: Block) -> ChainState:
    from consensus.sigverify import SignatureVerifier
    from consensus.validation import validate_block

    app = KVStore.from_genesis(GENESIS)
    with SignatureVerifier(threads=0) as verifier:
        checked = validate_block(
            b,
            STATE,
            app,
            verifier,
            now_ms=b.header.time_ms,
        )
    return next_chain_state(STATE, checked)


def test_the_inbox_gives_each_peer_its_share_and_takes_round_robin() -> None:
    """One peer flooding the shell's inbox fills only its own share: another peer's message
    is still accepted, and it is taken before the flooder's backlog."""
    from node.consensus_service import FairInbox

    inbox = FairInbox(per_peer_max=8, per_peer_bytes_max=10_000, total_max=100)
    msg = StatusMsg(1, 0)
    flooder, honest = "f" * 40, "h" * 40
    accepted = sum(inbox.put(flooder, msg, b"x" * 100) for _ in range(50))
    assert accepted == 8
    assert inbox.put(honest, msg, b"y")
    taken = [inbox.take() for _ in range(3)]
    assert [t[0] for t in taken if t is not None] == [flooder, honest, flooder]
    big = FairInbox(per_peer_max=100, per_peer_bytes_max=1_000, total_max=100)
    assert big.put(flooder, msg, b"x" * 900)
    assert not big.put(flooder, msg, b"x" * 200)  # over its byte share
    assert big.put(honest, msg, b"x" * 900)


def test_a_validator_says_why_it_does_not_vote_and_forgeries_cost_the_sender(
    tmp_path: Path,
) -> None:
    """A watching validator announces, signed, that it watches; a peer records it (for the
    doctor); the same statement with a bad signature is the sender's fault."""
    from node.effects import AnnounceVoterState
    from node.messages import VoterStateMsg, voter_state_sign_bytes

    last = SignedRecord(1, 0, SignStep.PROPOSE, b"", b"")
    watcher = Node(tmp_path / "w", last_signed=last)
    effects = watcher.advance(1.0)
    announced = [e for e in effects if isinstance(e, AnnounceVoterState)]
    assert [(a.state, a.until_height) for a in announced] == [(VOTER_WATCHING, 3)]
    peer = Node(tmp_path / "p")
    a = announced[0]
    signed = ME.sign(voter_state_sign_bytes(CHAIN, ME.address, a.height, a.state, a.until_height))
    msg = VoterStateMsg(ME.address, a.height, a.state, a.until_height, signed)
    assert peer.receive(encode_message(msg)) == []
    assert peer.driver.voter_states[ME.address][:2] == (VOTER_WATCHING, 3)
    forged = VoterStateMsg(ME.address, a.height, a.state, a.until_height + 1, signed)
    peer.now += 2.0
    assert penalties(peer.receive(encode_message(forged)))


def test_block_requests_are_served_at_a_rate_and_a_flooder_is_cut_off(node: Node) -> None:
    """A peer asking for stored blocks within the serving rate is served every time; one
    that keeps asking far over it is first left unanswered, then penalised (disconnected)."""
    from node.effects import ServeBlocks

    a = block(b"a")
    node.driver.on_applied(a, _state_after(a), node.now)
    request = encode_message(SyncRequestMsg(1, 1))
    for _ in range(30):  # 6 a second: within the rate
        node.now += 1 / 6
        assert [type(e) for e in node.receive(request)] == [ServeBlocks]
    outcomes = []
    for _ in range(200):  # 200 at once
        effects = node.receive(request, peer="f" * 40)
        outcomes.append(
            "served"
            if effects and isinstance(effects[0], ServeBlocks)
            else "cut"
            if penalties(effects)
            else "unanswered"
        )
    assert "unanswered" in outcomes and "cut" in outcomes
    assert outcomes.index("unanswered") < outcomes.index("cut")


def test_a_penalised_peers_queued_messages_are_dropped() -> None:
    """The shell's inbox forgets what a peer found faulty had queued, and keeps the rest."""
    from node.consensus_service import FairInbox

    inbox = FairInbox()
    msg = StatusMsg(1, 0)
    for _ in range(5):
        inbox.put("bad", msg, b"x" * 10)
    inbox.put("good", msg, b"y")
    inbox.drop_peer("bad")
    assert (inbox.count, inbox.bytes) == (1, 1)
    taken = inbox.take()
    assert taken is not None and taken[0] == "good"
    assert inbox.take() is None
