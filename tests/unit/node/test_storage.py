"""Unit tests for node/storage.py on a real LMDB environment with real signed blocks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lmdb
import pytest

from consensus import merkle
from consensus.crypto import PrivateKey
from consensus.state import ChainState
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Header,
    Transaction,
    Validator,
    ValidatorSet,
    data_hash,
    evidence_hash,
    precommit_sign_bytes,
    tx_id,
)
from node.storage import (
    APP_VALUE_BYTES_MAX,
    BlockStore,
    StorageConflictError,
    StorageCorruptError,
    StorageFullError,
    StorageLimitError,
    open_store,
)

CHAIN = "store-test"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
VALSET = ValidatorSet.of(Validator(k.public_key, 10) for k in KEYS)
NEW_KEY = PrivateKey(b"\x77" * 32)
VALSET_2 = ValidatorSet.of([*VALSET.validators, Validator(NEW_KEY.public_key, 10)])
GENESIS_TIME_MS = 1_700_000_000_000


def legacy_state(
    chain_id: str,
    last_height: int,
    last_block_hash: bytes,
    last_block_time_ms: int,
    app_hash: bytes,
    last_results_hash: bytes,
    validators: ValidatorSet,
    next_validators: ValidatorSet,
) -> ChainState:
    """A chain state from the fields the store checks (the rest at their defaults)."""
    return ChainState(
        chain_id=chain_id,
        last_height=last_height,
        last_block_hash=last_block_hash,
        last_block_time_ms=last_block_time_ms,
        last_validators=None if last_height == 0 else validators,
        validators=validators,
        next_validators=next_validators,
        app_hash=app_hash,
        last_results_hash=last_results_hash,
    )


def sign_commit(block: Block, signers: int = 4, valset: ValidatorSet = VALSET) -> Commit:
    """Real precommit signatures by the first `signers` validators of the set."""
    by_address = {k.address: k for k in [*KEYS, NEW_KEY]}
    message = precommit_sign_bytes(CHAIN, block.height, 0, block.hash)
    sigs = tuple(
        CommitSig(i, by_address[v.address].sign(message))
        for i, v in enumerate(valset.validators[:signers])
    )
    return Commit(block.height, 0, block.hash, sigs)


def _ids(block: Block) -> list[bytes]:
    return [tx_id(tx) for tx in block.txs]


def genesis_state() -> ChainState:
    return legacy_state(
        CHAIN, 0, b"", GENESIS_TIME_MS, b"\x00" * 32, merkle.root([]), VALSET, VALSET
    )


class Chain:
    """Builds consecutive real blocks on a store, tracking the state like the node would."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self.state = genesis_state()
        self.prev_commit: Commit | None = None
        self.nonce = 0

    def make_block(self, txs_count: int = 3) -> Block:
        txs = []
        for _ in range(txs_count):
            self.nonce += 1
            txs.append(Transaction.create(KEYS[0], CHAIN, self.nonce, b"pay").encode())
        height = self.state.last_height + 1
        header = Header(
            CHAIN,
            height,
            GENESIS_TIME_MS + height * 1000,
            self.state.last_block_hash,
            b"" if self.prev_commit is None else self.prev_commit.hash,
            data_hash(txs),
            self.state.validators.hash,
            self.state.next_validators.hash,
            self.state.app_hash,
            self.state.last_results_hash,
            evidence_hash(()),
            self.state.validators[height % len(self.state.validators)].address,
        )
        return Block(header, tuple(txs), self.prev_commit)

    def commit(
        self,
        block: Block,
        app_writes: Mapping[bytes, bytes | None] | None = None,
        next_validators: ValidatorSet | None = None,
        seen_signers: int = 3,
    ) -> ChainState:
        results = [f"ok {block.height}/{i}".encode() for i in range(len(block.txs))]
        state = legacy_state(
            CHAIN,
            block.height,
            block.hash,
            block.header.time_ms,
            bytes([block.height % 256]) * 32,
            merkle.root(results),
            self.state.next_validators,
            next_validators or self.state.next_validators,
        )
        seen = sign_commit(block, seen_signers, self.state.validators)
        self.store.save_block(block, seen, _ids(block), results, app_writes or {}, state)
        self.state = state
        # The proposer of the next block carries a full certificate (all signers).
        self.prev_commit = sign_commit(block, len(self.state.validators), self.state.validators)
        return state

    def add(self, count: int = 1) -> None:
        for _ in range(count):
            self.commit(self.make_block())


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    s = open_store(tmp_path / "data" / "store", map_bytes=256 * 1024 * 1024)
    s.init_genesis(genesis_state(), {b"genesis/alice": b"100"})
    return s


def test_blocks_state_and_hashes_round_trip_across_reopen(tmp_path: Path) -> None:
    """Saved blocks, their bytes and the chain state read back identical after reopening."""
    path = tmp_path / "store"
    with open_store(path, map_bytes=64 * 1024 * 1024) as s:
        assert s.load_state() is None
        assert s.latest_height() == 0
        s.init_genesis(genesis_state(), {})
        chain = Chain(s)
        blocks = []
        for _ in range(5):
            b = chain.make_block()
            chain.commit(b)
            blocks.append(b)
    with open_store(path, map_bytes=64 * 1024 * 1024) as s:
        assert s.latest_height() == 5
        assert s.load_state() == chain.state
        for b in blocks:
            assert s.load_block(b.height) == b
            assert s.load_block_bytes(b.height) == b.encode()
            assert s.height_of_block(b.hash) == b.height
        assert s.load_block(6) is None
        assert [b.height for b in s.iter_blocks(2, 4)] == [2, 3, 4]


def test_the_stored_bytes_are_the_bytes_that_arrived(store: BlockStore) -> None:
    """A block decoded from the bytes a peer sent is stored as exactly those bytes (its
    encoding is not made again), and its transactions are indexed under the ids given."""
    chain = Chain(store)
    chain.add(1)
    arrived = bytes(bytearray(chain.make_block(5).encode()))  # as the network hands them over
    received = Block.decode(arrived)
    chain.commit(received)
    assert store.load_block_bytes(received.height) == arrived
    assert received.encode() is arrived
    for i, tx in enumerate(received.txs):
        record = store.load_tx(tx_id(tx))
        assert record is not None and (record.height, record.index) == (received.height, i)
        assert record.block == received


def test_load_commit_prefers_the_certificate_in_the_next_block(store: BlockStore) -> None:
    """load_commit(h) is block h+1's last_commit once stored, else the seen commit."""
    chain = Chain(store)
    chain.add(3)
    top_seen = store.load_seen_commit(3)
    assert top_seen is not None and len(top_seen.signatures) == 3
    assert store.load_commit(3) == top_seen
    block3 = store.load_block(3)
    assert block3 is not None
    assert store.load_commit(2) == block3.last_commit
    assert store.load_commit(2) != store.load_seen_commit(2)
    commit2 = store.load_commit(2)
    assert commit2 is not None and commit2.verify(CHAIN, VALSET) is None
    assert store.load_commit(4) is None


def test_tx_index_and_results(store: BlockStore) -> None:
    """Each committed tx is found by id with its height, index, bytes and result."""
    chain = Chain(store)
    chain.add(2)
    block = store.load_block(2)
    assert block is not None
    for i, tx in enumerate(block.txs):
        record = store.load_tx(tx_id(tx))
        assert record is not None
        assert (record.height, record.index, record.tx) == (2, i, tx)
        assert record.result == f"ok 2/{i}".encode()
    assert list(store.iter_block_results(2)) == [b"ok 2/0", b"ok 2/1", b"ok 2/2"]
    assert store.load_tx(b"\x00" * 32) is None


def test_app_state_writes_deletes_and_prefix_iteration(store: BlockStore) -> None:
    """App writes land with the block: set, overwrite, delete, and ordered prefix reads."""
    chain = Chain(store)
    chain.commit(chain.make_block(), {b"acct/b": b"2", b"acct/a": b"1", b"other": b"x"})
    chain.commit(chain.make_block(), {b"acct/a": b"10", b"genesis/alice": None})
    assert store.load_app_value(b"acct/a") == b"10"
    assert store.load_app_value(b"genesis/alice") is None
    assert list(store.iter_app_state(b"acct/")) == [(b"acct/a", b"10"), (b"acct/b", b"2")]
    assert [k for k, _ in store.iter_app_state()] == [b"acct/a", b"acct/b", b"other"]


def test_validator_sets_by_height_follow_the_h_plus_2_rule(store: BlockStore) -> None:
    """A set returned at block 2 signs from height 4; unchanged sets are stored once."""
    chain = Chain(store)
    chain.add(1)
    chain.commit(chain.make_block(), next_validators=VALSET_2)
    chain.add(3)
    for h in (1, 2, 3):
        assert store.load_validators(h) == VALSET
    for h in (4, 5, 6, 7):
        assert store.load_validators(h) == VALSET_2
    assert store.load_validators(8) is None
    state = store.load_state()
    assert state is not None and state.validators == VALSET_2
    assert store.statistics()["valsets_entries"] == 2


def test_rejected_save_writes_nothing(store: BlockStore) -> None:
    """A save that breaks a limit or does not extend the chain leaves the store as it was."""
    chain = Chain(store)
    chain.add(1)
    before = store.statistics()
    block = chain.make_block()
    with pytest.raises(StorageLimitError):
        chain.commit(block, {b"k": b"v" * (APP_VALUE_BYTES_MAX + 1)})
    with pytest.raises(StorageLimitError):
        chain.commit(block, {b"": b"v"})
    seen = sign_commit(block)
    good_state = legacy_state(CHAIN, 2, block.hash, 0, b"", merkle.root([]), VALSET, VALSET)
    results = [b""] * len(block.txs)
    with pytest.raises(StorageConflictError, match="results"):
        store.save_block(block, seen, _ids(block), results[:-1], {}, good_state)
    with pytest.raises(StorageConflictError, match="fixed at h-1"):
        store.save_block(block, seen, _ids(block), results, {}, _replace_validators(good_state))
    ahead = _at_height(block, 4)
    ahead_state = legacy_state(CHAIN, 4, ahead.hash, 0, b"", merkle.root([]), VALSET, VALSET)
    with pytest.raises(StorageConflictError, match="does not follow"):
        store.save_block(ahead, sign_commit(ahead), _ids(ahead), results, {}, ahead_state)
    assert store.statistics() == before
    assert store.latest_height() == 1


def _replace_validators(state: ChainState) -> ChainState:
    return legacy_state(
        state.chain_id,
        state.last_height,
        state.last_block_hash,
        state.last_block_time_ms,
        state.app_hash,
        state.last_results_hash,
        VALSET_2,
        state.next_validators,
    )


def _at_height(block: Block, height: int) -> Block:
    h = block.header
    header = Header(
        h.chain_id,
        height,
        h.time_ms,
        h.last_block_hash,
        h.last_commit_hash,
        h.data_hash,
        h.validators_hash,
        h.next_validators_hash,
        h.app_hash,
        h.last_results_hash,
        h.evidence_hash,
        h.proposer_address,
    )
    return Block(header, block.txs, block.last_commit, block.evidence)


def test_init_is_once_and_required(tmp_path: Path) -> None:
    """Blocks need a genesis state first, and genesis cannot be stored twice."""
    with open_store(tmp_path / "s", map_bytes=16 * 1024 * 1024) as s:
        chain = Chain(s)
        with pytest.raises(StorageConflictError, match="not initialised"):
            chain.commit(chain.make_block())
        s.init_genesis(genesis_state(), {})
        with pytest.raises(StorageConflictError, match="already initialised"):
            s.init_genesis(genesis_state(), {})


def test_map_full_rolls_back_and_store_stays_usable(tmp_path: Path) -> None:
    """When the LMDB map fills, the block is not stored and earlier blocks remain readable."""
    with open_store(tmp_path / "s", map_bytes=2 * 1024 * 1024) as s:
        s.init_genesis(genesis_state(), {})
        chain = Chain(s)
        chain.add(1)
        big = {f"k{i}".encode(): b"v" * 2000 for i in range(2000)}
        with pytest.raises(StorageFullError):
            chain.commit(chain.make_block(), big)
        assert s.latest_height() == 1
        assert s.load_block(1) is not None
        assert s.load_app_value(b"k0") is None


def test_damaged_state_record_is_reported(tmp_path: Path) -> None:
    """Undecodable stored bytes raise StorageCorruptError rather than a wrong value."""
    path = tmp_path / "s"
    with open_store(path, map_bytes=16 * 1024 * 1024) as s:
        s.init_genesis(genesis_state(), {})
    env = lmdb.open(str(path), max_dbs=16, map_size=16 * 1024 * 1024)
    with env.begin(write=True) as txn:
        txn.put(b"state", b"\x93\x01\x02", db=env.open_db(b"meta", txn=txn))
    env.close()
    with open_store(path, map_bytes=16 * 1024 * 1024) as s:
        with pytest.raises(StorageCorruptError, match="chain state"):
            s.load_state()


def test_handshake_replays_exactly_the_blocks_the_app_missed(store: BlockStore) -> None:
    """An app behind the store gets the missing blocks in order; one ahead is refused."""
    chain = Chain(store)
    chain.add(4)
    assert [b.height for b in store.blocks_to_replay(1)] == [2, 3, 4]
    assert list(store.blocks_to_replay(4)) == []
    with pytest.raises(StorageConflictError, match="application at height 5"):
        store.blocks_to_replay(5)
