"""The node's chain: validate, build and apply blocks on the stored state.

Consensus and block sync both end in `apply`, so a block becomes committed
in exactly one way: the block, its certificate, results, the application's
writes and the new `ChainState` go to the store in one durable transaction,
and only then does the in-memory application commit. A crash between the
two leaves the store ahead of memory, which the next start reloads from the
store; never the reverse.

`validate` and `apply` are synchronous (the validation core is CPU work in
threads, the store waits on fsync): the caller runs them in a worker thread,
one at a time, holding `lock` so that executing a proposal never overlaps
committing another block on the same application.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from apps import app_class
from consensus.app import TxResult
from consensus.codec import DecodeError, decode, encode
from consensus.genesis import Genesis, GenesisError
from consensus.proposer import ProposerSchedule
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.statetree import StateCorrupt
from consensus.types import TIME_MS_MAX, Block, Commit, Evidence, Transaction
from consensus.validation import (
    BlockInvalid,
    Reason,
    ValidatedBlock,
    build_block,
    next_chain_state,
    validate_block,
    verify_commit,
)
from node.clock import now_ms
from node.hub import CommittedBlock
from node.storage import BlockStore

# Room in a block for everything but transactions: header, last commit (80 bytes
# per signature), evidence and msgpack framing; the rest is for transactions.
BLOCK_OVERHEAD_BYTES = 16 * 1024
COMMIT_SIG_BYTES = 80
VALIDATED_CACHE_BLOCKS_MAX = 8  # proposals of one height kept validated (one per round seen)


def encode_result(result: TxResult) -> bytes:
    return encode([result.code, result.log, result.data])


def decode_result(data: bytes) -> tuple[int, str]:
    """(code, log) of a stored result."""
    try:
        f = decode(data)
    except DecodeError:
        return -1, "unreadable result"
    if not (isinstance(f, tuple) and len(f) == 3 and type(f[0]) is int and type(f[1]) is str):
        return -1, "unreadable result"
    if not 0 <= f[0] <= 2**32 or len(f[1].encode()) > 1024:
        return -1, "unreadable result"
    return f[0], f[1]


@dataclass(frozen=True, slots=True)
class Applied:
    committed: CommittedBlock
    tx_ids: tuple[bytes, ...]
    block_bytes: int
    validated: ValidatedBlock
    state: ChainState  # after the block


class Chain:
    def __init__(self, genesis: Genesis, store: BlockStore, verifier: SignatureVerifier) -> None:
        self.genesis = genesis
        self.store = store
        self.verifier = verifier
        self.lock = trio.Lock()
        app_cls = app_class(genesis)
        state = store.load_state()
        if state is None:
            try:
                app = app_cls.from_genesis(genesis)
            except ValueError as e:
                raise GenesisError(f"genesis.json: {e}") from None
            state = ChainState.from_genesis(genesis, app.app_hash)
            store.init_genesis(state, dict(app.items()))
        else:
            _check_same_chain(genesis, store, state)
            try:
                app = app_cls.load(store.iter_app_state(), state.app_hash, state.last_height)
            except StateCorrupt as e:
                raise GenesisError(f"{store.path}: {e}; restore the data folder") from None
        store.record_genesis_hash(genesis.hash)
        self.app = app
        self.state = state
        self._validated: dict[bytes, ValidatedBlock] = {}

    @property
    def height(self) -> int:
        """Height of the latest committed block (0 before the first)."""
        return self.state.last_height

    def schedule(self) -> ProposerSchedule:
        return self.state.schedule

    # ------------------------------------------------------------ building

    def tx_bytes_budget(self) -> int:
        params = self.state.params
        commit_bytes = COMMIT_SIG_BYTES * len(self.state.validators)
        return max(0, params.block_bytes_max - BLOCK_OVERHEAD_BYTES - commit_bytes)

    def build(
        self,
        *,
        txs: Sequence[bytes],
        evidence: Sequence[Evidence],
        time_ms: int,
        proposer_address: bytes,
        last_commit: Commit | None = None,
    ) -> Block:
        """The next block on the committed state (the proposer's side of `validate`).

        `last_commit` is the previous block's certificate with the precommits
        gathered after the decision; without it, the one stored with the block.
        """
        s = self.state
        if last_commit is None or (last_commit.height, last_commit.block_hash) != (
            s.last_height,
            s.last_block_hash,
        ):
            last_commit = None if s.last_height == 0 else self.store.load_seen_commit(s.last_height)
        assert s.last_height == 0 or last_commit is not None, "no commit stored for last block"
        return build_block(
            s,
            txs,
            time_ms=max(time_ms, s.last_block_time_ms + 1),
            proposer_address=proposer_address,
            last_commit=last_commit,
            evidence=evidence,
        )

    # ------------------------------------------------------------ validating

    def validate(self, block: Block, *, now: int | None = None) -> ValidatedBlock:
        """Validate the next block (cached by hash); raises BlockInvalid.

        The header's proposer must be a validator of this height; that it is the
        proposer of the round that built the block is the state machine's check.
        """
        cached = self._validated.get(block.hash)
        if cached is not None:
            return cached
        validated = validate_block(
            block,
            self.state,
            self.app,
            self.verifier,
            now_ms=now_ms() if now is None else now,
            validators_at=self.store.load_validators,
            commit_at=self.store.load_commit,
        )
        if len(self._validated) >= VALIDATED_CACHE_BLOCKS_MAX:
            self._validated.pop(next(iter(self._validated)))
        self._validated[block.hash] = validated
        return validated

    def verify_commit(self, commit: Commit, block: Block) -> None:
        """A certificate for `block` by the validators of its height; raises BlockInvalid."""
        if commit.height != block.height or commit.block_hash != block.hash:
            raise BlockInvalid(Reason.MALFORMED, "commit", "certificate is for another block")
        verify_commit(commit, self.state.chain_id, self.state.validators, self.verifier)

    # ------------------------------------------------------------ applying

    def persist(self, block: Block, commit: Commit, *, now: int | None = None) -> Applied:
        """Validate (if not yet) and durably store `block` with its certificate.

        Runs in a worker thread. The in-memory application and state move on
        only in `finish`, on the event loop, so that nothing the loop does
        (admitting transactions against the application's mempool view) ever
        sees the application half-way between two heights.
        """
        # A block with a +2/3 certificate is decided: judge its time by the chain's
        # rules (after the previous block), never by how far our clock lags.
        validated = self.validate(block, now=TIME_MS_MAX if now is None else now)
        execution = validated.execution
        new_state = next_chain_state(self.state, validated)
        results = [encode_result(r) for r in execution.tx_results]
        self.store.save_block(
            block, commit, validated.tx_ids, results, dict(execution.writes), new_state
        )
        block_bytes = len(block.encode())
        # The bytes are stored now; a committed block may wait in stream subscribers'
        # queues (node/hub.py) for a while, without a second copy of itself.
        block.release_encoding()
        committed = CommittedBlock(
            block, commit, tuple((r.code, r.log) for r in execution.tx_results), validated.txs
        )
        return Applied(committed, validated.tx_ids, block_bytes, validated, new_state)

    def finish(self, applied: Applied) -> None:
        """Move the application and the state to the stored height (on the event loop)."""
        assert applied.state.last_height == self.state.last_height + 1
        self.app.commit(applied.validated.execution)
        self.state = applied.state
        self._validated.clear()
        self.verifier.cache.discard(applied.tx_ids)

    def committed_block(self, height: int) -> CommittedBlock | None:
        block = self.store.load_block(height)
        commit = self.store.load_commit(height)
        if block is None or commit is None:
            return None
        results = tuple(decode_result(r) for r in self.store.iter_block_results(height))
        txs = tuple(Transaction.decode(raw) for raw in block.txs)
        return CommittedBlock(block, commit, results, txs)


def _check_same_chain(genesis: Genesis, store: BlockStore, state: ChainState) -> None:
    """Refuse a store that holds another chain than `genesis` starts (one clear line)."""
    recorded = store.genesis_hash()
    first_set = store.load_validators(1)
    if (
        (recorded is not None and recorded != genesis.hash)
        or state.chain_id != genesis.chain_id
        or first_set != genesis.validator_set
    ):
        raise GenesisError(
            f"{store.path} holds another chain (chain id {state.chain_id!r} at height "
            f"{state.last_height}) than genesis.json starts; move the data folder away "
            "(or run `archipelago unsafe-reset` for a chain that may be wiped) and start again"
        )


def worker_threads() -> int:
    """Signature verification threads: one per core (the suite's batch call releases the GIL)."""
    return max(1, len(os.sched_getaffinity(0)))
