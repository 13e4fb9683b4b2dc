"""The messages the node sends over the network's channels, and their decoding.

Each payload is a canonical msgpack array whose first element is a small
integer tag. Decoding happens here, at the edge: anything malformed raises
`DecodeError` and the caller reports the peer as misbehaving; the consensus
core only ever sees well-formed typed values. docs/PROTOCOL.md, section
"Node messages", describes the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.codec import DecodeError, Reader, decode_with, encode
from consensus.crypto import ADDRESS_BYTES, SIGNATURE_BYTES
from consensus.events import (
    TAG_PROPOSAL_RECEIVED,
    TAG_VOTE_RECEIVED,
    ProposalReceived,
    VoteReceived,
    event_to_obj,
    read_event_fields,
)
from consensus.types import (
    BLOCK_BYTES_MAX,
    HEIGHT_MAX,
    ROUND_MAX,
    SMALL_FIELD_BYTES_MAX,
    TX_BYTES_MAX,
    Block,
    Commit,
    Evidence,
    LightClientAttackEvidence,
    Proposal,
    Vote,
    read_evidence,
)

# Proposals, decided and sync blocks carry a whole block; the rest are small.
MESSAGE_BYTES_MAX = BLOCK_BYTES_MAX + 128 * 1024
# Transactions gossiped in one mempool message (the sender batches up to its limits).
TX_BATCH_TXS_MAX = 10_000
# Blocks a peer may ask for in one request, and we answer with at most.
BLOCKS_PER_REQUEST_MAX = 16

# Consensus channel. A proposal and a vote are sent as the WAL records them:
# the layout is consensus/events.py's, written there once.
TAG_PROPOSAL = TAG_PROPOSAL_RECEIVED
TAG_VOTE = TAG_VOTE_RECEIVED
TAG_STATUS = 3
TAG_DECIDED = 4
TAG_VOTER_STATE = 5
# Evidence channel
TAG_EVIDENCE = 10
# Block sync channel
TAG_SYNC_STATUS = 20
TAG_SYNC_REQUEST = 21
TAG_SYNC_BLOCK = 22
TAG_SYNC_NONE = 23
# Mempool channel
TAG_TXS = 30


# The consensus events themselves: a decoded proposal or vote is stepped as it is.
ProposalMsg = ProposalReceived
VoteMsg = VoteReceived


@dataclass(frozen=True, slots=True)
class StatusMsg:
    """Where a peer's consensus is: lets others send it what it is missing."""

    height: int
    round: int


# Why a validator does not vote now, as it says itself (signed with its validator key).
VOTER_WATCHING = 1  # watching for another instance of its key, until `until_height`
VOTER_CATCHING_UP = 2  # behind, applying blocks by block sync
VOTER_NOT_SIGNING = 3  # stopped signing (another instance seen, or its sign state failed)
VOTER_STATE_TAG = "archipelago/voter-state/v1"


@dataclass(frozen=True, slots=True)
class VoterStateMsg:
    """A validator that is up but does not vote says why, so others do not call it silent.

    Signed with its validator key over `voter_state_sign_bytes` (a domain of
    its own, never a vote's); for display only (/status, doctor): it changes
    nothing in consensus.
    """

    validator_address: bytes
    height: int  # the height the sender is at
    state: int  # VOTER_WATCHING, VOTER_CATCHING_UP or VOTER_NOT_SIGNING
    until_height: int  # the watch's last height (0 when not watching)
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return voter_state_sign_bytes(
            chain_id, self.validator_address, self.height, self.state, self.until_height
        )


def voter_state_sign_bytes(
    chain_id: str, address: bytes, height: int, state: int, until_height: int
) -> bytes:
    return encode([VOTER_STATE_TAG, chain_id, address, height, state, until_height])


@dataclass(frozen=True, slots=True)
class DecidedMsg:
    """A committed block with its certificate, for a peer that is one height behind."""

    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class EvidenceMsg:
    """Evidence of either kind; its array's length tells which (docs/PROTOCOL.md section 10)."""

    evidence: Evidence


@dataclass(frozen=True, slots=True)
class SyncStatusMsg:
    """The range of committed blocks a peer can serve."""

    base: int
    height: int


@dataclass(frozen=True, slots=True)
class SyncRequestMsg:
    height: int
    count: int


@dataclass(frozen=True, slots=True)
class SyncBlockMsg:
    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class SyncNoneMsg:
    height: int


@dataclass(frozen=True, slots=True)
class TxsMsg:
    txs: tuple[bytes, ...]


Message = (
    ProposalMsg
    | VoteMsg
    | StatusMsg
    | VoterStateMsg
    | DecidedMsg
    | EvidenceMsg
    | SyncStatusMsg
    | SyncRequestMsg
    | SyncBlockMsg
    | SyncNoneMsg
    | TxsMsg
)


def to_obj(msg: Message) -> list[Any]:
    match msg:
        case ProposalReceived() | VoteReceived():
            return event_to_obj(msg)
        case StatusMsg(h, r):
            return [TAG_STATUS, h, r]
        case VoterStateMsg(address, h, state, until, signature):
            return [TAG_VOTER_STATE, address, h, state, until, signature]
        case DecidedMsg(b, c):
            return [TAG_DECIDED, b.to_obj(), c.to_obj()]
        case EvidenceMsg(e):
            return [TAG_EVIDENCE, e.to_obj()]
        case SyncStatusMsg(base, h):
            return [TAG_SYNC_STATUS, base, h]
        case SyncRequestMsg(h, n):
            return [TAG_SYNC_REQUEST, h, n]
        case SyncBlockMsg(b, c):
            return [TAG_SYNC_BLOCK, b.to_obj(), c.to_obj()]
        case SyncNoneMsg(h):
            return [TAG_SYNC_NONE, h]
        case TxsMsg(txs):
            return [TAG_TXS, list(txs)]
    raise AssertionError(f"not a message: {msg!r}")


def encode_message(msg: Message) -> bytes:
    """The canonical encoding; a carried block's own bytes are spliced in, not made again.

    An array of up to 15 fields is a fixarray header followed by each field's
    encoding, and every tag is a positive fixint, so splicing gives exactly
    `encode(to_obj(msg))` (a test pins this).
    """
    match msg:
        case ProposalMsg(p, b):
            return _fixarray(3, TAG_PROPOSAL) + p.encode() + b.encode()
        case DecidedMsg(b, c):
            return _fixarray(3, TAG_DECIDED) + b.encode() + c.encode()
        case SyncBlockMsg(b, c):
            return _fixarray(3, TAG_SYNC_BLOCK) + b.encode() + c.encode()
    return encode(to_obj(msg))


def _fixarray(fields: int, tag: int) -> bytes:
    return bytes((_FIXARRAY | fields, tag))


def stored_block_message(tag: int, block_bytes: bytes, commit_bytes: bytes) -> bytes:
    """A decided or sync_block message from a stored block and certificate, as stored.

    The message is the array [tag, block, commit]; the canonical encodings of
    the two are their stored bytes, so they are copied, never decoded and
    encoded again (a test pins this against `encode_message`).
    """
    assert tag in (TAG_DECIDED, TAG_SYNC_BLOCK)
    return _fixarray(3, tag) + block_bytes + commit_bytes


def decode_message(data: bytes) -> Message:
    """Parse one node message; raises DecodeError for anything malformed.

    A canonical message starts with a fixarray header and its tag (every tag
    is a positive fixint), so the first two bytes give the kind before
    anything is parsed: the input's length is checked against the largest
    legal message of that kind, and then exactly that kind's fields are
    read. Anything tagged as a vote gets a vote's budget.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("message: expected bytes")
    if len(data) < 2:
        raise DecodeError("message: truncated")
    kind = _KINDS.get(data[1])
    if kind is None:
        raise DecodeError(f"message: unknown tag {data[1]}")
    fields, bytes_max, field_bytes_max = kind
    if data[0] != _FIXARRAY | fields:
        raise DecodeError(f"message {data[1]}: expected an array of {fields} fields")
    if len(data) > bytes_max:
        raise DecodeError(f"message {data[1]}: {len(data)} bytes, limit {bytes_max}")
    return decode_with(
        data,
        _read_message,
        encode_message,
        bytes_max=bytes_max,
        field_bytes_max=field_bytes_max,
    )


def peek_proposal(data: bytes) -> Proposal:
    """The proposal of a proposal message, read without its block (DecodeError if malformed).

    A node checks the proposer's signature on it before it spends anything on
    the block: a forged proposal then costs its sender a few hundred bytes read.
    The full message is decoded (and its canonical form checked) afterwards.
    """
    if len(data) < 2 or data[0] != _FIXARRAY | 3 or data[1] != TAG_PROPOSAL:
        raise DecodeError("not a proposal message")
    r = Reader(data, field_bytes_max=SMALL_FIELD_BYTES_MAX)
    r.array("message", length=3)
    r.integer("message.tag", TAG_PROPOSAL, TAG_PROPOSAL)
    return Proposal.read(r)


def _read_message(r: Reader) -> Message:
    """The message's fields, after decode_message checked its header and tag bytes."""
    n = r.array("message", count_max=6)
    tag = r.integer("message.tag", 0, 127)
    assert n == _KINDS[tag][0]
    if tag in (TAG_PROPOSAL, TAG_VOTE):
        event = read_event_fields(r, tag)
        assert isinstance(event, ProposalReceived | VoteReceived)
        return event
    if tag == TAG_STATUS:
        return StatusMsg(
            r.integer("status.height", 0, HEIGHT_MAX), r.integer("status.round", 0, ROUND_MAX)
        )
    if tag == TAG_VOTER_STATE:
        return VoterStateMsg(
            r.binary("voter_state.validator_address", length=ADDRESS_BYTES),
            r.integer("voter_state.height", 1, HEIGHT_MAX),
            r.integer("voter_state.state", VOTER_WATCHING, VOTER_NOT_SIGNING),
            r.integer("voter_state.until_height", 0, HEIGHT_MAX),
            r.binary("voter_state.signature", length=SIGNATURE_BYTES),
        )
    if tag == TAG_DECIDED:
        return DecidedMsg(Block.read(r), Commit.read(r))
    if tag == TAG_EVIDENCE:
        return EvidenceMsg(read_evidence(r))
    if tag == TAG_SYNC_STATUS:
        base = r.integer("sync_status.base", 0, HEIGHT_MAX)
        height = r.integer("sync_status.height", 0, HEIGHT_MAX)
        if base > height:
            raise DecodeError("sync_status: base above height")
        return SyncStatusMsg(base, height)
    if tag == TAG_SYNC_REQUEST:
        return SyncRequestMsg(
            r.integer("sync_request.height", 1, HEIGHT_MAX),
            r.integer("sync_request.count", 1, BLOCKS_PER_REQUEST_MAX),
        )
    if tag == TAG_SYNC_BLOCK:
        return SyncBlockMsg(Block.read(r), Commit.read(r))
    if tag == TAG_SYNC_NONE:
        return SyncNoneMsg(r.integer("sync_none.height", 1, HEIGHT_MAX))
    assert tag == TAG_TXS
    return TxsMsg(r.binaries("txs", count_max=TX_BATCH_TXS_MAX, length_max=TX_BYTES_MAX))


_FIXARRAY = 0x90
# The largest canonical encodings of the parts of a message: the fixarray
# header and fixint tag, then the largest form of each field.
_ENVELOPE_BYTES = 2
_HEIGHT_BYTES_MAX = 9  # uint64
_ROUND_BYTES_MAX = 5  # uint32
_BLOCK_MESSAGE_BYTES_MAX = _ENVELOPE_BYTES + BLOCK_BYTES_MAX + Commit.BYTES_MAX
_PROPOSAL_MESSAGE_BYTES_MAX = _ENVELOPE_BYTES + Proposal.BYTES_MAX + BLOCK_BYTES_MAX
assert max(_BLOCK_MESSAGE_BYTES_MAX, _PROPOSAL_MESSAGE_BYTES_MAX) <= MESSAGE_BYTES_MAX
_SMALL = SMALL_FIELD_BYTES_MAX
# tag -> (array length with the tag, largest legal encoding, longest bin in it).
_KINDS: dict[int, tuple[int, int, int]] = {
    TAG_PROPOSAL: (3, _PROPOSAL_MESSAGE_BYTES_MAX, TX_BYTES_MAX),
    TAG_VOTE: (2, _ENVELOPE_BYTES + Vote.BYTES_MAX, _SMALL),
    TAG_STATUS: (3, _ENVELOPE_BYTES + _HEIGHT_BYTES_MAX + _ROUND_BYTES_MAX, 0),
    TAG_VOTER_STATE: (
        6,
        _ENVELOPE_BYTES + 2 + ADDRESS_BYTES + 2 * _HEIGHT_BYTES_MAX + 1 + 2 + SIGNATURE_BYTES,
        SIGNATURE_BYTES,
    ),
    TAG_DECIDED: (3, _BLOCK_MESSAGE_BYTES_MAX, TX_BYTES_MAX),
    # The larger kind: a light-client attack (a whole certificate and set).
    TAG_EVIDENCE: (2, _ENVELOPE_BYTES + LightClientAttackEvidence.BYTES_MAX, _SMALL),
    TAG_SYNC_STATUS: (3, _ENVELOPE_BYTES + 2 * _HEIGHT_BYTES_MAX, 0),
    TAG_SYNC_REQUEST: (3, _ENVELOPE_BYTES + 2 * _HEIGHT_BYTES_MAX, 0),
    TAG_SYNC_BLOCK: (3, _BLOCK_MESSAGE_BYTES_MAX, TX_BYTES_MAX),
    TAG_SYNC_NONE: (2, _ENVELOPE_BYTES + _HEIGHT_BYTES_MAX, 0),
    TAG_TXS: (2, MESSAGE_BYTES_MAX, TX_BYTES_MAX),
}
