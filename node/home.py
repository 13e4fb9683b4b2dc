"""The node's home folder: its layout, `init`, `testnet` and `unsafe-reset`.

Everything a node owns lives under one folder, so that an operator can back
it up, move it, or wipe its chain data without touching its identity::

    HOME/config.toml          settings (node/config.py)
    HOME/genesis.json         the chain's starting point, identical on every node
    HOME/node_key.json        p2p identity (node id), mode 0600
    HOME/validator_key.json   consensus signing key, mode 0600
    HOME/data/                stores, WAL, sign state; LOCK held by the running daemon

Creating a home never overwrites an existing key unless asked to (`force`),
because a lost validator key cannot be recovered and a replaced one silently
changes the node's identity.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from apps import APPS, app_class
from consensus.crypto import DEFAULT_SUITE, SUITES, PrivateKey, Suite
from consensus.genesis import Genesis, GenesisValidator
from consensus.types import CHAIN_ID_BYTES_MAX
from node.config import (
    MONIKER_CHARS_MAX,
    Address,
    Config,
    MetricsConfig,
    P2PConfig,
    Peer,
    RPCConfig,
    save_config,
)
from node.durable import fsync_directory
from node.keys import node_id, save_key
from node.signstate import SIGN_STATE_FILENAME, SignState

DEFAULT_CHAIN_ID = "archipelago"
DEFAULT_TESTNET_CHAIN_ID = "archipelago-local"
DEFAULT_BASE_PORT = 26600
# Ports per testnet node: base + PORT_STRIDE * i + {0: p2p, 1: rpc, 2: metrics}.
PORT_STRIDE = 10
VALIDATOR_POWER = 10
ACCOUNT_BALANCE = 10**12
DEFAULT_ACCOUNTS = 16
# Limits so a typo cannot create a million folders.
TESTNET_VALIDATORS_MAX = 100
TESTNET_ACCOUNTS_MAX = 100_000
LOCK_FILE_NAME = "LOCK"


class HomeError(Exception):
    """An operating error about a home folder (exists, locked, unusable). One line."""


@dataclass(frozen=True, slots=True)
class HomePaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def genesis(self) -> Path:
        return self.root / "genesis.json"

    @property
    def node_key(self) -> Path:
        return self.root / "node_key.json"

    @property
    def validator_key(self) -> Path:
        return self.root / "validator_key.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def lock(self) -> Path:
        return self.data / LOCK_FILE_NAME

    @property
    def sign_state(self) -> Path:
        return self.data / SIGN_STATE_FILENAME

    @property
    def owned_files(self) -> tuple[Path, ...]:
        return (self.config, self.genesis, self.node_key, self.validator_key)


@dataclass(frozen=True, slots=True)
class NodeHome:
    """What `init` or `testnet` created for one node."""

    paths: HomePaths
    moniker: str
    node_id: str
    validator_address: str
    config: Config


def check_chain_id(chain_id: str) -> None:
    if not 1 <= len(chain_id.encode()) <= CHAIN_ID_BYTES_MAX or not chain_id.isprintable():
        raise HomeError(f"chain id: expected 1..{CHAIN_ID_BYTES_MAX} printable bytes")


def check_crypto(crypto: str) -> Suite:
    if crypto not in SUITES:
        raise HomeError(f"crypto: expected one of {', '.join(SUITES)}, got {crypto!r}")
    return SUITES[crypto]


def check_app(app: str) -> None:
    if app not in APPS:
        raise HomeError(f"app: expected one of {', '.join(APPS)}, got {app!r}")


def init_home(
    root: Path,
    *,
    chain_id: str = DEFAULT_CHAIN_ID,
    moniker: str = "node",
    app: str = "ledger",
    force: bool = False,
    genesis_time_ms: int | None = None,
    crypto: str = DEFAULT_SUITE.name,
) -> NodeHome:
    """Create a single-validator home: keys, a genesis naming this node, defaults."""
    check_chain_id(chain_id)
    check_app(app)
    suite = check_crypto(crypto)
    paths = HomePaths(root)
    config = _with_moniker(Config(), moniker)
    _refuse_existing(paths, force)
    validator_key = PrivateKey.generate(suite)
    node_key = PrivateKey.generate(suite)
    genesis = _genesis(
        chain_id,
        app,
        [(moniker, validator_key)],
        accounts={},
        admin=validator_key.address.hex(),
        genesis_time_ms=genesis_time_ms,
        suite=suite,
    )
    return _write_home(paths, config, genesis, node_key, validator_key, force=force)


def create_testnet(
    output: Path,
    *,
    validators: int,
    chain_id: str = DEFAULT_TESTNET_CHAIN_ID,
    base_port: int = DEFAULT_BASE_PORT,
    hosts: Sequence[str] | None = None,
    accounts: int = DEFAULT_ACCOUNTS,
    app: str = "ledger",
    force: bool = False,
    genesis_time_ms: int | None = None,
    crypto: str = DEFAULT_SUITE.name,
) -> list[NodeHome]:
    """Create `validators` homes `output/node{i}` sharing one genesis, wired to each other.

    Node i listens on hosts[i] (127.0.0.1 by default) at base_port + 10*i
    (p2p), +1 (rpc), +2 (metrics); its persistent_peers are all other nodes.
    The genesis lists the nodes' ids as the network's members, so no other
    node id gets in until the admin (node0's validator key) adds it.
    Funded client keys go to `output/accounts/account{k}.json`.
    """
    check_chain_id(chain_id)
    check_app(app)
    suite = check_crypto(crypto)
    if not 1 <= validators <= TESTNET_VALIDATORS_MAX:
        raise HomeError(f"validators: expected 1..{TESTNET_VALIDATORS_MAX}")
    if not 0 <= accounts <= TESTNET_ACCOUNTS_MAX:
        raise HomeError(f"accounts: expected 0..{TESTNET_ACCOUNTS_MAX}")
    host_list = list(hosts) if hosts else ["127.0.0.1"] * validators
    if len(host_list) != validators:
        raise HomeError(
            f"hosts: expected {validators} hosts, one per validator, got {len(host_list)}"
        )
    top_port = base_port + PORT_STRIDE * (validators - 1) + 2
    if base_port < 1 or top_port > 65535:
        raise HomeError(f"base port: expected ports {base_port}..{top_port} to lie in 1..65535")
    listens = []
    for i, host in enumerate(host_list):
        try:
            listens.append(Address.parse(f"{_bracket(host)}:{base_port + PORT_STRIDE * i}"))
        except ValueError:
            raise HomeError(f"hosts: {host!r} is not a host name or IP address") from None

    all_paths = [HomePaths(output / f"node{i}") for i in range(validators)]
    account_dir = output / "accounts"
    for paths in all_paths:
        _refuse_existing(paths, force)
    node_keys = [PrivateKey.generate(suite) for _ in range(validators)]
    validator_keys = [PrivateKey.generate(suite) for _ in range(validators)]
    account_keys = [PrivateKey.generate(suite) for _ in range(accounts)]
    genesis = _genesis(
        chain_id,
        app,
        [(f"node{i}", key) for i, key in enumerate(validator_keys)],
        accounts={k.address.hex(): ACCOUNT_BALANCE for k in account_keys},
        admin=validator_keys[0].address.hex(),
        genesis_time_ms=genesis_time_ms,
        # A testnet is permissioned: its nodes are the members; others are refused
        # until the admin (node0's validator key) adds them with set_member.
        members=tuple(k.address for k in node_keys),
        suite=suite,
    )
    peers = [Peer(node_id(k), addr) for k, addr in zip(node_keys, listens, strict=True)]
    homes = []
    for i, paths in enumerate(all_paths):
        listen = listens[i]
        config = replace(
            _with_moniker(Config(), f"node{i}"),
            p2p=replace(
                P2PConfig(),
                listen=listen,
                persistent_peers=tuple(p for j, p in enumerate(peers) if j != i),
            ),
            rpc=replace(RPCConfig(), listen=replace(listen, port=listen.port + 1)),
            metrics=replace(MetricsConfig(), listen=replace(listen, port=listen.port + 2)),
        )
        homes.append(
            _write_home(paths, config, genesis, node_keys[i], validator_keys[i], force=force)
        )
    account_dir.mkdir(parents=True, exist_ok=True)
    for k, key in enumerate(account_keys):
        save_key(account_dir / f"account{k}.json", key, overwrite=force)
    return homes


def unsafe_reset(root: Path) -> list[Path]:
    """Delete everything under data/ (chain, WAL, sign state); keep keys and config.

    Unsafe because the sign state goes too: a validator reset while its chain
    continues elsewhere can sign twice at heights it already signed. Takes the
    home's lock first, so it refuses while a daemon runs there. Returns the
    entries removed; leaves a fresh sign state.
    """
    paths = HomePaths(root)
    if not paths.config.exists() and not paths.validator_key.exists():
        raise HomeError(f"{root}: not a node home (no config.toml or validator_key.json)")
    paths.data.mkdir(mode=0o700, exist_ok=True)
    removed = []
    with lock_home(paths):
        for entry in sorted(paths.data.iterdir()):
            if entry.name == LOCK_FILE_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        fsync_directory(paths.data)
        # The validator starts over from height 1, so it needs a fresh
        # "nothing signed" record; without one it would refuse to sign.
        SignState.create(paths.sign_state)
    return removed


class HomeLock:
    """An exclusive flock on data/LOCK, held while a daemon (or a reset) uses the home."""

    def __init__(self, paths: HomePaths) -> None:
        self.paths = paths
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.paths.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = open(self.paths.lock, "a+")  # held (and so locked) until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise HomeError(
                f"{self.paths.lock}: locked by another process (pid {holder}); "
                "another archipelago daemon is using this home"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            # Closing drops the flock; the file stays, its content is stale but harmless.
            self._file.close()
            self._file = None

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_home(paths: HomePaths) -> HomeLock:
    return HomeLock(paths)


def load_genesis_file(path: Path) -> Genesis:
    """Read genesis.json, naming an application this node has.

    GenesisError from parsing or for an unknown app propagates; a missing
    file is HomeError.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise HomeError(f"{path}: no such file (run `archipelago init`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HomeError(f"{path}: cannot read: {e}") from None
    genesis = Genesis.from_json(text)
    app_class(genesis)
    return genesis


def _refuse_existing(paths: HomePaths, force: bool) -> None:
    if force:
        return
    existing = [p for p in paths.owned_files if p.exists()]
    if existing:
        raise HomeError(
            f"{existing[0]} already exists; refusing to overwrite keys or config "
            "(pass --force to replace them, which changes this node's identity)"
        )


def _write_home(
    paths: HomePaths,
    config: Config,
    genesis: Genesis,
    node_key: PrivateKey,
    validator_key: PrivateKey,
    *,
    force: bool,
) -> NodeHome:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.data.mkdir(mode=0o700, exist_ok=True)
    save_key(paths.node_key, node_key, overwrite=force)
    save_key(paths.validator_key, validator_key, overwrite=force)
    paths.genesis.write_text(genesis.to_json())
    save_config(paths.config, config)
    if force:
        # A new validator key starts with nothing signed; the old record
        # belongs to the key just replaced. The old chain's blocks and WAL
        # belong to the genesis just replaced: a node must not start on them.
        paths.sign_state.unlink(missing_ok=True)
        for old in ("store", "wal"):
            shutil.rmtree(paths.data / old, ignore_errors=True)
    if not paths.sign_state.exists():
        SignState.create(paths.sign_state)
    return NodeHome(
        paths=paths,
        moniker=config.moniker,
        node_id=node_id(node_key),
        validator_address=validator_key.address.hex(),
        config=config,
    )


def _genesis(
    chain_id: str,
    app: str,
    validators: list[tuple[str, PrivateKey]],
    *,
    accounts: dict[str, int],
    admin: str,
    genesis_time_ms: int | None,
    members: tuple[bytes, ...] = (),
    suite: Suite = DEFAULT_SUITE,
) -> Genesis:
    app_state: dict[str, Any] = {"accounts": accounts, "admin": admin} if app == "ledger" else {}
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=time.time_ns() // 1_000_000 if genesis_time_ms is None else genesis_time_ms,
        validators=tuple(
            GenesisValidator(name, key.public_key, VALIDATOR_POWER) for name, key in validators
        ),
        app=app,
        app_state=app_state,
        members=members,
        crypto=suite.name,
    )


def _with_moniker(config: Config, moniker: str) -> Config:
    if not 1 <= len(moniker) <= MONIKER_CHARS_MAX or not moniker.isprintable():
        raise HomeError(
            f"moniker: expected a printable string of 1..{MONIKER_CHARS_MAX} characters"
        )
    return replace(config, moniker=moniker)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = [
    "HomeError",
    "HomeLock",
    "HomePaths",
    "NodeHome",
    "create_testnet",
    "init_home",
    "load_genesis_file",
    "lock_home",
    "unsafe_reset",
]
