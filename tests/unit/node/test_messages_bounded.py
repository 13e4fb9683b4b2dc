"""Node messages are decoded within the budget of their kind: the largest legal form of each
kind decodes, bombs at the frame limit are refused holding what the schema allows (not what
the sender declared), and the bounded decoder accepts exactly what the old one did."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import DecodeError, encode
from consensus.types import (
    BLOCK_TXS_MAX,
    HEIGHT_MAX,
    ROUND_MAX,
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Header,
    Proposal,
    Vote,
    VoteType,
)
from node.messages import (
    BLOCKS_PER_REQUEST_MAX,
    TAG_DECIDED,
    TAG_EVIDENCE,
    TAG_PROPOSAL,
    TAG_STATUS,
    TAG_SYNC_BLOCK,
    TAG_SYNC_NONE,
    TAG_SYNC_REQUEST,
    TAG_SYNC_STATUS,
    TAG_TXS,
    TAG_VOTE,
    DecidedMsg,
    EvidenceMsg,
    Message,
    ProposalMsg,
    StatusMsg,
    SyncBlockMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    TxsMsg,
    VoteMsg,
    decode_message,
    encode_message,
)
from tests.strategies import mutated

FRAME_BYTES = 16 * 1024 * 1024  # the network's default frame_bytes_max
TAGS = [
    TAG_PROPOSAL,
    TAG_VOTE,
    TAG_STATUS,
    TAG_DECIDED,
    TAG_EVIDENCE,
    TAG_SYNC_STATUS,
    TAG_SYNC_REQUEST,
    TAG_SYNC_BLOCK,
    TAG_SYNC_NONE,
    TAG_TXS,
]

# ---------------------------------------------------------------- the largest legal forms

SIG = b"\xff" * 64
HASH = b"\xee" * 32
VOTE_MAX = Vote(VoteType.PRECOMMIT, HEIGHT_MAX, ROUND_MAX, HASH, b"\xdd" * 20, 999, SIG)
EVIDENCE_MAX = DuplicateVoteEvidence(
    Vote(VoteType.PRECOMMIT, HEIGHT_MAX, ROUND_MAX, b"\x00" * 32, b"\xdd" * 20, 999, SIG),
    Vote(VoteType.PRECOMMIT, HEIGHT_MAX, ROUND_MAX, HASH, b"\xdd" * 20, 999, SIG),
)


@pytest.mark.parametrize(
    "msg",
    [
        VoteMsg(VOTE_MAX),
        StatusMsg(HEIGHT_MAX, ROUND_MAX),
        EvidenceMsg(EVIDENCE_MAX),
        SyncStatusMsg(HEIGHT_MAX, HEIGHT_MAX),
        SyncRequestMsg(HEIGHT_MAX, BLOCKS_PER_REQUEST_MAX),
        SyncNoneMsg(HEIGHT_MAX),
    ],
    ids=lambda m: type(m).__name__,
)
def test_largest_legal_small_message_decodes(msg: Message) -> None:
    """Each small kind's budget admits its largest legal form (every field at its maximum)."""
    assert decode_message(encode_message(msg)) == msg


def test_largest_commit_and_proposal_fit_their_types_limits() -> None:
    """A commit signed by 1,000 validators and a proposal at the top of every range fit."""
    commit = Commit(HEIGHT_MAX, ROUND_MAX, HASH, tuple(CommitSig(i, SIG) for i in range(1000)))
    assert Commit.decode(commit.encode()) == commit
    proposal = Proposal(HEIGHT_MAX, ROUND_MAX, ROUND_MAX - 1, HASH, SIG)
    assert Proposal.decode(proposal.encode()) == proposal


def test_a_vote_sized_budget_applies_to_anything_tagged_vote() -> None:
    """A frame tagged as a vote and longer than a vote's budget is refused by its length alone."""
    data = encode_message(VoteMsg(VOTE_MAX))
    padded = data + b"\x00" * (2 + Vote.BYTES_MAX + 1 - len(data))
    with pytest.raises(DecodeError, match="limit"):
        decode_message(padded)


# ---------------------------------------------------------------- bombs at the frame limit


def _bomb_empty_arrays(tag: int) -> bytes:
    """[tag, [[], [], ...]] filling a frame: 16 million empty arrays."""
    n = FRAME_BYTES - 7
    return bytes([0x92, tag, 0xDD]) + n.to_bytes(4, "big") + b"\x90" * n


def _bomb_declared_lengths(tag: int) -> bytes:
    """[tag, ...] then 1,000 nested array headers each declaring 4 billion items, padded."""
    data = bytes([0x93, tag]) + b"\xdd\xff\xff\xff\xff" * 1000
    return data + b"\x00" * (FRAME_BYTES - len(data))


def _bomb_deep(tag: int) -> bytes:
    """[tag, [[[[...]]]]]: nesting as deep as the frame allows."""
    return bytes([0x92, tag]) + b"\x91" * (FRAME_BYTES - 2)


def _bomb_block_txs(tag: int) -> bytes:
    """A block-carrying message whose block.txs is 200,000 two-byte bins, then padding."""
    header = Header("c", 2, 0, *([b"\x01" * 32] * 7), b"\x02" * 32, b"\x03" * 20).encode()
    first = Proposal(2, 0, -1, b"\x04" * 32, b"\x05" * 64).encode() if tag == TAG_PROPOSAL else b""
    txs = b"\xdd" + (BLOCK_TXS_MAX).to_bytes(4, "big") + b"\xc4\x02xy" * BLOCK_TXS_MAX
    data = bytes([0x93, tag]) + first + b"\x94" + header + txs
    return data + b"\xc0" * (FRAME_BYTES - len(data))


BOMBS = {
    "empty-arrays": _bomb_empty_arrays,
    "declared-lengths": _bomb_declared_lengths,
    "deep": _bomb_deep,
}


def _cost(data: bytes) -> tuple[int, float]:
    """(peak traced bytes, thread CPU seconds) of refusing `data`."""
    tracemalloc.start()
    started = time.thread_time()
    try:
        with pytest.raises(DecodeError):
            decode_message(data)
    finally:
        cpu = time.thread_time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, cpu


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
def test_bomb_at_the_frame_limit_is_refused_cheaply(bomb: str, tag: int) -> None:
    """Each 16 MiB bomb, tagged as each kind, is refused holding < 1 MiB (the old decoder held
    272 MiB for the first, 220 MiB for the second, for over a second) in well under a second."""
    data = BOMBS[bomb](tag)
    assert len(data) == FRAME_BYTES
    peak, cpu = _cost(data)
    assert peak < 1024 * 1024
    assert cpu < 0.5


@pytest.mark.parametrize("tag", [TAG_PROPOSAL, TAG_DECIDED, TAG_SYNC_BLOCK])
def test_many_tiny_transactions_cost_what_their_count_allows(tag: int) -> None:
    """200,000 tiny bins in a block (the count limit) are read, then refused by the padding:
    at most 64 bytes a bin (a small bytes object and its slot), far below the frame's size."""
    data = _bomb_block_txs(tag)
    peak, cpu = _cost(data)
    assert peak < BLOCK_TXS_MAX * 64 + 1024 * 1024
    assert cpu < 0.5


def test_small_kinds_are_refused_before_any_parse() -> None:
    """A frame tagged as a vote, status or sync message is refused by its length: nothing is
    read or built."""
    for tag in (TAG_VOTE, TAG_STATUS, TAG_EVIDENCE, TAG_SYNC_STATUS, TAG_SYNC_REQUEST):
        peak, _ = _cost(_bomb_empty_arrays(tag))
        assert peak < 4 * 1024


# ---------------------------------------------------------------- same acceptance as before

KEY_SIG = st.binary(min_size=64, max_size=64)
hashes = st.binary(min_size=32, max_size=32)
heights = st.integers(1, 2**40)
rounds = st.integers(0, 100)
votes = st.builds(
    Vote,
    type=st.sampled_from(VoteType),
    height=heights,
    round=rounds,
    block_hash=st.one_of(st.just(b""), hashes),
    validator_address=st.binary(min_size=20, max_size=20),
    validator_index=st.integers(0, 999),
    signature=KEY_SIG,
)


@st.composite
def commits(draw: st.DrawFn) -> Commit:
    indexes = sorted(draw(st.sets(st.integers(0, 999), min_size=1, max_size=4)))
    sigs = tuple(CommitSig(i, draw(KEY_SIG)) for i in indexes)
    return Commit(draw(heights), draw(rounds), draw(hashes), sigs)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    height = draw(st.sampled_from([1, 2, 1000]))
    link = b"" if height == 1 else draw(hashes)
    header = Header(
        "chain", height, 5, link, link, *([draw(hashes)] * 3), b"", *([HASH] * 2), b"\x01" * 20
    )
    txs = tuple(draw(st.lists(st.binary(max_size=150), max_size=3)))
    return Block(header, txs, None if height == 1 else draw(commits()), ())


@st.composite
def proposals(draw: st.DrawFn) -> Proposal:
    round_ = draw(rounds)
    return Proposal(
        draw(heights), round_, draw(st.integers(-1, round_ - 1)), draw(hashes), draw(KEY_SIG)
    )


@st.composite
def evidences(draw: st.DrawFn) -> DuplicateVoteEvidence:
    v = draw(votes)
    a = Vote(v.type, v.height, v.round, b"", v.validator_address, v.validator_index, v.signature)
    b = Vote(v.type, v.height, v.round, HASH, v.validator_address, v.validator_index, v.signature)
    return DuplicateVoteEvidence(a, b)


messages = st.one_of(
    st.builds(ProposalMsg, proposals(), blocks()),
    st.builds(VoteMsg, votes),
    st.builds(StatusMsg, st.integers(0, 2**40), rounds),
    st.builds(DecidedMsg, blocks(), commits()),
    st.builds(EvidenceMsg, evidences()),
    st.builds(SyncStatusMsg, st.just(0), st.integers(0, 2**40)),
    st.builds(SyncRequestMsg, heights, st.integers(1, BLOCKS_PER_REQUEST_MAX)),
    st.builds(SyncBlockMsg, blocks(), commits()),
    st.builds(SyncNoneMsg, heights),
    st.builds(TxsMsg, st.lists(st.binary(max_size=100), max_size=4).map(tuple)),
)


def _sub(cls: Any, obj: Any) -> Any:
    """A type decoded from its part of an already canonical message (Reader-based decoders
    accept what the old ones did: tests/unit/consensus/test_types.py)."""
    return cls.decode(encode(obj))


def old_decode_message(data: bytes) -> Message:
    """The message decoder before bounded decoding: the oracle."""
    if len(data) > 16 * 1024 * 1024 + 64 * 1024:
        raise DecodeError("limit")
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=False, max_map_len=0, max_ext_len=0)
    except Exception:
        raise DecodeError("malformed") from None
    if encode(obj) != data or not isinstance(obj, tuple) or not obj:
        raise DecodeError("not canonical")

    def fields(n: int) -> tuple[Any, ...]:
        if len(obj) != n:
            raise DecodeError("shape")
        return obj  # type: ignore[no-any-return]

    def integer(v: Any, lo: int, hi: int) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise DecodeError("int")
        return v

    tag = obj[0]
    if tag == TAG_PROPOSAL:
        f = fields(3)
        return ProposalMsg(_sub(Proposal, f[1]), _sub(Block, f[2]))
    if tag == TAG_VOTE:
        return VoteMsg(_sub(Vote, fields(2)[1]))
    if tag == TAG_STATUS:
        f = fields(3)
        return StatusMsg(integer(f[1], 0, HEIGHT_MAX), integer(f[2], 0, ROUND_MAX))
    if tag in (TAG_DECIDED, TAG_SYNC_BLOCK):
        f = fields(3)
        cls = DecidedMsg if tag == TAG_DECIDED else SyncBlockMsg
        return cls(_sub(Block, f[1]), _sub(Commit, f[2]))
    if tag == TAG_EVIDENCE:
        return EvidenceMsg(_sub(DuplicateVoteEvidence, fields(2)[1]))
    if tag == TAG_SYNC_STATUS:
        f = fields(3)
        base, height = integer(f[1], 0, HEIGHT_MAX), integer(f[2], 0, HEIGHT_MAX)
        if base > height:
            raise DecodeError("base")
        return SyncStatusMsg(base, height)
    if tag == TAG_SYNC_REQUEST:
        f = fields(3)
        return SyncRequestMsg(
            integer(f[1], 1, HEIGHT_MAX), integer(f[2], 1, BLOCKS_PER_REQUEST_MAX)
        )
    if tag == TAG_SYNC_NONE:
        return SyncNoneMsg(integer(fields(2)[1], 1, HEIGHT_MAX))
    if tag == TAG_TXS:
        txs = fields(2)[1]
        if not isinstance(txs, tuple) or len(txs) > 10_000:
            raise DecodeError("txs")
        if any(type(t) is not bytes or len(t) > 33_024 for t in txs):
            raise DecodeError("tx")
        return TxsMsg(txs)
    raise DecodeError("tag")


def _outcome(decoder: Any, data: bytes) -> Any:
    try:
        return decoder(data)
    except DecodeError:
        return DecodeError


@settings(max_examples=600, deadline=None)
@given(messages.map(encode_message).flatmap(lambda d: st.one_of(st.just(d), mutated(d))))
def test_bounded_message_decoder_accepts_what_the_old_one_did(data: bytes) -> None:
    """Valid messages and one-edit mutations: both decoders refuse, or both give equal values."""
    assert _outcome(decode_message, data) == _outcome(old_decode_message, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TAGS), st.binary(max_size=64))
def test_arbitrary_fields_after_a_tag_raise_only_decode_error(tag: int, rest: bytes) -> None:
    """Any bytes after a valid envelope are the typed error or a message that re-encodes to them."""
    for header in (0x92, 0x93):
        data = bytes([header, tag]) + rest
        try:
            msg = decode_message(data)
        except DecodeError:
            continue
        assert encode_message(msg) == data
