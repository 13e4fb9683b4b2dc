"""Key files: atomic private writes, strict loading, refusal of loose permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from consensus.crypto import PrivateKey, address_of, verify
from node.keys import KeyFileError, key_to_json, load_key, load_or_generate_key, node_id, save_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_then_load_round_trips_a_key_that_still_signs(tmp_path: Path) -> None:
    """A saved key loads back equal, and a signature made with it verifies under its public key."""
    key = PrivateKey.generate()
    path = tmp_path / "k.json"
    save_key(path, key)
    loaded = load_key(path)
    assert loaded == key
    assert verify(key.public_key, b"msg", loaded.sign(b"msg"))


def test_saved_file_has_mode_0600_and_the_documented_json_fields(tmp_path: Path) -> None:
    """The file is 0600 even under umask 000 and holds exactly the four documented fields."""
    old = os.umask(0o000)
    try:
        key = PrivateKey.generate()
        path = tmp_path / "k.json"
        save_key(path, key)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    obj = json.loads(path.read_text())
    assert obj == {
        "type": "ed25519",
        "address": address_of(key.public_key).hex(),
        "public_key": key.public_key.hex(),
        "private_key": key.seed.hex(),
    }
    assert node_id(key) == obj["address"]


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    """After an atomic write the directory holds only the key file."""
    save_key(tmp_path / "k.json", PrivateKey.generate())
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    """An existing key file is kept (and the error says so); overwrite=True replaces it."""
    path = tmp_path / "k.json"
    first, second = PrivateKey.generate(), PrivateKey.generate()
    save_key(path, first)
    with pytest.raises(KeyFileError, match="already exists"):
        save_key(path, second)
    assert load_key(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]
    save_key(path, second, overwrite=True)
    assert load_key(path) == second
    assert _mode(path) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o700 | 0o010, 0o601])
def test_load_refuses_group_or_other_permissions_and_names_the_chmod(
    tmp_path: Path, mode: int
) -> None:
    """Any group/other bit makes loading fail with the file name and the chmod command to run."""
    path = tmp_path / "k.json"
    save_key(path, PrivateKey.generate())
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    assert "too open" in message


def test_load_accepts_owner_only_modes(tmp_path: Path) -> None:
    """0400 (read-only for the owner) is as private as 0600 and loads."""
    path = tmp_path / "k.json"
    key = PrivateKey.generate()
    save_key(path, key)
    path.chmod(0o400)
    assert load_key(path) == key


def _write_raw(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def test_load_rejects_a_public_key_that_does_not_match_the_seed(tmp_path: Path) -> None:
    """A file whose public_key belongs to another key is refused, not silently trusted."""
    key, other = PrivateKey.generate(), PrivateKey.generate()
    obj = json.loads(key_to_json(key))
    obj["public_key"] = other.public_key.hex()
    path = tmp_path / "k.json"
    _write_raw(path, json.dumps(obj))
    with pytest.raises(KeyFileError, match="public_key does not match"):
        load_key(path)


def test_load_rejects_a_wrong_address(tmp_path: Path) -> None:
    """A file whose address is not derived from its public key is refused."""
    key = PrivateKey.generate()
    obj = json.loads(key_to_json(key))
    obj["address"] = "00" * 20
    path = tmp_path / "k.json"
    _write_raw(path, json.dumps(obj))
    with pytest.raises(KeyFileError, match="address does not match"):
        load_key(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json {", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"type": "ed25519"}', "expected exactly the keys"),
        (
            '{"type": "secp256k1", "address": "", "public_key": "", "private_key": ""}',
            "type: expected one of 'ed25519', 'sm2'",
        ),
        (
            '{"type": "ed25519", "address": "", "public_key": "", "private_key": "zz"}',
            "private_key: expected a hex string",
        ),
        (
            '{"type": "ed25519", "address": "", "public_key": "", "private_key": "0011"}',
            "private_key: expected 32 bytes",
        ),
    ],
)
def test_load_rejects_malformed_files_with_the_file_named(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Each malformation is a KeyFileError naming the file and the problem."""
    path = tmp_path / "k.json"
    _write_raw(path, text)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_errors_never_contain_the_seed(tmp_path: Path) -> None:
    """A broken file's error message does not echo the private key it contains."""
    key = PrivateKey.generate()
    path = tmp_path / "k.json"
    _write_raw(path, key_to_json(key)[:-5])  # truncated JSON holding the seed
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert key.seed.hex() not in str(info.value)
    assert key.seed.hex() not in repr(key)


def test_missing_file_and_symlink_are_refused(tmp_path: Path) -> None:
    """A missing path is 'no such file'; a symlink is not followed (O_NOFOLLOW)."""
    with pytest.raises(KeyFileError, match="no such file"):
        load_key(tmp_path / "absent.json")
    target = tmp_path / "real.json"
    save_key(target, PrivateKey.generate())
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot open"):
        load_key(link)


def test_load_or_generate_creates_once_then_reuses(tmp_path: Path) -> None:
    """The first call writes a new key; the second returns the same key from disk."""
    path = tmp_path / "k.json"
    first = load_or_generate_key(path)
    assert _mode(path) == 0o600
    assert load_or_generate_key(path) == first
