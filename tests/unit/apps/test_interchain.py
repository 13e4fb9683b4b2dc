"""Interchain transfers between two ledgers, with real headers, certificates and results.

Chain A is a real `Ledger` whose blocks are executed here and whose headers
carry the true data hash and results hash, certified by A's validators' real
signatures; chain B is another `Ledger` that holds a light client of A. What
these tests prove: a send_out on A moves the amount to the destination's
escrow; B credits it once, on a proof built from A's blocks; each kind of
tampering (a tx byte, a Merkle step, a failed tx, a replay, a header of
another chain, an unverified header, a certificate signature, too little
trusted power, an expired client, a wrong validator set, a foreign suite) is
refused with a result code and a log naming the check, and leaves B's
balances unchanged; check_tx and execution agree; the state survives a reload.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from apps import interchain
from apps.interchain import (
    CLIENT_UPDATES_PER_BLOCK_MAX,
    CODE_BAD_CLIENT,
    CODE_BAD_RECEIVE,
    ReceiveProof,
    client_create_payload,
    client_update_payload,
    escrow_address,
    receive_payload,
    send_out_payload,
)
from apps.ledger import Ledger, transfer_tx
from consensus import merkle
from consensus.app import TX_LOG_BYTES_MAX, TxResult, results_hash
from consensus.codec import decode, encode
from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisValidator
from consensus.light import LightBlock
from consensus.types import (
    Commit,
    CommitSig,
    Header,
    Transaction,
    Validator,
    ValidatorSet,
    data_hash,
    precommit_sign_bytes,
)
from tests.unit.consensus import test_light

A, B = "chain-a", "chain-b"
ALICE, RELAYER, ADMIN, CAROL = (PrivateKey(bytes([i]) * 32) for i in (21, 22, 23, 24))
A_KEYS = [PrivateKey(hashlib.sha256(b"a validator %d" % i).digest()) for i in range(3)]
B_KEYS = [PrivateKey(hashlib.sha256(b"b validator %d" % i).digest()) for i in range(2)]
HOUR_MS = 3_600_000
BLOCK_MS = 1_000


def _genesis(chain_id: str, keys: list[PrivateKey], state: dict[str, Any]) -> Genesis:
    validators = tuple(GenesisValidator(f"v{i}", k.public_key, 10) for i, k in enumerate(keys))
    return Genesis(chain_id, 0, validators, "ledger", state)


class ChainA:
    """A real ledger of chain A and the light blocks of its committed heights."""

    def __init__(self) -> None:
        state = {"accounts": {ALICE.address.hex(): 1_000}}
        self.app = Ledger.from_genesis(_genesis(A, A_KEYS, state))
        self.validators = ValidatorSet.of(Validator(k.public_key, 10) for k in A_KEYS)
        self.blocks: list[LightBlock] = []
        self.txs: list[list[bytes]] = []
        self.results: list[tuple[TxResult, ...]] = []

    def add(self, txs: list[Transaction]) -> LightBlock:
        height = len(self.blocks) + 1
        raws = [t.encode() for t in txs]
        z = hashlib.sha256(b"").digest()
        header = Header(
            chain_id=A,
            height=height,
            time_ms=height * BLOCK_MS,
            last_block_hash=self.blocks[-1].header.hash if self.blocks else b"",
            last_commit_hash=b"" if height == 1 else z,
            data_hash=data_hash(raws),
            validators_hash=self.validators.hash,
            next_validators_hash=self.validators.hash,
            app_hash=self.app.app_hash,
            last_results_hash=results_hash(self.results[-1] if self.results else ()),
            evidence_hash=merkle.root([]),
            proposer_address=self.validators[0].address,
        )
        execution = self.app.execute_block(header, txs, ())
        self.app.commit(execution)
        message = precommit_sign_bytes(A, height, 0, header.hash)
        by_address = {k.address: k for k in A_KEYS}
        sigs = tuple(
            CommitSig(i, by_address[v.address].sign(message)) for i, v in enumerate(self.validators)
        )
        block = LightBlock(
            header, Commit(height, 0, header.hash, sigs), self.validators, self.validators
        )
        self.blocks.append(block)
        self.txs.append(raws)
        self.results.append(execution.tx_results)
        return block

    def at(self, height: int) -> LightBlock:
        return self.blocks[height - 1]

    def proof(self, height: int, index: int) -> ReceiveProof:
        """The proof of tx `index` of block `height` (needs height + 1)."""
        raws = self.txs[height - 1]
        items = [encode(r.to_obj()) for r in self.results[height - 1]]
        tx_path = merkle.prove(raws, index)
        result_path = merkle.prove(items, index)
        return ReceiveProof(
            raws[index],
            self.at(height).header,
            self.at(height + 1).header,
            index,
            len(raws),
            tx_path.aunts,
            items[index],
            result_path.aunts,
        )


class ChainB:
    """A real ledger of chain B, run block by block at A's pace."""

    def __init__(self) -> None:
        state = {"accounts": {RELAYER.address.hex(): 0}, "admin": ADMIN.address.hex()}
        self.app = Ledger.from_genesis(_genesis(B, B_KEYS, state))
        self.height = 0
        self.nonces: dict[bytes, int] = {}

    def tx(self, key: PrivateKey, payload: bytes) -> Transaction:
        nonce = self.nonces.get(key.address, 0)
        self.nonces[key.address] = nonce + 1
        return Transaction.create(key, B, nonce, payload)

    def run(self, txs: list[Transaction], time_ms: int = 10 * BLOCK_MS) -> list[TxResult]:
        self.height += 1
        z = b"\x00" * 32
        header = Header(B, self.height, time_ms, b"", b"", z, z, z, b"", z, z, b"\x00" * 20)
        execution = self.app.execute_block(header, txs, ())
        self.app.commit(execution)
        return list(execution.tx_results)

    def balance(self, key: PrivateKey | bytes) -> int:
        address = key if isinstance(key, bytes) else key.address
        value: int = decode(self.app.query("account", address).value)[0]
        return value


def _connected(sends: list[int]) -> tuple[ChainA, ChainB]:
    """A with Alice's send_outs to Carol on B in block 2 (plus an overdraft), B with a
    client of A created at height 1 and updated to height 3."""
    a, b = ChainA(), ChainB()
    a.add([])
    txs = [
        Transaction.create(ALICE, A, n, send_out_payload(B, CAROL.address, s))
        for n, s in enumerate(sends)
    ]
    a.add(txs)
    a.add([])
    create = b.tx(ADMIN, client_create_payload(a.at(1), HOUR_MS))
    update = b.tx(RELAYER, client_update_payload(A, a.at(3)))
    assert [r.code for r in b.run([create, update])] == [0, 0]
    return a, b


def _receive(b: ChainB, proof: ReceiveProof, source: str = A) -> TxResult:
    return b.run([b.tx(RELAYER, receive_payload(source, proof))])[0]


def test_send_out_moves_the_amount_to_the_escrow_and_an_overdraft_fails() -> None:
    """On A: Alice's send_out of 300 leaves 700 and credits B's escrow; an overdraft is
    recorded as code 3 in its block and moves nothing."""
    a, _ = _connected([300, 5_000])
    assert [r.code for r in a.results[1]] == [0, 3]
    balance, nonce = decode(a.app.query("account", ALICE.address).value)
    assert (balance, nonce) == (700, 2)
    assert decode(a.app.query("account", escrow_address(B)).value)[0] == 300


def test_a_proven_send_out_is_credited_once_and_a_replay_is_refused() -> None:
    """B credits Carol 300 on the proof of a committed send_out; the same proof again, in a
    later block or twice in one block, is refused as a replay and credits nothing."""
    a, b = _connected([300])
    proof = a.proof(2, 0)
    assert _receive(b, proof).code == 0
    assert b.balance(CAROL) == 300
    again = _receive(b, proof)
    assert again.code == CODE_BAD_RECEIVE and again.log.startswith("replay:"), again
    a2, b2 = _connected([300])
    p2 = a2.proof(2, 0)
    codes = b2.run([b2.tx(RELAYER, receive_payload(A, p2)) for _ in range(2)])
    assert [r.code for r in codes] == [0, CODE_BAD_RECEIVE]
    assert b2.balance(CAROL) == 300


def _bent(aunts: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return (bytes([aunts[0][0] ^ 1]) + aunts[0][1:], *aunts[1:])


def _other_chain_header(header: Header) -> Header:
    return dataclasses.replace(header, chain_id="chain-z")


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("tx byte", "tx Merkle step"),
        ("tx Merkle step", "tx Merkle step"),
        ("result Merkle step", "result Merkle step"),
        ("failed tx", "result code"),
        ("result claims success", "result Merkle step"),
        ("another chain id", "chain id"),
        ("unverified header", "verified header"),
        ("another header h", "last block hash"),
        ("not a send_out", "send_out"),
        ("another destination", "destination chain"),
        ("unknown client", "client"),
    ],
)
def test_each_tampered_receive_is_refused_naming_its_check(case: str, check: str) -> None:
    """Each tampering of a receive is refused with code 9 and a log naming the check, in
    check_tx and in execution alike, and B's balances do not move."""
    a, b = _connected([300, 5_000])
    proof = a.proof(2, 0)
    source = A
    if case == "tx byte":
        proof = dataclasses.replace(proof, tx=proof.tx[:-1] + bytes([proof.tx[-1] ^ 1]))
    elif case == "tx Merkle step":
        proof = dataclasses.replace(proof, tx_aunts=_bent(proof.tx_aunts))
    elif case == "result Merkle step":
        proof = dataclasses.replace(proof, result_aunts=_bent(proof.result_aunts))
    elif case == "failed tx":
        proof = a.proof(2, 1)  # the overdraft: in its block, with result code 3
    elif case == "result claims success":
        proof = dataclasses.replace(a.proof(2, 1), result=encode([0, b""]))
    elif case == "another chain id":
        proof = dataclasses.replace(proof, header=_other_chain_header(proof.header))
    elif case == "unverified header":
        a.add([])
        proof = dataclasses.replace(proof, next_header=a.at(4).header, header=a.at(3).header)
    elif case == "another header h":
        forged = dataclasses.replace(proof.header, app_hash=b"\x01" * 32)
        proof = dataclasses.replace(proof, header=forged)
    elif case in ("not a send_out", "another destination"):
        tx = (
            transfer_tx(ALICE, A, 2, CAROL.address, 1)
            if case == "not a send_out"
            else Transaction.create(ALICE, A, 2, send_out_payload("chain-q", CAROL.address, 9))
        )
        a.add([tx])
        a.add([])
        b.run([b.tx(RELAYER, client_update_payload(A, a.at(5)))])
        proof = a.proof(4, 0)
    elif case == "unknown client":
        source = "chain-q"
    tx = b.tx(RELAYER, receive_payload(source, proof))
    checked = b.app.check_tx(tx)
    result = b.run([tx])[0]
    assert result == checked or result.code == checked.code
    assert result.code == CODE_BAD_RECEIVE, result
    assert result.log.startswith(check + ":"), result.log
    assert b.balance(CAROL) == 0 and b.balance(RELAYER) == 0


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("certificate signature", "certificate signature"),
        ("trusted power", "trusted power"),
        ("expired", "trusting period"),
        ("wrong validator set", "validator set hash"),
        ("another chain id", "chain id"),
        ("stale height", "height"),
    ],
)
def test_each_bad_client_update_is_refused_naming_the_light_client_check(
    case: str, check: str
) -> None:
    """A client of the light-test chain (validator sets that change every 3 heights),
    created at height 1: each bad update is refused with code 8 naming the check."""
    chain = test_light.CHAIN
    b = ChainB()
    now = test_light.NOW
    assert b.run([b.tx(ADMIN, client_create_payload(test_light.at(1), HOUR_MS))], now)[0].ok
    block = test_light.at(2)
    if case == "certificate signature":
        sig = block.commit.signatures[0]
        bad = CommitSig(sig.validator_index, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
        block = dataclasses.replace(
            block,
            commit=dataclasses.replace(
                block.commit, signatures=(bad, *block.commit.signatures[1:])
            ),
        )
    elif case == "trusted power":
        block = test_light.at(40)  # none of height 1's set is left
    elif case == "expired":
        now = test_light.at(1).header.time_ms + HOUR_MS + 1
    elif case == "wrong validator set":
        stranger = ValidatorSet.of([Validator(CAROL.public_key, 10)])
        block = dataclasses.replace(block, validators=stranger)
    elif case == "another chain id":
        block = dataclasses.replace(block, header=dataclasses.replace(block.header, chain_id="x"))
    elif case == "stale height":
        block = test_light.at(1)
    result = b.run([b.tx(RELAYER, client_update_payload(chain, block))], now)[0]
    assert result.code == CODE_BAD_CLIENT, result
    assert result.log.startswith(check), result.log


def test_every_refusal_log_is_short_whatever_the_payload_holds() -> None:
    """A chain id of 20,000 bytes in client_update and receive is refused as a bad payload
    before anything names it; each log stays under TX_LOG_BYTES_MAX."""
    a, b = _connected([300])
    long_id = "x" * 20_000
    txs = [
        b.tx(RELAYER, encode(["client_update", long_id, b""])),
        b.tx(RELAYER, receive_payload(long_id, a.proof(2, 0))),
    ]
    for result in b.run(txs):
        assert result.code == 1 and len(result.log.encode()) <= TX_LOG_BYTES_MAX, result


def test_skips_bisect_forward_and_updates_per_block_are_bounded() -> None:
    """Skipping 1 -> 5 (a third or more of the trusted set signed) is accepted; more than
    CLIENT_UPDATES_PER_BLOCK_MAX updates in one block are refused."""
    chain = test_light.CHAIN
    b = ChainB()
    now = test_light.NOW
    assert b.run([b.tx(ADMIN, client_create_payload(test_light.at(1), HOUR_MS))], now)[0].ok
    heights = range(5, 5 + CLIENT_UPDATES_PER_BLOCK_MAX + 1)
    txs = [b.tx(RELAYER, client_update_payload(chain, test_light.at(h))) for h in heights]
    results = b.run(txs, now)
    assert [r.code for r in results[:-1]] == [0] * CLIENT_UPDATES_PER_BLOCK_MAX
    assert results[-1].code == CODE_BAD_CLIENT and "updates per block" in results[-1].log
    client = decode(b.app.query(interchain.QUERY_CLIENT, chain.encode()).value)
    assert client[2] == 4 + CLIENT_UPDATES_PER_BLOCK_MAX


def test_client_create_is_the_admins_and_refuses_a_foreign_suite() -> None:
    """Only the admin creates a client (code 4); params naming another suite are refused
    with one line naming both suites; a second client of one chain is refused."""
    a = ChainA()
    a.add([])
    b = ChainB()
    payload = client_create_payload(a.at(1), HOUR_MS)
    assert b.run([b.tx(RELAYER, payload)])[0].code == 4
    obj = decode(payload)
    foreign = encode([obj[0], obj[1], encode(["sm2-sm3", HOUR_MS])])
    refused = b.run([b.tx(ADMIN, foreign)])[0]
    assert refused.code == CODE_BAD_CLIENT and refused.log.startswith("crypto suite:"), refused
    assert "sm2-sm3" in refused.log
    assert [r.code for r in b.run([b.tx(ADMIN, payload), b.tx(ADMIN, payload)])] == [
        0,
        CODE_BAD_CLIENT,
    ]


def test_interchain_state_survives_a_reload_and_still_refuses_a_replay() -> None:
    """B reloaded from its items() answers as before: the client's height, and the
    receipt that refuses a replay."""
    a, b = _connected([300])
    proof = a.proof(2, 0)
    assert _receive(b, proof).ok
    reloaded = Ledger.load(b.app.items(), b.app.app_hash, b.app.height)
    query = (interchain.QUERY_CLIENT, A.encode())
    assert reloaded.query(*query) == b.app.query(*query)
    tx = b.tx(RELAYER, receive_payload(A, proof))
    assert reloaded.check_tx(tx).log.startswith("replay:")


def test_refused_updates_count_toward_the_cap_of_updates_per_block() -> None:
    """A block of CLIENT_UPDATES_PER_BLOCK_MAX updates that fail verification (a tampered
    signature) and one good one: the good one is refused before any verification."""
    chain = test_light.CHAIN
    b = ChainB()
    now = test_light.NOW
    assert b.run([b.tx(ADMIN, client_create_payload(test_light.at(1), HOUR_MS))], now)[0].ok
    good = test_light.at(2)
    sig = good.commit.signatures[0]
    bad_sig = CommitSig(sig.validator_index, bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    bad = dataclasses.replace(
        good,
        commit=dataclasses.replace(good.commit, signatures=(bad_sig, *good.commit.signatures[1:])),
    )
    txs = [
        b.tx(RELAYER, client_update_payload(chain, bad))
        for _ in range(CLIENT_UPDATES_PER_BLOCK_MAX)
    ]
    txs.append(b.tx(RELAYER, client_update_payload(chain, good)))
    results = b.run(txs, now)
    assert all(r.log.startswith("certificate signature") for r in results[:-1]), results
    assert results[-1].code == CODE_BAD_CLIENT and "updates per block" in results[-1].log
    # The mempool's view counts admitted updates only: refused ones, free to repeat,
    # must not crowd out an honest update until the next commit.
    # A refused tx takes no nonce: each is checked at the relayer's next one.
    nonce = b.nonces[RELAYER.address]
    for _ in range(CLIENT_UPDATES_PER_BLOCK_MAX):
        tx = Transaction.create(RELAYER, B, nonce, client_update_payload(chain, bad))
        assert b.app.check_tx(tx).code == CODE_BAD_CLIENT
    tx = Transaction.create(RELAYER, B, nonce, client_update_payload(chain, good))
    assert b.app.check_tx(tx).code == 0


def test_a_client_pushed_past_a_transfer_by_a_third_party_still_credits_it() -> None:
    """A send_out at height 2 of A; before the relayer moves B's client to 3, a third party
    moves it to 5. The relayer's update to 3 from the verified height 1 (below the client's
    latest) is accepted, the receive credits Carol, the client stays at 5."""
    a, b = ChainA(), ChainB()
    a.add([])
    a.add([Transaction.create(ALICE, A, 0, send_out_payload(B, CAROL.address, 300))])
    for _ in range(3):
        a.add([])
    create = b.tx(ADMIN, client_create_payload(a.at(1), HOUR_MS))
    push = b.tx(ALICE, client_update_payload(A, a.at(5)))
    assert [r.code for r in b.run([create, push])] == [0, 0]
    from_latest = b.run([b.tx(RELAYER, client_update_payload(A, a.at(3)))])[0]
    assert from_latest.code == CODE_BAD_CLIENT, from_latest
    assert from_latest.log.startswith("height"), from_latest
    unverified = b.run([b.tx(RELAYER, client_update_payload(A, a.at(3), 2))])[0]
    assert unverified.log.startswith("trusted height"), unverified
    assert b.run([b.tx(RELAYER, client_update_payload(A, a.at(3), 1))])[0].code == 0
    again = b.run([b.tx(RELAYER, client_update_payload(A, a.at(3), 1))])[0]
    assert again.log.startswith("height: 3 is verified already"), again
    assert _receive(b, a.proof(2, 0)).code == 0
    assert b.balance(CAROL) == 300
    client = decode(b.app.query(interchain.QUERY_CLIENT, A.encode()).value)
    assert client[2] == 5 and client[3] == a.at(5).header.time_ms
