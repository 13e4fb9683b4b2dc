"""The block validation core: every rejection reason, first-offender naming, the cache, fuzzing."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import consensus.sigverify as sigverify
from apps.ledger import Ledger, transfer_tx
from consensus.app import BlockExecution, ValidatorUpdate, results_hash
from consensus.codec import DecodeError
from consensus.crypto import PrivateKey
from consensus.genesis import ConsensusParams, Genesis, GenesisValidator
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Header,
    Transaction,
    Vote,
    VoteType,
    data_hash,
    precommit_sign_bytes,
)
from consensus.validation import (
    BlockInvalid,
    ChainState,
    Reason,
    ValidatedBlock,
    build_block,
    next_chain_state,
    validate_block,
    verify_commit,
)

CHAIN = "val-test"
T0 = 1_000_000


class Chain:
    """A 4-validator ledger chain that advances by real, fully signed blocks."""

    def __init__(self, params: ConsensusParams | None = None) -> None:
        self.vkeys = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
        self.users = [PrivateKey(bytes([100 + i]) * 32) for i in range(8)]
        self.genesis = Genesis(
            CHAIN,
            T0,
            tuple(GenesisValidator(f"v{i}", k.public_key, 10) for i, k in enumerate(self.vkeys)),
            "ledger",
            {"accounts": {u.address.hex(): 1_000_000 for u in self.users}},
            params or ConsensusParams(),
        )
        self.app = Ledger.from_genesis(self.genesis)
        self.state = ChainState.from_genesis(self.genesis, self.app.app_hash)
        self.verifier = sigverify.SignatureVerifier(threads=1)
        self.commit: Commit | None = None
        self.nonces = [0] * len(self.users)
        self.time_ms = T0

    @property
    def proposer(self) -> bytes:
        return self.state.validators[0].address

    def tx(self, user: int, amount: int = 5, to: int = 0) -> Transaction:
        tx = transfer_tx(self.users[user], CHAIN, self.nonces[user], self.users[to].address, amount)
        self.nonces[user] += 1
        return tx

    def block(self, txs: Sequence[bytes] = (), **header: Any) -> Block:
        b = build_block(
            self.state,
            list(txs),
            time_ms=self.time_ms + 1_000,
            proposer_address=self.proposer,
            last_commit=self.commit,
        )
        return dataclasses.replace(b, header=dataclasses.replace(b.header, **header))

    def with_header(self, b: Block, **header: Any) -> Block:
        return dataclasses.replace(b, header=dataclasses.replace(b.header, **header))

    def validate(self, b: Block, state: ChainState | None = None, **kw: Any) -> ValidatedBlock:
        kw.setdefault("now_ms", self.time_ms + 1_000)
        return validate_block(b, state or self.state, self.app, self.verifier, **kw)

    def sign_commit(self, vb: ValidatedBlock, signers: Iterable[int] | None = None) -> Commit:
        vset = self.state.validators
        message = precommit_sign_bytes(CHAIN, vb.block.height, 0, vb.block_hash)
        by_address = {k.address: k for k in self.vkeys}
        chosen = range(len(vset)) if signers is None else signers
        sigs = [CommitSig(i, by_address[vset[i].address].sign(message)) for i in chosen]
        return Commit(vb.block.height, 0, vb.block_hash, tuple(sigs))

    def advance(self, txs: Sequence[bytes] = ()) -> ValidatedBlock:
        vb = self.validate(self.block(txs))
        commit = self.sign_commit(vb)
        self.app.commit(vb.execution)
        self.state = next_chain_state(self.state, vb)
        self.commit = commit
        self.time_ms += 1_000
        return vb

    def evidence(self, height: int, signer: int = 0) -> DuplicateVoteEvidence:
        vset = self.state.validators
        key = self.vkeys[signer]
        index = vset.index_of(key.address)
        assert index is not None
        a, b = sorted([b"\x01" * 32, b"\x02" * 32])
        va = Vote.create(key, CHAIN, VoteType.PREVOTE, height, 0, a, index)
        vb = Vote.create(key, CHAIN, VoteType.PREVOTE, height, 0, b, index)
        return DuplicateVoteEvidence(va, vb)


@pytest.fixture
def chain() -> Iterator[Chain]:
    c = Chain()
    c.advance()
    yield c
    c.verifier.close()


def reject(chain: Chain, b: Block, reason: Reason, **kw: Any) -> BlockInvalid:
    with pytest.raises(BlockInvalid) as info:
        chain.validate(b, **kw)
    assert info.value.reason is reason, str(info.value)
    return info.value


# ---------------------------------------------------------------- valid blocks


def test_valid_block_executes_transfers_and_leaves_committed_state(chain: Chain) -> None:
    """A valid block returns per-tx results, ids and writes; the app's state is untouched."""
    txs = [chain.tx(1, 7, 2), chain.tx(1, 3, 2), chain.tx(2, 10**9, 3)]
    before = chain.app.app_hash
    vb = chain.validate(chain.block([t.encode() for t in txs]))
    assert [r.code for r in vb.execution.tx_results] == [0, 0, 3]  # last: insufficient funds
    assert vb.tx_ids == tuple(t.hash for t in txs)
    assert vb.txs == tuple(txs)
    assert vb.results_hash == results_hash(vb.execution.tx_results)
    assert chain.app.app_hash == before
    assert chain.app.commit(vb.execution) == vb.execution.app_hash
    balance = chain.app.query("account", chain.users[2].address).value
    assert balance == b"\x92\xce\x00\x0f\x42\x4a\x01"  # [1_000_010, 1] canonical


def test_chain_advances_and_validators_follow_updates(chain: Chain) -> None:
    """next_chain_state shifts the sets one height and applies the app's updates at h + 2."""
    vb = chain.advance([chain.tx(1).encode()])
    assert chain.state.last_height == 2
    assert chain.state.last_block_hash == vb.block_hash
    assert chain.state.app_hash == vb.execution.app_hash
    chain.advance()
    assert chain.state.last_height == 3


def test_verify_commit_accepts_quorum_and_names_bad_signature(chain: Chain) -> None:
    """verify_commit passes a real certificate and names the first forged signature."""
    assert chain.commit is not None and chain.state.last_validators is not None
    vset = chain.state.last_validators
    verify_commit(chain.commit, CHAIN, vset, chain.verifier)
    sigs = list(chain.commit.signatures)
    sigs[2] = CommitSig(sigs[2].validator_index, bytes(64))
    with pytest.raises(BlockInvalid) as info:
        verify_commit(
            dataclasses.replace(chain.commit, signatures=tuple(sigs)), CHAIN, vset, chain.verifier
        )
    assert info.value.reason is Reason.LAST_COMMIT_BAD_SIGNATURE
    assert info.value.field == "last_commit.signatures[2]"


# ---------------------------------------------------------------- one test per reason


def test_malformed(chain: Chain) -> None:
    """Something that is not a Block is MALFORMED."""
    with pytest.raises(BlockInvalid) as info:
        validate_block(
            b"\x94\x00",  # type: ignore[arg-type]
            chain.state,
            chain.app,
            chain.verifier,
            now_ms=0,
        )
    assert info.value.reason is Reason.MALFORMED


def test_block_too_large(chain: Chain) -> None:
    """A block over params.block_bytes_max is rejected."""
    b = chain.block([chain.tx(1).encode() for _ in range(3)])
    size = len(b.encode())
    state = dataclasses.replace(
        chain.state, params=dataclasses.replace(chain.state.params, block_bytes_max=size - 1)
    )
    reject(chain, b, Reason.BLOCK_TOO_LARGE, state=state)
    ok = dataclasses.replace(state, params=dataclasses.replace(state.params, block_bytes_max=size))
    chain.validate(b, state=ok)  # exactly at the limit is fine: the size is computed exactly


def test_too_many_txs(chain: Chain) -> None:
    """More transactions than params.block_txs_max."""
    state = dataclasses.replace(
        chain.state, params=dataclasses.replace(chain.state.params, block_txs_max=1)
    )
    reject(
        chain,
        chain.block([chain.tx(1).encode(), chain.tx(1).encode()]),
        Reason.TOO_MANY_TXS,
        state=state,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"chain_id": "other"}, Reason.WRONG_CHAIN_ID),
        ({"height": 3}, Reason.WRONG_HEIGHT),
        ({"last_block_hash": b"\x11" * 32}, Reason.WRONG_LAST_BLOCK_HASH),
        ({"validators_hash": b"\x22" * 32}, Reason.WRONG_VALIDATORS_HASH),
        ({"next_validators_hash": b"\x22" * 32}, Reason.WRONG_NEXT_VALIDATORS_HASH),
        ({"app_hash": b"\x33" * 32}, Reason.WRONG_APP_HASH),
        ({"last_results_hash": b"\x44" * 32}, Reason.WRONG_LAST_RESULTS_HASH),
        ({"last_commit_hash": b"\x55" * 32}, Reason.WRONG_LAST_COMMIT_HASH),
        ({"evidence_hash": b"\x66" * 32}, Reason.WRONG_EVIDENCE_HASH),
        ({"data_hash": b"\x77" * 32}, Reason.WRONG_DATA_HASH),
    ],
)
def test_header_links(chain: Chain, fields: dict[str, Any], reason: Reason) -> None:
    """Each header link that does not match the chain state is rejected with its own reason."""
    err = reject(chain, chain.block([chain.tx(1).encode()], **fields), reason)
    assert err.field == f"header.{next(iter(fields))}"


def test_time_not_monotonic(chain: Chain) -> None:
    """A block time not after the previous block's time."""
    reject(chain, chain.block(time_ms=chain.state.last_block_time_ms), Reason.TIME_NOT_MONOTONIC)


def test_time_too_far_ahead(chain: Chain) -> None:
    """A block time more than the drift bound ahead of our clock."""
    now = chain.time_ms + 1_000
    late = now + chain.state.params.block_time_drift_ms_max
    chain.validate(chain.block(time_ms=late), now_ms=now)  # at the bound: accepted
    reject(chain, chain.block(time_ms=late + 1), Reason.TIME_TOO_FAR_AHEAD, now_ms=now)


def test_wrong_proposer(chain: Chain) -> None:
    """A block whose header names as its proposer no validator of the height."""
    b = chain.with_header(chain.block(), proposer_address=b"\x09" * 20)
    reject(chain, b, Reason.WRONG_PROPOSER)


def test_last_commit_missing(chain: Chain) -> None:
    """Height 2 without the commit certificate of height 1."""
    b = chain.block()
    reject(chain, dataclasses.replace(b, last_commit=None), Reason.LAST_COMMIT_MISSING)


def test_last_commit_unexpected_at_height_one() -> None:
    """A commit certificate at height 1, where there is nothing to certify."""
    c = Chain()
    commit = Commit(1, 0, b"\x01" * 32, (CommitSig(0, bytes(64)),))
    b = dataclasses.replace(c.block(), last_commit=commit)
    reject(c, b, Reason.LAST_COMMIT_UNEXPECTED)
    c.verifier.close()


def _with_commit(chain: Chain, commit: Commit) -> Block:
    b = chain.block()
    return chain.with_header(
        dataclasses.replace(b, last_commit=commit), last_commit_hash=commit.hash
    )


def test_last_commit_wrong_height(chain: Chain) -> None:
    """A certificate for another height."""
    assert chain.commit is not None
    reject(
        chain,
        _with_commit(chain, dataclasses.replace(chain.commit, height=5)),
        Reason.LAST_COMMIT_WRONG_HEIGHT,
    )


def test_last_commit_wrong_block(chain: Chain) -> None:
    """A certificate for another block at the right height."""
    assert chain.commit is not None
    bad = dataclasses.replace(chain.commit, block_hash=b"\x12" * 32)
    reject(chain, _with_commit(chain, bad), Reason.LAST_COMMIT_WRONG_BLOCK)


def test_last_commit_duplicate_signer(chain: Chain) -> None:
    """The same validator counted twice."""
    assert chain.commit is not None
    s = chain.commit.signatures
    bad = dataclasses.replace(chain.commit, signatures=(s[0], s[0], s[1], s[2]))
    reject(chain, _with_commit(chain, bad), Reason.LAST_COMMIT_DUPLICATE_SIGNER)


def test_last_commit_unknown_signer(chain: Chain) -> None:
    """A signature by a validator index outside the set."""
    assert chain.commit is not None
    bad = dataclasses.replace(
        chain.commit, signatures=(*chain.commit.signatures, CommitSig(9, bytes(64)))
    )
    reject(chain, _with_commit(chain, bad), Reason.LAST_COMMIT_UNKNOWN_SIGNER)


def test_last_commit_no_quorum(chain: Chain) -> None:
    """Two of four equal validators are not more than two thirds."""
    assert chain.commit is not None
    bad = dataclasses.replace(chain.commit, signatures=chain.commit.signatures[:2])
    reject(chain, _with_commit(chain, bad), Reason.LAST_COMMIT_NO_QUORUM)


def test_last_commit_bad_signature(chain: Chain) -> None:
    """A forged precommit signature in an otherwise sufficient certificate."""
    assert chain.commit is not None
    s = list(chain.commit.signatures)
    s[1] = CommitSig(s[1].validator_index, s[1].signature[:-1] + bytes([s[1].signature[-1] ^ 1]))
    bad = dataclasses.replace(chain.commit, signatures=tuple(s))
    err = reject(chain, _with_commit(chain, bad), Reason.LAST_COMMIT_BAD_SIGNATURE)
    assert err.field == "last_commit.signatures[1]"


def _with_evidence(chain: Chain, evidence: Sequence[DuplicateVoteEvidence]) -> Block:
    return build_block(
        chain.state,
        [],
        time_ms=chain.time_ms + 1_000,
        proposer_address=chain.proposer,
        last_commit=chain.commit,
        evidence=evidence,
    )


def test_valid_evidence_is_accepted(chain: Chain) -> None:
    """Real equivocation evidence from the previous height passes."""
    chain.validate(_with_evidence(chain, [chain.evidence(1)]))


def test_evidence_invalid_from_future_height(chain: Chain) -> None:
    """Evidence must be from an earlier height than the block."""
    reject(chain, _with_evidence(chain, [chain.evidence(2)]), Reason.EVIDENCE_INVALID)


def test_evidence_bad_signature(chain: Chain) -> None:
    """Evidence whose second vote is not signed by the validator."""
    ev = chain.evidence(1)
    forged = DuplicateVoteEvidence(ev.vote_a, dataclasses.replace(ev.vote_b, signature=bytes(64)))
    err = reject(chain, _with_evidence(chain, [forged]), Reason.EVIDENCE_BAD_SIGNATURE)
    assert err.field == "evidence[0]"


def test_evidence_duplicate(chain: Chain) -> None:
    """The same evidence twice in one block."""
    ev = chain.evidence(1)
    reject(chain, _with_evidence(chain, [ev, ev]), Reason.EVIDENCE_DUPLICATE)


def test_evidence_too_old() -> None:
    """Evidence older than params.evidence_age_blocks_max."""
    c = Chain(ConsensusParams(evidence_age_blocks_max=1))
    c.advance()
    ev = c.evidence(1)
    c.advance()  # now at height 3: evidence from height 1 is 2 blocks old
    reject(
        c,
        _with_evidence(c, [ev]),
        Reason.EVIDENCE_TOO_OLD,
        validators_at=lambda h: c.state.validators,
    )
    c.verifier.close()


def test_tx_malformed_names_index(chain: Chain) -> None:
    """A transaction that is not a canonical Transaction encoding, named by index."""
    txs = [chain.tx(1).encode(), b"\x94\xc4\x01", chain.tx(1).encode()]
    err = reject(chain, chain.block(txs), Reason.TX_MALFORMED)
    assert err.tx_index == 1


def test_tx_non_canonical_encoding_is_malformed(chain: Chain) -> None:
    """A transaction whose nonce uses a longer integer form than needed is rejected."""
    tx = chain.tx(1)
    canonical = tx.encode()
    # nonce 0 as uint8 (0xcc 0x00) instead of fixint 0x00; everything else unchanged
    longer = canonical[:35] + b"\xcc" + canonical[35:]
    err = reject(chain, chain.block([longer]), Reason.TX_MALFORMED)
    assert err.tx_index == 0


def test_tx_duplicate(chain: Chain) -> None:
    """The same transaction twice in one block."""
    t = chain.tx(1).encode()
    err = reject(chain, chain.block([chain.tx(2).encode(), t, t]), Reason.TX_DUPLICATE)
    assert err.tx_index == 2


def test_tx_bad_signature_names_first(chain: Chain) -> None:
    """Among several bad signatures the first offending transaction is named."""
    txs = [chain.tx(1) for _ in range(40)]
    enc = [t.encode() for t in txs]
    for i in (33, 17):
        enc[i] = Transaction(txs[i].sender, txs[i].nonce, txs[i].payload, bytes(64)).encode()
    err = reject(chain, chain.block(enc), Reason.TX_BAD_SIGNATURE)
    assert err.tx_index == 17


def test_first_offender_across_kinds(chain: Chain) -> None:
    """A bad signature before a malformed tx is the one named, and vice versa."""
    good = [chain.tx(1) for _ in range(4)]
    enc = [t.encode() for t in good]
    forged = Transaction(good[1].sender, good[1].nonce, good[1].payload, bytes(64)).encode()
    err = reject(chain, chain.block([enc[0], forged, b"junk", enc[3]]), Reason.TX_BAD_SIGNATURE)
    assert err.tx_index == 1
    err = reject(chain, chain.block([enc[0], b"junk", forged, enc[3]]), Reason.TX_MALFORMED)
    assert err.tx_index == 1


def test_tx_signed_for_another_chain(chain: Chain) -> None:
    """A transaction signed for another chain id does not verify here."""
    tx = transfer_tx(chain.users[1], "other-chain", 0, chain.users[2].address, 1)
    err = reject(chain, chain.block([tx.encode()]), Reason.TX_BAD_SIGNATURE)
    assert err.tx_index == 0


class _RemovesEveryone:
    """An application that returns updates removing the whole validator set."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.name = "ledger"

    def execute_block(
        self, header: Header, txs: Iterable[Transaction], evidence: Any
    ) -> BlockExecution:
        ex = self.inner.execute_block(header, txs, evidence)
        header_validators = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]  # Chain's keys
        return dataclasses.replace(
            ex, validator_updates=tuple(ValidatorUpdate(v.public_key, 0) for v in header_validators)
        )


def test_validator_updates_invalid(chain: Chain) -> None:
    """An application whose updates would leave no validators invalidates the block."""
    with pytest.raises(BlockInvalid) as info:
        validate_block(
            chain.block(),
            chain.state,
            _RemovesEveryone(chain.app),  # type: ignore[arg-type]
            chain.verifier,
            now_ms=chain.time_ms + 1_000,
        )
    assert info.value.reason is Reason.VALIDATOR_UPDATES_INVALID


def test_every_reason_has_a_test() -> None:
    """This file raises every Reason at least once (checked by name, so none is forgotten)."""
    text = open(__file__).read()
    missing = [r.name for r in Reason if f"Reason.{r.name}" not in text]
    assert missing == []


# ---------------------------------------------------------------- the cache


def test_cached_signatures_are_not_verified_again(chain: Chain, verified: list[bytes]) -> None:
    """Txs verified at admission cost no verification in the block; uncached ones do."""
    txs = [chain.tx(i % 4 + 1) for i in range(20)]
    for t in txs[:15]:
        assert chain.verifier.verify_tx(t.hash, t, CHAIN)
    assert len(verified) == 15
    for t in txs[:15]:
        assert chain.verifier.verify_tx(t.hash, t, CHAIN)  # admission again: cached
    assert len(verified) == 15
    verified.clear()
    vb = chain.validate(chain.block([t.encode() for t in txs]))
    assert chain.commit is not None
    commit_sigs = [s.signature for s in chain.commit.signatures]  # same pass, never cached
    assert sorted(verified) == sorted([t.signature for t in txs[15:]] + commit_sigs)
    assert all(r.ok for r in vb.execution.tx_results)


@pytest.mark.parametrize("part", ["signature", "sender", "nonce", "payload"])
def test_tx_differing_from_cached_is_verified_afresh(chain: Chain, part: str) -> None:
    """A tx that differs from a cached one in any field is verified again and rejected."""
    tx = chain.tx(1)
    assert chain.verifier.verify_tx(tx.hash, tx, CHAIN)
    changed = {
        "signature": dataclasses.replace(
            tx, signature=tx.signature[:5] + bytes([tx.signature[5] ^ 1]) + tx.signature[6:]
        ),
        "sender": dataclasses.replace(tx, sender=chain.users[2].public_key),
        "nonce": dataclasses.replace(tx, nonce=tx.nonce + 1),
        "payload": dataclasses.replace(tx, payload=tx.payload[:-1] + bytes([tx.payload[-1] ^ 1])),
    }[part]
    assert not chain.verifier.verify_tx(changed.hash, changed, CHAIN)
    err = reject(chain, chain.block([tx.encode(), changed.encode()]), Reason.TX_BAD_SIGNATURE)
    assert err.tx_index == 1


def test_cache_is_per_chain(chain: Chain) -> None:
    """An entry verified for one chain id is not trusted for another."""
    tx = chain.tx(1)
    assert chain.verifier.verify_tx(tx.hash, tx, CHAIN)
    assert not chain.verifier.verify_tx(tx.hash, tx, "another")


# ---------------------------------------------------------------- fuzzing


def _decode_and_validate(chain: Chain, data: bytes, now_ms: int = T0 * 2) -> ValidatedBlock:
    """A block as the node takes it from a peer: decoded within the chain's size limit
    (node/messages.py), then validated."""
    block = Block.decode(data, bytes_max=chain.state.params.block_bytes_max)
    return validate_block(
        block,
        chain.state,
        chain.app,
        chain.verifier,
        now_ms=now_ms,
    )


_FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_decode_error_or_block_invalid(chain: Chain, data: bytes) -> None:
    """Arbitrary bytes, as the node takes a block (decode, then validate), never raise
    anything but DecodeError or BlockInvalid."""
    with pytest.raises((DecodeError, BlockInvalid)):
        _decode_and_validate(chain, data)


@_FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from("xid")),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_blocks_raise_only_block_invalid(
    chain: Chain, edits: list[tuple[int, int, str]]
) -> None:
    """A valid block with bytes flipped, inserted or deleted: only ever refused or valid."""
    b = chain.block([chain.tx(1).encode(), chain.tx(2).encode()])
    chain.nonces[1] -= 1
    chain.nonces[2] -= 1
    data = bytearray(b.encode())
    for pos, value, kind in edits:
        i = pos % (len(data) + 1)
        if kind == "x" and i < len(data):
            data[i] ^= value or 1
        elif kind == "i":
            data.insert(i, value)
        elif kind == "d" and i < len(data):
            del data[i]
    try:
        vb = _decode_and_validate(chain, bytes(data), now_ms=chain.time_ms + 1_000)
    except (DecodeError, BlockInvalid):
        return
    assert vb.block.encode() == bytes(data)


_bytes32 = st.binary(min_size=32, max_size=32)


@_FUZZ
@given(
    txs=st.lists(st.binary(max_size=200), max_size=5),
    time_ms=st.integers(0, 2**53),
    hashes=st.lists(st.one_of(_bytes32, st.just(b"")), min_size=4, max_size=4),
    sigs=st.lists(st.tuples(st.integers(0, 6), st.binary(max_size=70)), max_size=6),
)
def test_random_block_objects_raise_only_block_invalid(
    chain: Chain, txs: list[bytes], time_ms: int, hashes: list[bytes], sigs: list[tuple[int, bytes]]
) -> None:
    """In-memory blocks with random fields (wrong lengths included) only ever raise BlockInvalid."""
    b = chain.block(txs, time_ms=time_ms, data_hash=data_hash(txs) if hashes[0] else hashes[1])
    commit = Commit(
        1,
        0,
        chain.state.last_block_hash if hashes[2] else hashes[3],
        tuple(CommitSig(i, s) for i, s in sigs),
    )
    b = dataclasses.replace(b, last_commit=commit)
    b = chain.with_header(b, last_commit_hash=commit.hash)
    with pytest.raises(BlockInvalid):
        chain.validate(b)


# ---------------------------------------------------------------- chunks and the Merkle root


def _cache_pattern(name: str, n: int) -> list[bool]:
    return {
        "none": [False] * n,
        "all": [True] * n,
        "first_half": [i < n // 2 for i in range(n)],
        "alternate": [i % 2 == 0 for i in range(n)],
        "all_but_last": [i < n - 1 for i in range(n)],
    }[name]


@pytest.mark.parametrize("n", [1, 7, 16, 17, 33, 100])
@pytest.mark.parametrize("pattern", ["none", "all", "first_half", "alternate", "all_but_last"])
def test_data_root_and_ids_for_every_size_and_cache_pattern(
    chain: Chain, n: int, pattern: str
) -> None:
    """Whatever mix of cached and fresh txs, the chunked pass finds the block valid, in order."""
    txs = [chain.tx(i % 8, to=(i + 1) % 8) for i in range(n)]
    for tx, cached in zip(txs, _cache_pattern(pattern, n), strict=True):
        if cached:
            assert chain.verifier.verify_tx(tx.hash, tx, CHAIN)
    vb = chain.validate(chain.block([t.encode() for t in txs]))
    assert vb.txs == tuple(txs)
    assert vb.tx_ids == tuple(t.hash for t in txs)
    assert all(r.ok for r in vb.execution.tx_results)


def test_cached_runs_grow_chunks_and_keep_the_root(chain: Chain) -> None:
    """A long cached run after a few fresh txs (chunks growing to 1024) gives the same root."""
    n = 1_100
    txs = [chain.tx(i % 8, amount=1, to=(i + 3) % 8) for i in range(n)]
    for tx in txs[3:]:
        assert chain.verifier.verify_tx(tx.hash, tx, CHAIN)
    encoded = [t.encode() for t in txs]
    vb = chain.validate(chain.block(encoded))
    assert vb.block.header.data_hash == data_hash(encoded)
    assert len(vb.execution.tx_results) == n
    wrong = chain.block(encoded, data_hash=data_hash(encoded[:-1]))
    reject(chain, wrong, Reason.WRONG_DATA_HASH)


def test_bad_signature_in_a_mixed_chunk_is_named(chain: Chain) -> None:
    """A forged tx between cached ones in one chunk is verified and named by index."""
    txs = [chain.tx(i % 8) for i in range(20)]
    for tx in txs:
        assert chain.verifier.verify_tx(tx.hash, tx, CHAIN)
    forged = dataclasses.replace(txs[9], signature=bytes(64))
    encoded = [t.encode() for t in txs]
    encoded[9] = forged.encode()
    err = reject(chain, chain.block(encoded), Reason.TX_BAD_SIGNATURE)
    assert err.tx_index == 9
