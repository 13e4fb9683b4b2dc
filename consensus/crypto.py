"""The chain's crypto suite: its hash, its signatures, and the identifiers derived from them.

A chain chooses its suite once, in genesis (`"crypto"`), and every hasher,
signer and verifier goes through a `Suite`; no other module names an
algorithm. Two suites exist (docs/PROTOCOL.md specifies both byte for byte):

- `ed25519-sha256` (the default): Ed25519 signatures, 32-byte public keys;
  SHA-256 for content hashes and addresses;
- `sm2-sm3`: SM2 signatures with SM3 and the default ID (GB/T 32918),
  33-byte compressed public keys; SM3 (GB/T 32905) for hashes and addresses.

In both, a content hash is 32 bytes, a signature 64 bytes, and an address
(node id, validator or account address) the first 20 bytes of the suite's
hash over the public key's bytes.

Why one suite is active per process rather than passed along: a block's,
header's or transaction's hash is a property of a value decoded from bytes
that carry no chain context, read at hundreds of places, and a process
serves one chain. So whoever loads the genesis (the daemon, the simulator,
the tools) calls `activate(genesis.suite)` before anything is hashed, and
the module-level `digest`, `address_of` and `verify` answer for that suite.
Tests that run both suites in one process use `using(suite)`. A key knows its
own suite (key files name their type), so signing never depends on it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, cast

from consensus import ed25519, sm2

__all__ = [
    "ADDRESS_BYTES",
    "DEFAULT_SUITE",
    "ED25519_SHA256",
    "HASH_BYTES",
    "PUBLIC_KEY_BYTES_MAX",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "SM2_SM3",
    "SUITES",
    "PrivateKey",
    "SigItem",
    "Suite",
    "activate",
    "active",
    "address_of",
    "digest",
    "suite_for_key_type",
    "using",
    "verify",
]

HASH_BYTES = 32
ADDRESS_BYTES = 20
SEED_BYTES = 32  # a private key's secret, in every suite
SIGNATURE_BYTES = 64  # in every suite: Ed25519's R || S, SM2's r || s
# The longest public key of any suite: what size bounds of the encodings assume.
PUBLIC_KEY_BYTES_MAX = 33

# (tag, public_key, message, signature): one signature of a batch, `tag` the caller's.
SigItem = tuple[int, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Suite:
    """A signature scheme with its hash; every field is what the chain's bytes depend on."""

    name: str  # genesis "crypto"
    key_type: str  # key file "type"
    public_key_bytes: int
    # A hashlib-style constructor: hash_new(data).digest() is the 32-byte hash.
    hash_new: Callable[[bytes], Any]
    public_key_of: Callable[[bytes], bytes]  # secret -> public key
    generate_secret: Callable[[], bytes]
    signer: Callable[[bytes], Callable[[bytes], bytes]]  # secret -> sign(message)
    verify_one: Callable[[bytes, bytes, bytes], bool]  # never raises
    # 1 or 0 per SigItem; called by the verifier's threads, a chunk at a time.
    verify_items: Callable[[Sequence[SigItem]], Sequence[int]]
    public_key_prefixes: frozenset[int] | None = None  # allowed first bytes, if restricted

    def hash(self, data: bytes) -> bytes:
        digest: bytes = self.hash_new(data).digest()
        return digest

    def address_of(self, public_key: bytes) -> bytes:
        """The 20-byte address (node id, validator or account address) of a public key."""
        assert len(public_key) == self.public_key_bytes
        return self.hash(public_key)[:ADDRESS_BYTES]

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != self.public_key_bytes or len(signature) != SIGNATURE_BYTES:
            return False
        return self.verify_one(public_key, message, signature)

    def public_key_well_formed(self, public_key: bytes) -> bool:
        """The key has this suite's length and encoding (not that it is a curve point)."""
        return len(public_key) == self.public_key_bytes and (
            self.public_key_prefixes is None or public_key[0] in self.public_key_prefixes
        )


ED25519_SHA256: Final = Suite(
    name="ed25519-sha256",
    key_type="ed25519",
    public_key_bytes=ed25519.PUBLIC_KEY_BYTES,
    hash_new=ed25519.sha256,
    public_key_of=ed25519.public_key,
    generate_secret=ed25519.generate_secret,
    signer=ed25519.signer,
    verify_one=ed25519.verify,
    verify_items=ed25519.verify_items,
)
SM2_SM3: Final = Suite(
    name="sm2-sm3",
    key_type="sm2",
    public_key_bytes=sm2.PUBLIC_KEY_BYTES,
    hash_new=functools.partial(hashlib.new, "sm3"),
    public_key_of=sm2.public_key,
    generate_secret=sm2.generate_secret,
    signer=sm2.signer,
    verify_one=sm2.verify,
    # verify_chunk reads (tag, public_key, message, signature) items by their last three.
    verify_items=cast(Callable[[Sequence[SigItem]], Sequence[int]], sm2.verify_chunk),
    public_key_prefixes=frozenset((2, 3)),
)
DEFAULT_SUITE: Final = ED25519_SHA256
SUITES: Final = {s.name: s for s in (ED25519_SHA256, SM2_SM3)}
_BY_KEY_TYPE: Final = {s.key_type: s for s in SUITES.values()}

for _suite in SUITES.values():
    assert len(_suite.hash(b"")) == HASH_BYTES
    assert _suite.public_key_bytes <= PUBLIC_KEY_BYTES_MAX


def suite_for_key_type(key_type: str) -> Suite | None:
    return _BY_KEY_TYPE.get(key_type)


_active: list[Suite] = [DEFAULT_SUITE]  # a one-slot cell: the suite of this process's chain


def active() -> Suite:
    return _active[0]


def activate(suite: Suite) -> None:
    """Make `suite` the one this process hashes and verifies with (its chain's)."""
    _active[0] = suite


@contextmanager
def using(suite: Suite) -> Iterator[Suite]:
    """`suite` active inside the block, the previous one after (tests, tools)."""
    previous = _active[0]
    _active[0] = suite
    try:
        yield suite
    finally:
        _active[0] = previous


def digest(data: bytes) -> bytes:
    """The active suite's content hash of `data` (32 bytes)."""
    hashed: bytes = _active[0].hash_new(data).digest()
    return hashed


def address_of(public_key: bytes) -> bytes:
    return _active[0].address_of(public_key)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """The active suite's verification; False for any malformed input."""
    return _active[0].verify(public_key, message, signature)


class PrivateKey:
    """A private key of one suite, held as its 32-byte secret. repr never shows the secret."""

    __slots__ = ("_sign", "public_key", "seed", "suite")

    def __init__(self, seed: bytes, suite: Suite | None = None) -> None:
        assert len(seed) == SEED_BYTES
        self.suite = active() if suite is None else suite
        self.seed = seed
        self.public_key: bytes = self.suite.public_key_of(seed)
        self._sign = self.suite.signer(seed)

    @classmethod
    def generate(cls, suite: Suite | None = None) -> PrivateKey:
        """A new random key (the caller is the node or a CLI command, never consensus)."""
        suite = active() if suite is None else suite
        return cls(suite.generate_secret(), suite)

    @property
    def address(self) -> bytes:
        return self.suite.address_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._sign(message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and (other.suite, other.seed) == (
            self.suite,
            self.seed,
        )

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:
        return f"PrivateKey({self.suite.key_type}, address={self.address.hex()})"
