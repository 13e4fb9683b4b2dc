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

from consensus.codec import (
    DecodeError,
    decode,
    encode,
    expect_bytes,
    expect_int,
    expect_str,
    expect_tuple,
)
from consensus.crypto import HASH_BYTES
from consensus.types import (
    BLOCK_BYTES_MAX,
    HEIGHT_MAX,
    ROUND_MAX,
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

_TAG_PROPOSAL = 1
_TAG_VOTE = 2
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
            return [_TAG_PROPOSAL, proposal.to_obj(), block.to_obj()]
        case VoteReceived(vote):
            return [_TAG_VOTE, vote.to_obj()]
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


def event_from_obj(obj: Any) -> Event:
    if not isinstance(obj, tuple) or not obj:
        raise DecodeError("event: expected a non-empty array")
    tag = expect_int(obj[0], "event.tag", 1, _TAG_START)
    if tag == _TAG_PROPOSAL:
        f = expect_tuple(obj, 3, "proposal event")
        return ProposalReceived(Proposal.from_obj(f[1]), Block.from_obj(f[2]))
    if tag == _TAG_VOTE:
        f = expect_tuple(obj, 2, "vote event")
        return VoteReceived(Vote.from_obj(f[1]))
    if tag == _TAG_TIMEOUT:
        f = expect_tuple(obj, 4, "timeout event")
        return TimeoutFired(
            expect_int(f[1], "timeout.height", 1, HEIGHT_MAX),
            expect_int(f[2], "timeout.round", 0, ROUND_MAX),
            Step(expect_int(f[3], "timeout.step", 0, int(Step.COMMIT))),
        )
    if tag == _TAG_VALIDATED:
        f = expect_tuple(obj, 4, "validated event")
        if type(f[2]) is not bool:
            raise DecodeError("validated.valid: expected a boolean")
        return BlockValidated(
            expect_bytes(f[1], "validated.block_hash", length=HASH_BYTES),
            f[2],
            expect_str(f[3], "validated.reason", REASON_BYTES_MAX * 4),
        )
    if tag == _TAG_BUILT:
        f = expect_tuple(obj, 4, "built event")
        return BlockBuilt(
            expect_int(f[1], "built.height", 1, HEIGHT_MAX),
            expect_int(f[2], "built.round", 0, ROUND_MAX),
            Block.from_obj(f[3]),
        )
    if tag == _TAG_COMMIT:
        f = expect_tuple(obj, 3, "commit event")
        return CommitReceived(Block.from_obj(f[1]), Commit.from_obj(f[2]))
    if tag == _TAG_START:
        f = expect_tuple(obj, 2, "start event")
        return StartHeight(expect_int(f[1], "start.height", 1, HEIGHT_MAX))
    raise DecodeError(f"event: retired or unknown tag {tag}")


def encode_event(event: Event) -> bytes:
    return encode(event_to_obj(event))


def decode_event(data: bytes) -> Event:
    """Parse one canonical event; raises DecodeError for anything else."""
    return event_from_obj(decode(data, bytes_max=EVENT_BYTES_MAX))
