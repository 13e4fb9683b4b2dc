"""What a node knows about the chain after a height: the one record every layer shares.

The validation core checks the next block against it, the proposer builds
the next block's header from it, the store saves it in the same transaction
as the block, and block sync advances it block by block. Keeping one record
(with its own canonical encoding) means these can never disagree about,
say, which validator set signs the next block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consensus.app import results_hash
from consensus.codec import DecodeError, Reader, decode_with, encode
from consensus.crypto import HASH_BYTES
from consensus.genesis import ConsensusParams, Genesis
from consensus.proposer import ProposerSchedule
from consensus.types import (
    APP_HASH_BYTES_MAX,
    CHAIN_ID_BYTES_MAX,
    HEIGHT_MAX,
    SMALL_FIELD_BYTES_MAX,
    TIME_MS_MAX,
    VALIDATORS_MAX,
    ValidatorSet,
)

__all__ = ["ChainState"]

# Proposer priorities stay within a window of a few times the total power
# (consensus/proposer.py), far inside a signed 64-bit integer.
_PRIORITY_ABS_MAX = 2**63 - 1
STATE_BYTES_MAX = 3 * VALIDATORS_MAX * 64 + 4096


@dataclass(frozen=True, slots=True)
class ChainState:
    """The chain after committing height `last_height` (0: only genesis).

    `last_validators` signed block `last_height` (None at 0), `validators`
    sign `last_height + 1` and `next_validators` `last_height + 2` (the
    application's validator updates at h take effect at h + 2). `app_hash`
    and `last_results_hash` are those after block `last_height`; they go into
    the header of block `last_height + 1`. `proposer_priorities` is the
    weighted round-robin state of height `last_height + 1`, one per validator
    of `validators`.
    """

    chain_id: str
    last_height: int
    last_block_hash: bytes
    last_block_time_ms: int
    last_validators: ValidatorSet | None
    validators: ValidatorSet
    next_validators: ValidatorSet
    app_hash: bytes
    last_results_hash: bytes
    params: ConsensusParams = field(default_factory=ConsensusParams)
    proposer_priorities: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.proposer_priorities:
            object.__setattr__(self, "proposer_priorities", (0,) * len(self.validators))
        assert len(self.proposer_priorities) == len(self.validators)

    @classmethod
    def from_genesis(cls, genesis: Genesis, app_hash: bytes) -> ChainState:
        """Before height 1: the genesis set signs heights 1 and 2."""
        vset = genesis.validator_set
        return cls(
            chain_id=genesis.chain_id,
            last_height=0,
            last_block_hash=b"",
            last_block_time_ms=genesis.genesis_time_ms,
            last_validators=None,
            validators=vset,
            next_validators=vset,
            app_hash=app_hash,
            last_results_hash=results_hash(()),
            params=genesis.params,
        )

    @property
    def height(self) -> int:
        """The height this state is waiting for."""
        return self.last_height + 1

    @property
    def schedule(self) -> ProposerSchedule:
        """Proposer rotation of height `last_height + 1`."""
        return ProposerSchedule(self.validators, self.proposer_priorities)

    def advance(
        self,
        *,
        block_hash: bytes,
        block_time_ms: int,
        app_hash: bytes,
        last_results_hash: bytes,
        validators_after_next: ValidatorSet,
    ) -> ChainState:
        """The state after committing block `last_height + 1` (the sets shift by one height)."""
        schedule = self.schedule.advance(self.next_validators)
        return ChainState(
            chain_id=self.chain_id,
            last_height=self.last_height + 1,
            last_block_hash=block_hash,
            last_block_time_ms=block_time_ms,
            last_validators=self.validators,
            validators=self.next_validators,
            next_validators=validators_after_next,
            app_hash=app_hash,
            last_results_hash=last_results_hash,
            params=self.params,
            proposer_priorities=schedule.priorities,
        )

    # ------------------------------------------------------------ encoding

    def to_obj(self) -> list[Any]:
        p = self.params
        return [
            self.chain_id,
            self.last_height,
            self.last_block_hash,
            self.last_block_time_ms,
            None if self.last_validators is None else self.last_validators.to_obj(),
            self.validators.to_obj(),
            self.next_validators.to_obj(),
            self.app_hash,
            self.last_results_hash,
            [
                p.block_bytes_max,
                p.block_txs_max,
                p.evidence_age_blocks_max,
                p.block_time_drift_ms_max,
            ],
            list(self.proposer_priorities),
        ]

    @classmethod
    def read(cls, r: Reader) -> ChainState:
        r.array("chain state", length=11)
        chain_id = r.text("state.chain_id", CHAIN_ID_BYTES_MAX)
        last_height = r.integer("state.last_height", 0, HEIGHT_MAX)
        hash_len = 0 if last_height == 0 else HASH_BYTES
        last_block_hash = r.binary("state.last_block_hash", length=hash_len)
        last_block_time_ms = r.integer("state.last_block_time_ms", 0, TIME_MS_MAX)
        last_validators = None
        if last_height > 0:
            last_validators = ValidatorSet.read(r)
        else:
            r.nil("state.last_validators")
        validators = ValidatorSet.read(r)
        next_validators = ValidatorSet.read(r)
        app_hash = r.binary("state.app_hash", length_max=APP_HASH_BYTES_MAX)
        last_results_hash = r.binary("state.last_results_hash", length=HASH_BYTES)
        r.array("state.params", length=4)
        params = ConsensusParams(*(r.integer("state.params", 1, 2**62) for _ in range(4)))
        n = r.array("state.proposer_priorities", count_max=VALIDATORS_MAX)
        if n != len(validators):
            raise DecodeError("state.proposer_priorities: one per validator")
        priorities = tuple(
            r.integer("state.proposer_priority", -_PRIORITY_ABS_MAX, _PRIORITY_ABS_MAX)
            for _ in range(n)
        )
        return cls(
            chain_id=chain_id,
            last_height=last_height,
            last_block_hash=last_block_hash,
            last_block_time_ms=last_block_time_ms,
            last_validators=last_validators,
            validators=validators,
            next_validators=next_validators,
            app_hash=app_hash,
            last_results_hash=last_results_hash,
            params=params,
            proposer_priorities=priorities,
        )

    def encode(self) -> bytes:
        return encode(self.to_obj())

    @classmethod
    def decode(cls, data: bytes) -> ChainState:
        return decode_with(
            data,
            cls.read,
            cls.encode,
            bytes_max=STATE_BYTES_MAX,
            field_bytes_max=SMALL_FIELD_BYTES_MAX,
        )
