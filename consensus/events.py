"""The inputs and outputs of the consensus state machine, and the inputs' encoding.

The machine (consensus/machine.py) is a function from events to actions.
Events are what the node writes to its write-ahead log before stepping, so
each has a canonical encoding (`encode_event` / `decode_event`, msgpack as in
consensus/codec.py) and a restarted node that replays its log rebuilds the
exact state it had. Actions are requests to the node: sign, broadcast, start a
timer, validate or build a block, apply a decided block. They are never
persisted; a replay re-derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from consensus.codec import DecodeError, Reader, decode_with, encode
from consensus.crypto import HASH_BYTES
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
    VoteType,
)

__all__ = [
    "Action",
    "BlockBuilt",
    "BlockValidated",
    "Broadcast",
    "BuildBlock",
    "CommitReceived",
    "Decide",
    "Event",
    "Fault",
    "ProposalReceived",
    "ReportEvidence",
    "ScheduleTimeout",
    "SignProposal",
    "SignVote",
    "StartHeight",
    "Step",
    "TimeoutFired",
    "ValidateBlock",
    "VoteReceived",
    "decode_event",
    "encode_event",
]

# An event holds at most a block and a commit certificate (CommitReceived).
EVENT_BYTES_MAX = BLOCK_BYTES_MAX + 256 * 1024
# Why a block was invalid, as reported by the validation core; longer text is cut.
REASON_BYTES_MAX = 256


class Step(IntEnum):
    """Algorithm 1's step, plus the time around a decision.

    NEW_HEIGHT: waiting for the commit timeout (or the node's start) before
    round 0; COMMIT: decided, waiting for the node to apply the block.
    """

    NEW_HEIGHT = 0
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMIT = 4


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A signed proposal and the block it names (from a peer, or our own fed back)."""

    proposal: Proposal
    block: Block

    @property
    def height(self) -> int:
        return self.proposal.height


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """A signed prevote or precommit (from a peer, or our own fed back)."""

    vote: Vote

    @property
    def height(self) -> int:
        return self.vote.height


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    """A timer the machine asked for with ScheduleTimeout has expired."""

    height: int
    round: int
    step: Step


@dataclass(frozen=True, slots=True)
class BlockValidated:
    """The node's validation core judged a block the machine asked about (ValidateBlock)."""

    block_hash: bytes
    valid: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BlockBuilt:
    """The block the node built after BuildBlock(height, round)."""

    height: int
    round: int
    block: Block


@dataclass(frozen=True, slots=True)
class CommitReceived:
    """A block with a commit certificate for it, from a peer that is ahead (catch-up)."""

    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class StartHeight:
    """Begin round 0 of `height` now (the node's start, e.g. at genesis time)."""

    height: int


Event = (
    ProposalReceived
    | VoteReceived
    | TimeoutFired
    | BlockValidated
    | BlockBuilt
    | CommitReceived
    | StartHeight
)

# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Gossip this message to peers that lack it: the machine accepted it for the first time.

    Ours or a peer's: correct processes relay what they accept (Algorithm 1's
    gossip assumption), which is what makes an equivocator's votes reach all.
    """

    message: ProposalReceived | VoteReceived


@dataclass(frozen=True, slots=True)
class SignVote:
    """Check and persist the sign state, sign this vote, feed it back as VoteReceived.

    If the sign state holds a different vote for (height, round, type), do not
    sign: the machine moves on by its timeouts.
    """

    type: VoteType
    height: int
    round: int
    block_hash: bytes  # b"" is nil


@dataclass(frozen=True, slots=True)
class SignProposal:
    """Check and persist the sign state, sign a proposal, feed it back as ProposalReceived."""

    height: int
    round: int
    pol_round: int
    block: Block


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Feed TimeoutFired(height, round, step) after `duration_ms`."""

    height: int
    round: int
    step: Step
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ValidateBlock:
    """Run the block validation core on `block`; answer with BlockValidated."""

    block: Block


@dataclass(frozen=True, slots=True)
class BuildBlock:
    """We propose at (height, round) and hold no valid value: build a block, answer BlockBuilt."""

    height: int
    round: int


@dataclass(frozen=True, slots=True)
class Decide:
    """`block` is decided with certificate `commit`: apply and persist it.

    The node then runs the next height on a new machine built from the state
    after the block.
    """

    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class ReportEvidence:
    """A validator equivocated: gossip this evidence and put it in a block."""

    evidence: DuplicateVoteEvidence


class Fault(Enum):
    """Why a message was refused in a way that proves its sender faulty.

    A correct node checks exactly what the machine checks before it relays a
    message, so a message failing these checks at the receiver's height is the
    fault of whoever sent it (the signer's key alone does not say who that is).
    """

    BAD_SIGNATURE = "bad_signature"  # not signed by the validator it names
    NOT_A_VALIDATOR = "not_a_validator"  # names no validator of that height
    BLOCK_MISMATCH = "block_mismatch"  # block not the one named, or its body not its header's
    WRONG_BUILDER = "wrong_builder"  # header names no proposer of a round up to the proposal's
    INVALID_COMMIT = "invalid_commit"  # a certificate that does not verify
    OVERSIZED_BLOCK = "oversized_block"  # over the chain's block_bytes_max


Action = (
    Broadcast
    | SignVote
    | SignProposal
    | ScheduleTimeout
    | ValidateBlock
    | BuildBlock
    | Decide
    | ReportEvidence
)


# ---------------------------------------------------------------- encoding

# A proposal's and a vote's record is also their message on the wire (node/messages.py
# takes these tags and this layout from here), so the bytes that arrive are those logged.
TAG_PROPOSAL_RECEIVED = 1
TAG_VOTE_RECEIVED = 2
_TAG_TIMEOUT = 3
_TAG_VALIDATED = 4
_TAG_BUILT = 5
_TAG_COMMIT = 6
# Tag 7 was HeightCommitted, retired: each height now runs on a new machine.
_TAG_START = 8


def event_to_obj(event: Event) -> list[Any]:
    """The msgpack-ready array of an event: a tag, then its fields in declaration order."""
    match event:
        case ProposalReceived(proposal, block):
            return [TAG_PROPOSAL_RECEIVED, proposal.to_obj(), block.to_obj()]
        case VoteReceived(vote):
            return [TAG_VOTE_RECEIVED, vote.to_obj()]
        case TimeoutFired(height, round, step):
            return [_TAG_TIMEOUT, height, round, int(step)]
        case BlockValidated(block_hash, valid, reason):
            return [_TAG_VALIDATED, block_hash, valid, reason[:REASON_BYTES_MAX]]
        case BlockBuilt(height, round, block):
            return [_TAG_BUILT, height, round, block.to_obj()]
        case CommitReceived(block, commit):
            return [_TAG_COMMIT, block.to_obj(), commit.to_obj()]
        case StartHeight(height):
            return [_TAG_START, height]
    raise AssertionError(f"not an event: {event!r}")


def read_event(r: Reader) -> Event:
    """One event, its fields read in the order `event_to_obj` writes them."""
    n = r.array("event", count_max=4)
    if n < 2:
        raise DecodeError("event: expected a tag and fields")
    tag = r.integer("event.tag", 1, _TAG_START)
    fields = _EVENT_FIELDS.get(tag)
    if fields is None:
        raise DecodeError(f"event: retired or unknown tag {tag}")
    if n != fields:
        raise DecodeError(f"event {tag}: expected an array of {fields} fields")
    return read_event_fields(r, tag)


def read_event_fields(r: Reader, tag: int) -> Event:
    """The fields of an event tagged `tag`, once its array header and tag are read."""
    if tag == TAG_PROPOSAL_RECEIVED:
        return ProposalReceived(Proposal.read(r), Block.read(r))
    if tag == TAG_VOTE_RECEIVED:
        return VoteReceived(Vote.read(r))
    if tag == _TAG_TIMEOUT:
        return TimeoutFired(
            r.integer("timeout.height", 1, HEIGHT_MAX),
            r.integer("timeout.round", 0, ROUND_MAX),
            Step(r.integer("timeout.step", 0, int(Step.COMMIT))),
        )
    if tag == _TAG_VALIDATED:
        return BlockValidated(
            r.binary("validated.block_hash", length=HASH_BYTES),
            r.boolean("validated.valid"),
            r.text("validated.reason", _REASON_FIELD_BYTES_MAX),
        )
    if tag == _TAG_BUILT:
        return BlockBuilt(
            r.integer("built.height", 1, HEIGHT_MAX),
            r.integer("built.round", 0, ROUND_MAX),
            Block.read(r),
        )
    if tag == _TAG_COMMIT:
        return CommitReceived(Block.read(r), Commit.read(r))
    return StartHeight(r.integer("start.height", 1, HEIGHT_MAX))


# Array length (tag included) of each event kind, as event_to_obj writes it.
_EVENT_FIELDS = {
    TAG_PROPOSAL_RECEIVED: 3,
    TAG_VOTE_RECEIVED: 2,
    _TAG_TIMEOUT: 4,
    _TAG_VALIDATED: 4,
    _TAG_BUILT: 4,
    _TAG_COMMIT: 3,
    _TAG_START: 2,
}
# `reason` is cut to REASON_BYTES_MAX characters, each up to 4 UTF-8 bytes.
_REASON_FIELD_BYTES_MAX = REASON_BYTES_MAX * 4


def encode_event(event: Event) -> bytes:
    """The canonical encoding; a carried block's own bytes are spliced in, not made again.

    An array of up to 15 fields is a fixarray header followed by each field's
    encoding, and every tag is a positive fixint, so splicing gives exactly
    `encode(event_to_obj(event))` (a test pins this).
    """
    match event:
        case ProposalReceived(proposal, block):
            return bytes((0x93, TAG_PROPOSAL_RECEIVED)) + proposal.encode() + block.encode()
        case BlockBuilt(height, round, block):
            return bytes((0x94, _TAG_BUILT)) + encode(height) + encode(round) + block.encode()
        case CommitReceived(block, commit):
            return bytes((0x93, _TAG_COMMIT)) + block.encode() + commit.encode()
    return encode(event_to_obj(event))


def decode_event(data: bytes) -> Event:
    """Parse one canonical event; raises DecodeError for anything else."""
    return decode_with(
        data,
        read_event,
        encode_event,
        bytes_max=EVENT_BYTES_MAX,
        field_bytes_max=max(TX_BYTES_MAX, _REASON_FIELD_BYTES_MAX),
    )
