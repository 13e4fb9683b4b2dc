"""Interchain transfers: one chain credits a transfer only on proof that another chain made it.

Chain A's ledger sends value out with `send_out` (the amount moves into an
escrow account of the destination chain, which no key controls). Chain B's
ledger holds a light client of A (consensus/light.py): the admin creates it
once from a header of A it trusts (`client_create`), then anyone moves it
forward by submitting A's later headers with their commit certificates and
validator sets (`client_update`), verified sequentially or by skipping with
a trust level of 1/3 within a trusting period, B's own block time being
"now". Every verified height's light block is kept, and `client_update_from`
verifies a header from any of them, also below the latest: a third party
that moves the client past height h + 1 of a transfer cannot strand it.
`receive` credits a recipient on B with a proof that a `send_out` to B was
committed on A and succeeded: the tx's Merkle path to header h's
`data_hash`, header h bound by header h + 1's `last_block_hash`, header h + 1
verified by the light client, and the result's Merkle path to header h + 1's
`last_results_hash` with code 0. Each (source chain, tx id) is credited once.

Pure and deterministic: every node of B reaches the same verdict from the
same block. What a check costs is bounded by the payload (32 KiB: at most a
few hundred certificate signatures per update) and by
CLIENT_UPDATES_PER_BLOCK_MAX per block. Every refusal is a `TxResult` whose
log starts with the name of the check that failed. The ledger (apps/ledger.py)
calls `apply` for these operations and moves the balances itself;
docs/PROTOCOL.md section 11 gives the formats byte-exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from apps.common import CODE_BAD_PAYLOAD, CODE_UNAUTHORIZED
from consensus import merkle
from consensus.app import CODE_OK, QueryResult, TxResult
from consensus.codec import DecodeError, Reader, decode, decode_with, encode
from consensus.crypto import ADDRESS_BYTES, HASH_BYTES, active, digest
from consensus.light import LightBlock, LightError, TrustOptions, verify_light_block
from consensus.light import verify_skipping as light_verify_skipping
from consensus.types import (
    CHAIN_ID_BYTES_MAX,
    HEIGHT_MAX,
    SMALL_FIELD_BYTES_MAX,
    TX_PAYLOAD_BYTES_MAX,
    Commit,
    Header,
    Transaction,
    ValidatorSet,
)

__all__ = [
    "CLIENT_UPDATES_PER_BLOCK_MAX",
    "CODE_BAD_CLIENT",
    "CODE_BAD_RECEIVE",
    "OPERATIONS",
    "Accepted",
    "Overlay",
    "ReceiveCheck",
    "client_create_payload",
    "client_update_payload",
    "escrow_address",
    "light_block_bytes",
    "receive_payload",
    "receive_proof_bytes",
    "send_out_payload",
]

# Result codes (docs/PROTOCOL.md section 11); the log names the failed check.
CODE_BAD_CLIENT = 8  # client_create or client_update refused
CODE_BAD_RECEIVE = 9  # receive refused

OPERATIONS = frozenset(
    {"send_out", "client_create", "client_update", "client_update_from", "receive"}
)
QUERY_CLIENT = "interchain/client"

# Each client_update verifies up to a certificate's worth of signatures (as many as fit
# in a 32 KiB payload, about 480); this many per block bounds a block's extra work to
# about a second of one core. Every update that reaches verification counts, refused or
# not (and in the mempool's view until the next commit): later ones in the block fail
# with CODE_BAD_CLIENT before any verification.
CLIENT_UPDATES_PER_BLOCK_MAX = 4
# A trusting period must be below the source chain's unbonding time; Archipelago has no
# unbonding, so the admin chooses it, up to a year.
TRUSTING_PERIOD_MS_MAX = 365 * 24 * 3600 * 1000

KEY_INTERCHAIN = b"i"
_KEY_CLIENT = b"ic"  # + chain id -> canonical [host chain id, trusting period ms, height]
# + u64 BE height + chain id -> the light block (light_block_bytes) of a verified height:
# an update may start from any of them, so a client pushed past a height can still be
# moved back to it (state grows only with accepted updates, CLIENT_UPDATES_PER_BLOCK_MAX
# a block at most).
_KEY_LIGHT = b"iL"
_KEY_HEADER = b"ih"  # + u64 BE height + chain id -> hash of a verified header
_KEY_RECEIPT = b"ir"  # + 32-byte tx id + chain id -> b"": credited once
_U64 = struct.Struct(">Q")

_ESCROW_TAG = "archipelago/escrow/v1"


class ReceiveCheck(Enum):
    """The check a `receive` failed; its value starts the result's log."""

    PAYLOAD = "payload"
    CLIENT = "client"
    CHAIN_ID = "chain id"
    HEADER = "verified header"
    LAST_BLOCK_HASH = "last block hash"
    TX_MERKLE = "tx Merkle step"
    RESULT_MERKLE = "result Merkle step"
    RESULT_CODE = "result code"
    TRANSFER = "send_out"
    DESTINATION = "destination chain"
    REPLAY = "replay"


# A chain id is checked before it is named in a log: every log stays far below
# consensus.app.TX_LOG_BYTES_MAX.
_CHAIN_ID_RULE = f"chain id: 1..{CHAIN_ID_BYTES_MAX} bytes"


def _chain_id_ok(chain_id: str) -> bool:
    return 0 < len(chain_id.encode()) <= CHAIN_ID_BYTES_MAX


def _refuse_receive(check: ReceiveCheck, detail: str) -> TxResult:
    return TxResult(CODE_BAD_RECEIVE, f"{check.value}: {detail}")


def _refuse_client(check: str, detail: str) -> TxResult:
    return TxResult(CODE_BAD_CLIENT, f"{check}: {detail}")


# ---------------------------------------------------------------- encodings


def escrow_address(dest_chain_id: str) -> bytes:
    """Where `send_out` puts what leaves for `dest_chain_id`: an address nobody holds a key
    for (finding a public key that hashes to it is a preimage search)."""
    return digest(encode([_ESCROW_TAG, dest_chain_id]))[:ADDRESS_BYTES]


def send_out_payload(dest_chain_id: str, recipient: bytes, amount: int) -> bytes:
    """["send_out", dest_chain_id, canonical [recipient, amount]]."""
    assert len(recipient) == ADDRESS_BYTES
    return encode(["send_out", dest_chain_id, encode([recipient, amount])])


def light_block_bytes(block: LightBlock) -> bytes:
    """Canonical [header, commit, validators, next_validators] (nested arrays)."""
    return encode(_light_obj(block))


def _light_obj(block: LightBlock) -> list[Any]:
    return [
        block.header.to_obj(),
        block.commit.to_obj(),
        block.validators.to_obj(),
        block.next_validators.to_obj(),
    ]


def client_create_payload(block: LightBlock, trusting_period_ms: int) -> bytes:
    """["client_create", light block, canonical [suite name, trusting period ms]]."""
    params = encode([active().name, trusting_period_ms])
    return encode(["client_create", light_block_bytes(block), params])


def client_update_payload(
    chain_id: str, block: LightBlock, trusted_height: int | None = None
) -> bytes:
    """["client_update", chain id, light block] verifies from the client's latest height;
    ["client_update_from", chain id, canonical [trusted height, light block]] from that
    verified height, which may lie below the latest."""
    if trusted_height is None:
        return encode(["client_update", chain_id, light_block_bytes(block)])
    inner = encode([trusted_height, light_block_bytes(block)])
    return encode(["client_update_from", chain_id, inner])


@dataclass(frozen=True, slots=True)
class ReceiveProof:
    """What `receive` checks: a tx of block h, headers h and h + 1, and two Merkle paths."""

    tx: bytes  # the encoded transaction on the source chain
    header: Header  # height h: its data_hash holds the tx
    next_header: Header  # height h + 1: verified by the light client
    index: int  # the tx's position in block h (and its result's in the results)
    total: int
    tx_aunts: tuple[bytes, ...]
    result: bytes  # the results-hash leaf item: canonical [code, data]
    result_aunts: tuple[bytes, ...]

    def to_obj(self) -> list[Any]:
        return [
            self.tx,
            self.header.to_obj(),
            self.next_header.to_obj(),
            self.index,
            self.total,
            list(self.tx_aunts),
            self.result,
            list(self.result_aunts),
        ]

    @classmethod
    def read(cls, r: Reader) -> ReceiveProof:
        r.array("proof", length=8)
        return cls(
            r.binary("proof.tx", length_max=TX_PAYLOAD_BYTES_MAX),
            Header.read(r),
            Header.read(r),
            r.integer("proof.index", 0, 2**32),
            r.integer("proof.total", 1, 2**32),
            r.binaries("proof.tx_aunts", count_max=merkle.PROOF_AUNTS_MAX, length_max=HASH_BYTES),
            r.binary("proof.result", length_max=SMALL_FIELD_BYTES_MAX),
            r.binaries(
                "proof.result_aunts", count_max=merkle.PROOF_AUNTS_MAX, length_max=HASH_BYTES
            ),
        )


def receive_proof_bytes(proof: ReceiveProof) -> bytes:
    return encode(proof.to_obj())


def receive_payload(source_chain_id: str, proof: ReceiveProof) -> bytes:
    return encode(["receive", source_chain_id, receive_proof_bytes(proof)])


def _decode_light_block(data: bytes) -> LightBlock:
    def read(r: Reader) -> LightBlock:
        r.array("light block", length=4)
        return LightBlock(
            Header.read(r), Commit.read(r), ValidatorSet.read(r), ValidatorSet.read(r)
        )

    return decode_with(
        data,
        read,
        light_block_bytes,
        bytes_max=TX_PAYLOAD_BYTES_MAX,
        field_bytes_max=SMALL_FIELD_BYTES_MAX,
    )


def _decode_proof(data: bytes) -> ReceiveProof:
    return decode_with(
        data,
        ReceiveProof.read,
        receive_proof_bytes,
        bytes_max=TX_PAYLOAD_BYTES_MAX,
        field_bytes_max=TX_PAYLOAD_BYTES_MAX,
    )


def _client_key(chain_id: str) -> bytes:
    return _KEY_CLIENT + chain_id.encode()


def _light_key(chain_id: str, height: int) -> bytes:
    return _KEY_LIGHT + _U64.pack(height) + chain_id.encode()


def _header_key(chain_id: str, height: int) -> bytes:
    return _KEY_HEADER + _U64.pack(height) + chain_id.encode()


def _receipt_key(chain_id: str, txid: bytes) -> bytes:
    return _KEY_RECEIPT + txid + chain_id.encode()


@dataclass(frozen=True, slots=True)
class ClientRecord:
    host_chain_id: str  # the chain that holds this client (B)
    trusting_period_ms: int
    height: int  # the latest verified height


def _client_record(value: bytes) -> ClientRecord:
    host, period, height = decode(value)
    return ClientRecord(host, period, height)


def _client_value(record: ClientRecord) -> bytes:
    return encode([record.host_chain_id, record.trusting_period_ms, record.height])


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class Accepted:
    """An operation that passed its checks; the ledger moves the balance, then `accept`s it."""

    writes: tuple[tuple[bytes, bytes], ...]
    debit: int  # taken from the sender (send_out)
    credit_to: bytes  # credited with `credit`
    credit: int


@dataclass(slots=True)
class Overlay:
    """The interchain state as one block (or the mempool's view) sees it.

    `committed` is the ledger's committed interchain keys; `writes` what this
    block wrote so far. `now_ms` is the block's time and `host_chain_id` its
    chain; both None in the mempool's view, where a client update is judged
    at the submitted header's own time (execution judges it again at the
    block's time).
    """

    committed: Mapping[bytes, bytes]
    now_ms: int | None = None
    host_chain_id: str | None = None
    writes: dict[bytes, bytes] = field(default_factory=dict)
    client_updates: int = 0

    def get(self, key: bytes) -> bytes | None:
        value = self.writes.get(key)
        return value if value is not None else self.committed.get(key)

    def accept(self, accepted: Accepted) -> None:
        self.writes.update(accepted.writes)


def apply(obj: tuple[Any, ...], sender_is_admin: bool, ic: Overlay) -> Accepted | TxResult:
    """Check one interchain operation (`obj` from apps.common.decode_payload) against `ic`."""
    name = obj[0]
    if name == "send_out":
        return _send_out(obj)
    if name == "client_create":
        if not sender_is_admin:
            return TxResult(CODE_UNAUTHORIZED, "only the genesis admin may create a client")
        return _client_create(obj, ic)
    if name in ("client_update", "client_update_from"):
        return _client_update(obj, ic)
    assert name == "receive"
    return _receive(obj, ic)


def _send_out(obj: tuple[Any, ...]) -> Accepted | TxResult:
    if len(obj) != 3 or type(obj[1]) is not str or type(obj[2]) is not bytes:
        return TxResult(CODE_BAD_PAYLOAD, 'expected ["send_out", chain id, [recipient, amount]]')
    transfer = _transfer_of(obj[2])
    if transfer is None or not _chain_id_ok(obj[1]):
        return TxResult(CODE_BAD_PAYLOAD, "send_out: chain id 1..50 bytes, [20 bytes, 1..2**63-1]")
    _, amount = transfer
    return Accepted((), amount, escrow_address(obj[1]), amount)


def _transfer_of(data: bytes) -> tuple[bytes, int] | None:
    """(recipient, amount) of send_out's canonical [recipient, amount], or None."""
    try:
        value = decode(data, bytes_max=64)
    except DecodeError:
        return None
    if not (isinstance(value, tuple) and len(value) == 2):
        return None
    recipient, amount = value
    if type(recipient) is not bytes or len(recipient) != ADDRESS_BYTES:
        return None
    if type(amount) is not int or not 0 < amount <= 2**63 - 1:
        return None
    return recipient, amount


def _client_create(obj: tuple[Any, ...], ic: Overlay) -> Accepted | TxResult:
    if len(obj) != 3 or type(obj[1]) is not bytes or type(obj[2]) is not bytes:
        return TxResult(CODE_BAD_PAYLOAD, 'expected ["client_create", light block, params]')
    try:
        block = _decode_light_block(obj[1])
        params = decode(obj[2], bytes_max=64)
    except DecodeError as e:
        return _refuse_client("payload", str(e)[:120])
    if not (isinstance(params, tuple) and len(params) == 2):
        return _refuse_client("payload", "params: expected [suite name, trusting period ms]")
    suite, period = params
    if suite != active().name:
        return _refuse_client(
            "crypto suite",
            f"the source chain uses {str(suite)[:16]!r}, this chain {active().name!r}: "
            "a light client verifies with its own chain's suite only",
        )
    if type(period) is not int or not 0 < period <= TRUSTING_PERIOD_MS_MAX:
        return _refuse_client("trusting period", f"must be 1..{TRUSTING_PERIOD_MS_MAX} ms")
    chain_id = block.header.chain_id
    host = ic.host_chain_id
    if chain_id == host:
        return _refuse_client("chain id", "a chain cannot hold a client of itself")
    if ic.get(_client_key(chain_id)) is not None:
        return _refuse_client("client", f"a client of {chain_id!r} exists already")
    try:
        verify_light_block(block, chain_id)
    except LightError as e:
        return _refuse_client("light block", str(e))
    now = block.header.time_ms if ic.now_ms is None else ic.now_ms
    if block.header.time_ms + period <= now:
        return _refuse_client("trusting period", "the header is older than the trusting period")
    record = ClientRecord(host or "", period, block.height)
    return Accepted(_client_writes(chain_id, record, block, obj[1]), 0, b"", 0)


def _client_writes(
    chain_id: str, record: ClientRecord, block: LightBlock, block_bytes: bytes
) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (_client_key(chain_id), _client_value(record)),
        (_light_key(chain_id, block.height), block_bytes),
        (_header_key(chain_id, block.height), block.header.hash),
    )


def _client_update(obj: tuple[Any, ...], ic: Overlay) -> Accepted | TxResult:
    if len(obj) != 3 or type(obj[1]) is not str or type(obj[2]) is not bytes:
        return TxResult(CODE_BAD_PAYLOAD, f'expected ["{obj[0]}", chain id, bytes]')
    chain_id = obj[1]
    if not _chain_id_ok(chain_id):
        return TxResult(CODE_BAD_PAYLOAD, _CHAIN_ID_RULE)
    client = ic.get(_client_key(chain_id))
    if client is None:
        return _refuse_client("client", f"no client of {chain_id!r}")
    # The submitted block is decoded before the stored one: junk costs its own decoding only.
    record = _client_record(client)
    trusted_height, block_bytes = record.height, obj[2]
    try:
        if obj[0] == "client_update_from":
            trusted_height, block_bytes = decode_with(
                obj[2],
                _read_from,
                lambda v: encode([v[0], v[1]]),
                bytes_max=TX_PAYLOAD_BYTES_MAX,
                field_bytes_max=TX_PAYLOAD_BYTES_MAX,
            )
        block = _decode_light_block(block_bytes)
    except DecodeError as e:
        return _refuse_client("payload", str(e)[:120])
    trusted_bytes = ic.get(_light_key(chain_id, trusted_height))
    if trusted_bytes is None:
        return _refuse_client("trusted height", f"{trusted_height} is not verified")
    if ic.get(_header_key(chain_id, block.height)) is not None:
        return _refuse_client("height", f"{block.height} is verified already")
    if ic.client_updates >= CLIENT_UPDATES_PER_BLOCK_MAX:
        return _refuse_client("updates per block", f"at most {CLIENT_UPDATES_PER_BLOCK_MAX}")
    # In a block every update that reaches verification counts, refused or not: a
    # proposer cannot fill a block with verifications. The mempool's view counts only
    # admitted ones: a refused update costs its sender nothing to repeat, so counting it
    # would let anyone crowd honest updates out until the next commit, while the claimed
    # power checks (consensus/light.py) make a forged one cost at most one signature.
    in_block = ic.now_ms is not None
    ic.client_updates += in_block
    trusted = _decode_light_block(trusted_bytes)
    now = block.header.time_ms if ic.now_ms is None else ic.now_ms
    options = TrustOptions(trusting_period_ms=record.trusting_period_ms)
    try:
        light_verify_skipping(trusted, block, chain_id, now, options)
    except LightError as e:
        return _refuse_client(e.check.value, str(e).split(": ", 1)[-1])
    ic.client_updates += not in_block
    height = max(record.height, block.height)
    updated = ClientRecord(record.host_chain_id, record.trusting_period_ms, height)
    return Accepted(_client_writes(chain_id, updated, block, block_bytes), 0, b"", 0)


def _read_from(r: Reader) -> tuple[int, bytes]:
    r.array("client_update_from", length=2)
    return (
        r.integer("trusted height", 1, HEIGHT_MAX),
        r.binary("light block", length_max=TX_PAYLOAD_BYTES_MAX),
    )


def _receive(obj: tuple[Any, ...], ic: Overlay) -> Accepted | TxResult:
    if len(obj) != 3 or type(obj[1]) is not str or type(obj[2]) is not bytes:
        return TxResult(CODE_BAD_PAYLOAD, 'expected ["receive", chain id, proof]')
    source = obj[1]
    if not _chain_id_ok(source):
        return TxResult(CODE_BAD_PAYLOAD, _CHAIN_ID_RULE)
    client = ic.get(_client_key(source))
    if client is None:
        return _refuse_receive(ReceiveCheck.CLIENT, f"no client of {source!r}")
    try:
        p = _decode_proof(obj[2])
    except DecodeError as e:
        return _refuse_receive(ReceiveCheck.PAYLOAD, str(e)[:120])
    h = p.header.height
    for header in (p.header, p.next_header):
        if header.chain_id != source:
            return _refuse_receive(
                ReceiveCheck.CHAIN_ID, f"header of {header.chain_id!r}, expected {source!r}"
            )
    if p.next_header.height != h + 1 or h + 1 > HEIGHT_MAX:
        return _refuse_receive(ReceiveCheck.HEADER, f"next header is not height {h} + 1")
    if ic.get(_header_key(source, h + 1)) != p.next_header.hash:
        return _refuse_receive(
            ReceiveCheck.HEADER, f"height {h + 1} of {source!r} is not verified by the client"
        )
    if p.next_header.last_block_hash != p.header.hash:
        return _refuse_receive(ReceiveCheck.LAST_BLOCK_HASH, f"header {h} is not the one before")
    if not merkle.Proof(p.index, p.total, p.tx_aunts).verify(p.tx, p.header.data_hash):
        return _refuse_receive(ReceiveCheck.TX_MERKLE, f"the tx is not in data_hash of {h}")
    result_proof = merkle.Proof(p.index, p.total, p.result_aunts)
    if not result_proof.verify(p.result, p.next_header.last_results_hash):
        return _refuse_receive(
            ReceiveCheck.RESULT_MERKLE, f"the result is not in last_results_hash of {h + 1}"
        )
    code = _result_code(p.result)
    if code != CODE_OK:
        return _refuse_receive(ReceiveCheck.RESULT_CODE, f"the tx failed on {source!r}: {code}")
    transfer = _send_out_of(p.tx)
    if transfer is None:
        return _refuse_receive(ReceiveCheck.TRANSFER, "the tx is not a send_out")
    dest, recipient, amount = transfer
    host = ic.host_chain_id or _client_record(client).host_chain_id
    if dest != host:
        return _refuse_receive(ReceiveCheck.DESTINATION, f"sent to {dest!r}, this is {host!r}")
    receipt = _receipt_key(source, digest(p.tx))
    if ic.get(receipt) is not None:
        return _refuse_receive(ReceiveCheck.REPLAY, f"tx {digest(p.tx).hex()} credited already")
    return Accepted(((receipt, b""),), 0, recipient, amount)


def _result_code(item: bytes) -> int | None:
    try:
        value = decode(item, bytes_max=SMALL_FIELD_BYTES_MAX)
    except DecodeError:
        return None
    if isinstance(value, tuple) and len(value) == 2 and type(value[0]) is int:
        return value[0]
    return None


def _send_out_of(tx_bytes: bytes) -> tuple[str, bytes, int] | None:
    """(destination chain, recipient, amount) of an encoded send_out tx, or None."""
    try:
        tx = Transaction.decode(tx_bytes)
        op = decode(tx.payload, bytes_max=TX_PAYLOAD_BYTES_MAX)
    except DecodeError:
        return None
    if not (isinstance(op, tuple) and len(op) == 3 and op[0] == "send_out"):
        return None
    if type(op[1]) is not str or type(op[2]) is not bytes:
        return None
    transfer = _transfer_of(op[2])
    return None if transfer is None else (op[1], *transfer)


# ---------------------------------------------------------------- queries and storage


def is_key(key: bytes) -> bool:
    return key[:1] == KEY_INTERCHAIN


def query(committed: Mapping[bytes, bytes], path: str, data: bytes, height: int) -> QueryResult:
    """ "interchain/client" (data: the source chain id, UTF-8) -> canonical
    [host chain id, trusting period ms, latest verified height, latest header time ms]."""
    assert path == QUERY_CLIENT
    try:
        chain_id = data.decode()
    except UnicodeDecodeError:
        return QueryResult(CODE_BAD_PAYLOAD, log="expected a chain id")
    value = committed.get(_client_key(chain_id))
    if value is None:
        return QueryResult(CODE_BAD_PAYLOAD, log=f"no client of {chain_id[:50]!r}")
    record = _client_record(value)
    light = committed[_light_key(chain_id, record.height)]
    time_ms = _decode_light_block(light).header.time_ms
    out = [record.host_chain_id, record.trusting_period_ms, record.height, time_ms]
    return QueryResult(0, encode(out), height=height)
