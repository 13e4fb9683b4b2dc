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

from consensus.codec import (
    DecodeError,
    decode,
    encode,
    expect_array,
    expect_bytes,
    expect_int,
    expect_tuple,
)
from consensus.types import (
    BLOCK_BYTES_MAX,
    HEIGHT_MAX,
    ROUND_MAX,
    TX_BYTES_MAX,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Proposal,
    Vote,
)

# A proposal carries a whole block; the rest are small.
MESSAGE_BYTES_MAX = BLOCK_BYTES_MAX + 64 * 1024
# Transactions gossiped in one mempool message (the sender batches up to its limits).
TX_BATCH_TXS_MAX = 10_000
# Blocks a peer may ask for in one request, and we answer with at most.
BLOCKS_PER_REQUEST_MAX = 16

# Consensus channel
TAG_PROPOSAL = 1
TAG_VOTE = 2
TAG_STATUS = 3
TAG_DECIDED = 4
# Evidence channel
TAG_EVIDENCE = 10
# Block sync channel
TAG_SYNC_STATUS = 20
TAG_SYNC_REQUEST = 21
TAG_SYNC_BLOCK = 22
TAG_SYNC_NONE = 23
# Mempool channel
TAG_TXS = 30


@dataclass(frozen=True, slots=True)
class ProposalMsg:
    proposal: Proposal
    block: Block


@dataclass(frozen=True, slots=True)
class VoteMsg:
    vote: Vote


@dataclass(frozen=True, slots=True)
class StatusMsg:
    """Where a peer's consensus is: lets others send it what it is missing."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class DecidedMsg:
    """A committed block with its certificate, for a peer that is one height behind."""

    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class EvidenceMsg:
    evidence: DuplicateVoteEvidence


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
        case ProposalMsg(p, b):
            return [TAG_PROPOSAL, p.to_obj(), b.to_obj()]
        case VoteMsg(v):
            return [TAG_VOTE, v.to_obj()]
        case StatusMsg(h, r):
            return [TAG_STATUS, h, r]
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
    return encode(to_obj(msg))


def stored_block_message(tag: int, block_bytes: bytes, commit_bytes: bytes) -> bytes:
    """A decided or sync_block message from a stored block and certificate, as stored.

    The message is the array [tag, block, commit]; the canonical encodings of
    the two are their stored bytes, so they are copied, never decoded and
    encoded again (a test pins this against `encode_message`).
    """
    assert tag in (TAG_DECIDED, TAG_SYNC_BLOCK)
    return b"\x93" + bytes([tag]) + block_bytes + commit_bytes


def decode_message(data: bytes) -> Message:
    """Parse one node message; raises DecodeError for anything malformed."""
    obj = decode(data, bytes_max=MESSAGE_BYTES_MAX)
    if not isinstance(obj, tuple) or not obj:
        raise DecodeError("message: expected a non-empty array")
    tag = obj[0]
    if tag == TAG_PROPOSAL:
        f = expect_tuple(obj, 3, "proposal message")
        return ProposalMsg(Proposal.from_obj(f[1]), Block.from_obj(f[2]))
    if tag == TAG_VOTE:
        f = expect_tuple(obj, 2, "vote message")
        return VoteMsg(Vote.from_obj(f[1]))
    if tag == TAG_STATUS:
        f = expect_tuple(obj, 3, "status message")
        return StatusMsg(
            expect_int(f[1], "status.height", 0, HEIGHT_MAX),
            expect_int(f[2], "status.round", 0, ROUND_MAX),
        )
    if tag == TAG_DECIDED:
        f = expect_tuple(obj, 3, "decided message")
        return DecidedMsg(Block.from_obj(f[1]), Commit.from_obj(f[2]))
    if tag == TAG_EVIDENCE:
        f = expect_tuple(obj, 2, "evidence message")
        return EvidenceMsg(DuplicateVoteEvidence.from_obj(f[1]))
    if tag == TAG_SYNC_STATUS:
        f = expect_tuple(obj, 3, "sync status message")
        base = expect_int(f[1], "sync_status.base", 0, HEIGHT_MAX)
        height = expect_int(f[2], "sync_status.height", 0, HEIGHT_MAX)
        if base > height:
            raise DecodeError("sync_status: base above height")
        return SyncStatusMsg(base, height)
    if tag == TAG_SYNC_REQUEST:
        f = expect_tuple(obj, 3, "sync request message")
        return SyncRequestMsg(
            expect_int(f[1], "sync_request.height", 1, HEIGHT_MAX),
            expect_int(f[2], "sync_request.count", 1, BLOCKS_PER_REQUEST_MAX),
        )
    if tag == TAG_SYNC_BLOCK:
        f = expect_tuple(obj, 3, "sync block message")
        return SyncBlockMsg(Block.from_obj(f[1]), Commit.from_obj(f[2]))
    if tag == TAG_SYNC_NONE:
        f = expect_tuple(obj, 2, "sync none message")
        return SyncNoneMsg(expect_int(f[1], "sync_none.height", 1, HEIGHT_MAX))
    if tag == TAG_TXS:
        f = expect_tuple(obj, 2, "txs message")
        txs = expect_array(f[1], "txs", TX_BATCH_TXS_MAX)
        for raw in txs:
            expect_bytes(raw, "txs.tx", length_max=TX_BYTES_MAX)
        return TxsMsg(txs)
    raise DecodeError(f"message: unknown tag {tag!r}")
