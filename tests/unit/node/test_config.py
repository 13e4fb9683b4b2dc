"""config.toml: defaults, the commented writer, and strict one-line errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.config import (
    Address,
    Config,
    ConfigError,
    P2PConfig,
    Peer,
    load_config,
    parse_config,
    reference_rows,
    render_config,
    save_config,
)

NODE = "ab" * 20


def test_rendered_defaults_load_back_equal() -> None:
    """The writer's output for the defaults parses back to exactly the defaults."""
    assert parse_config(render_config(Config())) == Config()


def test_empty_file_means_all_defaults() -> None:
    """Every key is optional."""
    assert parse_config("") == Config()


def test_rendered_config_comments_every_key() -> None:
    """Each key in the written file is preceded by a comment stating expected type and default."""
    lines = render_config(Config()).splitlines()
    keys = [i for i, line in enumerate(lines) if line and not line.startswith(("#", "[", " ", "]"))]
    assert len(keys) == len(reference_rows())
    for i in keys:
        assert lines[i - 1].startswith("# Expected: ")


def test_non_default_values_round_trip_through_a_file(tmp_path: Path) -> None:
    """Peers, IPv6 addresses, an external address and changed numbers survive save then load."""
    peers = (
        Peer(NODE, Address("10.0.0.2", 26656)),
        Peer("cd" * 20, Address("::1", 26656)),
        Peer("ef" * 20, Address("node-3.example.org", 1)),
    )
    config = replace(
        Config(moniker="val 1"),
        p2p=replace(
            P2PConfig(),
            listen=Address("::", 0),
            external_address=Address("203.0.113.7", 26656),
            persistent_peers=peers,
            pex=False,
        ),
    )
    path = tmp_path / "config.toml"
    save_config(path, config)
    assert load_config(path) == config


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/home/n/config.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("/home/n/config.toml")
    return info.value


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("monikr = 'x'", "monikr", "known key"),
        ("[p2p]\nlistn = '1.2.3.4:5'", "p2p.listn", "known key"),
        ("[nonsense]\na = 1", "nonsense", "known key"),
        ("p2p = 3", "p2p", "[p2p] table"),
        ("[consensus]\ntimeout_propose_ms = 'fast'", "consensus.timeout_propose_ms", "integer"),
        ("[consensus]\ntimeout_propose_ms = 0", "consensus.timeout_propose_ms", "1..3600000"),
        ("[consensus]\ntimeout_commit_ms = 1.5", "consensus.timeout_commit_ms", "integer"),
        ("[consensus]\ncreate_empty_blocks = 1", "consensus.create_empty_blocks", "true or false"),
        ("[mempool]\ntxs_max = true", "mempool.txs_max", "integer"),
        ("[log]\nlevel = 'loud'", "log.level", "one of"),
        ("[log]\nformat = 'xml'", "log.format", "one of"),
        ("[storage]\nbackend = 'leveldb'", "storage.backend", "one of"),
        ("moniker = ''", "moniker", "printable string"),
        ("[p2p]\nlisten = 'localhost'", "p2p.listen", "host:port"),
        ("[p2p]\nlisten = 'localhost:99999'", "p2p.listen", "host:port"),
        ("[p2p]\nlisten = '127.0.0.300:1'", "p2p.listen", "host:port"),
        ("[p2p]\nlisten = '::1:26656'", "p2p.listen", "host:port"),
        ("[p2p]\nlisten = '[zz]:26656'", "p2p.listen", "host:port"),
        ("[p2p]\nlisten = 'bad_host!:1'", "p2p.listen", "host:port"),
        ("[p2p]\nexternal_address = '1.2.3.4:0'", "p2p.external_address", "host:port"),
        ("[rpc]\nlisten = 26657", "rpc.listen", "host:port"),
        ("[p2p]\npersistent_peers = 'x'", "p2p.persistent_peers", "list"),
        ("[p2p]\npersistent_peers = ['1.2.3.4:5']", "p2p.persistent_peers", "node id"),
        (f"[p2p]\npersistent_peers = ['{NODE[:-1]}@1.2.3.4:5']", "p2p.persistent_peers", "node id"),
        (f"[p2p]\npersistent_peers = ['{NODE}@1.2.3.4']", "p2p.persistent_peers", "host:port"),
        (
            f"[p2p]\npersistent_peers = ['{NODE}@h:1', '{NODE}@g:2']",
            "p2p.persistent_peers",
            "distinct",
        ),
        ("[p2p]\npersistent_peers = [1]", "p2p.persistent_peers", "list"),
        (
            "[p2p]\nlisten = '127.0.0.1:7000'\n[rpc]\nlisten = '127.0.0.1:7000'",
            "rpc.listen",
            "different from p2p.listen",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_file_key_and_expectation(
    text: str, key: str, expected: str
) -> None:
    """Unknown keys, wrong types, ranges, bad addresses and bad peers each name their key."""
    error = _error(text)
    assert error.key == key
    assert f"key {key!r}" in str(error)
    assert expected in str(error)


def test_unparsable_toml_names_the_file_and_position() -> None:
    """A TOML syntax error is one line with the file and the parser's line/column."""
    error = _error("[p2p\nlisten = 1")
    assert "valid TOML" in str(error)
    assert "line 1" in str(error)


def test_missing_file_and_directory_are_config_errors(tmp_path: Path) -> None:
    """A missing config file and a directory in its place both raise ConfigError naming the path."""
    missing = tmp_path / "config.toml"
    with pytest.raises(ConfigError, match="archipelago init") as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    missing.mkdir()
    with pytest.raises(ConfigError, match="directory"):
        load_config(missing)


def test_metrics_port_may_repeat_when_metrics_are_disabled() -> None:
    """The port clash check only counts listeners that will actually be opened."""
    text = "[p2p]\nlisten = '127.0.0.1:7000'\n[metrics]\nenabled = false\nlisten = '127.0.0.1:7000'"
    assert parse_config(text).metrics.enabled is False


def test_peer_node_ids_are_normalised_to_lowercase() -> None:
    """Peer ids written in upper case compare equal to the lowercase node id."""
    config = parse_config(f"[p2p]\npersistent_peers = ['{NODE.upper()}@[::1]:26656']")
    (peer,) = config.p2p.persistent_peers
    assert peer.node_id == NODE
    assert str(peer) == f"{NODE}@[::1]:26656"


_label = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.lists(_label, min_size=1, max_size=4).map(".".join),
)


@given(host=_hosts, port=st.integers(1, 65535))
def test_address_text_round_trips(host: str, port: int) -> None:
    """str(Address) parses back to the same Address for IPv4, IPv6 and DNS names."""
    address = Address(host, port)
    assert Address.parse(str(address)) == address


def test_reference_rows_cover_every_section() -> None:
    """The operations reference lists keys from every section with a default and a description."""
    rows = reference_rows()
    sections = {key.split(".")[0] for key, *_ in rows if "." in key}
    assert sections == {
        "p2p",
        "rpc",
        "metrics",
        "consensus",
        "mempool",
        "blocksync",
        "storage",
        "log",
    }
    assert all(default and expected and doc for _, default, expected, doc in rows)


def test_operations_manual_documents_every_key() -> None:
    """docs/OPERATIONS.md has a reference row for every config key, with its current default."""
    manual = (Path(__file__).parents[3] / "docs" / "OPERATIONS.md").read_text()
    for key, default, _, _ in reference_rows():
        shown = default if default == '""' else default.strip('"')
        assert f"| `{key}` | `{shown}` |" in manual, key
