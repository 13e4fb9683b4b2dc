"""A malformed home file is one line on stderr, never a traceback.

genesis.json and config.toml nested deeply enough to make the parsers raise
RecursionError are refused like any other malformed file: exit 2, one line
naming the file (the API's JSON bodies are handled the same way, node/rpc.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration import nodes
from tests.integration.test_cli import assert_one_line_error, home  # noqa: F401  (fixture)

NESTING = 100_000


def test_start_with_a_deeply_nested_genesis_is_a_one_line_error(
    home: Path,  # noqa: F811
) -> None:
    """genesis.json holding an array nested 100,000 deep (valid JSON): exit 2 with one
    line naming genesis.json, not a RecursionError traceback."""
    genesis = json.loads((home / "genesis.json").read_text())
    text = json.dumps(genesis)
    nested = "[" * NESTING + "]" * NESTING
    (home / "genesis.json").write_text(text[:-1] + ', "app_state_x": ' + nested + "}")
    assert_one_line_error(nodes.run_cli("start", "--home", home))


def test_start_with_a_deeply_nested_config_is_a_one_line_error(
    home: Path,  # noqa: F811
) -> None:
    """config.toml holding an array nested 100,000 deep: exit 2 with one line naming
    config.toml, not a RecursionError traceback."""
    config = home / "config.toml"
    config.write_text("x = " + "[" * NESTING + "]" * NESTING + "\n" + config.read_text())
    assert_one_line_error(nodes.run_cli("start", "--home", home), "config.toml")
