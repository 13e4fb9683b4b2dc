"""Ed25519 with SHA-256: the default suite's primitives, through pynacl's bundled libsodium.

The same contract as consensus/sm2.py, so consensus/crypto.py builds both
suites alike; nothing outside crypto.py and sigverify.py's tests names it.

Verification is libsodium's strict `crypto_sign_verify_detached` (rejects
non-canonical S and small-order keys). Measured on the 2-core target
(benchmarks/README.md): libsodium releases the GIL inside the C call, so
threads calling it reach the same rate as processes; calling it through
cffi's ABI mode costs 0.35 us per call, against 0.45 us through ctypes and a
concatenation plus an allocation through pynacl's `crypto_sign_open`. The
symbol comes from pynacl's own bundled libsodium, so no system library is
needed. libsodium has no batch call, so consensus/_batchverify.c provides
one: a C loop over a chunk of signatures with the GIL released for the whole
chunk (it calls this libsodium through the address cffi gives; without a C
compiler at install, the cffi call per signature is used).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Final

import cffi  # type: ignore[import-untyped]
import nacl._sodium
import nacl.bindings
import nacl.signing

PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
SECRET_BYTES: Final = 32  # the seed

_ffi = cffi.FFI()
_ffi.cdef(
    "int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m,"
    " unsigned long long mlen, const unsigned char *pk);"
)
nacl.bindings.sodium_init()
_lib = _ffi.dlopen(nacl._sodium.__file__)
_verify_detached: Any = _lib.crypto_sign_verify_detached
VERIFY_ADDRESS: Final = int(_ffi.cast("uintptr_t", _verify_detached))

_batchverify: ModuleType | None
try:  # the compiled chunk loop (consensus/_batchverify.c), built at install when gcc exists
    from consensus import _batchverify
except ImportError:  # pragma: no cover - only without a C compiler at install
    _batchverify = None
_verify_chunk: Any = None if _batchverify is None else _batchverify.verify_chunk

sha256: Final = hashlib.sha256


def public_key(secret: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(secret).verify_key)


def generate_secret() -> bytes:
    return bytes(nacl.signing.SigningKey.generate())


def signer(secret: bytes) -> Callable[[bytes], bytes]:
    """sign(message) -> 64-byte signature for `secret`, with the key expanded once."""
    key = nacl.signing.SigningKey(secret)
    return lambda message: bytes(key.sign(message).signature)


def verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    if len(pub) != PUBLIC_KEY_BYTES or len(sig) != SIGNATURE_BYTES:
        return False
    return bool(_verify_detached(sig, msg, len(msg), pub) == 0)


def verify_items(items: Sequence[tuple[int, bytes, bytes, bytes]]) -> Sequence[int]:
    """1 or 0 per (tag, public key, message, signature), in one C loop when compiled.

    The module's globals are read per call, so a test can switch the loop off.
    """
    if _verify_chunk is not None:
        result: bytes = _verify_chunk(VERIFY_ADDRESS, items)
        return result
    one = _verify_detached
    return [
        len(pk) == PUBLIC_KEY_BYTES
        and len(sig) == SIGNATURE_BYTES
        and one(sig, msg, len(msg), pk) == 0
        for _, pk, msg, sig in items
    ]
