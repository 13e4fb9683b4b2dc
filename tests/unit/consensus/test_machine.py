"""Each rule of Algorithm 1 in the consensus state machine, driven event by event.

Four validators of power 1 (f = 1, quorum 3), real Ed25519 signatures. The
machine under test belongs to a validator that is not round 0's proposer
unless a test says otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from apps.kvstore import KVStore, set_tx
from consensus.config import ConsensusConfig
from consensus.crypto import PrivateKey, digest
from consensus.events import (
    Action,
    BlockBuilt,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitReceived,
    Decide,
    Event,
    Fault,
    ProposalReceived,
    ReportEvidence,
    ScheduleTimeout,
    SignProposal,
    SignVote,
    StartHeight,
    Step,
    TimeoutFired,
    ValidateBlock,
    VoteReceived,
    decode_event,
    encode_event,
)
from consensus.genesis import Genesis, GenesisValidator
from consensus.machine import ConsensusMachine
from consensus.proposer import ProposerSchedule
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.types import Block, Commit, CommitSig, Proposal, Vote, VoteType
from consensus.validation import (
    BlockInvalid,
    Reason,
    build_block,
    next_chain_state,
    validate_block,
)

CHAIN = "machine-test"
KEYS = [PrivateKey(digest(b"machine-key-%d" % i)) for i in range(4)]
GENESIS = Genesis(
    CHAIN,
    0,
    tuple(GenesisValidator(f"v{i}", k.public_key, 1) for i, k in enumerate(KEYS)),
    "kvstore",
    {},
)
VALIDATORS = GENESIS.validator_set
SCHEDULE = ProposerSchedule.initial(VALIDATORS)
# The chain before height 1 (the kvstore app's genesis hash is only a header field here).
STATE = ChainState.from_genesis(GENESIS, KVStore.from_genesis(GENESIS).app_hash)
KEY_OF = {k.address: k for k in KEYS}
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
DEFAULT_CONFIG = ConsensusConfig()


def proposer_key(round: int, schedule: ProposerSchedule = SCHEDULE) -> PrivateKey:
    return KEY_OF[schedule.proposer(round).address]


def non_proposer_key(rounds: range) -> PrivateKey:
    proposers = {SCHEDULE.proposer(r).address for r in rounds}
    return next(k for k in KEYS if k.address not in proposers)


def make_block(tag: bytes) -> Block:
    """A height-1 block built by the proposer of round 0; `tag` makes it distinct.

    The machine never looks inside a block (validity is the node's verdict,
    fed back as BlockValidated), so the tag need not be a real transaction.
    """
    builder = SCHEDULE.proposer(0).address
    return build_block(STATE, [tag], time_ms=1000, proposer_address=builder, last_commit=None)


def proposal(round: int, block: Block, pol_round: int = -1, key: Any = None) -> ProposalReceived:
    signer = key or proposer_key(round)
    p = Proposal.create(signer, CHAIN, block.height, round, pol_round, block.hash)
    return ProposalReceived(p, block)


def vote(
    key: PrivateKey, vote_type: VoteType, round: int, block_hash: bytes, height: int = 1
) -> VoteReceived:
    index = VALIDATORS.index_of(key.address)
    assert index is not None
    return VoteReceived(Vote.create(key, CHAIN, vote_type, height, round, block_hash, index))


def others(me: PrivateKey) -> list[PrivateKey]:
    return [k for k in KEYS if k != me]


class Harness:
    def __init__(self, me: PrivateKey, config: ConsensusConfig = DEFAULT_CONFIG) -> None:
        self.me = me
        self.machine = ConsensusMachine(
            chain_id=CHAIN,
            height=1,
            validators=VALIDATORS,
            schedule=SCHEDULE,
            own_address=me.address,
            config=config,
        )
        self.log: list[Any] = []

    def feed(self, event: Any) -> list[Action]:
        self.log.append(event)
        return self.machine.step(event)

    def start(self) -> list[Action]:
        return self.feed(StartHeight(1))

    def valid_proposal(self, round: int, block: Block, pol_round: int = -1) -> list[Action]:
        actions = self.feed(proposal(round, block, pol_round))
        return actions + self.feed(BlockValidated(block.hash, True))

    def votes(
        self, keys: list[PrivateKey], vote_type: VoteType, round: int, h: bytes
    ) -> list[Action]:
        actions: list[Action] = []
        for k in keys:
            actions += self.feed(vote(k, vote_type, round, h))
        return actions


def sign_votes(actions: list[Action]) -> list[SignVote]:
    return [a for a in actions if isinstance(a, SignVote)]


def timeouts(actions: list[Action]) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout)]


A = make_block(b"block-a")
B = make_block(b"block-b")


def test_start_schedules_propose_timeout_and_proposer_builds() -> None:
    """Lines 11-21: others schedule timeout_propose; the proposer asks for a block, signs it."""
    h = Harness(non_proposer_key(range(1)))
    actions = h.start()
    assert timeouts(actions) == [ScheduleTimeout(1, 0, Step.PROPOSE, 3000)]
    assert not [a for a in actions if isinstance(a, BuildBlock)]

    p = Harness(proposer_key(0))
    actions = p.start()
    assert BuildBlock(1, 0) in actions
    actions = p.feed(BlockBuilt(1, 0, A))
    assert actions == [SignProposal(1, 0, -1, A)]
    assert p.feed(BlockBuilt(1, 0, B)) == []  # only one proposal per round


def test_prevote_waits_for_validation_then_votes_for_valid_block() -> None:
    """Lines 22-27: the proposal is prevoted only after the node reports the block valid."""
    h = Harness(non_proposer_key(range(1)))
    h.start()
    actions = h.feed(proposal(0, A))
    assert ValidateBlock(A) in actions
    assert sign_votes(actions) == []
    actions = h.feed(BlockValidated(A.hash, True))
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 0, A.hash)]
    assert h.machine.current_step == Step.PREVOTE


def test_invalid_block_gets_nil_prevote() -> None:
    """Lines 22-27: valid(v) false means prevote nil."""
    h = Harness(non_proposer_key(range(1)))
    h.start()
    h.feed(proposal(0, A))
    actions = h.feed(BlockValidated(A.hash, False, "bad app hash"))
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 0, b"")]


def test_timeout_propose_prevotes_nil() -> None:
    """Lines 57-60: no proposal by timeout_propose: prevote nil; a stale timeout does nothing."""
    h = Harness(non_proposer_key(range(1)))
    h.start()
    assert h.feed(TimeoutFired(1, 5, Step.PROPOSE)) == []
    actions = h.feed(TimeoutFired(1, 0, Step.PROPOSE))
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 0, b"")]
    assert h.feed(TimeoutFired(1, 0, Step.PROPOSE)) == []


def test_polka_locks_and_precommits_and_sets_valid_value() -> None:
    """Lines 36-43: proposal plus 2f+1 prevotes for it: lock, precommit, set valid value."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    h.valid_proposal(0, A)
    actions = h.votes(others(me)[:2], PREVOTE, 0, A.hash)
    assert sign_votes(actions) == []  # two others plus nobody: no polka yet (own vote not fed)
    actions = h.feed(vote(me, PREVOTE, 0, A.hash))
    assert sign_votes(actions) == [SignVote(PRECOMMIT, 1, 0, A.hash)]
    s = h.machine.state()
    assert (s.locked_round, s.locked_hash, s.valid_round, s.valid_hash) == (0, A.hash, 0, A.hash)


def test_own_vote_fed_back_is_broadcast_once() -> None:
    """A node's own signed vote, fed back (even twice, as after a replay), is broadcast once."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    own = vote(me, PREVOTE, 0, b"")
    assert h.feed(own) == [Broadcast(own)]
    assert h.feed(own) == []


def lock_on_a_in_round_0(me: PrivateKey) -> Harness:
    h = Harness(me)
    h.start()
    h.valid_proposal(0, A)
    h.votes([me, *others(me)[:2]], PREVOTE, 0, A.hash)
    assert h.machine.locked_round == 0
    # Round 0 ends without a decision: 2f+1 nil precommits from others, then timeout_precommit.
    h.votes(others(me), PRECOMMIT, 0, b"")
    h.feed(TimeoutFired(1, 0, Step.PRECOMMIT))
    assert h.machine.round == 1
    return h


def test_locked_validator_prevotes_nil_for_another_block() -> None:
    """Lines 22-27: locked on A, a fresh proposal of B in a later round gets a nil prevote."""
    me = non_proposer_key(range(2))
    h = lock_on_a_in_round_0(me)
    actions = h.valid_proposal(1, B)
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 1, b"")]


def test_locked_validator_prevotes_for_its_locked_block() -> None:
    """Lines 22-27: lockedValue = v allows the prevote even with locked_round > -1."""
    me = non_proposer_key(range(2))
    h = lock_on_a_in_round_0(me)
    actions = h.valid_proposal(1, A)
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 1, A.hash)]


def test_higher_polka_unlocks() -> None:
    """Lines 28-33: B re-proposed with vr >= lockedRound and a polka in vr gets our prevote."""
    me = non_proposer_key(range(3))
    h = lock_on_a_in_round_0(me)
    # Round 1: others see a polka for B (we were too slow); round 1 ends.
    h.votes(others(me), PREVOTE, 1, B.hash)
    h.feed(TimeoutFired(1, 1, Step.PROPOSE))
    h.votes(others(me), PRECOMMIT, 1, b"")
    h.feed(TimeoutFired(1, 1, Step.PRECOMMIT))
    assert h.machine.round == 2 and h.machine.locked_round == 0
    actions = h.valid_proposal(2, B, pol_round=1)
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 2, B.hash)]


def test_re_proposal_without_polka_waits_then_times_out() -> None:
    """Lines 28-33 need the polka in vr; without it the machine waits for timeout_propose."""
    me = non_proposer_key(range(3))
    h = lock_on_a_in_round_0(me)
    h.feed(TimeoutFired(1, 1, Step.PROPOSE))
    h.votes(others(me), PRECOMMIT, 1, b"")
    h.feed(TimeoutFired(1, 1, Step.PRECOMMIT))
    assert sign_votes(h.valid_proposal(2, B, pol_round=1)) == []
    assert sign_votes(h.feed(TimeoutFired(1, 2, Step.PROPOSE))) == [SignVote(PREVOTE, 1, 2, b"")]


def test_proposer_re_proposes_valid_value() -> None:
    """Lines 14-16: a proposer holding a valid value proposes it with validRound as pol_round."""
    me = proposer_key(1)
    assert me != proposer_key(0)
    h2 = Harness(me)
    h2.start()
    h2.valid_proposal(0, A)
    h2.votes([me, *others(me)[:2]], PREVOTE, 0, A.hash)
    h2.votes(others(me), PRECOMMIT, 0, b"")
    actions = h2.feed(TimeoutFired(1, 0, Step.PRECOMMIT))
    assert SignProposal(1, 1, 0, A) in actions
    assert not [a for a in actions if isinstance(a, BuildBlock)]


def test_nil_polka_precommits_nil() -> None:
    """Lines 44-46: 2f+1 nil prevotes: precommit nil."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    h.feed(TimeoutFired(1, 0, Step.PROPOSE))
    actions = h.votes(others(me), PREVOTE, 0, b"")
    assert sign_votes(actions) == [SignVote(PRECOMMIT, 1, 0, b"")]


def test_mixed_prevotes_schedule_timeout_prevote_once_then_precommit_nil() -> None:
    """Lines 34-35, 61-64: 2f+1 prevotes of any kind: timeout_prevote once, then precommit nil."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    h.valid_proposal(0, A)
    o = others(me)
    actions = h.feed(vote(o[0], PREVOTE, 0, b""))
    actions += h.feed(vote(o[1], PREVOTE, 0, B.hash))
    assert timeouts(actions) == []
    actions = h.feed(vote(me, PREVOTE, 0, A.hash))
    assert timeouts(actions) == [ScheduleTimeout(1, 0, Step.PREVOTE, 1000)]
    assert timeouts(h.feed(vote(o[2], PREVOTE, 0, b""))) == []
    actions = h.feed(TimeoutFired(1, 0, Step.PREVOTE))
    assert sign_votes(actions) == [SignVote(PRECOMMIT, 1, 0, b"")]


def test_precommits_of_any_kind_schedule_timeout_precommit_then_next_round() -> None:
    """Lines 47-48 and 65-67: 2f+1 precommits of any kind: timeout_precommit; on it, round + 1."""
    me = non_proposer_key(range(2))
    h = Harness(me)
    h.start()
    o = others(me)
    actions = h.feed(vote(o[0], PRECOMMIT, 0, b""))
    actions += h.feed(vote(o[1], PRECOMMIT, 0, A.hash))
    assert timeouts(actions) == []
    actions = h.feed(vote(o[2], PRECOMMIT, 0, b""))
    assert timeouts(actions) == [ScheduleTimeout(1, 0, Step.PRECOMMIT, 1000)]
    actions = h.feed(TimeoutFired(1, 0, Step.PRECOMMIT))
    assert h.machine.round == 1 and h.machine.current_step == Step.PROPOSE
    assert ScheduleTimeout(1, 1, Step.PROPOSE, 3500) in actions


def test_round_skip_on_f_plus_1_messages_of_higher_round() -> None:
    """Lines 55-56: one validator in round 3 is not enough; f+1 (two of four) moves us there."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    o = others(me)
    h.feed(vote(o[0], PREVOTE, 3, b""))
    assert h.machine.round == 0
    actions = h.feed(vote(o[1], PRECOMMIT, 3, b""))
    assert h.machine.round == 3
    assert ScheduleTimeout(1, 3, Step.PROPOSE, 4500) in actions


def test_decide_on_precommits_of_an_earlier_round() -> None:
    """Lines 49-54: proposal and 2f+1 precommits in an earlier round decide, with their Commit."""
    me = non_proposer_key(range(1))
    o = others(me)
    h2 = Harness(me)  # hears the round 0 precommits for A only once in round 1
    h2.start()
    h2.valid_proposal(0, A)
    h2.feed(TimeoutFired(1, 0, Step.PROPOSE))
    h2.votes(o, PREVOTE, 1, b"")  # f+1 in round 1: skip there
    assert h2.machine.round == 1
    actions = h2.votes(o, PRECOMMIT, 0, A.hash)
    decides = [a for a in actions if isinstance(a, Decide)]
    assert len(decides) == 1
    commit = decides[0].commit
    assert (commit.height, commit.round, commit.block_hash) == (1, 0, A.hash)
    assert commit.verify(CHAIN, VALIDATORS) is None
    assert h2.machine.current_step == Step.COMMIT


def test_decide_in_a_later_round_than_ours() -> None:
    """Lines 49-56: precommits for A in round 2 move us to round 2 and decide A there."""
    me = non_proposer_key(range(3))
    h = Harness(me)
    h.start()
    block = make_block(b"round-2")
    h.feed(proposal(2, block))
    h.feed(BlockValidated(block.hash, True))
    actions = h.votes(others(me), PRECOMMIT, 2, block.hash)
    decides = [a for a in actions if isinstance(a, Decide)]
    assert [d.commit.round for d in decides] == [2]


def test_no_decision_without_validation() -> None:
    """Line 49's valid(v): precommits for a block not yet reported valid do not decide."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    h.feed(proposal(0, A))
    actions = h.votes(others(me), PRECOMMIT, 0, A.hash)
    assert not [a for a in actions if isinstance(a, Decide)]
    actions = h.feed(BlockValidated(A.hash, True))
    assert [a for a in actions if isinstance(a, Decide)]


def test_equivocation_reported_once_in_canonical_order_and_counted_once() -> None:
    """Two prevotes by one validator for different blocks: verified evidence; power counts once."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    bad = others(me)[0]
    h.feed(vote(bad, PREVOTE, 0, A.hash))
    actions = h.feed(vote(bad, PREVOTE, 0, B.hash))
    evidence = [a.evidence for a in actions if isinstance(a, ReportEvidence)]
    assert len(evidence) == 1
    ev = evidence[0]
    assert ev.vote_a.block_hash < ev.vote_b.block_hash
    assert ev.verify(CHAIN, VALIDATORS) is None
    assert h.machine.votes.round(0).prevotes.power_for(B.hash) == 0  # B is not held: dropped
    third = h.feed(vote(bad, PREVOTE, 0, b""))
    assert not [a for a in third if isinstance(a, ReportEvidence)]  # reported once
    prevotes = h.machine.votes.round(0).prevotes
    assert prevotes.power_any == 1 and prevotes.power_for(b"") == 1


def test_equivocators_vote_for_a_held_block_counts_toward_its_polka() -> None:
    """As the paper counts: an equivocator's relayed vote for the proposal completes the polka."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    h.valid_proposal(0, A)
    bad, honest = others(me)[0], others(me)[1]
    h.feed(vote(bad, PREVOTE, 0, b""))  # what the equivocator sent us directly
    h.feed(vote(honest, PREVOTE, 0, A.hash))
    actions = h.feed(vote(me, PREVOTE, 0, A.hash))
    assert sign_votes(actions) == []
    actions = h.feed(vote(bad, PREVOTE, 0, A.hash))  # relayed by a peer that got this one
    assert [a for a in actions if isinstance(a, ReportEvidence)]
    assert sign_votes(actions) == [SignVote(PRECOMMIT, 1, 0, A.hash)]
    assert h.machine.votes.round(0).prevotes.power_any == 3


def test_bad_signatures_and_wrong_proposer_are_refused_as_faults() -> None:
    """`screen` names a forged vote and a proposal by a non-proposer as the sender's fault, and
    stepping them changes nothing (a forged vote would have made f+1 in round 1)."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    o = others(me)
    good = vote(o[0], PREVOTE, 1, b"")
    index = VALIDATORS.index_of(o[1].address)
    assert index is not None
    # o[1]'s vote carrying o[0]'s signature.
    forged = VoteReceived(Vote(PREVOTE, 1, 1, b"", o[1].address, index, good.vote.signature))
    assert h.machine.screen(good) is True
    h.feed(good)
    assert h.machine.screen(good) is False  # a duplicate now
    assert h.machine.screen(forged) is Fault.BAD_SIGNATURE
    assert h.feed(forged) == []
    assert h.machine.round == 0
    wrong = next(k for k in KEYS if k.address != SCHEDULE.proposer(0).address)
    assert h.machine.screen(proposal(0, A, key=wrong)) is Fault.BAD_SIGNATURE
    assert h.feed(proposal(0, A, key=wrong)) == []
    assert h.machine.proposals == {}


def test_a_body_that_is_not_the_headers_is_the_senders_fault() -> None:
    """A validly signed proposal whose block carries other transactions than its header names
    (a relayer swapped the body) is refused as BLOCK_MISMATCH and does not take the round's
    proposal slot: the genuine proposal is still accepted afterwards."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    genuine = proposal(0, A)
    swapped = ProposalReceived(genuine.proposal, Block(A.header, (b"other",), None, ()))
    assert swapped.block.hash == A.hash  # the header, hence the hash, is the genuine one
    assert h.machine.screen(swapped) is Fault.BLOCK_MISMATCH
    assert h.feed(swapped) == []
    assert h.machine.screen(genuine) is True
    actions = h.feed(genuine)
    assert ValidateBlock(A) in actions


def test_a_block_built_by_no_proposer_of_its_rounds_is_refused() -> None:
    """A validly signed proposal whose header names as its builder a validator that was
    not the proposer of any round up to the proposal's round is WRONG_BUILDER and does not
    take the round's slot; the proposer of round 0 may build a block proposed in round 1."""
    me = non_proposer_key(range(2))
    h = Harness(me)
    h.start()
    outsider = next(
        k.address for k in KEYS if k.address not in {SCHEDULE.proposer(r).address for r in (0, 1)}
    )
    forged = build_block(STATE, [b"x"], time_ms=1000, proposer_address=outsider, last_commit=None)
    assert h.machine.screen(proposal(0, forged)) is Fault.WRONG_BUILDER
    assert h.feed(proposal(0, forged)) == []
    assert h.machine.screen(proposal(0, A)) is True
    assert h.machine.screen(proposal(1, A)) is True  # built by round 0's proposer


def test_unknown_validator_is_a_fault_and_other_heights_are_ignored() -> None:
    """A vote naming no validator of the height is refused as a fault; votes for other heights
    are simply not this machine's business."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.start()
    stranger = PrivateKey(digest(b"stranger"))
    v = VoteReceived(Vote.create(stranger, CHAIN, PREVOTE, 1, 1, b"", 0))
    assert h.machine.screen(v) is Fault.NOT_A_VALIDATOR
    assert h.feed(v) == []
    other_height = vote(others(me)[0], PREVOTE, 1, b"", height=5)
    assert h.machine.screen(other_height) is False
    assert h.feed(other_height) == []
    assert h.machine.votes.rounds == {}


def test_start_signing_casts_the_votes_of_the_current_round_it_skipped() -> None:
    """A validator that watched (not signing) through propose and prevote casts, when signing
    starts, the prevote the rules chose and, with the polka, the precommit: the steps it passed
    are performed, so a round short of its vote is not left waiting."""
    me = non_proposer_key(range(1))
    h = Harness(me)
    h.machine.own_address = None
    h.start()
    h.valid_proposal(0, A)
    h.votes(others(me)[:2], PREVOTE, 0, A.hash)
    assert h.machine.current_step == Step.PREVOTE and h.machine.locked_round == -1
    actions = h.machine.start_signing(me.address)
    assert sign_votes(actions) == [SignVote(PREVOTE, 1, 0, A.hash)]
    actions = h.feed(vote(me, PREVOTE, 0, A.hash))  # our own, fed back: the polka
    assert sign_votes(actions) == [SignVote(PRECOMMIT, 1, 0, A.hash)]


def test_start_signing_in_the_propose_step_makes_the_proposer_propose() -> None:
    """A proposer that starts signing while its round is still at propose asks for a block."""
    me = proposer_key(0)
    h = Harness(me)
    h.machine.own_address = None
    actions = h.start()
    assert not [a for a in actions if isinstance(a, BuildBlock)]
    actions = h.machine.start_signing(me.address)
    assert BuildBlock(1, 0) in actions


def decided_harness(me: PrivateKey) -> tuple[Harness, Decide]:
    h = Harness(me, ConsensusConfig(skip_timeout_commit=False))
    h.start()
    h.valid_proposal(0, A)
    actions = h.votes(others(me), PRECOMMIT, 0, A.hash)
    return h, next(a for a in actions if isinstance(a, Decide))


def test_commit_received_decides_only_with_a_valid_certificate() -> None:
    """Catch-up: a verified commit certificate decides; one with too little power does not."""
    me = non_proposer_key(range(1))
    _, decided = decided_harness(me)
    h = Harness(me)
    h.start()
    weak = Commit(1, 0, A.hash, decided.commit.signatures[:2])
    assert h.machine.screen(CommitReceived(A, weak)) is Fault.INVALID_COMMIT
    assert h.feed(CommitReceived(A, weak)) == []
    actions = h.feed(CommitReceived(A, decided.commit))
    assert actions == [Decide(A, decided.commit)]


def test_replay_rebuilds_state_and_returns_current_height_actions() -> None:
    """Replaying the logged events (after an encode/decode round trip) gives the same state."""
    me = proposer_key(1)
    h = Harness(me)
    h.start()
    h.valid_proposal(0, A)
    h.votes([me, *others(me)[:2]], PREVOTE, 0, A.hash)
    h.votes(others(me), PRECOMMIT, 0, b"")
    h.feed(TimeoutFired(1, 0, Step.PRECOMMIT))
    wal = [encode_event(e) for e in h.log]
    fresh = ConsensusMachine(
        chain_id=CHAIN, height=1, validators=VALIDATORS, schedule=SCHEDULE, own_address=me.address
    )
    again = fresh.replay(decode_event(b) for b in wal)
    assert fresh.state() == h.machine.state()
    assert SignProposal(1, 1, 0, A) in again
    assert all(not isinstance(a, SignVote) or a.height == 1 for a in again)


def test_events_round_trip_through_canonical_encoding() -> None:
    """Every event kind encodes and decodes to an equal value."""
    commit = Commit(1, 0, A.hash, (CommitSig(0, b"\x01" * 64),))
    events: list[Event] = [
        proposal(0, A),
        vote(KEYS[0], PRECOMMIT, 2, A.hash),
        TimeoutFired(3, 4, Step.PREVOTE),
        BlockValidated(A.hash, False, "why"),
        BlockBuilt(1, 2, B),
        CommitReceived(A, commit),
        StartHeight(9),
    ]
    for e in events:
        assert decode_event(encode_event(e)) == e


def test_decided_certificate_links_the_next_block_in_the_validation_core() -> None:
    """The machine's Decide certificate, carried by the next block, passes validate_block.

    Height 1 is built and checked by the validation core with a real kvstore
    transaction, decided by the machine, applied, and height 2 is built on the
    resulting ChainState with the machine's Commit as last_commit: it validates,
    and the same block
    with a certificate cut below 2f+1 is rejected.
    """
    me = non_proposer_key(range(1))
    app = KVStore.from_genesis(GENESIS)
    tx = set_tx(PrivateKey(digest(b"client")), CHAIN, 0, b"k", b"v").encode()
    proposer = proposer_key(0).address
    block1 = build_block(STATE, [tx], time_ms=1000, proposer_address=proposer, last_commit=None)
    with SignatureVerifier(threads=0) as verifier:
        checked = validate_block(block1, STATE, app, verifier, now_ms=1000)
        h = Harness(me)
        h.start()
        h.valid_proposal(0, block1)
        actions = h.votes(others(me), PRECOMMIT, 0, block1.hash)
        commit = next(a for a in actions if isinstance(a, Decide)).commit
        app.commit(checked.execution)
        state2 = next_chain_state(STATE, checked)
        proposer2 = state2.schedule.proposer(0).address
        block2 = build_block(
            state2, [], time_ms=2000, proposer_address=proposer2, last_commit=commit
        )
        validated = validate_block(block2, state2, app, verifier, now_ms=2000)
        assert validated.block_hash == block2.hash
        weak = Commit(1, commit.round, commit.block_hash, commit.signatures[:2])
        cut = build_block(state2, [], time_ms=2000, proposer_address=proposer2, last_commit=weak)
        with pytest.raises(BlockInvalid) as info:
            validate_block(cut, state2, app, verifier, now_ms=2000)
        assert info.value.reason is Reason.LAST_COMMIT_NO_QUORUM
