"""SM2 signatures with SM3 (GB/T 32918, GB/T 32905): the INTERIM implementation.

This module only exists so that the `sm2-sm3` suite (consensus/crypto.py) runs
end to end before the real primitives land; it is replaced whole by the
branch that builds them, which keeps this contract:

    sm3(data) -> 32 bytes
    public_key(secret32) -> 33-byte SEC1 compressed point
    generate_secret() -> 32 bytes (an integer in [1, n - 2], big-endian)
    sign(secret32, message) -> 64 bytes r || s (SM2 with SM3, ID "1234567812345678")
    verify(pub, msg, sig) -> bool, never raises
    verify_batch([(pub, msg, sig), ...]) -> list[bool]

Everything is OpenSSL 3's libcrypto through cffi's ABI mode (cffi lets go of
the GIL during each call, not for a whole chunk as the real one will), with
keys and signatures passed as the DER forms libcrypto reads. No suite logic
lives here: the suite is built from these functions in consensus/crypto.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

import cffi  # type: ignore[import-untyped]

ID: Final = b"1234567812345678"  # the standard's default distinguishing identifier
PUBLIC_KEY_BYTES: Final = 33
SIGNATURE_BYTES: Final = 64
SECRET_BYTES: Final = 32
N: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123

_ffi = cffi.FFI()
_ffi.cdef(
    """
    typedef struct evp_pkey_st EVP_PKEY; typedef struct evp_pkey_ctx_st EVP_PKEY_CTX;
    typedef struct evp_md_ctx_st EVP_MD_CTX; typedef struct evp_md_st EVP_MD;
    EVP_PKEY *d2i_PUBKEY(EVP_PKEY **a, const unsigned char **pp, long length);
    EVP_PKEY *d2i_PrivateKey(int type, EVP_PKEY **a, const unsigned char **pp, long length);
    int i2d_PUBKEY(const EVP_PKEY *a, unsigned char **pp);
    void EVP_PKEY_free(EVP_PKEY *pkey);
    void CRYPTO_free(void *ptr, const char *file, int line);
    EVP_MD_CTX *EVP_MD_CTX_new(void);
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
    EVP_PKEY_CTX *EVP_PKEY_CTX_new(EVP_PKEY *pkey, void *e);
    void EVP_PKEY_CTX_free(EVP_PKEY_CTX *ctx);
    int EVP_PKEY_CTX_set1_id(EVP_PKEY_CTX *ctx, const void *id, int len);
    void EVP_MD_CTX_set_pkey_ctx(EVP_MD_CTX *ctx, EVP_PKEY_CTX *pctx);
    const EVP_MD *EVP_sm3(void);
    int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type,
                             void *e, EVP_PKEY *pkey);
    int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen);
    int EVP_DigestSignInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type,
                           void *e, EVP_PKEY *pkey);
    int EVP_DigestSign(EVP_MD_CTX *ctx, unsigned char *sig, size_t *siglen,
                       const unsigned char *tbs, size_t tbslen);
    int RAND_bytes(unsigned char *buf, int num);
    """
)
_lib: Any = _ffi.dlopen("libcrypto.so.3")
_EVP_PKEY_EC = 408
# DER around the raw values: SubjectPublicKeyInfo (id-ecPublicKey, curve SM2) ending in
# a 33-byte compressed point; SEC1 ECPrivateKey ending in the curve's OID.
_SPKI_PREFIX = bytes.fromhex("3039301306072a8648ce3d020106082a811ccf5501822d032200")
_EC_PRIVATE_PREFIX = bytes.fromhex("30310201010420")
_EC_PRIVATE_SUFFIX = bytes.fromhex("a00a06082a811ccf5501822d")


def sm3(data: bytes) -> bytes:
    return hashlib.new("sm3", data).digest()


def _pkey(der: bytes, private: bool) -> Any:
    buf = _ffi.new("unsigned char[]", der)
    pp = _ffi.new("const unsigned char **", buf)
    if private:
        key = _lib.d2i_PrivateKey(_EVP_PKEY_EC, _ffi.NULL, pp, len(der))
    else:
        key = _lib.d2i_PUBKEY(_ffi.NULL, pp, len(der))
    return None if key == _ffi.NULL else _ffi.gc(key, _lib.EVP_PKEY_free)


def _private_pkey(secret: bytes) -> Any:
    if len(secret) != SECRET_BYTES or not 1 <= int.from_bytes(secret, "big") <= N - 2:
        raise ValueError("an SM2 secret is 32 bytes holding an integer in [1, n - 2]")
    key = _pkey(_EC_PRIVATE_PREFIX + secret + _EC_PRIVATE_SUFFIX, private=True)
    assert key is not None, "libcrypto refused a well-formed SM2 private key"
    return key


def public_key(secret: bytes) -> bytes:
    out = _ffi.new("unsigned char **")
    length = _lib.i2d_PUBKEY(_private_pkey(secret), out)
    assert length > 65, "libcrypto could not encode the public key"
    point = bytes(_ffi.buffer(out[0], length))[-65:]  # 04 || x || y
    _lib.CRYPTO_free(out[0], _ffi.NULL, 0)
    return bytes([2 + (point[-1] & 1)]) + point[1:33]


def generate_secret() -> bytes:
    buf = _ffi.new("unsigned char[]", SECRET_BYTES)
    while True:
        assert _lib.RAND_bytes(buf, SECRET_BYTES) == 1, "libcrypto's RNG failed"
        secret = bytes(buf)
        if 1 <= int.from_bytes(secret, "big") <= N - 2:
            return secret


def _md_ctx(key: Any) -> Any:
    md = _ffi.gc(_lib.EVP_MD_CTX_new(), _lib.EVP_MD_CTX_free)
    pctx = _lib.EVP_PKEY_CTX_new(key, _ffi.NULL)  # owned by md once set
    assert _lib.EVP_PKEY_CTX_set1_id(pctx, ID, len(ID)) == 1
    _lib.EVP_MD_CTX_set_pkey_ctx(md, pctx)
    return md, pctx


def sign(secret: bytes, message: bytes) -> bytes:
    key = _private_pkey(secret)
    md, pctx = _md_ctx(key)
    try:
        assert _lib.EVP_DigestSignInit(md, _ffi.NULL, _lib.EVP_sm3(), _ffi.NULL, key) == 1
        sig = _ffi.new("unsigned char[80]")
        length = _ffi.new("size_t *", 80)
        assert _lib.EVP_DigestSign(md, sig, length, message, len(message)) == 1
        der = bytes(_ffi.buffer(sig, length[0]))
    finally:
        _lib.EVP_MD_CTX_set_pkey_ctx(md, _ffi.NULL)
        _lib.EVP_PKEY_CTX_free(pctx)
    r, s = _from_der(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    if (
        type(pub) is not bytes
        or type(msg) is not bytes
        or type(sig) is not bytes
        or len(pub) != PUBLIC_KEY_BYTES
        or pub[0] not in (2, 3)
        or len(sig) != SIGNATURE_BYTES
    ):
        return False
    key = _pkey(_SPKI_PREFIX + pub, private=False)
    if key is None:  # x is not on the curve
        return False
    der = _to_der(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    md, pctx = _md_ctx(key)
    try:
        if _lib.EVP_DigestVerifyInit(md, _ffi.NULL, _lib.EVP_sm3(), _ffi.NULL, key) != 1:
            return False
        return bool(_lib.EVP_DigestVerify(md, der, len(der), msg, len(msg)) == 1)
    finally:
        _lib.EVP_MD_CTX_set_pkey_ctx(md, _ffi.NULL)
        _lib.EVP_PKEY_CTX_free(pctx)


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify(pub, msg, sig) for pub, msg, sig in items]


def _der_int(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")  # a leading 0 keeps it positive
    return b"\x02" + bytes([len(body)]) + body


def _to_der(r: int, s: int) -> bytes:
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _from_der(der: bytes) -> tuple[int, int]:
    """(r, s) from the DER signature libcrypto just made (trusted input)."""
    assert der[0] == 0x30
    at = 2
    values = []
    for _ in range(2):
        assert der[at] == 0x02
        length = der[at + 1]
        values.append(int.from_bytes(der[at + 2 : at + 2 + length], "big"))
        at += 2 + length
    return values[0], values[1]
