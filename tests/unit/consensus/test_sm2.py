"""SM2 with SM3 (consensus/sm2.py) against the standards' published examples, against
OpenSSL's own EVP verifier, and against `gmssl`, a pure-Python implementation no one
here wrote: each verifies what the other signs."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator

import pytest
from gmssl import sm2 as gm_sm2
from gmssl import sm3 as gm_sm3
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import sm2

# GB/T 32918.5 (recommended curve) parameters, for decoding keys in the tests.
P = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF", 16)
A = P - 3
B = int("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93", 16)
N = sm2.ORDER

# GB/T 32918.5-2017 (= GM/T 0003.5-2012), Annex A: the signature example on the
# recommended curve, with the default identifier "1234567812345678".
EXAMPLE_D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
EXAMPLE_X = bytes.fromhex("09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020")
EXAMPLE_Y = bytes.fromhex("CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
EXAMPLE_MESSAGE = b"message digest"
EXAMPLE_K = "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21"
EXAMPLE_SIGNATURE = bytes.fromhex(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)


def compress(x: bytes, y: bytes) -> bytes:
    return bytes((2 + (y[-1] & 1),)) + x


def decompress(public_key: bytes) -> tuple[bytes, bytes]:
    """(X, Y) of a compressed key (P = 3 mod 4, so the root is a power)."""
    x = int.from_bytes(public_key[1:], "big")
    y = pow((x**3 + A * x + B) % P, (P + 1) // 4, P)
    if y & 1 != public_key[0] & 1:
        y = P - y
    return public_key[1:], y.to_bytes(32, "big")


def gmssl_party(secret: bytes | None, public_key: bytes) -> gm_sm2.CryptSM2:
    """gmssl's signer/verifier for a key: hex strings, uncompressed X || Y without 04."""
    x, y = decompress(public_key)
    party = gm_sm2.CryptSM2(private_key=secret.hex() if secret else "", public_key="")
    # Set after construction: the constructor's lstrip("04") also eats leading '0' and
    # '4' digits of X, so an X that starts with them would be mangled.
    party.public_key = (x + y).hex()
    return party


@pytest.fixture(params=["compiled", "evp"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs on the compiled chunk loop and on OpenSSL's EVP verifier alone."""
    if request.param == "compiled":
        if sm2._compiled_chunk is None:
            pytest.skip("consensus/_sm2.c was not compiled at install")
    else:
        monkeypatch.setattr(sm2, "_compiled_chunk", None)
    yield request.param


def test_library_is_available() -> None:
    """This machine's Python has libcrypto 3 with SM2 (the node refuses the suite otherwise)."""
    assert sm2.unavailable_reason() is None


# ---------------------------------------------------------------- SM3


@pytest.fixture(params=["compiled", "hashlib"])
def sm3_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """SM3 through the compiled module, and through hashlib (without the module)."""
    if request.param == "compiled":
        if sm2._compiled_sm3 is None:
            pytest.skip("consensus/_sm2.c was not compiled at install")
    else:
        monkeypatch.setattr(sm2, "_compiled_sm3", None)
    return str(request.param)


def test_sm3_published_vectors(sm3_path: str) -> None:
    """GB/T 32905-2016, Annex A: "abc" and "abcd" x 16 (one and two blocks)."""
    assert sm3_hex(b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert (
        sm3_hex(b"abcd" * 16) == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    )


def sm3_hex(data: bytes) -> str:
    return sm2.sm3(data).hex()


@given(st.binary(max_size=300))
@settings(max_examples=50, deadline=None)
def test_sm3_matches_gmssl(data: bytes) -> None:
    """SM3 through OpenSSL equals gmssl's pure-Python SM3 on any input."""
    assert sm3_hex(data) == gm_sm3.sm3_hash(list(data))


def test_sm3_long_input_matches_hashlib() -> None:
    """Inputs hashed with the GIL released (2 KiB and up) give hashlib's digest."""
    for size in (2047, 2048, 100_000):
        data = bytes(range(256)) * (size // 256 + 1)
        assert sm2.sm3(data[:size]) == hashlib.new("sm3", data[:size]).digest()


# ---------------------------------------------------------------- the published example


def test_example_public_key() -> None:
    """The example's secret key gives its published public key."""
    assert sm2.public_key(EXAMPLE_D) == compress(EXAMPLE_X, EXAMPLE_Y)


def test_example_signature_verifies(path: str) -> None:
    """The published signature verifies with the published key and message, and only them."""
    pk = compress(EXAMPLE_X, EXAMPLE_Y)
    assert sm2.verify(pk, EXAMPLE_MESSAGE, EXAMPLE_SIGNATURE)
    assert sm2.verify_batch([(pk, EXAMPLE_MESSAGE, EXAMPLE_SIGNATURE)]) == [True]
    assert not sm2.verify(pk, EXAMPLE_MESSAGE + b".", EXAMPLE_SIGNATURE)
    other = bytes((pk[0] ^ 1,)) + pk[1:]  # the point's negation
    assert not sm2.verify(other, EXAMPLE_MESSAGE, EXAMPLE_SIGNATURE)


def test_gmssl_reproduces_the_example() -> None:
    """The oracle itself: gmssl, given the published nonce, makes the published signature."""
    party = gmssl_party(EXAMPLE_D, compress(EXAMPLE_X, EXAMPLE_Y))
    assert party.sign_with_sm3(EXAMPLE_MESSAGE, EXAMPLE_K) == EXAMPLE_SIGNATURE.hex().lower()


# ---------------------------------------------------------------- interoperability


MESSAGES = [b"", b"m", b"transfer 10 to bob" * 3, bytes(range(256)) * 5]


def test_gmssl_verifies_our_signatures() -> None:
    """Signatures made here verify in gmssl (and with fresh nonces: two differ)."""
    for _ in range(3):
        secret = sm2.generate_secret()
        pk = sm2.public_key(secret)
        party = gmssl_party(None, pk)
        for message in MESSAGES:
            signature = sm2.sign(secret, message)
            assert len(signature) == sm2.SIGNATURE_BYTES
            assert party.verify_with_sm3(signature.hex(), message)
            assert not party.verify_with_sm3(signature.hex(), message + b"x")
        assert sm2.sign(secret, b"m") != sm2.sign(secret, b"m")


def test_we_verify_gmssl_signatures(path: str) -> None:
    """Signatures gmssl makes (r || s in hex, our nonce) verify here, singly and in a batch."""
    items = []
    for _ in range(3):
        secret = sm2.generate_secret()
        pk = sm2.public_key(secret)
        party = gmssl_party(secret, pk)
        for message in MESSAGES:
            k = secrets.randbelow(N - 1) + 1
            signature = bytes.fromhex(party.sign_with_sm3(message, f"{k:064x}"))
            assert sm2.verify(pk, message, signature)
            items.append((pk, message, signature))
    assert sm2.verify_batch(items) == [True] * len(items)


def test_identifier_is_part_of_the_signature() -> None:
    """A signature under another identifier verifies only under that identifier."""
    secret = sm2.generate_secret()
    pk = sm2.public_key(secret)
    signature = sm2.sign(secret, b"m", id=b"ALICE123@YAHOO.COM")
    assert sm2.verify(pk, b"m", signature, id=b"ALICE123@YAHOO.COM")
    assert not sm2.verify(pk, b"m", signature)


# ---------------------------------------------------------------- hostile input


def _mutants(pk: bytes, message: bytes, signature: bytes) -> list[tuple[bytes, bytes, bytes]]:
    r, s = signature[:32], signature[32:]

    def num(v: int) -> bytes:
        return v.to_bytes(32, "big")

    off_curve_x = next(
        x
        for x in range(1, 100)
        if pow((x**3 + A * x + B) % P, (P - 1) // 2, P) != 1  # no square root: no point
    )
    return [
        (pk, message, b""),
        (pk, message, signature[:63]),
        (pk, message, signature + b"\x00"),
        (b"", message, signature),
        (pk[:32], message, signature),
        (pk + b"\x00", message, signature),
        (b"\x04" + decompress(pk)[0] + decompress(pk)[1], message, signature),  # uncompressed
        (b"\x00" * 33, message, signature),
        (b"\x05" + pk[1:], message, signature),
        (b"\x02" + num(P), message, signature),  # X = p
        (b"\x02" + num(P + 5), message, signature),  # X > p
        (b"\x02" + b"\xff" * 32, message, signature),
        (b"\x02" + num(off_curve_x), message, signature),
        (pk, message, bytes(64)),
        (pk, message, num(0) + s),  # r = 0
        (pk, message, r + num(0)),  # s = 0
        (pk, message, num(N) + s),  # r = n
        (pk, message, r + num(N)),  # s = n
        (pk, message, r + num(N - int.from_bytes(r, "big"))),  # r + s = n: t = 0
        (pk, message, b"\xff" * 64),
        (pk, message, s + r),
        (pk, message + b"\x00", signature),
        (pk, message[:-1], signature),
        (pk, message, bytes((signature[0] ^ 1,)) + signature[1:]),
        (pk, message, signature[:-1] + bytes((signature[-1] ^ 1,))),
    ]


def test_malformed_inputs_are_false(path: str) -> None:
    """Every wrong size, encoding or value is rejected with False, never an exception."""
    secret = sm2.generate_secret()
    pk = sm2.public_key(secret)
    message = b"a message"
    signature = sm2.sign(secret, message)
    assert sm2.verify(pk, message, signature)
    mutants = _mutants(pk, message, signature)
    assert [sm2.verify(*m) for m in mutants] == [False] * len(mutants)
    assert sm2.verify_batch(mutants) == [False] * len(mutants)


def test_batch_equals_single_on_a_mix(path: str) -> None:
    """verify_batch, and verify_chunk with tags, give each item the answer verify gives it."""
    items: list[tuple[bytes, bytes, bytes]] = []
    for i in range(4):
        secret = sm2.generate_secret()
        pk = sm2.public_key(secret)
        message = b"tx %d" % i
        signature = sm2.sign(secret, message)
        items.append((pk, message, signature))
        items.extend(_mutants(pk, message, signature)[i::4])
    single = [sm2.verify(*item) for item in items]
    assert True in single and False in single
    assert sm2.verify_batch(items) == single
    tagged = [(i, *item) for i, item in enumerate(items)]
    assert sm2.verify_chunk(tagged) == bytes(single)
    assert sm2.verify_batch([]) == []


@given(st.binary(min_size=64, max_size=64), st.sampled_from([0, 1, 2, 3]))
@settings(max_examples=40, deadline=None)
def test_compiled_path_agrees_with_openssl_evp(noise: bytes, which: int) -> None:
    """The compiled verifier (steps B1-B7 on libcrypto's arithmetic) accepts and rejects
    exactly what OpenSSL's own EVP SM2 verifier does, on valid and corrupted signatures."""
    if sm2._compiled_chunk is None:
        pytest.skip("consensus/_sm2.c was not compiled at install")
    pk = compress(EXAMPLE_X, EXAMPLE_Y)
    signature = EXAMPLE_SIGNATURE
    if which == 1:
        signature = noise  # random r, s
    elif which == 2:
        signature = signature[:32] + noise[32:]
    elif which == 3:
        pk = b"\x02" + noise[:32]  # random X: on the curve about half the time
    compiled = sm2.verify(pk, EXAMPLE_MESSAGE, signature)
    evp = sm2._verify_evp(pk, EXAMPLE_MESSAGE, signature, sm2.DEFAULT_ID)
    assert compiled == evp
    assert compiled == (which == 0)


# ---------------------------------------------------------------- keys


def test_secret_key_range() -> None:
    """Secret keys are 32-byte scalars in [1, n-2]; others are refused at the edge."""
    for bad in (bytes(32), (N - 1).to_bytes(32, "big"), (N).to_bytes(32, "big"), b"\x01" * 31):
        with pytest.raises(ValueError):
            sm2.public_key(bad)
        with pytest.raises(ValueError):
            sm2.sign(bad, b"m")
    edge = (N - 2).to_bytes(32, "big")
    assert sm2.verify(sm2.public_key(edge), b"m", sm2.sign(edge, b"m"))
    one = (1).to_bytes(32, "big")
    assert sm2.public_key(one) == b"\x02" + bytes.fromhex(  # G itself (yG is even)
        "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7"
    )
    secret = sm2.generate_secret()
    assert len(secret) == 32 and 1 <= int.from_bytes(secret, "big") <= N - 2
    assert sm2.public_key(secret)[0] in (2, 3)


# ---------------------------------------------------------------- threads


def test_chunk_releases_the_gil() -> None:
    """While one thread verifies a chunk in C, another thread's Python keeps running."""
    if sm2._compiled_chunk is None:
        pytest.skip("consensus/_sm2.c was not compiled at install")
    secret = sm2.generate_secret()
    pk = sm2.public_key(secret)
    signature = sm2.sign(secret, b"m")
    chunk = [(pk, b"m", signature)] * 100
    entered = threading.Event()
    out: list[list[bool]] = []

    def verify() -> None:
        entered.set()
        out.append(sm2.verify_batch(chunk))

    worker = threading.Thread(target=verify)
    worker.start()
    entered.wait()
    spins = 0
    while worker.is_alive():
        spins += 1
    worker.join()
    assert out == [[True] * 100]
    # Holding the GIL, the chunk (tens of ms) would leave this loop a few turns at most.
    assert spins > 1_000


def test_threads_verify_concurrently() -> None:
    """Chunks verified from several threads at once all get the right answers."""
    items = []
    for i in range(8):
        secret = sm2.generate_secret()
        message = b"m%d" % i
        items.append((sm2.public_key(secret), message, sm2.sign(secret, message)))
    items.append((items[0][0], b"wrong", items[0][2]))
    expected = [True] * 8 + [False]
    out: list[list[bool]] = []
    threads = [
        threading.Thread(target=lambda: out.append(sm2.verify_batch(items))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [expected] * 4
