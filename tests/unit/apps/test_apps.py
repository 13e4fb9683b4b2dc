"""The built-in applications: ledger and kvstore rules, app hash, commit/load round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps import app_class
from apps.common import (
    CODE_BAD_NONCE,
    CODE_BAD_PAYLOAD,
    CODE_BAD_VALIDATOR_UPDATE,
    CODE_INSUFFICIENT_FUNDS,
    CODE_UNAUTHORIZED,
)
from apps.kvstore import KVStore, set_tx
from apps.ledger import Ledger, transfer_payload, transfer_tx, validator_tx
from consensus.codec import decode, encode
from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisError, GenesisValidator
from consensus.statetree import CHAIN_KEY, StateCorrupt, StateTree, chain_value
from consensus.types import Header, Transaction
from tests.strategies import mutated

CHAIN = "apps-test"
ALICE, BOB, ADMIN = (PrivateKey(bytes([i]) * 32) for i in (11, 12, 13))
VALS = [PrivateKey(bytes([i]) * 32) for i in (1, 2)]


def _genesis(app: str, state: dict[str, Any]) -> Genesis:
    return Genesis(
        CHAIN,
        0,
        tuple(GenesisValidator(f"v{i}", k.public_key, 10) for i, k in enumerate(VALS)),
        app,
        state,
    )


def _ledger() -> Ledger:
    state = {
        "accounts": {ALICE.address.hex(): 100, BOB.address.hex(): 5},
        "admin": ADMIN.address.hex(),
    }
    return Ledger.from_genesis(_genesis("ledger", state))


def _header(height: int) -> Header:
    z = b"\x00" * 32
    return Header(CHAIN, height, 0, b"", b"", z, z, z, b"", z, z, b"\x00" * 20)


def _account(app: Ledger, key: PrivateKey) -> tuple[int, int]:
    balance, nonce = decode(app.query("account", key.address).value)
    return balance, nonce


def test_transfers_results_and_commit() -> None:
    """Transfers move balances; bad nonce, overdraft and bad amount are recorded, not dropped."""
    app = _ledger()
    txs = [
        transfer_tx(ALICE, CHAIN, 0, BOB.address, 30),
        transfer_tx(ALICE, CHAIN, 5, BOB.address, 1),  # wrong nonce
        transfer_tx(ALICE, CHAIN, 1, BOB.address, 1000),  # overdraft: nonce used
        transfer_tx(ALICE, CHAIN, 2, BOB.address, 0),  # amount must be positive
        transfer_tx(BOB, CHAIN, 0, ALICE.address, 35),
        Transaction.create(BOB, CHAIN, 1, b"\x93\xa8transfer"),  # truncated payload
    ]
    ex = app.execute_block(_header(1), txs, ())
    assert [r.code for r in ex.tx_results] == [
        0,
        CODE_BAD_NONCE,
        CODE_INSUFFICIENT_FUNDS,
        CODE_BAD_PAYLOAD,
        0,
        CODE_BAD_PAYLOAD,
    ]
    assert _account(app, ALICE) == (100, 0)  # execution leaves committed state alone
    assert app.commit(ex) == ex.app_hash == StateTree.from_items(app.items()).root
    assert _account(app, ALICE) == (105, 3)
    assert _account(app, BOB) == (0, 2)


@pytest.mark.parametrize("amount", [1, 127, 128, 255, 256, 65_535, 65_536, 2**32, 2**63 - 1])
def test_fast_path_agrees_with_general_rules(amount: int) -> None:
    """Every integer width of a transfer amount gives the same outcome as check_tx's rules."""
    app = _ledger()
    rich = Ledger.from_genesis(_genesis("ledger", {"accounts": {ALICE.address.hex(): 2**63 - 1}}))
    for a in (app, rich):
        tx = transfer_tx(ALICE, CHAIN, 0, BOB.address, amount)
        assert a.execute_block(_header(1), [tx], ()).tx_results[0].code == a.check_tx(tx).code


def test_non_minimal_amount_is_a_bad_payload() -> None:
    """An amount in a longer msgpack form than needed is not a canonical payload."""
    app = _ledger()
    payload = transfer_payload(BOB.address, 5)[:-1] + b"\xcd\x00\x05"
    tx = Transaction.create(ALICE, CHAIN, 0, payload)
    assert app.execute_block(_header(1), [tx], ()).tx_results[0].code == CODE_BAD_PAYLOAD


def test_check_tx_tracks_the_mempool_view() -> None:
    """check_tx accepts consecutive nonces and spends pending balance; commit resets the view."""
    app = _ledger()
    assert app.check_tx(transfer_tx(ALICE, CHAIN, 0, BOB.address, 60)).ok
    assert app.check_tx(transfer_tx(ALICE, CHAIN, 0, BOB.address, 1)).code == CODE_BAD_NONCE
    assert (
        app.check_tx(transfer_tx(ALICE, CHAIN, 1, BOB.address, 60)).code == CODE_INSUFFICIENT_FUNDS
    )
    assert app.check_tx(transfer_tx(ALICE, CHAIN, 1, BOB.address, 40)).ok  # rejected: unused
    app.commit(app.execute_block(_header(1), [], ()))
    assert app.check_tx(transfer_tx(ALICE, CHAIN, 0, BOB.address, 1)).ok


def test_admin_sets_validators_others_cannot() -> None:
    """Only the genesis admin's set_validator passes; removing the last validator fails."""
    app = _ledger()
    new = PrivateKey(b"\x21" * 32)
    txs = [
        validator_tx(ALICE, CHAIN, 0, new.public_key, 5),
        validator_tx(ADMIN, CHAIN, 0, new.public_key, 5),
        validator_tx(ADMIN, CHAIN, 1, VALS[0].public_key, 0),
        validator_tx(ADMIN, CHAIN, 2, VALS[1].public_key, 0),
        validator_tx(ADMIN, CHAIN, 3, new.public_key, 0),  # would leave none
    ]
    ex = app.execute_block(_header(1), txs, ())
    assert [r.code for r in ex.tx_results] == [
        CODE_UNAUTHORIZED,
        0,
        0,
        0,
        CODE_BAD_VALIDATOR_UPDATE,
    ]
    assert [(u.public_key, u.power) for u in ex.validator_updates] == [
        (new.public_key, 5),
        (VALS[0].public_key, 0),
        (VALS[1].public_key, 0),
    ]
    app.commit(ex)
    assert decode(app.query("validators", b"").value) == ((new.public_key, 5),)


def test_ledger_load_restores_committed_state() -> None:
    """load() from the genesis items plus the committed writes equals the live app."""
    app = _ledger()
    items = dict(app.items())
    ex = app.execute_block(_header(1), [transfer_tx(ALICE, CHAIN, 0, BOB.address, 7)], ())
    app.commit(ex)
    for k, v in ex.writes:
        if v is None:
            items.pop(k, None)
        else:
            items[k] = v
    loaded = Ledger.load(items.items(), ex.app_hash, 1)
    assert dict(loaded.items()) == dict(app.items())
    assert loaded.app_hash == app.app_hash and loaded.height == 1
    tx = transfer_tx(BOB, CHAIN, 0, ALICE.address, 1)
    assert loaded.execute_block(_header(2), [tx], ()) == app.execute_block(_header(2), [tx], ())


def test_kvstore_set_query_val_and_load() -> None:
    """kvstore stores values, answers queries, changes validators and reloads identically."""
    app = KVStore.from_genesis(_genesis("kvstore", {}))
    new = PrivateKey(b"\x22" * 32)
    txs = [
        set_tx(ALICE, CHAIN, 0, b"colour", b"blue"),
        set_tx(ALICE, CHAIN, 0, b"colour", b"red"),  # replayed nonce
        Transaction.create(BOB, CHAIN, 0, encode(["val", new.public_key, 3])),
        Transaction.create(BOB, CHAIN, 1, encode(["set", b"", b"x"])),  # empty key
        Transaction.create(BOB, CHAIN, 2, b"\xc1"),
    ]
    ex = app.execute_block(_header(1), txs, ())
    assert [r.code for r in ex.tx_results] == [
        0,
        CODE_BAD_NONCE,
        0,
        CODE_BAD_PAYLOAD,
        CODE_BAD_PAYLOAD,
    ]
    assert not app.query("key", b"colour").ok
    app.commit(ex)
    assert app.query("key", b"colour").value == b"blue"
    assert [(u.public_key, u.power) for u in ex.validator_updates] == [(new.public_key, 3)]
    loaded = KVStore.load(app.items(), app.app_hash, app.height)
    assert dict(loaded.items()) == dict(app.items())


def test_genesis_app_picks_the_registered_class() -> None:
    """Genesis `app` picks the implementation, an unknown name is one GenesisError naming
    the known ones, and a bad app_state is a ValueError."""
    assert isinstance(
        app_class(_genesis("kvstore", {})).from_genesis(_genesis("kvstore", {})), KVStore
    )
    assert isinstance(
        app_class(_genesis("ledger", {})).from_genesis(_genesis("ledger", {})), Ledger
    )
    with pytest.raises(GenesisError, match="expected one of ledger, kvstore, got 'bank'"):
        app_class(_genesis("bank", {}))
    with pytest.raises(ValueError, match="admin"):
        Ledger.from_genesis(_genesis("ledger", {"admin": "zz"}))
    with pytest.raises(ValueError, match="kvstore"):
        KVStore.from_genesis(_genesis("kvstore", {"x": 1}))


def test_app_hash_is_deterministic_and_chained() -> None:
    """Two apps fed the same blocks agree on every app hash; the hash covers the writes."""
    a, b = _ledger(), _ledger()
    for h, amount in ((1, 3), (2, 4)):
        tx = transfer_tx(ALICE, CHAIN, h - 1, BOB.address, amount)
        ea, eb = a.execute_block(_header(h), [tx], ()), b.execute_block(_header(h), [tx], ())
        assert a.commit(ea) == b.commit(eb)
    other = _ledger()
    e1 = other.execute_block(_header(1), [transfer_tx(ALICE, CHAIN, 0, BOB.address, 2)], ())
    assert e1.app_hash != other.app_hash


def test_remembered_amount_needs_the_transfer_head() -> None:
    """A payload ending like a remembered transfer amount but not a transfer is not one."""
    app = Ledger.from_genesis(_genesis("ledger", {"accounts": {ALICE.address.hex(): 10**6}}))
    good = transfer_tx(ALICE, CHAIN, 0, BOB.address, 300)
    tail = good.payload[-3:]  # 0xcd 0x01 0x2c, remembered after the first transfer
    impostor = b"\x93\xa8transfeR\xc4\x14" + BOB.address + tail
    longer = good.payload + b"\x00"
    txs = [
        good,
        Transaction.create(ALICE, CHAIN, 1, impostor),
        Transaction.create(ALICE, CHAIN, 2, longer),
        transfer_tx(ALICE, CHAIN, 3, BOB.address, 300),
    ]
    codes = [r.code for r in app.execute_block(_header(1), txs, ()).tx_results]
    assert codes == [0, CODE_BAD_PAYLOAD, CODE_BAD_PAYLOAD, 0]


def test_ledger_removes_an_equivocating_validator() -> None:
    """Committed evidence against a validator yields its removal (power 0) as an update."""
    from consensus.types import DuplicateVoteEvidence, Vote, VoteType

    app = _ledger()
    offender = VALS[1]
    a = Vote.create(offender, CHAIN, VoteType.PREVOTE, 1, 0, b"\x01" * 32, 1)
    b = Vote.create(offender, CHAIN, VoteType.PREVOTE, 1, 0, b"\x02" * 32, 1)
    execution = app.execute_block(_header(1), [], [DuplicateVoteEvidence(a, b)])
    assert [(u.public_key, u.power) for u in execution.validator_updates] == [
        (offender.public_key, 0)
    ]
    app.commit(execution)
    # The same evidence again (a later block, or after a restart) acts no more.
    restored = Ledger.load(app.items(), app.app_hash, app.height)
    again = restored.execute_block(_header(2), [], [DuplicateVoteEvidence(a, b)])
    assert again.validator_updates == () and again.writes == ()
    # The last remaining validator is never removed, even with evidence against it.
    a2 = Vote.create(VALS[0], CHAIN, VoteType.PREVOTE, 3, 0, b"\x01" * 32, 0)
    b2 = Vote.create(VALS[0], CHAIN, VoteType.PREVOTE, 3, 0, b"\x02" * 32, 0)
    last = app.execute_block(_header(2), [], [DuplicateVoteEvidence(a2, b2)])
    assert last.validator_updates == ()


def _members_genesis(app: str) -> Genesis:
    state = {"accounts": {}, "admin": ADMIN.address.hex()} if app == "ledger" else {}
    genesis = _genesis(app, state)
    return Genesis(
        genesis.chain_id,
        genesis.genesis_time_ms,
        genesis.validators,
        genesis.app,
        genesis.app_state,
        members=(b"\x01" * 20, b"\x02" * 20),
    )


def test_member_list_changes_by_set_member_and_survives_load() -> None:
    """The ledger's member list starts from genesis `members`; only the admin changes it, one
    node id per transaction, never to empty; the committed list is in the app state (so in
    the app hash) and survives a reload; kvstore takes the same payload from any signer."""
    from apps.common import CODE_BAD_MEMBER_UPDATE
    from apps.ledger import member_tx

    ledger = Ledger.from_genesis(_members_genesis("ledger"))
    assert ledger.members() == {b"\x01" * 20, b"\x02" * 20}
    new = b"\x03" * 20
    txs = [
        member_tx(ALICE, CHAIN, 0, new, True),  # not the admin
        member_tx(ADMIN, CHAIN, 0, new, True),
        member_tx(ADMIN, CHAIN, 1, new, True),  # already one (in this block)
        member_tx(ADMIN, CHAIN, 2, b"\x01" * 20, False),
        member_tx(ADMIN, CHAIN, 3, b"\x09" * 19, True),  # not a node id
    ]
    execution = ledger.execute_block(_header(1), txs, [])
    codes = [r.code for r in execution.tx_results]
    assert codes == [CODE_UNAUTHORIZED, 0, CODE_BAD_MEMBER_UPDATE, 0, CODE_BAD_MEMBER_UPDATE]
    assert ledger.members() == {b"\x01" * 20, b"\x02" * 20}  # executing commits nothing
    ledger.commit(execution)
    assert ledger.members() == {b"\x02" * 20, new}
    again = Ledger.load(ledger.items(), ledger.app_hash, ledger.height)
    assert again.members() == ledger.members()
    last = ledger.execute_block(
        _header(2),
        [member_tx(ADMIN, CHAIN, 4, new, False), member_tx(ADMIN, CHAIN, 5, b"\x02" * 20, False)],
        [],
    )
    assert [r.code for r in last.tx_results] == [0, CODE_BAD_MEMBER_UPDATE]  # never empty

    kv = KVStore.from_genesis(_members_genesis("kvstore"))
    execution = kv.execute_block(_header(1), [member_tx(ALICE, CHAIN, 0, new, True)], [])
    assert execution.tx_results[0].ok
    kv.commit(execution)
    assert new in kv.members()
    assert KVStore.load(kv.items(), kv.app_hash, kv.height).members() == kv.members()


def test_genesis_members_parse_strictly_and_keep_open_chains_hashes() -> None:
    """`members` in genesis.json: distinct 40-hex node ids; a genesis without them has the
    same JSON (and hash) as before the field existed."""
    open_chain = _genesis("kvstore", {})
    assert "members" not in open_chain.to_json_obj()
    with_members = _members_genesis("kvstore")
    assert Genesis.from_json(with_members.to_json()) == with_members
    for bad in (["zz" * 20], ["01" * 20, "01" * 20], "01" * 20, ["01" * 19]):
        obj = open_chain.to_json_obj() | {"members": bad}
        with pytest.raises(GenesisError, match="members"):
            Genesis.from_json_obj(obj)


# ---------------------------------------------------------------- check_tx, two ways

_RICH = PrivateKey(bytes([14]) * 32)  # an account near the balance limit, to refuse credits
_KEYS = (ALICE, BOB, _RICH)
_AMOUNT_FORMS = (
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xcc\x80",
    b"\xcc\x05",  # non-minimal: the general rules refuse it
    b"\xcd\x01\x00",
    b"\xce\x00\x01\x00\x00",
    b"\xcf\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xff",
    b"",
)


@st.composite
def _check_txs(draw: st.DrawFn) -> Transaction:
    """Transfers between the three accounts (to oneself too), with any amount form and
    nonces around the right ones, their mutations, and other payloads."""
    sender = draw(st.sampled_from(_KEYS)).public_key
    nonce = draw(st.integers(0, 4))
    to = draw(st.sampled_from([k.address for k in _KEYS] + [b"\x07" * 20]))
    head = b"\x93\xa8transfer\xc4\x14" + to
    payload = draw(
        st.one_of(
            st.sampled_from(_AMOUNT_FORMS).map(lambda a: head + a),
            st.integers(1, 150).map(lambda a: transfer_payload(to, a)),
            st.integers(1, 150).map(lambda a: transfer_payload(to, a)).flatmap(mutated),
            st.binary(max_size=40),
        )
    )
    return Transaction(sender, nonce, payload, b"\x00" * 64)


@settings(max_examples=400, deadline=None)
@given(st.lists(_check_txs(), max_size=30))
def test_check_tx_fast_path_is_the_general_rules(txs: list[Transaction]) -> None:
    """check_tx's inline transfer check gives the general rules' result for every
    transaction, and leaves the same mempool view (entries and their order)."""
    state = {
        "accounts": {
            ALICE.address.hex(): 100,
            BOB.address.hex(): 5,
            _RICH.address.hex(): 2**63 - 1 - 60,
        }
    }
    fast, general = (Ledger.from_genesis(_genesis("ledger", state)) for _ in range(2))
    for tx in txs:
        assert fast.check_tx(tx) == general._check_tx_generally(tx)
        assert list(fast._check.items()) == list(general._check.items())


@pytest.mark.parametrize("app_name", ["ledger", "kvstore"])
def test_app_hash_is_the_state_tree_root_and_load_checks_it(app_name: str) -> None:
    """After each block the app hash is the root over the whole state (chain key included);
    a store whose state does not hash to its app hash refuses to load, naming the cause."""
    if app_name == "ledger":
        app: Ledger | KVStore = _ledger()
        txs = [[transfer_tx(ALICE, CHAIN, n, BOB.address, 1)] for n in range(3)]
    else:
        app = KVStore.from_genesis(_genesis("kvstore", {}))
        txs = [[set_tx(ALICE, CHAIN, n, b"k%d" % n, b"v")] for n in range(3)]
    chain = (CHAIN_KEY, chain_value(CHAIN, app_name))
    assert chain in set(app.items())
    assert app.app_hash == StateTree.from_items(app.items()).root
    roots = [app.app_hash]
    for height, block in enumerate(txs, start=1):
        ex = app.execute_block(_header(height), block, ())
        assert app.commit(ex) == StateTree.from_items(app.items()).root
        roots.append(app.app_hash)
    assert len(set(roots)) == len(roots)
    # The latest two heights' trees are kept, for /state/proof.
    for height in (2, 3):
        tree = app.state_tree(height)
        assert tree is not None and tree.root == roots[height]
    assert app.state_tree(1) is None
    items = list(app.items())
    cls = type(app)
    assert cls.load(items, app.app_hash, 3).app_hash == app.app_hash
    tampered = [(k, v + b"\x00" if k[:1] in (b"a", b"k") else v) for k, v in items]
    with pytest.raises(StateCorrupt, match="the store is corrupt"):
        cls.load(tampered, app.app_hash, 3)
    with pytest.raises(StateCorrupt, match="height 3"):
        cls.load([kv for kv in items if kv[0] != CHAIN_KEY], app.app_hash, 3)
