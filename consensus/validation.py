"""The block validation core: everything a node checks before it votes for or applies a block.

One entry point, `validate_block`, takes a proposed block and what the node
knows after the previous height (`ChainState`) and returns the result of
executing it (`ValidatedBlock`), or raises `BlockInvalid` naming the first
offending field or transaction. It is what makes a proposal valid in
Algorithm 1's sense (`valid(v)`, lines 22, 28, 36 and 49).

It is the hot path, so the checks run as one pass over the transactions:
the commit certificate's and the evidence's signatures are verified first
on every core; then, chunk by chunk, each transaction is hashed once and
decoded once (or taken, decoded, from the cache of transactions verified at
mempool admission), its signature is queued for the verifier's threads, and
the application executes it, while the caller's thread verifies queued
signatures between steps. The Merkle and results roots are computed while
the pool still verifies. A hostile block makes this raise `BlockInvalid`
and nothing else; benchmarks/README.md has the measurements behind it.

It is longer than the house's 600 lines on purpose: the checks run in
PROTOCOL.md's order, interleaved with the parallel signature pass, and that
order decides which fault a bad block is named by; split, it would be
spread over files.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice

import msgpack

from consensus import merkle
from consensus.app import Application, BlockExecution, ValidatorUpdate, results_hash
from consensus.attack import (
    AttackCheck,
    AttackInvalid,
    ChainView,
    conflict_key,
    screen_light_attack,
)
from consensus.codec import DecodeError, encode
from consensus.crypto import SIGNATURE_BYTES, active
from consensus.sigverify import CHUNK_ITEMS, CachedTx, SigItem, SignatureVerifier, VerifyPass
from consensus.state import ChainState
from consensus.types import (
    TAG_TX,
    TX_BYTES_MAX,
    TX_PAYLOAD_BYTES_MAX,
    VALIDATORS_MAX,
    Block,
    Commit,
    DuplicateVoteEvidence,
    Evidence,
    Header,
    LightClientAttackEvidence,
    Transaction,
    Validator,
    ValidatorSet,
    data_hash,
    evidence_hash,
    precommit_sign_bytes,
)

__all__ = [
    "BlockInvalid",
    "ChainState",
    "Reason",
    "ValidatedBlock",
    "build_block",
    "decode_txs",
    "next_chain_state",
    "validate_block",
    "verify_commit",
]

_NONCE_MAX = 2**64 - 1
_SIG_FIELD_BYTES = 2 + SIGNATURE_BYTES  # bin8 marker and length, then the signature
_Unpacker = msgpack.Unpacker
# One packer for the canonical re-encoding check; it never releases the GIL mid-call.
_pack = msgpack.Packer(use_bin_type=True).pack


class Reason(StrEnum):
    """Why a block is invalid; stable strings for logs, metrics and peers' ban reasons."""

    MALFORMED = "malformed"
    BLOCK_TOO_LARGE = "block_too_large"
    TOO_MANY_TXS = "too_many_txs"
    WRONG_CHAIN_ID = "wrong_chain_id"
    WRONG_HEIGHT = "wrong_height"
    WRONG_LAST_BLOCK_HASH = "wrong_last_block_hash"
    TIME_NOT_MONOTONIC = "time_not_monotonic"
    TIME_TOO_FAR_AHEAD = "time_too_far_ahead"
    WRONG_PROPOSER = "wrong_proposer"
    WRONG_VALIDATORS_HASH = "wrong_validators_hash"
    WRONG_NEXT_VALIDATORS_HASH = "wrong_next_validators_hash"
    WRONG_APP_HASH = "wrong_app_hash"
    WRONG_LAST_RESULTS_HASH = "wrong_last_results_hash"
    WRONG_LAST_COMMIT_HASH = "wrong_last_commit_hash"
    LAST_COMMIT_MISSING = "last_commit_missing"
    LAST_COMMIT_UNEXPECTED = "last_commit_unexpected"
    LAST_COMMIT_WRONG_HEIGHT = "last_commit_wrong_height"
    LAST_COMMIT_WRONG_BLOCK = "last_commit_wrong_block"
    LAST_COMMIT_DUPLICATE_SIGNER = "last_commit_duplicate_signer"
    LAST_COMMIT_UNKNOWN_SIGNER = "last_commit_unknown_signer"
    LAST_COMMIT_NO_QUORUM = "last_commit_no_quorum"
    LAST_COMMIT_BAD_SIGNATURE = "last_commit_bad_signature"
    WRONG_EVIDENCE_HASH = "wrong_evidence_hash"
    EVIDENCE_INVALID = "evidence_invalid"
    EVIDENCE_BAD_SIGNATURE = "evidence_bad_signature"
    EVIDENCE_DUPLICATE = "evidence_duplicate"
    EVIDENCE_TOO_OLD = "evidence_too_old"
    WRONG_DATA_HASH = "wrong_data_hash"
    TX_MALFORMED = "tx_malformed"
    TX_DUPLICATE = "tx_duplicate"
    TX_BAD_SIGNATURE = "tx_bad_signature"
    VALIDATOR_UPDATES_INVALID = "validator_updates_invalid"


class BlockInvalid(Exception):
    """The block breaks `reason`; `field` names where, `tx_index` which transaction."""

    def __init__(
        self, reason: Reason, field: str, detail: str = "", *, tx_index: int | None = None
    ) -> None:
        where = field if tx_index is None else f"{field}[{tx_index}]"
        super().__init__(f"{reason.value} at {where}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.field = field
        self.detail = detail
        self.tx_index = tx_index


@dataclass(frozen=True, slots=True)
class ValidatedBlock:
    """A valid block with what executing it produced, ready to persist and commit."""

    block: Block
    block_hash: bytes
    txs: tuple[Transaction, ...]
    tx_ids: tuple[bytes, ...]
    execution: BlockExecution
    results_hash: bytes
    validators_after_next: ValidatorSet  # the set for height + 2, with the app's updates


def next_chain_state(state: ChainState, validated: ValidatedBlock) -> ChainState:
    """The state after committing `validated` (the validators shift by one height)."""
    return state.advance(
        block_hash=validated.block_hash,
        block_time_ms=validated.block.header.time_ms,
        app_hash=validated.execution.app_hash,
        last_results_hash=validated.results_hash,
        validators_after_next=validated.validators_after_next,
    )


def build_block(
    state: ChainState,
    txs: Sequence[bytes],
    *,
    time_ms: int,
    proposer_address: bytes,
    last_commit: Commit | None,
    evidence: Sequence[Evidence] = (),
) -> Block:
    """The block a proposer makes on `state` from encoded transactions (no validation)."""
    header = Header(
        chain_id=state.chain_id,
        height=state.last_height + 1,
        time_ms=time_ms,
        last_block_hash=state.last_block_hash,
        last_commit_hash=b"" if last_commit is None else last_commit.hash,
        data_hash=data_hash(txs),
        validators_hash=state.validators.hash,
        next_validators_hash=state.next_validators.hash,
        app_hash=state.app_hash,
        last_results_hash=state.last_results_hash,
        evidence_hash=evidence_hash(evidence),
        proposer_address=proposer_address,
    )
    return Block(header, tuple(txs), last_commit, tuple(evidence))


def validate_block(
    block: Block,
    state: ChainState,
    app: Application,
    verifier: SignatureVerifier,
    *,
    now_ms: int,
    validators_at: Callable[[int], ValidatorSet | None] | None = None,
    commit_at: Callable[[int], Commit | None] | None = None,
) -> ValidatedBlock:
    """Validate `block` as the next block after `state`; BlockInvalid names the first fault.

    `now_ms` is the node's clock (for the drift bound) and `validators_at(height)`
    the validator set of an earlier height, for evidence (by default only heights
    `last_height` and `last_height + 1` are known); `commit_at(height)` the
    canonical certificate of an earlier height, for light-client-attack evidence
    (without it, such evidence is invalid here). The header's proposer must be a
    validator of the height; which round's proposer it must be depends on the round
    the block is proposed or committed in, which the state machine checks
    (`ConsensusMachine.screen`). The application's committed state is not changed.
    """
    return _validate(block, state, app, verifier, now_ms, validators_at, commit_at, None)


def verify_commit(
    commit: Commit, chain_id: str, validators: ValidatorSet, verifier: SignatureVerifier
) -> None:
    """Check a commit certificate on its own (block sync); BlockInvalid if it is not one."""
    items = _commit_items(commit, chain_id, validators)
    vpass = verifier.open_pass()
    try:
        vpass.submit(items)
    finally:
        failed = vpass.finish()
    if failed:
        _raise_commit_signature(commit, min(-1 - t for t in failed))


# ---------------------------------------------------------------- the checks


def _validate(
    block: Block,
    state: ChainState,
    app: Application,
    verifier: SignatureVerifier,
    now_ms: int,
    validators_at: Callable[[int], ValidatorSet | None] | None,
    commit_at: Callable[[int], Commit | None] | None,
    encoded_bytes: int | None,
) -> ValidatedBlock:
    if not isinstance(block, Block):
        raise BlockInvalid(Reason.MALFORMED, "block", "not a Block")
    params = state.params
    if len(block.txs) > params.block_txs_max:
        raise BlockInvalid(
            Reason.TOO_MANY_TXS, "block.txs", f"{len(block.txs)}, limit {params.block_txs_max}"
        )
    size = _encoded_size(block) if encoded_bytes is None else encoded_bytes
    if size > params.block_bytes_max:
        raise BlockInvalid(
            Reason.BLOCK_TOO_LARGE, "block", f"{size} bytes, limit {params.block_bytes_max}"
        )
    _check_header(block, state, now_ms)
    commit_items = _last_commit_items(block, state)
    evidence_items = _evidence_items(block, state, validators_at, commit_at)
    return _run_pass(block, state, app, verifier, commit_items + evidence_items)


def _check_header(block: Block, state: ChainState, now_ms: int) -> None:
    h = block.header
    height = state.last_height + 1
    if h.chain_id != state.chain_id:
        raise BlockInvalid(Reason.WRONG_CHAIN_ID, "header.chain_id", repr(h.chain_id))
    if h.height != height:
        raise BlockInvalid(Reason.WRONG_HEIGHT, "header.height", f"{h.height}, expected {height}")
    if h.last_block_hash != state.last_block_hash:
        raise BlockInvalid(Reason.WRONG_LAST_BLOCK_HASH, "header.last_block_hash")
    if height == 1:
        if h.time_ms < state.last_block_time_ms:
            raise BlockInvalid(
                Reason.TIME_NOT_MONOTONIC, "header.time_ms", "before the genesis time"
            )
    elif h.time_ms <= state.last_block_time_ms:
        raise BlockInvalid(
            Reason.TIME_NOT_MONOTONIC, "header.time_ms", "not after the previous block's time"
        )
    if h.time_ms > now_ms + state.params.block_time_drift_ms_max:
        raise BlockInvalid(
            Reason.TIME_TOO_FAR_AHEAD,
            "header.time_ms",
            f"{h.time_ms - now_ms} ms ahead, limit {state.params.block_time_drift_ms_max}",
        )
    if state.validators.index_of(h.proposer_address) is None:
        raise BlockInvalid(Reason.WRONG_PROPOSER, "header.proposer_address", "not a validator")
    if h.validators_hash != state.validators.hash:
        raise BlockInvalid(Reason.WRONG_VALIDATORS_HASH, "header.validators_hash")
    if h.next_validators_hash != state.next_validators.hash:
        raise BlockInvalid(Reason.WRONG_NEXT_VALIDATORS_HASH, "header.next_validators_hash")
    if h.app_hash != state.app_hash:
        raise BlockInvalid(Reason.WRONG_APP_HASH, "header.app_hash")
    if h.last_results_hash != state.last_results_hash:
        raise BlockInvalid(Reason.WRONG_LAST_RESULTS_HASH, "header.last_results_hash")
    if h.evidence_hash != evidence_hash(block.evidence):
        raise BlockInvalid(Reason.WRONG_EVIDENCE_HASH, "header.evidence_hash")


def _last_commit_items(block: Block, state: ChainState) -> list[SigItem]:
    commit = block.last_commit
    if block.header.height == 1:
        if commit is not None:
            raise BlockInvalid(Reason.LAST_COMMIT_UNEXPECTED, "last_commit")
        if block.header.last_commit_hash != b"":
            raise BlockInvalid(Reason.WRONG_LAST_COMMIT_HASH, "header.last_commit_hash")
        return []
    if commit is None:
        raise BlockInvalid(Reason.LAST_COMMIT_MISSING, "last_commit")
    if block.header.last_commit_hash != commit.hash:
        raise BlockInvalid(Reason.WRONG_LAST_COMMIT_HASH, "header.last_commit_hash")
    if commit.height != state.last_height:
        raise BlockInvalid(
            Reason.LAST_COMMIT_WRONG_HEIGHT,
            "last_commit.height",
            f"{commit.height}, expected {state.last_height}",
        )
    if commit.block_hash != state.last_block_hash:
        raise BlockInvalid(Reason.LAST_COMMIT_WRONG_BLOCK, "last_commit.block_hash")
    assert state.last_validators is not None, "a state after height >= 1 has its signers"
    return _commit_items(commit, state.chain_id, state.last_validators)


def _commit_items(commit: Commit, chain_id: str, validators: ValidatorSet) -> list[SigItem]:
    """One item per signature (tag -1 - position); raises for unknown, duplicate or too few."""
    message = precommit_sign_bytes(chain_id, commit.height, commit.round, commit.block_hash)
    items: list[SigItem] = []
    power = 0
    previous = -1
    for position, s in enumerate(commit.signatures):
        where = f"last_commit.signatures[{position}]"
        if s.validator_index <= previous:
            raise BlockInvalid(Reason.LAST_COMMIT_DUPLICATE_SIGNER, where, "indexes not ascending")
        previous = s.validator_index
        if not 0 <= s.validator_index < len(validators):
            raise BlockInvalid(
                Reason.LAST_COMMIT_UNKNOWN_SIGNER, where, f"index {s.validator_index}"
            )
        if len(s.signature) != SIGNATURE_BYTES:
            raise BlockInvalid(Reason.LAST_COMMIT_BAD_SIGNATURE, where, "not 64 bytes")
        v = validators[s.validator_index]
        power += v.power
        items.append((-1 - position, v.public_key, message, s.signature))
    if not validators.has_quorum(power):
        raise BlockInvalid(
            Reason.LAST_COMMIT_NO_QUORUM,
            "last_commit.signatures",
            f"{power} of {validators.total_power} voting power, need > 2/3",
        )
    return items


def _raise_commit_signature(commit: Commit, position: int) -> None:
    raise BlockInvalid(
        Reason.LAST_COMMIT_BAD_SIGNATURE,
        f"last_commit.signatures[{position}]",
        f"validator index {commit.signatures[position].validator_index}",
    )


# Evidence item tags sit below every commit tag (commit positions < VALIDATORS_MAX);
# each item has room for a signature per validator (a light-client attack's certificate).
_EVIDENCE_TAG_BASE = -1 - VALIDATORS_MAX
_EVIDENCE_TAGS_PER_ITEM = VALIDATORS_MAX


def _evidence_items(
    block: Block,
    state: ChainState,
    validators_at: Callable[[int], ValidatorSet | None] | None,
    commit_at: Callable[[int], Commit | None] | None,
) -> list[SigItem]:
    items: list[SigItem] = []
    seen: set[bytes] = set()
    # One item per conflicting header (consensus/attack.py, conflict_key): the
    # ledger acts on an attack once, however many forms of its evidence exist.
    attacks: set[tuple[int, bytes]] = set()
    for position, ev in enumerate(block.evidence):
        where = f"evidence[{position}]"
        if ev.hash in seen:
            raise BlockInvalid(Reason.EVIDENCE_DUPLICATE, where)
        seen.add(ev.hash)
        if isinstance(ev, LightClientAttackEvidence):
            key = conflict_key(ev)
            if key in attacks:
                raise BlockInvalid(
                    Reason.EVIDENCE_DUPLICATE, where, "another item of the same conflicting header"
                )
            attacks.add(key)
        tag = _EVIDENCE_TAG_BASE - _EVIDENCE_TAGS_PER_ITEM * position
        if isinstance(ev, LightClientAttackEvidence):
            items += _light_attack_items(ev, state, validators_at, commit_at, where, tag)
        else:
            items += _duplicate_vote_items(ev, block, state, validators_at, where, tag)
    return items


def _duplicate_vote_items(
    ev: DuplicateVoteEvidence,
    block: Block,
    state: ChainState,
    validators_at: Callable[[int], ValidatorSet | None] | None,
    where: str,
    tag: int,
) -> list[SigItem]:
    height = block.header.height
    reason = ev.structural_error()
    if reason:
        raise BlockInvalid(Reason.EVIDENCE_INVALID, where, reason)
    if ev.height >= height:
        raise BlockInvalid(Reason.EVIDENCE_INVALID, where, "not from an earlier height")
    if height - ev.height > state.params.evidence_age_blocks_max:
        raise BlockInvalid(Reason.EVIDENCE_TOO_OLD, where, f"from height {ev.height}")
    vset = _validators_at(state, validators_at, ev.height)
    if vset is None:
        raise BlockInvalid(Reason.EVIDENCE_INVALID, where, f"validator set at {ev.height} unknown")
    index = vset.index_of(ev.validator_address)
    if index is None or index != ev.vote_a.validator_index:
        raise BlockInvalid(Reason.EVIDENCE_INVALID, where, "validator not in the set")
    pk = vset[index].public_key
    items: list[SigItem] = []
    for k, vote in enumerate((ev.vote_a, ev.vote_b)):
        if len(vote.signature) != SIGNATURE_BYTES:
            raise BlockInvalid(Reason.EVIDENCE_BAD_SIGNATURE, where, "not 64 bytes")
        items.append((tag - k, pk, vote.sign_bytes(state.chain_id), vote.signature))
    return items


def _light_attack_items(
    ev: LightClientAttackEvidence,
    state: ChainState,
    validators_at: Callable[[int], ValidatorSet | None] | None,
    commit_at: Callable[[int], Commit | None] | None,
    where: str,
    tag: int,
) -> list[SigItem]:
    """consensus/attack.py's checks but the signatures, which join the block's parallel pass."""
    chain = ChainView(
        chain_id=state.chain_id,
        next_height=state.last_height + 1,
        evidence_age_blocks_max=state.params.evidence_age_blocks_max,
        validators_at=lambda h: _validators_at(state, validators_at, h),
        commit_at=commit_at or _no_commit,
    )
    try:
        screened = screen_light_attack(ev, chain)
    except AttackInvalid as e:
        reason = (
            Reason.EVIDENCE_TOO_OLD if e.check is AttackCheck.TOO_OLD else Reason.EVIDENCE_INVALID
        )
        raise BlockInvalid(reason, where, str(e)) from None
    return [(tag - k, *item) for k, item in enumerate(screened.items)]


def _no_commit(height: int) -> Commit | None:
    return None


def _validators_at(
    state: ChainState,
    validators_at: Callable[[int], ValidatorSet | None] | None,
    height: int,
) -> ValidatorSet | None:
    if height == state.last_height and state.last_validators is not None:
        return state.last_validators
    if height == state.last_height + 1:
        return state.validators
    return None if validators_at is None else validators_at(height)


# ---------------------------------------------------------------- the parallel pass


# Transactions per prepared chunk while transactions need verifying: 32
# spreads the chunk's fixed cost (about 12 us of Python) to 0.4 us a tx, and
# the preparation is split by three caller verifications so the pool never
# waits for the GIL for more than about 30 us. Along a run of cached
# transactions the chunk doubles up to the maximum, where per-chunk overhead
# is all there is.
CHUNK_TXS_MIN = 4 * CHUNK_ITEMS
CHUNK_TXS_MAX = 1024
# Chunks prepared before their transactions are fed to the application, so
# the pool has signatures queued before the caller's first step.
CHUNKS_AHEAD = 2
# The caller's work after the last transaction (the application's end of
# block, the Merkle and results roots, the duplicate check), in transaction
# steps: about one step per this many transactions. The pacing leaves the
# pool that much verification to overlap it with.
TAIL_STEPS_PER_TX = 16
assert CHUNK_TXS_MIN & (CHUNK_TXS_MIN - 1) == 0 and CHUNK_TXS_MAX % CHUNK_TXS_MIN == 0

_first = operator.itemgetter(0)
_second = operator.itemgetter(1)
_third = operator.itemgetter(2)


class _Stream:
    """Feeds the application decoded transactions while queueing their signatures.

    Per chunk: hash each transaction (its id), take the chunk from the cache
    if every transaction in it was verified at admission, else decode it
    (one canonical re-encoding for the whole chunk), queue the signatures of
    the ones not cached, and fold the chunk's Merkle subtree. Chunks are
    powers of two aligned on their size, so each chunk's root is a node of
    the RFC 6962 tree; `data_root` joins them. Between the application's
    steps the caller's thread verifies a queued signature when it should
    (VerifyPass.help).
    """

    def __init__(
        self, block: Block, chain_id: str, verifier: SignatureVerifier, vpass: VerifyPass
    ) -> None:
        self.raw = block.txs
        self.chain_id = chain_id
        self.get_many = verifier.cache.get_many
        self.vpass = vpass
        self.hash_new = verifier.suite.hash_new  # the chain's: ids and Merkle leaves
        # Sign bytes of a canonical tx are this prefix plus the tx's encoding
        # without its array marker and signature field (see tx_sign_bytes).
        self.sign_prefix = b"\x95" + encode(TAG_TX) + encode(chain_id)
        self.chain_ids = {chain_id}
        self.ids: list[bytes] = []
        self.txs: list[Transaction] = []
        self.peaks: list[tuple[int, bytes]] = []  # (leaves, root) of complete aligned subtrees
        self.tail_root: bytes | None = None  # root of a last, incomplete chunk
        self.malformed: tuple[int, str] | None = None
        self.next = 0  # first transaction not prepared yet
        self.size = CHUNK_TXS_MIN
        self.misses = 0  # transactions prepared that needed verifying

    def data_root(self) -> bytes:
        """The Merkle root of every transaction, from the chunks' subtree roots."""
        assert self.next == len(self.raw) and self.malformed is None
        return _join_peaks(self.peaks, self.tail_root)

    def __iter__(self) -> Iterator[Transaction]:
        n = len(self.raw)
        prepare = self._prepare
        ready: deque[tuple[list[Transaction], bool]] = deque()
        while len(ready) < CHUNKS_AHEAD and (chunk := prepare()) is not None:
            ready.append(chunk)
        help_ = self.vpass.help
        steps_left = n + n // TAIL_STEPS_PER_TX
        while ready:
            txs, cached = ready.popleft()
            if (chunk := prepare()) is not None:
                ready.append(chunk)
            to_come = (n - self.next) * self.misses // max(self.next, 1)
            if cached:
                help_(steps_left, to_come)
                yield from txs
                steps_left -= len(txs)
                continue
            for tx in txs:
                yield tx
                steps_left -= 1
                help_(steps_left, to_come)

    def _prepare(self) -> tuple[list[Transaction], bool] | None:
        """Hash, look up or decode, and queue the next chunk; None at the end or when malformed."""
        start = self.next
        if start >= len(self.raw) or self.malformed is not None:
            return None
        size = self.size
        chunk = self.raw[start : start + size]
        hash_new = self.hash_new
        ids = [hash_new(t).digest() for t in chunk]
        hits = self.get_many(ids)
        cached = None not in hits and set(map(_first, hits)) == self.chain_ids  # type: ignore[arg-type]
        help_now = self.vpass.help_now
        if cached:
            txs: list[Transaction] = list(map(_second, hits))  # type: ignore[arg-type]
            leaves: list[bytes] = list(map(_third, hits))  # type: ignore[arg-type]
        else:
            help_now()  # a chunk to decode is a long stretch of Python: let the pool in
            txs, leaves = self._decode(chunk, start, hits)
        self.ids += ids
        self.txs += txs
        self.next = start + len(chunk)
        if self.malformed is not None:
            return txs, False
        if not cached:
            help_now()
        if len(chunk) == size:
            _push_peak(self.peaks, size, merkle.root_from_leaf_hashes(leaves))
        else:
            self.tail_root = merkle.root_from_leaf_hashes(leaves)
        following = self.next
        self.size = (
            min(2 * size, CHUNK_TXS_MAX, following & -following) if cached else CHUNK_TXS_MIN
        )
        return txs, cached

    def _decode(
        self, chunk: Sequence[bytes], start: int, hits: list[CachedTx | None]
    ) -> tuple[list[Transaction], list[bytes]]:
        """Decode a chunk that is not all cached and queue the signatures it needs verified."""
        columns = _decode_chunk(chunk)
        if columns is None:
            return self._decode_slowly(chunk, start, hits)
        pks, nonces, payloads, sigs = columns
        prefix = self.sign_prefix
        msgs = [prefix + t[1:-_SIG_FIELD_BYTES] for t in chunk]
        items: list[SigItem] = list(
            zip(range(start, start + len(chunk)), pks, msgs, sigs, strict=True)
        )
        if hits.count(None) != len(hits):  # some cached: verify only the others
            chain_id = self.chain_id
            items = [
                it for it, hit in zip(items, hits, strict=True) if hit is None or hit[0] != chain_id
            ]
        self.misses += len(items)
        vpass = self.vpass
        vpass.submit(items)
        vpass.help_now()
        txs = _transactions(pks, nonces, payloads, sigs)
        vpass.help_now()
        hash_new = self.hash_new
        return txs, [hash_new(b"\x00" + t).digest() for t in chunk]

    def _decode_slowly(
        self, chunk: Sequence[bytes], start: int, hits: list[CachedTx | None]
    ) -> tuple[list[Transaction], list[bytes]]:
        """One transaction at a time up to the first malformed one, which is recorded."""
        chain_id = self.chain_id
        prefix = self.sign_prefix
        txs: list[Transaction] = []
        items: list[SigItem] = []
        for k, t in enumerate(chunk):
            try:
                tx = Transaction.decode(t)
            except DecodeError as e:
                self.malformed = (start + k, str(e))
                break
            txs.append(tx)
            hit = hits[k]
            if hit is None or hit[0] != chain_id:
                items.append((start + k, tx.sender, prefix + t[1:-_SIG_FIELD_BYTES], tx.signature))
        assert self.malformed is not None, "a chunk that failed to decode has a malformed tx"
        self.misses += len(items)
        self.vpass.submit(items)
        return txs, []


# A chunk's transactions as columns: senders, nonces, payloads, signatures.
_TxColumns = tuple[tuple[bytes, ...], tuple[int, ...], tuple[bytes, ...], tuple[bytes, ...]]
# Transaction's slot setters: what its frozen dataclass __init__ calls through
# object.__setattr__, without the call per field (0.26 us a tx instead of 0.44).
_new = object.__new__
_set_sender, _set_nonce, _set_payload, _set_signature = (
    Transaction.__dict__[name].__set__ for name in ("sender", "nonce", "payload", "signature")
)


def _transactions(
    pks: Sequence[bytes], nonces: Sequence[int], payloads: Sequence[bytes], sigs: Sequence[bytes]
) -> list[Transaction]:
    """A Transaction for each row of the columns, already checked by _decode_chunk."""
    out: list[Transaction] = []
    append = out.append
    for sender, nonce, payload, signature in zip(pks, nonces, payloads, sigs, strict=True):
        tx = _new(Transaction)
        _set_sender(tx, sender)
        _set_nonce(tx, nonce)
        _set_payload(tx, payload)
        _set_signature(tx, signature)
        append(tx)
    return out


def decode_txs(raws: Sequence[bytes]) -> list[Transaction] | None:
    """Every one of `raws` decoded in one pass if all are canonical transactions, else None.

    For the mempool's admitted batches: the same bulk decoder as block
    validation, so it accepts exactly what Transaction.decode accepts (a
    caller that gets None decodes one at a time to learn which one failed).
    """
    if not raws:
        return []
    columns = _decode_chunk(raws)
    if columns is None:
        return None
    return _transactions(*columns)


def _decode_chunk(chunk: Sequence[bytes]) -> _TxColumns | None:
    """The chunk's transactions as columns if every one is canonical, else None.

    Accepts exactly what Transaction.decode accepts, bounded and in bulk. A
    transaction is a fixarray of 4 scalars, so the fields of the whole chunk
    (each transaction without its first byte) are read as one stream of 4n
    scalars, msgpack iterating in C with containers refused by their header:
    a hostile chunk costs at most 4n objects and one copy of its bytes,
    whatever shape it claims. The shape checks run column by column in C
    (set, map, min, max), not per transaction. Re-encoding each transaction
    and comparing it with its bytes then makes every one exactly canonical,
    first byte included (comparing the concatenation would not: a field
    could straddle two transactions).
    """
    if max(map(len, chunk)) > TX_BYTES_MAX:
        return None
    data = b"".join(map(_after_first_byte, chunk))
    n = 4 * len(chunk)
    unpacker = _Unpacker(
        None,
        max_buffer_size=max(len(data), 1),
        use_list=False,
        raw=False,
        max_str_len=0,
        max_bin_len=TX_PAYLOAD_BYTES_MAX,  # the payload limit, checked by the bin's header
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    unpacker.feed(data)
    try:
        fields = tuple(islice(unpacker, n))
    except Exception:  # msgpack raises many types on hostile input
        return None
    if len(fields) != n or unpacker.tell() != len(data):
        return None
    pks, nonces, payloads, sigs = fields[0::4], fields[1::4], fields[2::4], fields[3::4]
    if not (
        set(map(type, pks + payloads + sigs)) == _BYTES
        and set(map(len, pks)) == {active().public_key_bytes}
        and set(map(len, sigs)) == _SIGNATURE_LENGTH
        and set(map(type, nonces)) == _INT
        and 0 <= min(nonces)
        and max(nonces) <= _NONCE_MAX
    ):
        return None
    if tuple(map(_pack, zip(pks, nonces, payloads, sigs, strict=True))) != tuple(chunk):
        return None
    return pks, nonces, payloads, sigs


_after_first_byte = operator.itemgetter(slice(1, None))
_SIGNATURE_LENGTH = {SIGNATURE_BYTES}
_BYTES = {bytes}
_INT = {int}


def _push_peak(peaks: list[tuple[int, bytes]], size: int, root: bytes) -> None:
    """Add the root of the next `size` leaves, a power of two aligned on its size.

    `peaks` holds (leaves, root) of complete subtrees of the RFC 6962 tree,
    sizes strictly decreasing: equal neighbours merge, as in a binary counter.
    """
    while peaks and peaks[-1][0] == size:
        _, left = peaks.pop()
        root = merkle.inner_hash(left, root)
        size *= 2
    peaks.append((size, root))


def _join_peaks(peaks: list[tuple[int, bytes]], tail_root: bytes | None) -> bytes:
    """merkle.root of all the leaves: the peaks, then a last chunk shorter than its size."""
    if tail_root is None:
        if not peaks:
            return merkle.root_from_leaf_hashes([])
        node = peaks[-1][1]
        peaks = peaks[:-1]
    else:
        node = tail_root
    for _, root in reversed(peaks):
        node = merkle.inner_hash(root, node)
    return node


def _run_pass(
    block: Block,
    state: ChainState,
    app: Application,
    verifier: SignatureVerifier,
    early_items: list[SigItem],
) -> ValidatedBlock:
    vpass = verifier.open_pass()
    n = len(block.txs)
    try:
        if early_items:
            # The commit certificate and evidence first, on every core: in a
            # block of cached txs the pool would otherwise wait for the GIL
            # through all of the caller's Python.
            vpass.submit(early_items)
            vpass.help_until_empty()
        stream = _Stream(block, state.chain_id, verifier, vpass)
        execution = app.execute_block(block.header, stream, block.evidence)
        # What does not depend on the signatures is computed while the pool still
        # verifies (the stream's pacing leaves it that much work); checked below.
        complete = stream.next == n and stream.malformed is None and len(stream.txs) == n
        data_root = stream.data_root() if complete else b""
        unique = complete and len(set(stream.ids)) == n
        executed = len(execution.tx_results) == n
        results = results_hash(execution.tx_results) if executed else b""
    finally:
        failed = vpass.finish()
    if failed:
        commit_failed = [t for t in failed if _EVIDENCE_TAG_BASE < t < 0]
        if commit_failed:
            assert block.last_commit is not None
            _raise_commit_signature(block.last_commit, -1 - max(commit_failed))
        evidence_failed = [t for t in failed if t <= _EVIDENCE_TAG_BASE]
        if evidence_failed:
            position = (_EVIDENCE_TAG_BASE - max(evidence_failed)) // _EVIDENCE_TAGS_PER_ITEM
            raise BlockInvalid(Reason.EVIDENCE_BAD_SIGNATURE, f"evidence[{position}]")
    first_bad_sig = min((t for t in failed if t >= 0), default=n)
    if stream.malformed is not None and stream.malformed[0] <= first_bad_sig:
        index, why = stream.malformed
        raise BlockInvalid(Reason.TX_MALFORMED, "txs", why, tx_index=index)
    if first_bad_sig < n:
        raise BlockInvalid(Reason.TX_BAD_SIGNATURE, "txs", tx_index=first_bad_sig)
    if not complete or not executed:
        raise BlockInvalid(Reason.MALFORMED, "txs", "the application did not execute every tx")
    if data_root != block.header.data_hash:
        raise BlockInvalid(Reason.WRONG_DATA_HASH, "header.data_hash")
    ids = stream.ids
    if not unique:
        raise BlockInvalid(Reason.TX_DUPLICATE, "txs", tx_index=_first_duplicate(ids))
    after_next = _apply_updates(state.next_validators, execution.validator_updates)
    return ValidatedBlock(
        block=block,
        block_hash=block.hash,
        txs=tuple(stream.txs),
        tx_ids=tuple(ids),
        execution=execution,
        results_hash=results,
        validators_after_next=after_next,
    )


def _first_duplicate(ids: Sequence[bytes]) -> int:
    seen: set[bytes] = set()
    for i, tx_id in enumerate(ids):
        if tx_id in seen:
            return i
        seen.add(tx_id)
    raise AssertionError("no duplicate")


def _apply_updates(vset: ValidatorSet, updates: Sequence[ValidatorUpdate]) -> ValidatorSet:
    if not updates:
        return vset
    powers = {v.public_key: v.power for v in vset}
    for u in updates:
        if u.power == 0:
            powers.pop(u.public_key, None)
        else:
            powers[u.public_key] = u.power
    try:
        return ValidatorSet.of(Validator(pk, p) for pk, p in powers.items())
    except DecodeError as e:
        raise BlockInvalid(Reason.VALIDATOR_UPDATES_INVALID, "validator_updates", str(e)) from None


def _encoded_size(block: Block) -> int:
    """len(block.encode()) without building the encoding (the txs dominate it)."""
    txs = block.txs
    n = len(txs)
    if n and set(map(type, txs)) != _BYTES:
        raise BlockInvalid(Reason.MALFORMED, "txs", "not bytes")
    lengths = list(map(len, txs))
    # Each tx is a bin: 2 bytes of header below 256 bytes, 3 below 64 KiB, 5 above.
    txs_bytes = sum(lengths) + 2 * n + sum(map(_BIN8_BYTES_MAX.__lt__, lengths))
    if n and max(lengths) > _BIN16_BYTES_MAX:
        txs_bytes += 2 * sum(map(_BIN16_BYTES_MAX.__lt__, lengths))
    array_header = 1 if n < 16 else 3 if n < 65536 else 5
    commit = b"\xc0" if block.last_commit is None else block.last_commit.encode()
    evidence = encode([e.to_obj() for e in block.evidence])
    return 1 + len(block.header.encode()) + array_header + txs_bytes + len(commit) + len(evidence)


_BIN8_BYTES_MAX = 255
_BIN16_BYTES_MAX = 65535
