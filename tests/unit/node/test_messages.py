"""Node channel messages: every kind round-trips; hostile bytes raise only DecodeError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import DecodeError, encode
from consensus.crypto import PrivateKey
from consensus.types import Vote, VoteType
from node.messages import (
    BLOCKS_PER_REQUEST_MAX,
    VOTER_WATCHING,
    Message,
    StatusMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    TxsMsg,
    VoteMsg,
    VoterStateMsg,
    decode_message,
    encode_message,
)

KEY = PrivateKey(b"\x05" * 32)
VOTE = Vote.create(KEY, "c", VoteType.PREVOTE, 3, 0, b"\x01" * 32, 0)

MESSAGES: list[Message] = [
    VoteMsg(VOTE),
    VoterStateMsg(b"\x07" * 20, 9, VOTER_WATCHING, 11, b"\x08" * 64),
    StatusMsg(5, 2),
    SyncStatusMsg(1, 9),
    SyncRequestMsg(4, BLOCKS_PER_REQUEST_MAX),
    SyncNoneMsg(7),
    TxsMsg((b"a", b"bc")),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    """decode(encode(m)) == m for each message kind."""
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize(
    "obj",
    [
        [99, 1],  # unknown tag
        [21, 1, BLOCKS_PER_REQUEST_MAX + 1],  # asks for too many blocks
        [20, 5, 4],  # base above height
        [3, -1, 0],  # negative height
        [2],  # vote without a vote
        [],  # empty
    ],
)
def test_invalid_messages_are_refused(obj: list[object]) -> None:
    """Out-of-range or malformed fields are the typed error."""
    with pytest.raises(DecodeError):
        decode_message(encode(obj))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(raw: bytes) -> None:
    """Arbitrary payloads from a peer never raise anything but DecodeError."""
    try:
        decode_message(raw)
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_messages_raise_only_decode_error(msg: Message, data: st.DataObject) -> None:
    """A valid message with one byte changed decodes to a valid message or the typed error."""
    raw = bytearray(encode_message(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_message(bytes(raw))
    except DecodeError:
        return
    assert encode_message(decoded) == bytes(raw)


def test_stored_bytes_make_the_same_decided_and_sync_block_messages() -> None:
    """A served block is its stored bytes behind a fixed prefix: byte for byte the message
    `encode_message` makes, so a node never decodes or re-encodes what it serves; and a
    proposal's and a vote's message is byte for byte their WAL record."""
    from consensus.events import ProposalReceived, VoteReceived, encode_event
    from consensus.types import Block, Commit, CommitSig, Header, Proposal
    from node.messages import (
        TAG_DECIDED,
        TAG_SYNC_BLOCK,
        DecidedMsg,
        ProposalMsg,
        SyncBlockMsg,
        stored_block_message,
    )

    h32 = b"\x02" * 32
    header = Header("c", 1, 5, b"", b"", h32, h32, h32, h32, h32, h32, b"\x03" * 20)
    block = Block(header, (b"tx",), None, ())
    commit = Commit(1, 0, block.hash, (CommitSig(0, b"\x04" * 64),))
    for tag, msg in (
        (TAG_DECIDED, DecidedMsg(block, commit)),
        (TAG_SYNC_BLOCK, SyncBlockMsg(block, commit)),
    ):
        assert stored_block_message(tag, block.encode(), commit.encode()) == encode_message(msg)
    proposal = Proposal.create(KEY, "c", 1, 0, -1, block.hash)
    assert encode_message(ProposalMsg(proposal, block)) == encode_event(
        ProposalReceived(proposal, block)
    )
    assert encode_message(VoteMsg(VOTE)) == encode_event(VoteReceived(VOTE))


def test_a_proposals_signature_is_read_without_its_block() -> None:
    """`peek_proposal` returns a proposal message's proposal without reading its block (a
    block too large to decode does not matter), and refuses anything that is not one."""
    from consensus.types import Proposal
    from node.messages import peek_proposal

    proposal = Proposal.create(KEY, "c", 3, 1, -1, b"\x09" * 32)
    head = encode_message(VoteMsg(VOTE))  # a different message
    body = encode([1, proposal.to_obj(), [b"\xff" * 70_000]])  # not even a block
    assert peek_proposal(body) == proposal
    for bad in (head, b"", body[:1], b"\x93\x01\x90"):
        with pytest.raises(DecodeError):
            peek_proposal(bad)


def test_block_messages_and_events_splice_the_blocks_own_bytes() -> None:
    """A message or WAL record that carries a block is byte for byte the generic msgpack
    encoding of its fields, though it splices the block's bytes in (made once per block);
    and a decoded block holds the bytes that arrived as its encoding until it lets them go."""
    from consensus.events import (
        BlockBuilt,
        CommitReceived,
        ProposalReceived,
        encode_event,
        event_to_obj,
    )
    from consensus.types import Block, Commit, CommitSig, Header, Proposal
    from node.messages import DecidedMsg, ProposalMsg, SyncBlockMsg, to_obj

    h32 = b"\x02" * 32
    first = Block(
        Header("c", 1, 5, b"", b"", h32, h32, h32, h32, h32, h32, b"\x03" * 20), (b"tx",), None
    )
    commit = Commit(1, 0, first.hash, (CommitSig(0, b"\x04" * 64),))
    header = Header("c", 2, 6, first.hash, commit.hash, h32, h32, h32, h32, h32, h32, b"\x03" * 20)
    second = Block(header, tuple(bytes([i]) * 300 for i in range(20)), commit)
    for block in (first, second):
        proposal = Proposal.create(KEY, "c", block.height, 70_000, -1, block.hash)
        for msg in (
            ProposalMsg(proposal, block),
            DecidedMsg(block, commit),
            SyncBlockMsg(block, commit),
        ):
            data = encode_message(msg)
            assert data == encode(to_obj(msg))
            decoded = decode_message(data)
            assert decoded == msg
            assert isinstance(decoded, ProposalMsg | DecidedMsg | SyncBlockMsg)
            carried = decoded.block
            assert carried.encode() == block.encode() and carried.encode() in data
        for event in (
            ProposalReceived(proposal, block),
            BlockBuilt(block.height, 300, block),
            CommitReceived(block, commit),
        ):
            assert encode_event(event) == encode(event_to_obj(event))
        assert block.encode() is block.encode()  # made once
        arrived = bytes(bytearray(block.encode()))  # another object, equal bytes
        received = Block.decode(arrived)
        assert received.encode() is arrived
        received.release_encoding()  # once stored
        assert received.encode() == arrived and received.encode() is not arrived
