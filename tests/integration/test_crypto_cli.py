"""The crypto suite from the command line: sm2 homes and key files, and the one-line refusals."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from consensus.crypto import SM2_SM3
from consensus.genesis import Genesis
from node.keys import load_key
from tests.integration import nodes


def _one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("archipelago: error: ")
    for needle in needles:
        assert needle in line, line


def test_init_and_keys_new_make_sm2_chains_and_keys(tmp_path: Path) -> None:
    """init --crypto sm2-sm3 writes a genesis naming the suite, sm2 key files (0600) whose
    key is the genesis validator; keys new --crypto sm2-sm3 writes an sm2 key file."""
    home = tmp_path / "home"
    result = nodes.run_cli("init", "--home", home, "--crypto", "sm2-sm3")
    assert result.returncode == 0, result.stderr
    genesis = Genesis.from_json((home / "genesis.json").read_text())
    assert genesis.crypto == "sm2-sm3" and genesis.suite is SM2_SM3
    key = load_key(home / "validator_key.json")
    assert key.suite is SM2_SM3 and len(key.public_key) == 33
    assert genesis.validators[0].public_key == key.public_key
    for name in ("node_key.json", "validator_key.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
        assert json.loads((home / name).read_text())["type"] == "sm2"
    out = tmp_path / "client.json"
    result = nodes.run_cli("keys", "new", "--output", out, "--crypto", "sm2-sm3", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["type"] == "sm2"
    assert json.loads(result.stdout)["public_key"] == load_key(out).public_key.hex()


def test_start_refuses_keys_that_do_not_match_the_genesis_suite(tmp_path: Path) -> None:
    """A validator key file of the other suite, or a genesis switched to sm2-sm3 over ed25519
    keys: `start` exits 2 with one line naming the file or key, before anything runs."""
    home = tmp_path / "sm2"
    assert nodes.run_cli("init", "--home", home, "--crypto", "sm2-sm3").returncode == 0
    key_path = home / "validator_key.json"
    result = nodes.run_cli("keys", "new", "--output", key_path, "--force")  # an ed25519 key
    assert result.returncode == 0, result.stderr
    _one_line_error(
        nodes.run_cli("start", "--home", home),
        "validator_key.json",
        "an ed25519 key, but the genesis's crypto is 'sm2-sm3'",
    )

    home = tmp_path / "ed"
    assert nodes.run_cli("init", "--home", home).returncode == 0
    genesis_path = home / "genesis.json"
    genesis = json.loads(genesis_path.read_text())
    genesis_path.write_text(json.dumps(genesis | {"crypto": "sm2-sm3"}))
    _one_line_error(
        nodes.run_cli("start", "--home", home),
        "validators[0].public_key: not an sm2 public key (33 bytes)",
        "'sm2-sm3'",
    )
