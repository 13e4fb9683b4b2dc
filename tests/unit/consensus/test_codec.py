"""Bounded decoding: the Reader follows a schema, the generic decoder stays small, and the
validation core's bulk transaction decoder accepts exactly what Transaction.decode accepts."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import (
    DECODE_BYTES_MAX,
    DecodeError,
    Reader,
    decode,
    decode_binaries,
    encode,
)
from consensus.types import (
    BLOCK_TXS_MAX,
    TX_BYTES_MAX,
    TX_PAYLOAD_BYTES_MAX,
    Block,
    Header,
    Transaction,
)
from consensus.validation import _decode_chunk, decode_txs
from tests.strategies import mutated

# ---------------------------------------------------------------- Reader


def reader(obj: Any, field_bytes_max: int = 64) -> Reader:
    return Reader(encode(obj), field_bytes_max=field_bytes_max)


def test_reader_reads_the_fields_of_a_schema() -> None:
    """Each typed read returns its field and `end` accepts the exact end of the value."""
    r = reader([7, b"ab", "hi", True, None, [b"x", b"yz"], -3])
    assert r.array("v", length=7) == 7
    assert r.integer("v.int", 0, 10) == 7
    assert r.binary("v.bin", length=2) == b"ab"
    assert r.text("v.str", 2) == "hi"
    assert r.boolean("v.bool") is True
    r.nil("v.nil")
    assert r.binaries("v.bins", count_max=2, length_max=2) == (b"x", b"yz")
    assert r.scalar("v.any") == -3
    r.end()


@pytest.mark.parametrize(
    ("obj", "read", "message"),
    [
        (5, lambda r: r.integer("f", 0, 4), "f: expected an integer in"),
        (True, lambda r: r.integer("f", 0, 4), "f: expected an integer"),
        (b"abc", lambda r: r.binary("f", length=2), "f: expected 2 bytes"),
        (b"abc", lambda r: r.binary("f", length_max=2), "f: 3 bytes exceeds limit 2"),
        ("abc", lambda r: r.binary("f", length_max=8), "f: expected bytes"),
        ("héllo", lambda r: r.text("f", 5), "f: expected a string of at most 5 bytes"),
        (1, lambda r: r.boolean("f"), "f: expected a boolean"),
        (0, lambda r: r.nil("f"), "f: must be nil"),
        ([1, 2], lambda r: r.array("f", length=3), "f: expected an array of 3 fields"),
        ([1, 2, 3], lambda r: r.array("f", count_max=2), "f: expected an array of at most 2"),
        (b"x", lambda r: r.array("f", count_max=2), "f: expected an array"),
        ([1], lambda r: r.integer("f", 0, 4), "f: expected a scalar"),
        ([1], lambda r: r.scalar("f"), "f: expected a scalar"),
        ({"a": 1}, lambda r: r.scalar("f"), "f: expected a scalar"),
        ([b"a", 1], lambda r: r.binaries("f", count_max=2, length_max=4), "f: expected byte"),
        ([b"a", [b"b"]], lambda r: r.binaries("f", count_max=2, length_max=4), "f: expected byte"),
        ([b"abcdef"], lambda r: r.binaries("f", count_max=2, length_max=4), "f: expected byte"),
    ],
)
def test_reader_names_the_field_it_refuses(obj: Any, read: Any, message: str) -> None:
    """A field of the wrong type, size or shape is a DecodeError that names the field."""
    with pytest.raises(DecodeError, match=message):
        read(reader(obj))


def test_reader_refuses_truncated_and_trailing_input() -> None:
    """Missing items and bytes after the value are both refused."""
    data = encode([1, 2])
    r = Reader(data[:-1], field_bytes_max=0)
    r.array("v", length=2)
    r.integer("v.a", 0, 9)
    with pytest.raises(DecodeError, match=r"v\.b: truncated"):
        r.integer("v.b", 0, 9)
    r = Reader(data + b"\x00", field_bytes_max=0)
    r.array("v", length=2)
    r.integer("v.a", 0, 9)
    r.integer("v.b", 0, 9)
    with pytest.raises(DecodeError, match="trailing"):
        r.end()
    short = b"\x93" + b"\xc4\x01a" * 2  # declares three bins, holds two
    with pytest.raises(DecodeError, match="truncated"):
        Reader(short, field_bytes_max=1).binaries("bins", count_max=3, length_max=1)


def test_declared_lengths_are_refused_before_anything_is_built() -> None:
    """An array or bin header claiming 4 GiB costs nothing: the schema's limit refuses it."""
    huge_array = b"\xdd\xff\xff\xff\xff"
    huge_bin = b"\xc6\xff\xff\xff\xff"
    tracemalloc.start()
    with pytest.raises(DecodeError, match="at most 10"):
        Reader(huge_array, field_bytes_max=8).array("a", count_max=10)
    with pytest.raises(DecodeError, match="at most 10"):
        Reader(huge_array, field_bytes_max=8).binaries("a", count_max=10, length_max=8)
    with pytest.raises(DecodeError, match="b: truncated"):  # waits for bytes that never come
        Reader(huge_bin + b"x" * 100, field_bytes_max=8).binary("b", length_max=8)
    with pytest.raises(DecodeError, match="exceeds max_bin_len"):
        Reader(b"\xc4\x14" + b"x" * 20, field_bytes_max=8).binary("b", length_max=8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 * 1024


# ---------------------------------------------------------------- generic decode


def test_generic_decode_is_for_small_values_only() -> None:
    """Inputs above 64 KiB and arrays above 16 items are refused; larger callers use a Reader."""
    assert decode(encode([1, [2, b"x"], "s"])) == (1, (2, b"x"), "s")
    with pytest.raises(DecodeError, match="limit"):
        decode(b"\xc4" + b"\x00" * DECODE_BYTES_MAX)
    with pytest.raises(DecodeError):
        decode(encode(list(range(17))))
    with pytest.raises(DecodeError, match="non-canonical"):
        decode(b"\xcd\x00\x05")
    with pytest.raises(AssertionError):
        decode(b"\x00", bytes_max=DECODE_BYTES_MAX + 1)


@pytest.mark.parametrize(
    "data",
    [
        b"\xdc\x00\x10" * 1023,  # 1,023 nested arrays each declaring 16 slots
        b"\xdc\xff\xff" * 1023,  # ... each declaring 65,535 (refused by the header)
        b"\x91" * 1023 + b"\x90",  # as deep as msgpack goes
    ],
    ids=["declared-16", "declared-65535", "deep"],
)
def test_generic_decode_of_nested_headers_stays_small(data: bytes) -> None:
    """msgpack allocates an array's slots from its header: at most 16 x 1,024 of them here."""
    tracemalloc.start()
    try:
        decode(data)
    except DecodeError:
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 512 * 1024


def test_generic_decode_worst_shape_is_bounded_by_its_size() -> None:
    """The densest object graph that fits 64 KiB (uncached ints in full arrays) stays < 4 MiB."""
    level = b"\x9f" + b"\xe0" * 15  # 15 negative fixints, each a new 28-byte int
    while len(level) * 15 + 1 < DECODE_BYTES_MAX:
        level = b"\x9f" + level * 15
    tracemalloc.start()
    decode(level)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_decode_binaries_reads_a_batch() -> None:
    """An array of bins decodes; an item that is not a bin or the wrong count is refused."""
    assert decode_binaries(
        encode([b"a", b"bc"]), "txs", count_max=2, length_max=2, bytes_max=100
    ) == (b"a", b"bc")
    with pytest.raises(DecodeError, match="at most 1"):
        decode_binaries(encode([b"a", b"bc"]), "txs", count_max=1, length_max=2, bytes_max=100)
    with pytest.raises(DecodeError, match="txs"):
        decode_binaries(encode([b"a", [b"b"]]), "txs", count_max=2, length_max=2, bytes_max=100)


# ---------------------------------------------------------------- transactions: two decoders


def chunk_decode(chunk: tuple[bytes, ...]) -> list[Transaction] | None:
    """The validation core's bulk decoder, as Transaction values."""
    columns = _decode_chunk(chunk)
    if columns is None:
        return None
    return [Transaction(*fields) for fields in zip(*columns, strict=True)]


def single_decode(t: bytes) -> Transaction | None:
    try:
        return Transaction.decode(t)
    except DecodeError:
        return None


def old_decode_tx(t: bytes) -> Transaction | None:
    """The decoder before bounded decoding (unpackb, then shape checks): the oracle."""
    if len(t) > TX_BYTES_MAX:
        return None
    try:
        o = msgpack.unpackb(t, use_list=False, raw=False)
    except Exception:
        return None
    if (
        type(o) is tuple
        and len(o) == 4
        and type(o[0]) is bytes
        and len(o[0]) == 32
        and type(o[1]) is int
        and 0 <= o[1] <= 2**64 - 1
        and type(o[2]) is bytes
        and len(o[2]) <= TX_PAYLOAD_BYTES_MAX
        and type(o[3]) is bytes
        and len(o[3]) == 64
        and msgpack.packb(o, use_bin_type=True) == t
    ):
        return Transaction(*o)
    return None


valid_txs = st.builds(
    Transaction,
    sender=st.binary(min_size=32, max_size=32),
    nonce=st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1)),
    payload=st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=300)),
    signature=st.binary(min_size=64, max_size=64),
)
# msgpack values shaped like a transaction's fields, and some that are not.
scalars = st.one_of(
    st.binary(max_size=70),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
tx_like = st.lists(st.one_of(scalars, st.lists(scalars, max_size=3)), min_size=3, max_size=5).map(
    lambda fields: msgpack.packb(fields, use_bin_type=True)
)


def _int_forms(n: int) -> list[bytes]:
    """Every msgpack encoding of the integer n >= 0; the first is the canonical one."""
    forms = [msgpack.packb(n)]
    if n < 128:
        forms.append(bytes([n]))
    for marker, bits in ((0xCC, 8), (0xCD, 16), (0xCE, 32), (0xCF, 64)):
        if n < 1 << bits:
            forms.append(bytes([marker]) + n.to_bytes(bits // 8, "big"))
    for marker, bits in ((0xD0, 8), (0xD1, 16), (0xD2, 32), (0xD3, 64)):
        if n < 1 << (bits - 1):
            forms.append(bytes([marker]) + n.to_bytes(bits // 8, "big"))
    return list(dict.fromkeys(forms))


def _bin_forms(b: bytes) -> list[bytes]:
    """msgpack encodings of the bytes b: the canonical bin first, wider bins, then strs."""
    n = len(b)
    forms = [msgpack.packb(b, use_bin_type=True)]
    for marker, size in ((0xC4, 1), (0xC5, 2), (0xC6, 4)):
        if n < 1 << (8 * size):
            forms.append(bytes([marker]) + n.to_bytes(size, "big") + b)
    if n < 32:
        forms.append(bytes([0xA0 | n]) + b)
    forms.append(b"\xda" + n.to_bytes(2, "big") + b)
    return list(dict.fromkeys(forms))


@st.composite
def re_encoded(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A transaction with each part written in any msgpack form it has, and whether every
    part took its canonical form; sometimes with a field missing or one field too many."""
    tx = draw(valid_txs)
    header = draw(st.sampled_from([b"\x94", b"\xdc\x00\x04", b"\xdd\x00\x00\x00\x04"]))
    parts = [header]
    canonical = header == b"\x94"
    for forms in (
        _bin_forms(tx.sender),
        _int_forms(tx.nonce),
        _bin_forms(tx.payload),
        _bin_forms(tx.signature),
    ):
        i = draw(st.integers(0, len(forms) - 1))
        parts.append(forms[i])
        canonical = canonical and i == 0
    arity = draw(st.sampled_from(["exact", "exact", "missing", "extra"]))
    if arity == "missing":
        del parts[draw(st.integers(1, 4))]
        canonical = False
    elif arity == "extra":
        parts.append(draw(st.sampled_from([b"\x00", b"\xc0", b"\xc4\x00", b"\x90"])))
        canonical = False
    return b"".join(parts), canonical


tx_bytes = st.one_of(
    valid_txs.map(Transaction.encode),
    valid_txs.map(Transaction.encode).flatmap(mutated),
    re_encoded().map(lambda r: r[0]),
    tx_like,
    st.binary(max_size=120),
)


@settings(max_examples=1500, deadline=None)
@given(tx_bytes)
def test_transaction_decoders_agree(t: bytes) -> None:
    """Block validity rests on this: the bulk decoder, Transaction.decode and the old decoder
    accept exactly the same byte strings and give the same values."""
    expected = old_decode_tx(t)
    assert single_decode(t) == expected
    got = chunk_decode((t,))
    assert got == (None if expected is None else [expected])


@settings(max_examples=500, deadline=None)
@given(re_encoded())
def test_only_the_canonical_form_of_a_transaction_decodes(case: tuple[bytes, bool]) -> None:
    """Wider ints and bins, a str for a bin, a wider array header, a missing or extra field:
    both decoders refuse each, and accept the canonical form, to the same value."""
    t, canonical = case
    expected = single_decode(t)
    assert (expected is not None) == canonical
    assert chunk_decode((t,)) == (None if expected is None else [expected])


@settings(max_examples=300, deadline=None)
@given(st.lists(tx_bytes, min_size=1, max_size=8))
def test_chunk_is_accepted_only_if_every_transaction_is(chunk: list[bytes]) -> None:
    """A chunk decodes iff each of its transactions does, to the same values in order."""
    each = [single_decode(t) for t in chunk]
    got = chunk_decode(tuple(chunk))
    assert got == (None if None in each else each)


@settings(max_examples=300, deadline=None)
@given(st.lists(tx_bytes, max_size=8))
def test_decode_txs_is_transaction_decode_for_each(raws: list[bytes]) -> None:
    """The mempool's batch decoder gives Transaction.decode's values, in order, or None
    when any one of them is refused (then the mempool decodes them one by one)."""
    each = [single_decode(t) for t in raws]
    assert decode_txs(raws) == (None if None in each else each)


def test_fields_straddling_two_transactions_are_refused() -> None:
    """Two malformed transactions whose concatenation reads as two valid ones are refused.

    The bulk decoder reads the fields of a chunk as one stream; cutting one
    transaction's last signature byte (0x94) and prefixing it to the next
    keeps the concatenation identical, so each must be compared on its own.
    """
    x = Transaction(b"\x01" * 32, 1, b"p", b"\x02" * 63 + b"\x94").encode()
    y = Transaction(b"\x03" * 32, 2, b"q", b"\x04" * 64).encode()
    shifted = (x[:-1], b"\x94" + y)
    assert b"".join(shifted) == x + y
    assert [single_decode(t) for t in shifted] == [None, None]
    assert chunk_decode(shifted) is None
    assert chunk_decode((x, y)) == [Transaction.decode(x), Transaction.decode(y)]


# ---------------------------------------------------------------- a block's worst shapes

FRAME_BYTES = 16 * 1024 * 1024


def _header_bytes() -> bytes:
    h = Header(
        "c", 1, 0, b"", b"", *([b"\x01" * 32] * 3), b"", b"\x02" * 32, b"\x03" * 32, b"\x04" * 20
    )
    return h.encode()


def _peak_of(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("txs_field", "peak_max"),
    [
        # 16 million empty arrays; nested headers declaring 4 billion items; deep nesting
        (b"\xdd" + FRAME_BYTES.to_bytes(4, "big") + b"\x90" * FRAME_BYTES, 1024 * 1024),
        (b"\xdd\xff\xff\xff\xff" * 1000, 1024 * 1024),
        (b"\x91" * FRAME_BYTES, 1024 * 1024),
        # the count limit of two-byte bins: at most 64 bytes each (object and slot)
        (
            b"\xdd" + BLOCK_TXS_MAX.to_bytes(4, "big") + b"\xc4\x02xy" * BLOCK_TXS_MAX,
            BLOCK_TXS_MAX * 64 + 1024 * 1024,
        ),
    ],
    ids=["empty-arrays", "declared-lengths", "deep", "tiny-bins"],
)
def test_hostile_block_costs_what_its_schema_allows(txs_field: bytes, peak_max: int) -> None:
    """A 16 MiB block whose txs field is a bomb is refused holding what the schema allows
    (the count limit times a small object), never what the sender declared."""
    data = b"\x94" + _header_bytes() + txs_field
    data += b"\xc0" * (FRAME_BYTES - len(data))

    def run() -> None:
        with pytest.raises(DecodeError):
            Block.decode(data, bytes_max=len(data))

    assert _peak_of(run) < peak_max
