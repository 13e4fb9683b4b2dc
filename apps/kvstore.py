"""`kvstore`: a key/value store any signer may write, for tests and demonstrations.

Small on purpose: it exercises the node's whole path (mempool, blocks,
queries, validator set changes) without the ledger's rules. Nonces still
apply, so a signed write or validator change cannot be replayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Self

from apps.common import (
    CHECK_VIEW_ENTRIES_MAX,
    CODE_BAD_NONCE,
    CODE_BAD_PAYLOAD,
    CODE_BUSY,
    KEY_MEMBER,
    KEY_VALIDATOR,
    AddressMemo,
    apply_member_update,
    apply_validator_update,
    bad_payload,
    commit_member_write,
    decode_payload,
    genesis_state,
    load_validator,
    loaded_state,
    member_writes,
    validator_writes,
)
from consensus.app import (
    TX_OK,
    BlockExecution,
    QueryResult,
    TxResult,
    ValidatorUpdate,
)
from consensus.codec import decode, encode
from consensus.crypto import PrivateKey
from consensus.genesis import Genesis
from consensus.statetree import CHAIN_KEY, StateTree, StateVersions, chain_value
from consensus.types import Evidence, Header, Transaction

__all__ = ["KEY_BYTES_MAX", "VALUE_BYTES_MAX", "KVStore", "set_tx"]

KEY_BYTES_MAX = 256  # a key is also a storage key: short keeps the store's index small
VALUE_BYTES_MAX = 16 * 1024  # within one transaction payload
KEY_DATA = b"k"  # + key -> value
KEY_NONCE = b"n"  # + 20-byte address -> canonical next nonce

_NONCE_FAIL = TxResult(CODE_BAD_NONCE, "nonce is not the sender's next nonce")
_BUSY = TxResult(CODE_BUSY, "mempool view full")


def set_tx(key: PrivateKey, chain_id: str, nonce: int, k: bytes, v: bytes) -> Transaction:
    """A signed ["set", k, v]."""
    return Transaction.create(key, chain_id, nonce, encode(["set", k, v]))


class KVStore:
    """Keys to values; "val" and "set_member" transactions from any signer change the
    validator set and the member list."""

    name = "kvstore"

    def __init__(
        self,
        data: dict[bytes, bytes],
        nonces: dict[bytes, int],
        validators: dict[bytes, int],
        app_hash: bytes,
        height: int,
        members: set[bytes] | None = None,
    ) -> None:
        self._data = data
        self._nonces = nonces  # address -> next nonce
        self._validators = validators
        self._members = members if members is not None else set()
        self._app_hash = app_hash
        self._height = height
        # The state tree (consensus/statetree.py), set by from_genesis and load;
        # its root is the app hash. `_chain` is the CHAIN_KEY value it holds.
        self._versions = StateVersions(StateTree(None), height)
        self._chain = b""
        self._check: dict[bytes, int] = {}  # the mempool's view of next nonces
        self._addresses = AddressMemo()

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> Self:
        if genesis.app_state:
            raise ValueError("app_state: kvstore takes no initial state ({})")
        validators = {v.public_key: v.power for v in genesis.validators}
        app = cls({}, {}, validators, b"", 0, set(genesis.members))
        app._chain = chain_value(genesis.chain_id, cls.name)
        app._versions = genesis_state(app.items())
        app._app_hash = app._versions.current.root
        return app

    @classmethod
    def load(cls, items: Iterable[tuple[bytes, bytes]], app_hash: bytes, height: int) -> Self:
        """The state from the stored pairs; StateCorrupt if they do not hash to `app_hash`."""
        pairs, versions = loaded_state(items, app_hash, height)
        data: dict[bytes, bytes] = {}
        nonces: dict[bytes, int] = {}
        validators: dict[bytes, int] = {}
        members: set[bytes] = set()
        chain = b""
        for key, value in pairs:
            if key[:1] == KEY_DATA:
                data[key[1:]] = value
            elif key[:1] == KEY_NONCE:
                nonces[key[1:]] = decode(value)
            elif key[:1] == KEY_VALIDATOR:
                load_validator(key, value, validators)
            elif key[:1] == KEY_MEMBER:
                commit_member_write(key, value, members)
            elif key == CHAIN_KEY:
                chain = value
        app = cls(data, nonces, validators, app_hash, height, members)
        app._chain = chain
        app._versions = versions
        return app

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._data.items():
            yield KEY_DATA + k, v
        for address, nonce in self._nonces.items():
            yield KEY_NONCE + address, encode(nonce)
        for pk, power in self._validators.items():
            yield KEY_VALIDATOR + pk, encode(power)
        for member in self._members:
            yield KEY_MEMBER + member, b""
        yield CHAIN_KEY, self._chain

    def state_tree(self, height: int) -> StateTree | None:
        """The state tree after block `height`, if still kept (the latest two heights)."""
        return self._versions.at(height)

    def members(self) -> frozenset[bytes]:
        return frozenset(self._members)

    @property
    def app_hash(self) -> bytes:
        return self._app_hash

    @property
    def height(self) -> int:
        return self._height

    def check_tx(self, tx: Transaction) -> TxResult:
        if len(self._check) >= CHECK_VIEW_ENTRIES_MAX:
            return _BUSY
        sender = self._addresses.get(tx.sender)
        nonce = self._check.get(sender, self._nonces.get(sender, 0))
        if tx.nonce != nonce:
            return _NONCE_FAIL
        result, _ = self._apply(tx.payload, {}, {}, {}, 0)
        if result.ok:
            self._check[sender] = nonce + 1
        return result

    def execute_block(
        self,
        header: Header,
        txs: Iterable[Transaction],
        evidence: Sequence[Evidence],
    ) -> BlockExecution:
        data_changed: dict[bytes, bytes] = {}
        nonces_changed: dict[bytes, int] = {}
        validators_changed: dict[bytes, int] = {}
        members_changed: dict[bytes, bool] = {}
        updates: list[ValidatorUpdate] = []
        results: list[TxResult] = []
        for tx in txs:
            sender = self._addresses.get(tx.sender)
            nonce = nonces_changed.get(sender, self._nonces.get(sender, 0))
            if tx.nonce != nonce:
                results.append(_NONCE_FAIL)
                continue
            nonces_changed[sender] = nonce + 1
            result, update = self._apply(
                tx.payload, data_changed, validators_changed, members_changed, len(updates)
            )
            if update is not None:
                updates.append(update)
            results.append(result)
        writes: list[tuple[bytes, bytes | None]] = [
            (KEY_DATA + k, v) for k, v in data_changed.items()
        ]
        writes += [(KEY_NONCE + a, encode(n)) for a, n in nonces_changed.items()]
        writes += validator_writes(validators_changed)
        writes += member_writes(members_changed)
        writes.sort()
        return BlockExecution(
            height=header.height,
            tx_results=tuple(results),
            validator_updates=tuple(updates),
            writes=tuple(writes),
            base_app_hash=self._app_hash,
            state=self._versions.pending(writes),
        )

    def _apply(
        self,
        payload: bytes,
        data_changed: dict[bytes, bytes],
        validators_changed: dict[bytes, int],
        members_changed: dict[bytes, bool],
        update_count: int,
    ) -> tuple[TxResult, ValidatorUpdate | None]:
        obj = decode_payload(payload)
        if obj is None:
            return bad_payload("payload is not a canonical array of 1 to 3 scalars"), None
        if obj[0] == "set" and len(obj) == 3:
            k, v = obj[1], obj[2]
            if type(k) is not bytes or not 1 <= len(k) <= KEY_BYTES_MAX:
                return bad_payload(f"key must be 1..{KEY_BYTES_MAX} bytes"), None
            if type(v) is not bytes or len(v) > VALUE_BYTES_MAX:
                return bad_payload(f"value must be at most {VALUE_BYTES_MAX} bytes"), None
            data_changed[k] = v
            return TX_OK, None
        if obj[0] == "val" and len(obj) == 3:
            outcome = apply_validator_update(
                self._validators, validators_changed, update_count, obj[1], obj[2]
            )
            if isinstance(outcome, TxResult):
                return outcome, None
            return TX_OK, outcome
        if obj[0] == "set_member" and len(obj) == 3:
            refused = apply_member_update(frozenset(self._members), members_changed, obj[1], obj[2])
            return (TX_OK if refused is None else refused), None
        return bad_payload(
            'expected ["set", key, value], ["val", public_key, power] or '
            '["set_member", node_id, present]'
        ), None

    def commit(self, execution: BlockExecution) -> bytes:
        assert execution.base_app_hash == self._app_hash, "execution is for another state"
        assert execution.height == self._height + 1, "execution is for another height"
        for key, value in execution.writes:
            assert value is not None or key[:1] in (KEY_VALIDATOR, KEY_MEMBER)
            if key[:1] == KEY_DATA and value is not None:
                self._data[key[1:]] = value
            elif key[:1] == KEY_NONCE and value is not None:
                self._nonces[key[1:]] = decode(value)
            elif key[:1] == KEY_VALIDATOR:
                if value is None:
                    del self._validators[key[1:]]
                else:
                    load_validator(key, value, self._validators)
            elif key[:1] == KEY_MEMBER:
                commit_member_write(key, value, self._members)
        self._app_hash = self._versions.commit(execution.state, execution.height).root
        self._height = execution.height
        self._check.clear()
        return self._app_hash

    def query(self, path: str, data: bytes) -> QueryResult:
        """ "key" (data: the key) -> its value, code 1 when absent."""
        if path == "key":
            value = self._data.get(data)
            if value is None:
                return QueryResult(CODE_BAD_PAYLOAD, log="no such key", height=self._height)
            return QueryResult(0, value, height=self._height)
        if path == "validators":
            value = encode(sorted([pk, p] for pk, p in self._validators.items()))
            return QueryResult(0, value, height=self._height)
        return QueryResult(CODE_BAD_PAYLOAD, log=f"unknown path {path[:32]!r}")
