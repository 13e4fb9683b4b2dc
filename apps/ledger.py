"""`ledger`: accounts with balances and nonces, moved by signed transfers.

It is the application the benchmarks and the CLI drive, so execution is
written for the hot path: a transfer's canonical payload is recognised by its
fixed byte layout (no generic decode), a sender's address is hashed once per
block range (AddressMemo), and a block touches only an overlay of the
accounts it changes. docs/PROTOCOL.md (section 11) gives the formats byte-exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Self

import msgpack

from apps import interchain
from apps.common import (
    CHECK_VIEW_ENTRIES_MAX,
    CODE_BAD_NONCE,
    CODE_BAD_PAYLOAD,
    CODE_BUSY,
    CODE_INSUFFICIENT_FUNDS,
    CODE_UNAUTHORIZED,
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
    parse_address,
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
from consensus.crypto import ADDRESS_BYTES, PrivateKey, address_of
from consensus.genesis import Genesis
from consensus.statetree import CHAIN_KEY, StateTree, StateVersions, chain_value
from consensus.types import (
    Evidence,
    Header,
    LightClientAttackEvidence,
    Transaction,
    Validator,
    ValidatorSet,
)

__all__ = [
    "BALANCE_MAX",
    "Ledger",
    "member_tx",
    "transfer_payload",
    "transfer_tx",
    "validator_tx",
]

BALANCE_MAX = 2**63 - 1  # every balance and amount fits a msgpack int64
KEY_ACCOUNT = b"a"  # + 20-byte address -> canonical [balance, nonce]
KEY_ADMIN = b"m/admin"  # -> 20-byte address of the genesis admin
KEY_CONVICTED = b"e"  # + evidence hash -> b"": evidence already acted on, never twice

# Canonical ["transfer", <20-byte address>, amount]: fixarray(3), fixstr(8), bin8(20).
_TRANSFER_HEAD = b"\x93\xa8transfer\xc4\x14"
_HEAD_END = len(_TRANSFER_HEAD)
_ADDR_END = _HEAD_END + ADDRESS_BYTES
_NO_ACCOUNT = (0, 0)
# codec.encode of [balance, nonce] (two ints: the same canonical bytes) without
# building a Packer per account; a block writes one record per account it touches.
# Shared safely: pack() runs in C without releasing the GIL.
_pack_account = msgpack.Packer(use_bin_type=True).pack
# Distinct transfer amounts remembered by their encoding: 9 bytes at most
# each, so about 5 MB with dict overhead; emptied when full.
AMOUNT_MEMO_ENTRIES_MAX = 65_536

_OK = TX_OK
_NONCE_FAIL = TxResult(CODE_BAD_NONCE, "nonce is not the sender's next nonce")
_FUNDS_FAIL = TxResult(CODE_INSUFFICIENT_FUNDS, "amount exceeds balance")
_AMOUNT_FAIL = TxResult(CODE_BAD_PAYLOAD, "amount must be in 1..2**63-1")
_ADMIN_FAIL = TxResult(CODE_UNAUTHORIZED, "only the genesis admin may set validators")
_ADMIN_MEMBER_FAIL = TxResult(CODE_UNAUTHORIZED, "only the genesis admin may set members")
_BUSY = TxResult(CODE_BUSY, "mempool view full")


def transfer_payload(to_address: bytes, amount: int) -> bytes:
    assert len(to_address) == ADDRESS_BYTES
    return encode(["transfer", to_address, amount])


def transfer_tx(
    key: PrivateKey, chain_id: str, nonce: int, to_address: bytes, amount: int
) -> Transaction:
    """A signed ledger transfer of `amount` from `key`'s account to `to_address`."""
    return Transaction.create(key, chain_id, nonce, transfer_payload(to_address, amount))


def validator_tx(
    admin: PrivateKey, chain_id: str, nonce: int, public_key: bytes, power: int
) -> Transaction:
    """A signed ["set_validator", public_key, power] from the genesis admin (0 removes)."""
    return Transaction.create(admin, chain_id, nonce, encode(["set_validator", public_key, power]))


def member_tx(
    admin: PrivateKey, chain_id: str, nonce: int, node_id: bytes, present: bool
) -> Transaction:
    """A signed ["set_member", node_id, present]: admit (True) or remove (False) a node id.

    The genesis admin's on `ledger`; any signer's on `kvstore`, which takes the
    same payload. In force once the block that carries it is committed.
    """
    return Transaction.create(admin, chain_id, nonce, encode(["set_member", node_id, present]))


def _transfer_amount(payload: bytes) -> int:
    """The amount of a canonical transfer payload, or -1 when the payload is not one.

    Reads msgpack's minimal unsigned integer forms directly; anything else
    (including a non-minimal form) is left to the generic decoder.
    """
    n = len(payload) - _ADDR_END
    if n < 1 or payload[:_HEAD_END] != _TRANSFER_HEAD:
        return -1
    first = payload[_ADDR_END]
    if n == 1:
        return first if first < 0x80 else -1
    if first == 0xCC and n == 2:
        value = payload[-1]
        return value if value >= 0x80 else -1
    if (first, n) in ((0xCD, 3), (0xCE, 5), (0xCF, 9)):
        value = int.from_bytes(payload[_ADDR_END + 1 :], "big")
        minimal = value.bit_length() > 8 * (n - 1) // 2
        return value if minimal and value <= BALANCE_MAX else -1
    return -1


class Ledger:
    """Balances and nonces per 20-byte address; an optional admin sets validators."""

    name = "ledger"

    def __init__(
        self,
        accounts: dict[bytes, tuple[int, int]],
        validators: dict[bytes, int],
        admin: bytes | None,
        app_hash: bytes,
        height: int,
        members: set[bytes] | None = None,
    ) -> None:
        self._accounts = accounts  # committed: address -> (balance, nonce)
        self._validators = validators  # committed: public key -> power
        self._members = members if members is not None else set()  # committed node ids
        # Hashes of evidence already acted on: one entry per conviction, which the
        # validators' own misbehaviour bounds (each conviction removes one).
        self._convicted: set[bytes] = set()
        self._admin = admin
        self._app_hash = app_hash
        self._height = height
        # The state tree (consensus/statetree.py), set by from_genesis and load;
        # its root is the app hash. `_chain` is the CHAIN_KEY value it holds.
        self._versions = StateVersions(StateTree(None), height)
        self._chain = b""
        self._check: dict[bytes, tuple[int, int]] = {}  # the mempool's view, over committed
        self._addresses = AddressMemo()
        # Encoded amount (the bytes after a transfer's address) -> amount, for
        # canonical positive amounts only; emptied when full (a miss costs one parse).
        self._amounts: dict[bytes, int] = {}
        # Committed interchain keys (apps/interchain.py) and the mempool's view over them.
        self._interchain: dict[bytes, bytes] = {}
        self._ic_check = interchain.Overlay(self._interchain)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> Self:
        """Accounts from `app_state.accounts` ({address hex: balance}), admin optional."""
        state = genesis.app_state
        unknown = set(state) - {"accounts", "admin"}
        if unknown:
            raise ValueError(f"app_state: unknown key {sorted(unknown)[0]!r}")
        raw = state.get("accounts", {})
        if not isinstance(raw, dict):
            raise ValueError("app_state.accounts: expected an object")
        accounts: dict[bytes, tuple[int, int]] = {}
        for text, balance in raw.items():
            address = parse_address(text, f"app_state.accounts[{text!r}]")
            if type(balance) is not int or not 0 <= balance <= BALANCE_MAX:
                raise ValueError(f"app_state.accounts[{text!r}]: expected 0..{BALANCE_MAX}")
            accounts[address] = (balance, 0)
        admin = state.get("admin")
        admin_address = None if admin is None else parse_address(admin, "app_state.admin")
        validators = {v.public_key: v.power for v in genesis.validators}
        app = cls(accounts, validators, admin_address, b"", 0, set(genesis.members))
        app._chain = chain_value(genesis.chain_id, cls.name)
        app._versions = genesis_state(app.items())
        app._app_hash = app._versions.current.root
        return app

    @classmethod
    def load(cls, items: Iterable[tuple[bytes, bytes]], app_hash: bytes, height: int) -> Self:
        """The state from the key/value pairs that `items()` and commits wrote.

        StateCorrupt if they do not hash to `app_hash`.
        """
        pairs, versions = loaded_state(items, app_hash, height)
        accounts: dict[bytes, tuple[int, int]] = {}
        validators: dict[bytes, int] = {}
        convicted: set[bytes] = set()
        members: set[bytes] = set()
        admin = None
        chain = b""
        ic_state: dict[bytes, bytes] = {}
        for key, value in pairs:
            if key[:1] == KEY_ACCOUNT:
                balance, nonce = decode(value)
                accounts[key[1:]] = (balance, nonce)
            elif key[:1] == KEY_VALIDATOR:
                load_validator(key, value, validators)
            elif key == KEY_ADMIN:
                admin = value
            elif key[:1] == KEY_CONVICTED:
                convicted.add(key[1:])
            elif key[:1] == KEY_MEMBER:
                commit_member_write(key, value, members)
            elif key == CHAIN_KEY:
                chain = value
            elif interchain.is_key(key):
                ic_state[key] = value
        app = cls(accounts, validators, admin, app_hash, height, members)
        app._convicted = convicted
        app._chain = chain
        app._versions = versions
        app._interchain.update(ic_state)
        return app

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """The whole state as key/value pairs (what the node stores at genesis)."""
        for address, (balance, nonce) in self._accounts.items():
            yield KEY_ACCOUNT + address, encode([balance, nonce])
        for pk, power in self._validators.items():
            yield KEY_VALIDATOR + pk, encode(power)
        if self._admin is not None:
            yield KEY_ADMIN, self._admin
        for evidence_hash in self._convicted:
            yield KEY_CONVICTED + evidence_hash, b""
        for member in self._members:
            yield KEY_MEMBER + member, b""
        yield from self._interchain.items()
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

    def validator_set(self) -> ValidatorSet:
        return ValidatorSet.of(Validator(pk, p) for pk, p in self._validators.items())

    # ------------------------------------------------------------ mempool

    def check_tx(self, tx: Transaction) -> TxResult:
        """Nonce, payload and balance against committed state plus admitted transactions.

        A canonical transfer (the shape `execute_block` reads without decoding)
        is checked inline; anything else goes through the general rules
        (`_check_tx_generally`), which give the same result and view for
        transfers too (a test pins the two).
        """
        view = self._check
        if len(view) + 2 > CHECK_VIEW_ENTRIES_MAX:
            return _BUSY
        payload = tx.payload
        if payload[:_HEAD_END] != _TRANSFER_HEAD:
            return self._check_tx_generally(tx)
        amount = self._amounts.get(payload[_ADDR_END:]) or self._amount_slowly(payload)
        if amount <= 0:
            return self._check_tx_generally(tx)
        sender = self._addresses.table.get(tx.sender) or self._addresses.get(tx.sender)
        accounts = self._accounts
        balance, nonce = view.get(sender) or accounts.get(sender, _NO_ACCOUNT)
        if tx.nonce != nonce:
            return _NONCE_FAIL
        if amount > balance:
            return _FUNDS_FAIL
        to = payload[_HEAD_END:_ADDR_END]
        if to == sender:
            to_balance, to_nonce = balance - amount, nonce + 1
        else:
            to_balance, to_nonce = view.get(to) or accounts.get(to, _NO_ACCOUNT)
        if to_balance + amount > BALANCE_MAX:
            return _AMOUNT_FAIL
        view[sender] = (balance - amount, nonce + 1)
        view[to] = (to_balance + amount, to_nonce)
        return _OK

    def _check_tx_generally(self, tx: Transaction) -> TxResult:
        """`check_tx` by the general rules (`_apply`), for every kind of payload."""
        if len(self._check) + 2 > CHECK_VIEW_ENTRIES_MAX:
            return _BUSY
        changed = self._check
        changes: dict[bytes, tuple[int, int]] = {}
        sender = self._addresses.get(tx.sender)
        result, _ = self._apply(tx, sender, changed, changes, {}, {}, 0, self._ic_check)
        if result.ok:
            changed.update(changes)
        return result

    # ------------------------------------------------------------ blocks

    def execute_block(
        self,
        header: Header,
        txs: Iterable[Transaction],
        evidence: Sequence[Evidence],
    ) -> BlockExecution:
        """Apply each transaction in order to an overlay.

        Evidence of equivocation removes the offending validator from the set
        (power 0, effective at height + 2, like any validator update) unless
        it is the last one; the admin may add it back with `set_validator`.
        Light-client-attack evidence removes each validator it names (the
        validation core checked the list against the chain) the same way.
        """
        accounts = self._accounts
        changed: dict[bytes, tuple[int, int]] = {}
        validators_changed: dict[bytes, int] = {}
        members_changed: dict[bytes, bool] = {}
        updates: list[ValidatorUpdate] = []
        convicted: list[bytes] = []
        for ev in evidence:
            key = ev.hash
            if key in self._convicted or key in convicted:
                continue  # acted on already: the same evidence never removes twice
            convicted.append(key)
            accused = (
                ev.byzantine_validators
                if isinstance(ev, LightClientAttackEvidence)
                else (ev.validator_address,)
            )
            for address in accused:
                removal = self._remove_equivocator(address, validators_changed, len(updates))
                if removal is not None:
                    updates.append(removal)
        ic = interchain.Overlay(self._interchain, header.time_ms, header.chain_id)
        results: list[TxResult] = []
        append = results.append
        address_of = self._addresses.get
        known = self._addresses.table.get
        amount_of = self._amounts.get
        head = _TRANSFER_HEAD
        for tx in txs:
            sender = known(tx.sender) or address_of(tx.sender)
            payload = tx.payload
            amount = amount_of(payload[_ADDR_END:]) if payload[:_HEAD_END] == head else None
            if amount is None:
                amount = self._amount_slowly(payload)
                if amount <= 0:  # not the fast path's shape: the general rules decide
                    result, update = self._apply(
                        tx,
                        sender,
                        changed,
                        changed,
                        validators_changed,
                        members_changed,
                        len(updates),
                        ic,
                    )
                    if update is not None:
                        updates.append(update)
                    append(result)
                    continue
            balance, nonce = changed.get(sender) or accounts.get(sender, _NO_ACCOUNT)
            if tx.nonce != nonce:
                append(_NONCE_FAIL)
                continue
            if amount > balance:
                changed[sender] = (balance, nonce + 1)
                append(_FUNDS_FAIL)
                continue
            changed[sender] = (balance - amount, nonce + 1)
            to = payload[_HEAD_END:_ADDR_END]
            to_balance, to_nonce = changed.get(to) or accounts.get(to, _NO_ACCOUNT)
            if to_balance + amount > BALANCE_MAX:
                changed[sender] = (balance, nonce + 1)
                append(_AMOUNT_FAIL)
                continue
            changed[to] = (to_balance + amount, to_nonce)
            append(_OK)
        writes: list[tuple[bytes, bytes | None]] = [
            (KEY_ACCOUNT + a, _pack_account([b, n])) for a, (b, n) in changed.items()
        ]
        writes += validator_writes(validators_changed)
        writes += member_writes(members_changed)
        writes += [(KEY_CONVICTED + key, b"") for key in convicted]
        writes += ic.writes.items()
        writes.sort()
        return BlockExecution(
            height=header.height,
            tx_results=tuple(results),
            validator_updates=tuple(updates),
            writes=tuple(writes),
            base_app_hash=self._app_hash,
            state=self._versions.pending(writes),
        )

    def _remove_equivocator(
        self, address: bytes, changed: dict[bytes, int], update_count: int
    ) -> ValidatorUpdate | None:
        for public_key in self._validators:
            if address_of(public_key) == address:
                outcome = apply_validator_update(
                    self._validators, changed, update_count, public_key, 0
                )
                return outcome if isinstance(outcome, ValidatorUpdate) else None
        return None

    def _amount_slowly(self, payload: bytes) -> int:
        """_transfer_amount, remembering a valid amount's encoding for the next transfer."""
        amount = _transfer_amount(payload)
        if amount > 0:
            if len(self._amounts) >= AMOUNT_MEMO_ENTRIES_MAX:
                self._amounts.clear()
            self._amounts[payload[_ADDR_END:]] = amount
        return amount

    def _apply(
        self,
        tx: Transaction,
        sender: bytes,
        view: dict[bytes, tuple[int, int]],
        changes: dict[bytes, tuple[int, int]],
        validators_changed: dict[bytes, int],
        members_changed: dict[bytes, bool],
        update_count: int,
        ic: interchain.Overlay,
    ) -> tuple[TxResult, ValidatorUpdate | None]:
        """The general rules for one transaction, reading `view` over committed state."""
        accounts = self._accounts

        def account(address: bytes) -> tuple[int, int]:
            return changes.get(address) or view.get(address) or accounts.get(address, _NO_ACCOUNT)

        balance, nonce = account(sender)
        if tx.nonce != nonce:
            return _NONCE_FAIL, None
        changes[sender] = (balance, nonce + 1)  # a transaction with the right nonce uses it
        obj = decode_payload(tx.payload)
        if obj is None:
            return bad_payload("payload is not a canonical array of 1 to 3 scalars"), None
        if obj[0] == "transfer":
            return self._transfer(obj, sender, balance, nonce, account, changes), None
        if obj[0] == "set_validator":
            if sender != self._admin:
                return _ADMIN_FAIL, None
            if len(obj) != 3:
                return bad_payload('expected ["set_validator", public_key, power]'), None
            outcome = apply_validator_update(
                self._validators, validators_changed, update_count, obj[1], obj[2]
            )
            if isinstance(outcome, TxResult):
                return outcome, None
            return _OK, outcome
        if obj[0] in interchain.OPERATIONS:
            return self._interchain_op(obj, sender, balance, nonce, account, changes, ic), None
        if obj[0] == "set_member":
            if sender != self._admin:
                return _ADMIN_MEMBER_FAIL, None
            if len(obj) != 3:
                return bad_payload('expected ["set_member", node_id, present]'), None
            refused = apply_member_update(frozenset(self._members), members_changed, obj[1], obj[2])
            return (_OK if refused is None else refused), None
        return bad_payload(f"unknown operation {obj[0][:32]!r}"), None

    def _interchain_op(
        self,
        obj: tuple[Any, ...],
        sender: bytes,
        balance: int,
        nonce: int,
        account: Any,
        changes: dict[bytes, tuple[int, int]],
        ic: interchain.Overlay,
    ) -> TxResult:
        """send_out, client_create, client_update, receive: apps/interchain.py checks them,
        the ledger moves the balance (a send_out's debit, its escrow's or a receipt's credit)."""
        outcome = interchain.apply(obj, self._admin is not None and sender == self._admin, ic)
        if isinstance(outcome, TxResult):
            return outcome
        if outcome.debit > balance:
            return _FUNDS_FAIL
        changes[sender] = (balance - outcome.debit, nonce + 1)
        if outcome.credit:
            to_balance, to_nonce = account(outcome.credit_to)
            if to_balance + outcome.credit > BALANCE_MAX:
                changes[sender] = (balance, nonce + 1)
                return _AMOUNT_FAIL
            changes[outcome.credit_to] = (to_balance + outcome.credit, to_nonce)
        ic.accept(outcome)
        return _OK

    @staticmethod
    def _transfer(
        obj: tuple[Any, ...],
        sender: bytes,
        balance: int,
        nonce: int,
        account: Any,
        changes: dict[bytes, tuple[int, int]],
    ) -> TxResult:
        if len(obj) != 3 or type(obj[1]) is not bytes or len(obj[1]) != ADDRESS_BYTES:
            return bad_payload('expected ["transfer", 20-byte address, amount]')
        amount = obj[2]
        if type(amount) is not int or not 0 < amount <= BALANCE_MAX:
            return _AMOUNT_FAIL
        if amount > balance:
            return _FUNDS_FAIL
        changes[sender] = (balance - amount, nonce + 1)
        to_balance, to_nonce = account(obj[1])
        if to_balance + amount > BALANCE_MAX:
            changes[sender] = (balance, nonce + 1)
            return _AMOUNT_FAIL
        changes[obj[1]] = (to_balance + amount, to_nonce)
        return _OK

    def commit(self, execution: BlockExecution) -> bytes:
        assert execution.base_app_hash == self._app_hash, "execution is for another state"
        assert execution.height == self._height + 1, "execution is for another height"
        for key, value in execution.writes:
            if key[:1] == KEY_ACCOUNT:
                assert value is not None
                balance, nonce = decode(value)
                self._accounts[key[1:]] = (balance, nonce)
            elif key[:1] == KEY_VALIDATOR:
                if value is None:
                    del self._validators[key[1:]]
                else:
                    load_validator(key, value, self._validators)
            elif key[:1] == KEY_CONVICTED:
                self._convicted.add(key[1:])
            elif key[:1] == KEY_MEMBER:
                commit_member_write(key, value, self._members)
            elif interchain.is_key(key):
                assert value is not None, "interchain keys are never deleted"
                self._interchain[key] = value
        self._app_hash = self._versions.commit(execution.state, execution.height).root
        self._height = execution.height
        self._check.clear()
        self._ic_check = interchain.Overlay(self._interchain)
        return self._app_hash

    # ------------------------------------------------------------ queries

    def query(self, path: str, data: bytes) -> QueryResult:
        """ "account" (data: 20-byte address) -> canonical [balance, nonce]; "validators"."""
        if path == "account":
            if len(data) != ADDRESS_BYTES:
                return QueryResult(CODE_BAD_PAYLOAD, log="expected a 20-byte address")
            balance, nonce = self._accounts.get(data, _NO_ACCOUNT)
            return QueryResult(0, encode([balance, nonce]), height=self._height)
        if path == "validators":
            value = encode(sorted([pk, p] for pk, p in self._validators.items()))
            return QueryResult(0, value, height=self._height)
        if path == "members":
            return QueryResult(0, encode(sorted(self._members)), height=self._height)
        if path == interchain.QUERY_CLIENT:
            return interchain.query(self._interchain, path, data, self._height)
        return QueryResult(CODE_BAD_PAYLOAD, log=f"unknown path {path[:32]!r}")
