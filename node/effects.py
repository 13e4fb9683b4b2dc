"""What the consensus driver asks its shell to do (effects), and what it is built with.

The driver (node/driver.py) performs no I/O: each effect here is a request
the shell performs (node/consensus_service.py in the daemon, the simulator's
node in sim/engine.py), and most come back as a call on the driver with
the result. Both shells handle every kind, so this module is their contract.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from consensus.config import ConsensusConfig
from consensus.types import Block, Commit, Evidence, VoteType
from network import Misbehaviour as PeerFault
from node.signstate import SignStep

__all__ = [
    "AnnounceVoterState",
    "Apply",
    "Build",
    "DriverConfig",
    "DriverStatus",
    "Effect",
    "Gossip",
    "Log",
    "Penalise",
    "Send",
    "ServeBlocks",
    "ServeDecided",
    "Sign",
    "StopSigning",
    "Validate",
    "VerifySynced",
    "WalPort",
]


class WalPort(Protocol):
    """The write-ahead log as the driver uses it (node/wal.py's WAL)."""

    def append(self, record: bytes) -> None: ...

    def replay_from_last_height(self) -> Iterable[bytes]: ...


@dataclass(frozen=True, slots=True)
class DriverConfig:
    consensus: ConsensusConfig
    watch_heights: int = 2
    watch_halt_s: float = 20.0
    blocksync: bool = True
    fallback_lag_heights: int = 10
    # A peer at most this many heights behind gets the decided block and its
    # certificate (at the serving rate); further behind, it catches up by block
    # sync. As large as `fallback_lag_heights`, so no lag is left unhelped.
    decided_heights_behind_max: int = 10
    # False: after an empty block, a height starts only once transactions wait
    # (or a peer started it, or `empty_blocks_interval_s` passed, if not 0).
    create_empty_blocks: bool = True
    empty_blocks_interval_s: float = 0.0


# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Send:
    """Send `payload` on `channel` to `peer`, or to every connected peer (peer None)."""

    peer: str | None
    channel: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gossip:
    """Relay `payload` to every peer but `exclude`, once (the network's seen-cache)."""

    channel: int
    payload: bytes
    exclude: str | None


@dataclass(frozen=True, slots=True)
class Penalise:
    peer: str
    fault: PeerFault
    detail: str


@dataclass(frozen=True, slots=True)
class Sign:
    """Make the WAL durable, then sign `sign_bytes` through the sign state; answer on_signed."""

    step: SignStep
    height: int
    round: int
    sign_bytes: bytes
    vote_type: VoteType | None  # None: a proposal
    block_hash: bytes
    pol_round: int = -1
    block: Block | None = None  # the proposal's block


@dataclass(frozen=True, slots=True)
class Validate:
    """Run the validation core on the next block; answer on_validated."""

    block: Block


@dataclass(frozen=True, slots=True)
class Build:
    """Build our block for (height, round) with this last commit and evidence; answer on_built."""

    height: int
    round: int
    last_commit: Commit | None
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class Apply:
    """Commit `block` with `commit` (certified); answer on_applied with the new state."""

    block: Block
    commit: Commit


@dataclass(frozen=True, slots=True)
class VerifySynced:
    """Verify a synced block's certificate against the current set; answer on_synced."""

    block: Block
    commit: Commit
    peer: str


@dataclass(frozen=True, slots=True)
class ServeBlocks:
    """Send stored blocks height..height+count-1 to `peer` if its queue has room."""

    peer: str
    height: int
    count: int


@dataclass(frozen=True, slots=True)
class ServeDecided:
    """Send stored block `height` with its certificate to `peer` (a DecidedMsg)."""

    peer: str
    height: int


@dataclass(frozen=True, slots=True)
class StopSigning:
    reason: str


@dataclass(frozen=True, slots=True)
class AnnounceVoterState:
    """Sign a VoterStateMsg with the validator key and send it to every peer."""

    height: int
    state: int  # node.messages.VOTER_*
    until_height: int


@dataclass(frozen=True, slots=True)
class Log:
    """Something an operator should read in the node's log (the driver has no logger)."""

    level: str  # "info", "warning" or "critical"
    event: str
    fields: tuple[tuple[str, object], ...] = ()


Effect = (
    Send
    | Log
    | AnnounceVoterState
    | Gossip
    | Penalise
    | Sign
    | Validate
    | Build
    | Apply
    | VerifySynced
    | ServeBlocks
    | ServeDecided
    | StopSigning
)


@dataclass(frozen=True, slots=True)
class DriverStatus:
    mode: str  # "consensus" or "blocksync"
    mode_reason: str
    signing: bool  # the machine signs now (not watching, not stopped)
    watch_until_height: int  # 0: no doppelganger watch
    watch_halt_at: float  # when the watch ends if no block commits (driver time)
    peer_max_height: int  # the highest height a peer claims (a claim, not a fact)
    waiting_for_txs: bool = False  # idle by choice: create_empty_blocks = false, no txs
