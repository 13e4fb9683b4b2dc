"""Sans-I/O Noise Protocol Framework (revision 34), pattern XX, 25519 / ChaChaPoly / BLAKE2b.

Why our own: the network layer must speak exactly the standard handshake so that
any conforming Noise implementation can talk to a node, and it must do so
without a dependency on a Noise library in production. This module follows the
specification's own objects and names: `CipherState` (section 5.1),
`SymmetricState` (section 5.2) and `HandshakeState` (section 5.3), with the
primitives of section 12 (25519 = X25519, ChaChaPoly = ChaCha20-Poly1305 IETF
with a 96-bit nonce of 4 zero bytes followed by the 64-bit little-endian
counter, BLAKE2b with HASHLEN = 64 and BLOCKLEN = 128) and HKDF as defined in
section 4.3 (HMAC-BLAKE2b per RFC 2104).

It does no I/O and reads no clock: the caller moves the bytes. The only
randomness is ephemeral key generation, which a test can replace by passing a
fixed ephemeral private key (that is how the published test vector is checked).

Errors raised here are `NoiseError` (a typed error for input from the wire:
failed authentication, short or oversized message, invalid public key) and
`AssertionError` for programmer errors (calling out of order).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import nacl.bindings
import nacl.exceptions

from network.errors import NoiseError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"

# Section 12: DHLEN for 25519, HASHLEN for BLAKE2b, and the AEAD tag length.
DH_BYTES = 32
HASH_BYTES = 64
KEY_BYTES = 32
TAG_BYTES = 16
# Section 3: every Noise message (handshake or transport) is at most 65535 bytes.
MESSAGE_BYTES_MAX = 65535
PLAINTEXT_BYTES_MAX = MESSAGE_BYTES_MAX - TAG_BYTES
# Section 5.1: nonce 2^64-1 is reserved; a CipherState must never reach it.
_NONCE_MAX = 2**64 - 1

_ZERO4 = b"\x00\x00\x00\x00"
_pack_nonce = struct.Struct("<Q").pack
_aead_encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_aead_decrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt

# XX (section 7.5): -> e ; <- e, ee, s, es ; -> s, se
XX_PATTERN: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes, outputs: int) -> tuple[bytes, ...]:
    """Section 4.3: HKDF with HMAC-HASH, two or three outputs of HASHLEN bytes."""
    assert outputs in (2, 3)
    temp_key = _hmac(chaining_key, input_key_material)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    if outputs == 2:
        return output1, output2
    return output1, output2, _hmac(temp_key, output2 + b"\x03")


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private, public)."""
    public, private = nacl.bindings.crypto_box_keypair()
    return bytes(private), bytes(public)


def public_key_of(private: bytes) -> bytes:
    assert len(private) == DH_BYTES
    return bytes(nacl.bindings.crypto_scalarmult_base(private))


def dh(private: bytes, public: bytes) -> bytes:
    """X25519. libsodium refuses low-order public keys (all-zero output): a wire error."""
    try:
        return bytes(nacl.bindings.crypto_scalarmult(private, public))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError) as exc:
        raise NoiseError("invalid X25519 public key") from exc


class CipherState:
    """Section 5.1: a key k (or none) and a 64-bit nonce n."""

    __slots__ = ("k", "n")

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= _NONCE_MAX:
            raise NoiseError("nonce exhausted")
        ciphertext = _aead_encrypt(plaintext, ad, _ZERO4 + _pack_nonce(self.n), self.k)
        self.n += 1
        return bytes(ciphertext)

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= _NONCE_MAX:
            raise NoiseError("nonce exhausted")
        try:
            plaintext = _aead_decrypt(ciphertext, ad, _ZERO4 + _pack_nonce(self.n), self.k)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError) as exc:
            raise NoiseError("authentication failed") from exc
        # Section 5.1: n is incremented only after a successful decryption.
        self.n += 1
        return bytes(plaintext)

    # Transport-phase helpers: no associated data (section 5.3, after Split).
    def encrypt(self, plaintext: bytes) -> bytes:
        assert len(plaintext) <= PLAINTEXT_BYTES_MAX
        return self.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        if len(ciphertext) > MESSAGE_BYTES_MAX or len(ciphertext) < TAG_BYTES:
            raise NoiseError("transport message length out of range")
        return self.decrypt_with_ad(b"", ciphertext)


class SymmetricState:
    """Section 5.2: chaining key ck, handshake hash h and a CipherState."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASH_BYTES:
            self.h = protocol_name + b"\x00" * (HASH_BYTES - len(protocol_name))
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, input_key_material, 2)
        # HASHLEN is 64: truncate to the 32-byte cipher key.
        self.cipher = CipherState(temp_k[:KEY_BYTES])

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = hkdf(self.ck, b"", 2)
        return CipherState(temp_k1[:KEY_BYTES]), CipherState(temp_k2[:KEY_BYTES])


class HandshakeState:
    """Section 5.3 for the XX pattern (no pre-messages, no PSK).

    Call `write_message` / `read_message` alternately, starting with the
    initiator's write. After the third message `complete` is true and
    `send_cipher` / `receive_cipher` hold the transport CipherStates (the
    initiator sends with the first output of Split, the responder with the
    second). `remote_static` is the peer's static public key once received.
    """

    __slots__ = (
        "_e_private",
        "_e_public",
        "_fixed_ephemeral",
        "_s_private",
        "_s_public",
        "_symmetric",
        "_turn",
        "initiator",
        "receive_cipher",
        "remote_ephemeral",
        "remote_static",
        "send_cipher",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        static_private: bytes,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self._s_private = static_private
        self._s_public = public_key_of(static_private)
        self._fixed_ephemeral = ephemeral_private
        self._e_private: bytes | None = None
        self._e_public: bytes | None = None
        self.remote_ephemeral: bytes | None = None
        self.remote_static: bytes | None = None
        self.send_cipher: CipherState | None = None
        self.receive_cipher: CipherState | None = None
        self._turn = 0
        self._symmetric = SymmetricState(PROTOCOL_NAME)
        self._symmetric.mix_hash(prologue)

    @property
    def complete(self) -> bool:
        return self._turn == len(XX_PATTERN)

    @property
    def handshake_hash(self) -> bytes:
        return self._symmetric.h

    def my_turn_to_write(self) -> bool:
        return not self.complete and (self._turn % 2 == 0) == self.initiator

    def _dh_token(self, token: str) -> bytes:
        assert self._e_private is not None
        assert self.remote_ephemeral is not None
        if token == "ee":
            return dh(self._e_private, self.remote_ephemeral)
        if token == "es":
            if self.initiator:
                assert self.remote_static is not None
                return dh(self._e_private, self.remote_static)
            return dh(self._s_private, self.remote_ephemeral)
        assert token == "se"
        if self.initiator:
            return dh(self._s_private, self.remote_ephemeral)
        assert self.remote_static is not None
        return dh(self._e_private, self.remote_static)

    def write_message(self, payload: bytes = b"") -> bytes:
        assert self.my_turn_to_write(), "not our turn to write"
        sym = self._symmetric
        out = bytearray()
        for token in XX_PATTERN[self._turn]:
            if token == "e":
                if self._fixed_ephemeral is not None:
                    self._e_private = self._fixed_ephemeral
                    self._e_public = public_key_of(self._fixed_ephemeral)
                else:
                    self._e_private, self._e_public = generate_keypair()
                out += self._e_public
                sym.mix_hash(self._e_public)
            elif token == "s":
                out += sym.encrypt_and_hash(self._s_public)
            else:
                sym.mix_key(self._dh_token(token))
        out += sym.encrypt_and_hash(payload)
        if len(out) > MESSAGE_BYTES_MAX:
            raise NoiseError("handshake message too long")
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        assert not self.complete and not self.my_turn_to_write(), "not our turn to read"
        if len(message) > MESSAGE_BYTES_MAX:
            raise NoiseError("handshake message too long")
        sym = self._symmetric
        offset = 0
        for token in XX_PATTERN[self._turn]:
            if token == "e":
                if len(message) < offset + DH_BYTES:
                    raise NoiseError("handshake message truncated")
                self.remote_ephemeral = message[offset : offset + DH_BYTES]
                offset += DH_BYTES
                sym.mix_hash(self.remote_ephemeral)
            elif token == "s":
                size = DH_BYTES + (TAG_BYTES if sym.cipher.has_key() else 0)
                if len(message) < offset + size:
                    raise NoiseError("handshake message truncated")
                self.remote_static = sym.decrypt_and_hash(message[offset : offset + size])
                offset += size
            else:
                sym.mix_key(self._dh_token(token))
        rest = message[offset:]
        if sym.cipher.has_key() and len(rest) < TAG_BYTES:
            raise NoiseError("handshake message truncated")
        payload = sym.decrypt_and_hash(rest)
        self._advance()
        return payload

    def _advance(self) -> None:
        self._turn += 1
        if self.complete:
            first, second = self._symmetric.split()
            if self.initiator:
                self.send_cipher, self.receive_cipher = first, second
            else:
                self.send_cipher, self.receive_cipher = second, first
