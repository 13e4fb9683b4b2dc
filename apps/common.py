"""The rules the built-in applications share.

Both `ledger` and `kvstore` order each sender's transactions with a nonce
(the next nonce must be used, so a signed transaction can never be replayed)
and can return validator set changes; the checks that keep every resulting
validator set valid live here, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from consensus.app import TxResult, ValidatorUpdate
from consensus.codec import DecodeError, Reader, decode, decode_with, encode
from consensus.crypto import ADDRESS_BYTES, active, address_of
from consensus.statetree import StateCorrupt, StateTree, StateVersions
from consensus.types import MEMBERS_MAX, TX_PAYLOAD_BYTES_MAX, VALIDATORS_MAX, VOTING_POWER_MAX

__all__ = [
    "CODE_BAD_MEMBER_UPDATE",
    "CODE_BAD_NONCE",
    "CODE_BAD_PAYLOAD",
    "CODE_BAD_VALIDATOR_UPDATE",
    "CODE_BUSY",
    "CODE_INSUFFICIENT_FUNDS",
    "CODE_UNAUTHORIZED",
    "AddressMemo",
    "apply_member_update",
    "apply_validator_update",
    "genesis_state",
    "loaded_state",
]

# Result codes, shared so clients read them the same way for either app.
CODE_BAD_PAYLOAD = 1
CODE_BAD_NONCE = 2
CODE_INSUFFICIENT_FUNDS = 3
CODE_UNAUTHORIZED = 4
CODE_BAD_VALIDATOR_UPDATE = 5
CODE_BUSY = 6  # the mempool's view is full; retry after the next commit
CODE_BAD_MEMBER_UPDATE = 7

# One block may change the validator set this often; more would let one block
# swap the whole set at once. Later updates in the block fail with a code.
VALIDATOR_UPDATES_PER_BLOCK_MAX = 100

# Accounts touched by admitted-but-uncommitted transactions (the mempool's view).
# Two per admitted transaction at most; when full, check_tx answers CODE_BUSY.
CHECK_VIEW_ENTRIES_MAX = 1_000_000

KEY_VALIDATOR = b"v"  # + 32-byte public key -> canonical power
KEY_MEMBER = b"p"  # + 20-byte node id -> b"" (a node allowed to connect)

# One block may change the member list this often (as validator updates).
MEMBER_UPDATES_PER_BLOCK_MAX = 100

# An operation is [name, field, field]: every operation of both apps has at
# most two fields, so a longer or nested payload is refused while decoding.
PAYLOAD_FIELDS_MAX = 3


def bad_payload(why: str) -> TxResult:
    return TxResult(CODE_BAD_PAYLOAD, why)


def decode_payload(payload: bytes) -> tuple[Any, ...] | None:
    """A payload's operation, or None when it is not one.

    An operation is the canonical array of 1 to PAYLOAD_FIELDS_MAX scalars
    whose first is the operation's name (a str); the applications check the
    fields' types.
    """
    try:
        operation: tuple[Any, ...] = decode_with(
            payload,
            _read_operation,
            encode,
            bytes_max=TX_PAYLOAD_BYTES_MAX,
            field_bytes_max=TX_PAYLOAD_BYTES_MAX,
        )
    except DecodeError:
        return None
    return operation


def _read_operation(r: Reader) -> tuple[Any, ...]:
    n = r.array("payload", count_max=PAYLOAD_FIELDS_MAX)
    if n == 0:
        raise DecodeError("payload: empty")
    name = r.text("payload.name", TX_PAYLOAD_BYTES_MAX)
    return (name, *(r.scalar("payload.field") for _ in range(n - 1)))


class AddressMemo:
    """Sender public key -> address, so a busy sender's key is hashed once.

    Bounded by `entries_max`; when full it is emptied (a miss only costs one hash).
    """

    __slots__ = ("_memo", "entries_max")

    def __init__(self, entries_max: int = 65_536) -> None:
        self._memo: dict[bytes, bytes] = {}
        self.entries_max = entries_max

    @property
    def table(self) -> dict[bytes, bytes]:
        """The memo itself, for hot loops that look up before calling `get`."""
        return self._memo

    def get(self, public_key: bytes) -> bytes:
        address = self._memo.get(public_key)
        if address is None:
            if len(self._memo) >= self.entries_max:
                self._memo.clear()
            address = address_of(public_key)
            self._memo[public_key] = address
        return address


def apply_validator_update(
    validators: dict[bytes, int],
    changed: dict[bytes, int],
    update_count: int,
    public_key: Any,
    power: Any,
) -> TxResult | ValidatorUpdate:
    """Check one update against the set as changed so far in this block.

    `validators` is the committed set (public key -> power), `changed` this
    block's overlay (power 0 = removed). Returns the update, recorded into
    `changed`, or the failed result. Every accepted sequence leaves 1 to
    VALIDATORS_MAX validators, each with power in 1..VOTING_POWER_MAX.
    """
    suite = active()
    if type(public_key) is not bytes or not suite.public_key_well_formed(public_key):
        return TxResult(
            CODE_BAD_VALIDATOR_UPDATE,
            f"public key must be an {suite.key_type} key of {suite.public_key_bytes} bytes",
        )
    if type(power) is not int or not 0 <= power <= VOTING_POWER_MAX:
        return TxResult(CODE_BAD_VALIDATOR_UPDATE, f"power must be in 0..{VOTING_POWER_MAX}")
    if update_count >= VALIDATOR_UPDATES_PER_BLOCK_MAX:
        return TxResult(CODE_BAD_VALIDATOR_UPDATE, "too many validator updates in this block")
    current = changed.get(public_key, validators.get(public_key, 0))
    count = sum(1 for pk in validators if changed.get(pk, 1) > 0)
    count += sum(1 for pk, p in changed.items() if p > 0 and pk not in validators)
    if power == 0 and current == 0:
        return TxResult(CODE_BAD_VALIDATOR_UPDATE, "not a validator")
    if power == 0 and count <= 1:
        return TxResult(CODE_BAD_VALIDATOR_UPDATE, "cannot remove the last validator")
    if power > 0 and current == 0 and count >= VALIDATORS_MAX:
        return TxResult(CODE_BAD_VALIDATOR_UPDATE, "validator set is full")
    changed[public_key] = power
    return ValidatorUpdate(public_key, power)


def apply_member_update(
    members: frozenset[bytes], changed: dict[bytes, bool], node_id: Any, present: Any
) -> TxResult | None:
    """Check one ["set_member", node_id, present] against the list as changed in this block.

    Records it into `changed` and returns None, or returns the failed result.
    The list never becomes empty by a removal: an empty list opens the
    network to anyone, which must be a new chain's decision, not an accident.
    """
    if type(node_id) is not bytes or len(node_id) != ADDRESS_BYTES:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "node id must be 20 bytes")
    if type(present) is not bool:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "present must be true or false")
    if len(changed) >= MEMBER_UPDATES_PER_BLOCK_MAX:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "too many member updates in this block")
    current = changed.get(node_id, node_id in members)
    if present == current:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "already a member" if present else "not a member")
    count = len(members) + sum((1 if p else -1) for m, p in changed.items() if p != (m in members))
    if present and count >= MEMBERS_MAX:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "member list is full")
    if not present and count <= 1:
        return TxResult(CODE_BAD_MEMBER_UPDATE, "cannot remove the last member")
    changed[node_id] = present
    return None


def member_writes(changed: dict[bytes, bool]) -> list[tuple[bytes, bytes | None]]:
    return [(KEY_MEMBER + m, b"" if present else None) for m, present in changed.items()]


def commit_member_write(key: bytes, value: bytes | None, members: set[bytes]) -> None:
    assert len(key) == 1 + ADDRESS_BYTES
    if value is None:
        members.discard(key[1:])
    else:
        members.add(key[1:])


def validator_writes(changed: dict[bytes, int]) -> list[tuple[bytes, bytes | None]]:
    return [(KEY_VALIDATOR + pk, encode(p) if p else None) for pk, p in changed.items()]


def load_validator(key: bytes, value: bytes, validators: dict[bytes, int]) -> None:
    power = decode(value)
    assert len(key) == 1 + active().public_key_bytes and type(power) is int and power > 0
    validators[key[1:]] = power


def parse_address(text: Any, what: str) -> bytes:
    """A 20-byte address from genesis hex; ValueError names the field."""
    try:
        address = bytes.fromhex(text) if isinstance(text, str) else b""
    except ValueError:
        address = b""
    if len(address) != ADDRESS_BYTES:
        raise ValueError(f"{what}: expected a {ADDRESS_BYTES}-byte address in hex")
    return address


def loaded_state(
    items: Iterable[tuple[bytes, bytes]], app_hash: bytes, height: int
) -> tuple[list[tuple[bytes, bytes]], StateVersions]:
    """The stored pairs and their state tree, which must hash to the stored `app_hash`.

    StateCorrupt (one line) otherwise: a store whose state and app hash
    disagree would make this node compute a different app hash than the chain.
    """
    pairs = list(items)
    tree = StateTree.from_items(pairs)
    if tree.root != app_hash:
        raise StateCorrupt(
            f"the stored state ({len(pairs)} keys) hashes to {tree.root.hex()[:16]}..., "
            f"not to the app hash stored for height {height} ({app_hash.hex()[:16]}...): "
            "the store is corrupt"
        )
    return pairs, StateVersions(tree, height)


def genesis_state(items: Iterable[tuple[bytes, bytes]]) -> StateVersions:
    """The state tree of the genesis state (height 0)."""
    return StateVersions(StateTree.from_items(items), 0)
