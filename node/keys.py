"""Key files: the node's identity, the validator's signing key, client keys.

A key file is the only place a private key lives on disk, so this module is
strict in both directions. Writing is atomic and private from the first byte
(a temp file created 0600 with O_EXCL, fsync'd, renamed into place, then the
directory fsync'd), so a crash never leaves a half-written or briefly
world-readable key. Loading refuses a file that group or others may access,
the way ssh refuses loose private keys, and checks that the stored public key
and address really derive from the stored seed.

Format (JSON, one object)::

    {"type": "ed25519" or "sm2", "address": "<hex 20 bytes>",
     "public_key": "<hex 32 or 33 bytes>", "private_key": "<hex 32-byte secret>"}

The type names the key's crypto suite (consensus/crypto.py: "ed25519" keys
belong to ed25519-sha256 chains, "sm2" keys to sm2-sm3 chains); the address
is derived with that suite's hash. A node id is the node key's address in hex.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from consensus.crypto import SEED_BYTES, SUITES, PrivateKey, Suite, suite_for_key_type
from node.durable import fsync_directory, replace_durably, write_new_file

KEY_TYPES = tuple(s.key_type for s in SUITES.values())
KEY_FILE_MODE = 0o600
# A key file is about 250 bytes; anything far larger is not a key file and is
# refused before it is read into memory.
KEY_FILE_BYTES_MAX = 4096
_FIELDS = frozenset({"type", "address", "public_key", "private_key"})


class KeyFileError(Exception):
    """A key file is missing, malformed, or too open. The message names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def node_id(key: PrivateKey) -> str:
    """The node id (hex of the 20-byte address) of a node key."""
    return key.address.hex()


def key_to_json(key: PrivateKey) -> str:
    obj = {
        "type": key.suite.key_type,
        "address": key.address.hex(),
        "public_key": key.public_key.hex(),
        "private_key": key.seed.hex(),
    }
    return json.dumps(obj, indent=2) + "\n"


def save_key(path: Path | str, key: PrivateKey, *, overwrite: bool = False) -> None:
    """Write `key` to `path` atomically with mode 0600.

    Without `overwrite` an existing file is never replaced, even by a racing
    writer: the final step is a hard link, which fails if the name exists.
    """
    write_private_file(Path(path), key_to_json(key).encode(), overwrite=overwrite)


def load_key(path: Path | str) -> PrivateKey:
    """Read and check a key file; raise KeyFileError naming the file on any problem."""
    path = Path(path)
    obj = _parse(path, _read_private(path))
    suite = suite_for_key_type(obj["type"])
    assert suite is not None, "_parse checked the type"
    try:
        seed = _hex_field(obj, "private_key", SEED_BYTES)
        try:
            key = PrivateKey(seed, suite)
        except ValueError:  # not a secret of this suite (SM2: outside [1, n - 2])
            raise ValueError(f"private_key: not an {suite.key_type} private key") from None
        public_key = _hex_field(obj, "public_key", suite.public_key_bytes)
        address = _hex_field(obj, "address", len(key.address))
    except ValueError as e:
        raise KeyFileError(path, str(e)) from None
    if public_key != key.public_key:
        raise KeyFileError(path, "public_key does not match private_key")
    if address != key.address:
        raise KeyFileError(path, "address does not match public_key")
    return key


def check_key_suite(path: Path | str, key: PrivateKey, suite: Suite) -> None:
    """Raise KeyFileError unless `key` belongs to `suite` (the chain's, from genesis)."""
    if key.suite != suite:
        raise KeyFileError(
            path,
            f"an {key.suite.key_type} key, but the genesis's crypto is {suite.name!r}, "
            f"which needs {suite.key_type} keys",
        )


def load_or_generate_key(path: Path | str, suite: Suite | None = None) -> PrivateKey:
    """The key at `path`, or a new one of `suite` written there if the file does not exist."""
    path = Path(path)
    if path.exists():
        return load_key(path)
    key = PrivateKey.generate(suite)
    save_key(path, key)
    return key


def check_private_mode(path: Path | str, mode: int) -> None:
    """Raise KeyFileError if `mode` grants any permission to group or others."""
    if mode & 0o077:
        perms = stat.S_IMODE(mode)
        raise KeyFileError(
            path,
            f"permissions {perms:04o} are too open (readable by group or others); "
            f"run: chmod 600 {path}",
        )


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Atomically create `path` holding `data`, mode 0600, durable on return.

    Without `overwrite` an existing file is never replaced (the temp file is
    linked into place, which fails if the name exists).
    """
    if overwrite:
        replace_durably(path, data, KEY_FILE_MODE)
        return
    tmp = write_new_file(path, data, KEY_FILE_MODE)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(path, "already exists; refusing to overwrite a key file") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def _read_private(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(path, "no such file") from None
    except OSError as e:
        raise KeyFileError(path, f"cannot open: {e.strerror}") from None
    try:
        # Check the descriptor we read from, not the name: no window between
        # the permission check and the read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "not a regular file")
        check_private_mode(path, st.st_mode)
        if st.st_size > KEY_FILE_BYTES_MAX:
            raise KeyFileError(path, f"larger than {KEY_FILE_BYTES_MAX} bytes; not a key file")
        return os.read(fd, KEY_FILE_BYTES_MAX + 1)
    finally:
        os.close(fd)


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        # The parser's message may quote the file's content, which holds the seed.
        raise KeyFileError(path, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise KeyFileError(path, "expected a JSON object")
    if set(obj) != _FIELDS:
        raise KeyFileError(path, f"expected exactly the keys {', '.join(sorted(_FIELDS))}")
    if not isinstance(obj["type"], str) or suite_for_key_type(obj["type"]) is None:
        raise KeyFileError(path, f"type: expected one of {', '.join(map(repr, KEY_TYPES))}")
    return obj


def _hex_field(obj: dict[str, Any], name: str, length: int) -> bytes:
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{name}: expected a hex string") from None
    if len(raw) != length:
        raise ValueError(f"{name}: expected {length} bytes, got {len(raw)}")
    return raw
