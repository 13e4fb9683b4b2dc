"""SM2 signatures with SM3 (GB/T 32918.2, GB/T 32905) through OpenSSL 3's libcrypto.

The primitives of the "sm2-sm3" crypto suite. Encodings, fixed here so that
docs/PROTOCOL.md can state them once:

- a secret key is the 32-byte big-endian scalar d, 1 <= d <= n - 2 (the
  standard excludes n - 1: signing inverts 1 + d);
- a public key is the SEC1 compressed point, 33 bytes: 0x02 or 0x03 (the
  parity of Y) then X, big-endian. No other encoding is accepted, so a key
  has one encoding;
- a signature is r || s, 32 bytes each, big-endian (not DER), over the
  message with the standard's default distinguishing identifier
  "1234567812345678" in Z_A; 1 <= r, s <= n - 1 is checked.

Where the work is done: libcrypto.so.3 is the library Python's own `_hashlib`
links, so a Python with hashlib has it; nothing needs OpenSSL's headers. It
is used through ctypes, and, when consensus/_sm2.c was compiled at install,
verification runs there: a chunk of signatures per call with the GIL
released, on libcrypto's point arithmetic and SM3 (that file says why it is
faster than the EVP layer). Without the compiled module, verification goes
through OpenSSL's own EVP SM2 verifier (ctypes releases the GIL in each
call, so threads still use every core); tests check that both accept and
reject the same inputs. Signing always goes through the EVP layer, so the
nonce and the constant-time arithmetic on the secret are OpenSSL's; secrets
are drawn from libsodium's generator (`nacl.utils.random`).

No pure-Python fallback: the one maintained pure implementation, `gmssl`,
draws signing nonces from Python's `random` module (predictable, which
leaks the key), does not check that a public key is on the curve or that r
and s are in range, and verifies a few hundred times slower than
libcrypto. It serves as the independent oracle in the tests only.

If libcrypto 3 with SM2 cannot be loaded, this module still imports and
every function raises `Sm2Unavailable` with the reason; the node checks
`unavailable_reason()` when a chain's genesis asks for the suite.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Final

import nacl.utils

__all__ = [
    "DEFAULT_ID",
    "PUBLIC_KEY_BYTES",
    "SECRET_BYTES",
    "SIGNATURE_BYTES",
    "Sm2Unavailable",
    "generate_secret",
    "public_key",
    "sign",
    "signer",
    "sm3",
    "unavailable_reason",
    "verify",
    "verify_batch",
    "verify_chunk",
]

SECRET_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 33
SIGNATURE_BYTES: Final = 64
HASH_BYTES: Final = 32
DEFAULT_ID: Final = b"1234567812345678"
# The order n of the base point of GB/T 32918.5's recommended curve.
ORDER: Final = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
# Z_A starts with the identifier's length in bits in two bytes.
ID_BYTES_MAX: Final = 0xFFFF // 8

_NID_SM2: Final = 1172  # obj_mac.h: NID_sm2
_POINT_COMPRESSED: Final = 2  # point_conversion_form_t
_EVP_PKEY_PUBLIC_KEY: Final = 0x86  # OSSL_KEYMGMT_SELECT_ALL_PARAMETERS | PUBLIC_KEY
_EVP_PKEY_KEYPAIR: Final = 0x87  # ... | PRIVATE_KEY
_OSSL_PARAM_UNSIGNED_INTEGER: Final = 2
_OSSL_PARAM_UTF8_STRING: Final = 4
_OSSL_PARAM_OCTET_STRING: Final = 5
_DER_SIGNATURE_BYTES_MAX: Final = 72  # SEQUENCE of two INTEGERs of at most 33 bytes


class Sm2Unavailable(RuntimeError):
    """libcrypto 3 with SM2 and SM3 could not be loaded in this process."""


class _OsslParam(ctypes.Structure):
    """OSSL_PARAM (openssl/core.h), whose layout OpenSSL 3 keeps stable."""

    _fields_ = (
        ("key", ctypes.c_char_p),
        ("data_type", ctypes.c_uint),
        ("data", ctypes.c_void_p),
        ("data_size", ctypes.c_size_t),
        ("return_size", ctypes.c_size_t),
    )


_vp = ctypes.c_void_p
_int = ctypes.c_int
_size = ctypes.c_size_t
_PROTOTYPES: Final[dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "OpenSSL_version_num": (ctypes.c_ulong, ()),
    "ERR_clear_error": (None, ()),
    "BN_CTX_new": (_vp, ()),
    "BN_CTX_free": (None, (_vp,)),
    "BN_bin2bn": (_vp, (ctypes.c_char_p, _int, _vp)),
    "BN_set_flags": (None, (_vp, _int)),
    "BN_clear_free": (None, (_vp,)),
    "EC_GROUP_new_by_curve_name": (_vp, (_int,)),
    "EC_POINT_new": (_vp, (_vp,)),
    "EC_POINT_free": (None, (_vp,)),
    "EC_POINT_mul": (_int, (_vp, _vp, _vp, _vp, _vp, _vp)),
    "EC_POINT_point2oct": (_size, (_vp, _vp, _int, ctypes.c_char_p, _size, _vp)),
    "EVP_PKEY_CTX_new_from_name": (_vp, (_vp, ctypes.c_char_p, ctypes.c_char_p)),
    "EVP_PKEY_CTX_free": (None, (_vp,)),
    "EVP_PKEY_CTX_set1_id": (_int, (_vp, ctypes.c_char_p, _int)),
    "EVP_PKEY_fromdata_init": (_int, (_vp,)),
    "EVP_PKEY_fromdata": (_int, (_vp, ctypes.POINTER(_vp), _int, ctypes.POINTER(_OsslParam))),
    "EVP_PKEY_free": (None, (_vp,)),
    "EVP_MD_CTX_new": (_vp, ()),
    "EVP_MD_CTX_free": (None, (_vp,)),
    "EVP_DigestSignInit_ex": (
        _int,
        (_vp, ctypes.POINTER(_vp), ctypes.c_char_p, _vp, _vp, _vp, _vp),
    ),
    "EVP_DigestSign": (
        _int,
        (_vp, ctypes.c_char_p, ctypes.POINTER(_size), ctypes.c_char_p, _size),
    ),
    "EVP_DigestVerifyInit_ex": (
        _int,
        (_vp, ctypes.POINTER(_vp), ctypes.c_char_p, _vp, _vp, _vp, _vp),
    ),
    "EVP_DigestVerify": (_int, (_vp, ctypes.c_char_p, _size, ctypes.c_char_p, _size)),
    "EVP_Digest": (_int, (ctypes.c_char_p, _size, ctypes.c_char_p, _vp, _vp, _vp)),
    "EVP_sm3": (_vp, ()),
}


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """libcrypto.so.3 as Python's _hashlib loaded it, its functions typed; or why not."""
    try:
        # By its soname: the dynamic loader hands back the copy _hashlib (imported by
        # hashlib above) already mapped, whatever directory it came from.
        lib = ctypes.CDLL("libcrypto.so.3")
    except OSError as e:
        return None, f"libcrypto.so.3 cannot be loaded: {e}"
    try:
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
    except AttributeError as e:
        return None, f"libcrypto.so.3 lacks a function: {e}"
    if lib.OpenSSL_version_num() < 0x30000000:
        return None, "libcrypto is older than OpenSSL 3.0"
    return lib, None


_lib, _reason = _load()
_group: Final = None if _lib is None else _lib.EC_GROUP_new_by_curve_name(_NID_SM2)
if _lib is not None and not _group:
    _lib, _reason = None, "libcrypto has no SM2 curve"


def _hashlib_sm3_prototype() -> Any:
    """A fresh hashlib SM3 object to copy, or None if this Python's OpenSSL leaves SM3 out.

    Copying it skips the name lookup hashlib.new("sm3") makes on every call
    (measured: 1.0 against 1.9 us for 100 bytes); the compiled module is faster still.
    """
    try:
        return hashlib.new("sm3")
    except ValueError:  # pragma: no cover - a Python whose OpenSSL leaves SM3 out
        return None


_sm2_module: ModuleType | None
try:  # the compiled chunk loop (consensus/_sm2.c), built at install when gcc exists
    from consensus import _sm2 as _sm2_module
except ImportError:  # pragma: no cover - only without a C compiler at install
    _sm2_module = None
if _sm2_module is not None and _lib is not None:
    try:
        _sm2_module.init(
            tuple(ctypes.cast(getattr(_lib, n), ctypes.c_void_p).value for n in _sm2_module.SYMBOLS)
        )
    except (AttributeError, RuntimeError) as e:  # pragma: no cover - a libcrypto without SM2
        _lib, _reason = None, f"libcrypto cannot do SM2 with SM3: {e}"
_compiled: Final = None if _lib is None else _sm2_module
_compiled_chunk: Final = None if _compiled is None else _compiled.verify_chunk
_compiled_sm3: Final[Callable[[bytes], bytes] | None] = None if _compiled is None else _compiled.sm3
_hashlib_sm3: Final = _hashlib_sm3_prototype()


def unavailable_reason() -> str | None:
    """None when SM2 works in this process, else why not (one line, for the operator)."""
    return _reason


def _need() -> ctypes.CDLL:
    if _lib is None:
        raise Sm2Unavailable(_reason)
    return _lib


# ---------------------------------------------------------------- SM3


def sm3(data: bytes) -> bytes:
    """The 32-byte SM3 digest (GB/T 32905) of `data`."""
    if _compiled_sm3 is not None:
        return _compiled_sm3(data)
    if _hashlib_sm3 is not None:
        h = _hashlib_sm3.copy()
        h.update(data)
        return bytes(h.digest())
    lib = _need()  # pragma: no cover - see _hashlib_sm3_prototype
    out = ctypes.create_string_buffer(HASH_BYTES)  # pragma: no cover
    ok = lib.EVP_Digest(data, len(data), out, None, lib.EVP_sm3(), None)  # pragma: no cover
    assert ok == 1, "SM3 failed"  # pragma: no cover
    return out.raw  # pragma: no cover


# ---------------------------------------------------------------- keys


def _scalar(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"an SM2 secret key is {SECRET_BYTES} bytes, not {len(secret)}")
    d = int.from_bytes(secret, "big")
    if not 1 <= d <= ORDER - 2:
        raise ValueError("an SM2 secret key is a scalar in [1, n-2]")
    return d


def generate_secret() -> bytes:
    """A new random secret key (uniform in [1, n-2], drawn by rejection)."""
    while True:
        secret = nacl.utils.random(SECRET_BYTES)
        if 1 <= int.from_bytes(secret, "big") <= ORDER - 2:
            return bytes(secret)


def public_key(secret: bytes) -> bytes:
    """The 33-byte compressed public key [d]G of a secret key (ValueError if out of range)."""
    _scalar(secret)
    lib = _need()
    bn = lib.BN_CTX_new()
    d = lib.BN_bin2bn(secret, SECRET_BYTES, None)
    point = lib.EC_POINT_new(_group)
    try:
        assert bn and d and point, "out of memory"
        lib.BN_set_flags(d, 0x04)  # BN_FLG_CONSTTIME: the secret takes the constant-time path
        assert lib.EC_POINT_mul(_group, point, d, None, None, bn) == 1, "[d]G failed"
        out = ctypes.create_string_buffer(PUBLIC_KEY_BYTES)
        written = lib.EC_POINT_point2oct(
            _group, point, _POINT_COMPRESSED, out, PUBLIC_KEY_BYTES, bn
        )
        assert written == PUBLIC_KEY_BYTES, "point encoding failed"
        return out.raw
    finally:
        lib.EC_POINT_free(point)
        lib.BN_clear_free(d)
        lib.BN_CTX_free(bn)


def _params(*entries: tuple[bytes, int, bytes]) -> tuple[Any, list[Any]]:
    """An OSSL_PARAM array (ending with the empty entry) and the buffers it points into."""
    array = (_OsslParam * (len(entries) + 1))()
    buffers = []
    for i, (key, data_type, data) in enumerate(entries):
        buf = ctypes.create_string_buffer(data, len(data))
        buffers.append(buf)
        array[i].key = key
        array[i].data_type = data_type
        array[i].data = ctypes.cast(buf, ctypes.c_void_p)
        array[i].data_size = len(data)
    return array, buffers


def _evp_pkey(lib: ctypes.CDLL, selection: int, *entries: tuple[bytes, int, bytes]) -> Any:
    """An EVP_PKEY of type SM2 made from OSSL_PARAMs, or None if libcrypto refuses them."""
    ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
    assert ctx, "libcrypto has no SM2 key type"
    try:
        assert lib.EVP_PKEY_fromdata_init(ctx) == 1, "EVP_PKEY_fromdata_init failed"
        params, _buffers = _params((b"group", _OSSL_PARAM_UTF8_STRING, b"SM2"), *entries)
        pkey = ctypes.c_void_p()
        if lib.EVP_PKEY_fromdata(ctx, ctypes.byref(pkey), selection, params) != 1:
            lib.ERR_clear_error()
            return None
        return pkey
    finally:
        lib.EVP_PKEY_CTX_free(ctx)


# ---------------------------------------------------------------- signatures


def _check_id(id: bytes) -> None:
    if len(id) > ID_BYTES_MAX:
        raise ValueError(f"a distinguishing identifier is at most {ID_BYTES_MAX} bytes")


def sign(secret: bytes, message: bytes, *, id: bytes = DEFAULT_ID) -> bytes:
    """The 64-byte signature r || s of `message` (OpenSSL draws the nonce).

    `id` is the distinguishing identifier hashed into Z_A; the chain always
    uses the default, and only tests of published examples pass another.
    """
    return signer(secret, id=id)(message)


def signer(secret: bytes, *, id: bytes = DEFAULT_ID) -> Callable[[bytes], bytes]:
    """`sign` for one secret key, its key pair made once: a signer's public key is a
    scalar multiplication (most of a signature's cost again) and its EVP_PKEY another
    allocation, neither of which depends on the message. ValueError if out of range."""
    d = _scalar(secret)
    _check_id(id)
    lib = _need()
    pub = public_key(secret)
    # OSSL_PARAM integers are in the machine's byte order.
    priv = d.to_bytes(SECRET_BYTES, sys.byteorder)
    pkey = _evp_pkey(
        lib,
        _EVP_PKEY_KEYPAIR,
        (b"pub", _OSSL_PARAM_OCTET_STRING, pub),
        (b"priv", _OSSL_PARAM_UNSIGNED_INTEGER, priv),
    )
    assert pkey is not None, "libcrypto refused a valid SM2 key pair"
    return _Signer(lib, pkey, id)


class _Signer:
    """Signs with one EVP_PKEY, freed with the signer (libcrypto signs with a shared
    key from several threads: each signature has its own EVP_MD_CTX)."""

    __slots__ = ("__weakref__", "_id", "_lib", "_pkey")

    def __init__(self, lib: ctypes.CDLL, pkey: Any, id: bytes) -> None:
        self._lib = lib
        self._pkey = pkey
        self._id = id
        weakref.finalize(self, lib.EVP_PKEY_free, pkey)

    def __call__(self, message: bytes) -> bytes:
        return _sign_with(self._lib, self._pkey, self._id, message)


def _sign_with(lib: ctypes.CDLL, pkey: Any, id: bytes, message: bytes) -> bytes:
    md = lib.EVP_MD_CTX_new()
    try:
        assert md, "out of memory"
        pctx = ctypes.c_void_p()
        assert lib.EVP_DigestSignInit_ex(md, ctypes.byref(pctx), b"SM3", None, None, pkey, None)
        # Set after init: OpenSSL 3.0 refuses the identifier among the init parameters.
        assert lib.EVP_PKEY_CTX_set1_id(pctx, id, len(id)) == 1, "setting the SM2 id failed"
        der = ctypes.create_string_buffer(_DER_SIGNATURE_BYTES_MAX)
        der_len = ctypes.c_size_t(_DER_SIGNATURE_BYTES_MAX)
        ok = lib.EVP_DigestSign(md, der, ctypes.byref(der_len), message, len(message))
        assert ok == 1, "SM2 signing failed"
        return _der_to_raw(der.raw[: der_len.value])
    finally:
        lib.EVP_MD_CTX_free(md)


def _der_to_raw(der: bytes) -> bytes:
    """r || s from OpenSSL's DER signature (SEQUENCE { INTEGER r, INTEGER s })."""
    assert der[0] == 0x30 and der[1] == len(der) - 2, "not a DER SEQUENCE"
    values = []
    at = 2
    for _ in range(2):
        assert der[at] == 0x02, "not a DER INTEGER"
        length = der[at + 1]
        values.append(int.from_bytes(der[at + 2 : at + 2 + length], "big"))
        at += 2 + length
    assert at == len(der), "trailing bytes after the signature"
    r, s = values
    assert 1 <= r < ORDER and 1 <= s < ORDER
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _der_integer(value: bytes) -> bytes:
    body = value.lstrip(b"\x00") or b"\x00"
    if body[0] & 0x80:
        body = b"\x00" + body
    return bytes((0x02, len(body))) + body


def _raw_to_der(signature: bytes) -> bytes:
    """The one DER encoding of r || s (what OpenSSL's EVP verifier insists on)."""
    body = _der_integer(signature[:32]) + _der_integer(signature[32:])
    return bytes((0x30, len(body))) + body


def _verify_evp(public_key: bytes, message: bytes, signature: bytes, id: bytes) -> bool:
    """OpenSSL's own EVP SM2 verification (the path without the compiled module)."""
    lib = _need()
    if len(public_key) != PUBLIC_KEY_BYTES or public_key[0] not in (2, 3):
        return False
    if len(signature) != SIGNATURE_BYTES:
        return False
    pkey = _evp_pkey(lib, _EVP_PKEY_PUBLIC_KEY, (b"pub", _OSSL_PARAM_OCTET_STRING, public_key))
    if pkey is None:
        return False
    md = lib.EVP_MD_CTX_new()
    try:
        assert md, "out of memory"
        pctx = ctypes.c_void_p()
        ok = lib.EVP_DigestVerifyInit_ex(md, ctypes.byref(pctx), b"SM3", None, None, pkey, None)
        assert ok == 1, "EVP_DigestVerifyInit_ex failed"
        assert lib.EVP_PKEY_CTX_set1_id(pctx, id, len(id)) == 1, "setting the SM2 id failed"
        der = _raw_to_der(signature)
        good: bool = lib.EVP_DigestVerify(md, der, len(der), message, len(message)) == 1
        if not good:
            lib.ERR_clear_error()
        return good
    finally:
        lib.EVP_MD_CTX_free(md)
        lib.EVP_PKEY_free(pkey)


def verify(public_key: bytes, message: bytes, signature: bytes, *, id: bytes = DEFAULT_ID) -> bool:
    """True iff `signature` (r || s) is `public_key`'s SM2 signature of `message`.

    False, never an exception, for a key or signature of any wrong size,
    encoding or value. `id`: see `sign`; the compiled path knows only the default.
    """
    _check_id(id)
    if _compiled_chunk is not None and id == DEFAULT_ID:
        return bool(_compiled_chunk(((public_key, message, signature),)) == b"\x01")
    return _verify_evp(public_key, message, signature, id)


def verify_chunk(items: Sequence[tuple[bytes, ...]]) -> bytes:
    """One byte per item, 1 where it verifies: items are (public_key, message, signature)
    or (tag, public_key, message, signature), as consensus/sigverify.py queues them.

    With the compiled module, one call with the GIL released for the whole chunk.
    """
    _need()
    if _compiled_chunk is not None:
        return bytes(_compiled_chunk(items))
    return bytes(_verify_evp(item[-3], item[-2], item[-1], DEFAULT_ID) for item in items)


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    """`verify` for each (public_key, message, signature), in one chunk (see verify_chunk).

    Called from several threads, each chunk runs on its own core.
    """
    return [flag == 1 for flag in verify_chunk(items)]
