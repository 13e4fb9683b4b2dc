"""Hashes, Ed25519 keys and the identifiers derived from them.

One place decides every hash and key format, so that docs/PROTOCOL.md can
state them once: content hashes are SHA-256; a node id or validator address
is the first 20 bytes of SHA-256 over the 32-byte Ed25519 public key.
"""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
import nacl.signing

HASH_BYTES = 32
ADDRESS_BYTES = 20
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def address_of(public_key: bytes) -> bytes:
    """The 20-byte address (node id, validator or account address) of a public key."""
    assert len(public_key) == PUBLIC_KEY_BYTES
    return hashlib.sha256(public_key).digest()[:ADDRESS_BYTES]


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification (libsodium, strict: rejects non-canonical S and small-order keys)."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


class PrivateKey:
    """An Ed25519 private key held as its 32-byte seed. repr never shows the seed."""

    __slots__ = ("_signing", "public_key", "seed")

    def __init__(self, seed: bytes) -> None:
        assert len(seed) == SEED_BYTES
        self.seed = seed
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._signing.verify_key)

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new random key (the caller is the node or a CLI command, never consensus)."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._signing.sign(message).signature)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"PrivateKey(address={self.address.hex()})"
