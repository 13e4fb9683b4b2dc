"""The `archipelago` command line, driven as a real subprocess of the installed script.

Homes are prepared in-process where the preparation is not what a test is
about (it is the same code `init` runs, and much faster); the command under
test always runs as `.venv/bin/archipelago` in its own process, with real
files, real signals and a real unix datagram socket for sd_notify.

Only the test whose outcome depends on the chain's bytes (a store refused for
another genesis) runs under each crypto suite; the others test argument
parsing, files, locks, signals and sd_notify, which no suite reaches, and
run with the default one (tests/integration/test_crypto_cli.py covers the
sm2 homes and key files).
"""

from __future__ import annotations

import json
import resource
import secrets
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from consensus.genesis import Genesis
from node.config import Address, Peer, load_config, save_config
from node.daemon import EXIT_SHUTDOWN_TIMEOUT, fds_needed
from node.home import HomePaths, init_home
from node.keys import load_key, node_id
from tests.integration import nodes

# Generous bounds for a loaded 2-core machine; the clean-shutdown bound is the requirement's 5 s.
START_TIMEOUT_S = 20
SHUTDOWN_TIMEOUT_S = 5


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("archipelago: error: ")
    for needle in needles:
        assert needle in line
    return line


class Lines:
    """Reads a subprocess stream line by line, without sleeping."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self) -> str | None:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        text = line.decode()
        self.seen.append(text)
        return text

    async def until_event(self, event: str) -> dict[str, Any]:
        while (line := await self.next()) is not None:
            obj = json.loads(line)
            if obj["event"] == event:
                return obj  # type: ignore[no-any-return]
        raise AssertionError(f"stream ended before {event!r}; saw: {self.seen}")

    async def rest(self) -> list[str]:
        while await self.next() is not None:
            pass
        return self.seen


@asynccontextmanager
async def daemon(
    home: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    fd_limits: tuple[int, int] | None = None,
) -> AsyncIterator[tuple[trio.Process, Lines]]:
    """`start` on `home`; `fd_limits` (soft, hard) is the open-file limit it starts with."""

    def limit_fds() -> None:
        assert fd_limits is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, fd_limits)

    process = await trio.lowlevel.open_process(
        [str(nodes.ARCHIPELAGO), "start", "--home", str(home), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env if env is not None else nodes.env(),
        preexec_fn=None if fd_limits is None else limit_fds,
    )
    assert process.stderr is not None
    try:
        yield process, Lines(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    init_home(root, chain_id="test-chain", moniker="n0")
    path = root / "config.toml"
    save_config(path, nodes.on_free_ports(load_config(path)))
    return root


# ---------------------------------------------------------------- simple commands


def test_version_prints_the_package_version() -> None:
    """`archipelago version` exits 0 and prints the version."""
    import node

    result = nodes.run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"archipelago {node.__version__} ")


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["init"],
        ["testnet"],
        ["start"],
        ["keys"],
        ["keys", "show"],
        ["keys", "new"],
        ["unsafe-reset"],
        ["version"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    """`--help` on every command exits 0 with a usage line naming that command."""
    result = nodes.run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: archipelago {' '.join(command)}".rstrip())


def test_top_level_help_lists_every_command() -> None:
    """The top-level help lists the built-in and the delegated commands."""
    out = nodes.run_cli("--help").stdout
    for name in ("init", "testnet", "start", "keys", "unsafe-reset", "version", "simulate"):
        assert name in out


def test_unknown_flag_is_a_usage_error() -> None:
    """A wrong flag exits 2 with one line, no traceback."""
    assert_one_line_error(nodes.run_cli("init", "--colour", "blue"), "unrecognized arguments")


# ---------------------------------------------------------------- init


def test_init_creates_the_home_layout(tmp_path: Path) -> None:
    """init writes config, genesis naming this validator, 0600 keys, data/ with a sign state."""
    root = tmp_path / "h"
    result = nodes.run_cli("init", "--home", root, "--chain-id", "my-chain", "--moniker", "alpha")
    assert result.returncode == 0, result.stderr
    paths = HomePaths(root)
    assert _mode(paths.node_key) == 0o600
    assert _mode(paths.validator_key) == 0o600
    assert paths.data.is_dir()
    assert paths.sign_state.is_file()
    config = load_config(paths.config)
    assert config.moniker == "alpha"
    genesis = Genesis.from_json(paths.genesis.read_text())
    validator = load_key(paths.validator_key)
    assert genesis.chain_id == "my-chain"
    assert genesis.app == "ledger"
    assert [(v.name, v.public_key, v.power) for v in genesis.validators] == [
        ("alpha", validator.public_key, 10)
    ]
    assert genesis.app_state["admin"] == validator.address.hex()
    assert node_id(load_key(paths.node_key)) in result.stdout


def test_init_twice_refuses_and_keeps_keys_then_force_overwrites(home: Path) -> None:
    """A second init exits 2 naming the file and --force, keeping keys; --force replaces them."""
    paths = HomePaths(home)
    before = (paths.node_key.read_bytes(), paths.validator_key.read_bytes())
    line = assert_one_line_error(nodes.run_cli("init", "--home", home), "already exists", "--force")
    assert str(home) in line
    assert (paths.node_key.read_bytes(), paths.validator_key.read_bytes()) == before

    result = nodes.run_cli("init", "--home", home, "--force")
    assert result.returncode == 0, result.stderr
    after = (paths.node_key.read_bytes(), paths.validator_key.read_bytes())
    assert after[0] != before[0] and after[1] != before[1]
    assert _mode(paths.node_key) == _mode(paths.validator_key) == 0o600


# ---------------------------------------------------------------- testnet


def test_testnet_of_four_has_distinct_ports_and_full_peer_wiring(tmp_path: Path) -> None:
    """Four homes share one genesis; ports are base+10i+{0,1,2}; each node peers with all others."""
    out = tmp_path / "net"
    result = nodes.run_cli("testnet", "--validators", "4", "--output", out, "--base-port", "31000")
    assert result.returncode == 0, result.stderr
    homes = [HomePaths(out / f"node{i}") for i in range(4)]
    configs = [load_config(h.config) for h in homes]
    ids = [node_id(load_key(h.node_key)) for h in homes]

    for i, c in enumerate(configs):
        assert c.moniker == f"node{i}"
        assert c.p2p.listen == Address("127.0.0.1", 31000 + 10 * i)
        assert c.rpc.listen == Address("127.0.0.1", 31000 + 10 * i + 1)
        assert c.metrics.listen == Address("127.0.0.1", 31000 + 10 * i + 2)
    ports = [a.port for c in configs for a in (c.p2p.listen, c.rpc.listen, c.metrics.listen)]
    assert len(set(ports)) == 12

    for i, c in enumerate(configs):
        expected = {Peer(ids[j], configs[j].p2p.listen) for j in range(4) if j != i}
        assert set(c.p2p.persistent_peers) == expected

    genesis_texts = {h.genesis.read_text() for h in homes}
    assert len(genesis_texts) == 1
    genesis = Genesis.from_json(genesis_texts.pop())
    assert genesis.chain_id == "archipelago-local"
    validator_keys = [load_key(h.validator_key) for h in homes]
    assert {v.public_key for v in genesis.validators} == {k.public_key for k in validator_keys}
    assert all(v.power == 10 for v in genesis.validators)
    assert genesis.app_state["admin"] == validator_keys[0].address.hex()

    accounts = sorted((out / "accounts").iterdir())
    assert len(accounts) == 16
    balances = genesis.app_state["accounts"]
    for path in accounts:
        assert _mode(path) == 0o600
        assert balances[load_key(path).address.hex()] == 10**12
    assert len(balances) == 16


def test_testnet_with_hosts_listens_and_dials_on_the_given_hosts(tmp_path: Path) -> None:
    """With --hosts node i listens on hosts[i], and its peers point at the other hosts."""
    out = tmp_path / "net"
    hosts = ["10.0.0.1", "10.0.0.2", "val-c.internal"]
    result = nodes.run_cli(
        "testnet",
        "--validators",
        "3",
        "--output",
        out,
        "--hosts",
        ",".join(hosts),
        "--accounts",
        "2",
    )
    assert result.returncode == 0, result.stderr
    configs = [load_config(out / f"node{i}" / "config.toml") for i in range(3)]
    for i, c in enumerate(configs):
        assert c.p2p.listen == Address(hosts[i], 26600 + 10 * i)
        assert c.rpc.listen == Address(hosts[i], 26600 + 10 * i + 1)
        assert {p.address.host for p in c.p2p.persistent_peers} == set(hosts) - {hosts[i]}


def test_testnet_rejects_a_host_count_mismatch(tmp_path: Path) -> None:
    """--hosts must name one host per validator: exit 2, one line, nothing written."""
    out = tmp_path / "net"
    assert_one_line_error(
        nodes.run_cli("testnet", "--validators", "3", "--output", out, "--hosts", "a,b"), "hosts"
    )
    assert not out.exists()


# ---------------------------------------------------------------- keys, reset


def test_keys_show_prints_ids_and_never_the_private_key(home: Path) -> None:
    """keys show prints node id, validator address and public key (text, --json), no seeds."""
    paths = HomePaths(home)
    node_key, validator_key = load_key(paths.node_key), load_key(paths.validator_key)
    text = nodes.run_cli("keys", "show", "--home", home)
    assert text.returncode == 0
    assert node_id(node_key) in text.stdout
    assert validator_key.public_key.hex() in text.stdout
    as_json = json.loads(nodes.run_cli("keys", "show", "--home", home, "--json").stdout)
    assert as_json == {
        "node_id": node_id(node_key),
        "validator_address": validator_key.address.hex(),
        "validator_public_key": validator_key.public_key.hex(),
    }
    for secret in (node_key.seed.hex(), validator_key.seed.hex()):
        assert secret not in text.stdout


def test_keys_new_writes_a_private_key_file_once(tmp_path: Path) -> None:
    """keys new writes a loadable 0600 key and prints its address; a rerun refuses to overwrite."""
    path = tmp_path / "client.json"
    result = nodes.run_cli("keys", "new", "--output", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert _mode(path) == 0o600
    assert load_key(path).address.hex() == info["address"]
    assert_one_line_error(
        nodes.run_cli("keys", "new", "--output", path), str(path), "already exists"
    )
    assert load_key(path).address.hex() == info["address"]


def test_unsafe_reset_wipes_data_and_keeps_keys_and_config(home: Path) -> None:
    """unsafe-reset empties data/ (but a fresh sign state) and keeps keys, genesis and config."""
    paths = HomePaths(home)
    kept = {p: p.read_bytes() for p in paths.owned_files}
    (paths.data / "blocks.db").write_bytes(b"x" * 100)
    (paths.data / "wal").mkdir()
    (paths.data / "wal" / "000001.log").write_bytes(b"y")
    paths.sign_state.write_text("a record with something signed")

    result = nodes.run_cli("unsafe-reset", "--home", home)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in paths.data.iterdir()} <= {"LOCK", paths.sign_state.name}
    assert paths.sign_state.read_text() != "a record with something signed"
    assert {p: p.read_bytes() for p in paths.owned_files} == kept


# ---------------------------------------------------------------- start: refusals


@pytest.mark.parametrize("which", ["node_key", "validator_key"])
def test_start_refuses_key_files_readable_by_others(home: Path, which: str) -> None:
    """Like ssh, start refuses a key file with group/other bits: exit 2 naming file and chmod."""
    path = home / f"{which}.json"
    path.chmod(0o644)
    assert_one_line_error(nodes.run_cli("start", "--home", home), str(path), f"chmod 600 {path}")


@pytest.mark.parametrize(
    ("config_text", "key"),
    [
        ("moniker = 'n0'\ncolour = 'blue'\n", "colour"),
        ("[consensus]\ntimeout_propose_ms = 'soon'\n", "consensus.timeout_propose_ms"),
        ("[rpc]\nlisten = 'localhost:port'\n", "rpc.listen"),
        ("[p2p]\npersistent_peers = ['nobody@1.2.3.4:1']\n", "p2p.persistent_peers"),
        ("[log]\nlevel = 'chatty'\n", "log.level"),
    ],
)
def test_start_with_a_bad_config_is_a_one_line_error(
    home: Path, config_text: str, key: str
) -> None:
    """Unknown key, wrong type, bad address, bad peer: exit 2, one line naming file and key."""
    config = home / "config.toml"
    config.write_text(config_text)
    assert_one_line_error(
        nodes.run_cli("start", "--home", home), str(config), repr(key), "expected"
    )


def test_start_without_a_config_file_is_a_one_line_error(home: Path) -> None:
    """A missing config.toml: exit 2 naming the file, no traceback."""
    config = home / "config.toml"
    config.unlink()
    assert_one_line_error(nodes.run_cli("start", "--home", home), str(config))


def test_start_with_a_bad_genesis_is_a_one_line_error(home: Path) -> None:
    """A genesis with a wrong field: exit 2 naming what is wrong, no traceback."""
    genesis = json.loads((home / "genesis.json").read_text())
    genesis["chain_id"] = 7
    (home / "genesis.json").write_text(json.dumps(genesis))
    assert_one_line_error(nodes.run_cli("start", "--home", home), "chain_id")


def test_start_with_an_unknown_app_is_a_one_line_error(home: Path) -> None:
    """A genesis naming an app this node does not have: exit 2 naming the known ones."""
    genesis = json.loads((home / "genesis.json").read_text())
    genesis["app"] = "bank"
    (home / "genesis.json").write_text(json.dumps(genesis))
    assert_one_line_error(
        nodes.run_cli("start", "--home", home), "app", "ledger, kvstore", "'bank'"
    )


# ---------------------------------------------------------------- start: running


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_testnet_node_starts_logs_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    """`testnet --validators 4`, `start --home node0`: JSON logs, exit 0 within 5 s of a signal."""
    out = tmp_path / "x"
    base = nodes.free_ports(4 * nodes.PORTS_PER_NODE)
    result = nodes.run_cli(
        "testnet", "--validators", "4", "--output", out, "--base-port", str(base)
    )
    assert result.returncode == 0, result.stderr
    home = out / "node0"
    async with daemon(home) as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            started = await lines.until_event("node started")
        assert started["node_id"] == node_id(load_key(home / "node_key.json"))
        assert started["chain_id"] == "archipelago-local"
        assert started["p2p_listen"] == f"127.0.0.1:{base}"
        assert started["rpc_listen"] == f"127.0.0.1:{base + 1}"
        assert started["metrics_listen"] == f"127.0.0.1:{base + 2}"
        assert started["level"] == "info" and started["logger"] == "node.daemon"
        assert started["ts"].endswith("Z")
        process.send_signal(signum)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0
            rest = await lines.rest()
    events = [json.loads(line)["event"] for line in rest]
    assert events[-1] == "node stopped"
    assert "Traceback" not in "\n".join(rest)


async def test_console_log_format_is_readable_lines(home: Path) -> None:
    """--log-format console writes human lines (not JSON) even when stderr is a pipe."""
    async with daemon(home, "--log-format", "console") as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            while (line := await lines.next()) is not None and "node started" not in line:
                pass
        assert line is not None and not line.startswith("{")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0


async def test_two_daemons_cannot_share_a_home(home: Path) -> None:
    """While one daemon runs, a second `start` on the same home exits 2 naming data/LOCK."""
    async with daemon(home) as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            await lines.until_event("node started")
        second = await trio.to_thread.run_sync(nodes.run_cli, "start", "--home", str(home))
        assert_one_line_error(second, str(home / "data" / "LOCK"), "another archipelago daemon")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0


def _soft_fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/PID/limits")


async def test_start_raises_a_low_open_file_limit_and_warns_when_it_cannot(home: Path) -> None:
    """A soft limit of 256 under a higher hard one is raised to the hard one; a hard limit
    below what the configured connection limits can use is logged as a warning, and the
    node runs all the same."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = fds_needed(load_config(home / "config.toml"))
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this machine's hard open-file limit {hard} is below the node's {needed}")
    for soft_hard in ((256, hard), (256, 256)):
        async with daemon(home, fd_limits=soft_hard) as (process, lines):
            with trio.fail_after(START_TIMEOUT_S):
                started = await lines.until_event("node started")
            assert started["fd_limit"] == soft_hard[1] == _soft_fd_limit(process.pid)
            if soft_hard[1] < needed:
                with trio.fail_after(START_TIMEOUT_S):
                    warning = await lines.until_event(
                        "open file limit below what the configured limits can use"
                    )
                assert warning["fds_needed"] == needed and warning["level"] == "warning"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(SHUTDOWN_TIMEOUT_S):
                assert await process.wait() == 0
                rest = await lines.rest()
        warned = any("open file limit" in line for line in rest)
        assert not warned or soft_hard[1] < needed, rest


async def test_unsafe_reset_refuses_while_the_node_runs(home: Path) -> None:
    """unsafe-reset takes the same lock, so it cannot wipe a running node's data."""
    async with daemon(home) as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            await lines.until_event("node started")
        result = await trio.to_thread.run_sync(nodes.run_cli, "unsafe-reset", "--home", str(home))
        assert_one_line_error(result, "LOCK")
        assert (home / "data" / "sign_state.json").exists()
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0


# ---------------------------------------------------------------- sd_notify


@pytest.mark.parametrize("abstract", [False, True])
async def test_sd_notify_ready_watchdog_and_stopping(
    home: Path, tmp_path: Path, abstract: bool
) -> None:
    """With NOTIFY_SOCKET and WATCHDOG_USEC set: READY=1, WATCHDOG=1 pings, then STOPPING=1."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"archipelago-test-{secrets.token_hex(8)}"
        await sock.bind("\0" + name)
        notify_socket = "@" + name
    else:
        notify_socket = str(tmp_path / "notify.sock")
        await sock.bind(notify_socket)
    env = {**nodes.env(), "NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "200000"}
    messages: list[list[str]] = []
    with sock:
        async with daemon(home, env=env) as (process, _lines):
            with trio.fail_after(START_TIMEOUT_S):
                while not (
                    any("READY=1" in m for m in messages)
                    and sum("WATCHDOG=1" in m for m in messages) >= 2
                ):
                    messages.append((await sock.recv(4096)).decode().split("\n"))
            ready = next(m for m in messages if "READY=1" in m)
            assert f"MAINPID={process.pid}" in ready
            assert any(line.startswith("STATUS=") for line in ready)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(SHUTDOWN_TIMEOUT_S):
                while not any("STOPPING=1" in m for m in messages):
                    messages.append((await sock.recv(4096)).decode().split("\n"))
                assert await process.wait() == 0


_SERVICE_SCRIPT = """
import sys, trio
from pathlib import Path
from node.daemon import Node
from node.logging import configure_logging

class Stubborn:
    name = "stubborn"
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        with trio.CancelScope(shield=True):  # ignores cancellation: a wedged service
            await trio.sleep_forever()

configure_logging("info", "json")
node = Node.from_home(Path(sys.argv[1]), shutdown_grace_ms=int(sys.argv[2]))
node.services.append(Stubborn())
trio.run(node.run)
"""


async def test_a_service_that_ignores_cancellation_is_forced_out_after_the_grace(
    home: Path,
) -> None:
    """A service added to Node.services starts before "node started"; if it ignores
    cancellation, SIGTERM still ends the process (exit 70) once the grace has passed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _SERVICE_SCRIPT, str(home), "300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=nodes.env(),
    )
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        with trio.fail_after(START_TIMEOUT_S):
            started = await lines.until_event("node started")
        assert started["services"][-1] == "stubborn"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            forced = await lines.until_event("shutdown took too long; exiting without waiting")
            assert await process.wait() == EXIT_SHUTDOWN_TIMEOUT
        assert forced["level"] == "error"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()


async def test_a_store_from_another_genesis_is_refused_and_testnet_force_starts_afresh(
    tmp_path: Path, crypto: str
) -> None:
    """Issue 10, bug 7. A single-validator chain commits a few blocks; its data folder is then
    put into the home of another chain: `start` refuses it with one line naming the store,
    instead of stalling at the old height. `testnet --force` over existing homes writes the new
    chain and deletes the old one's store and WAL, so the node starts from its new genesis."""
    out = tmp_path / "a"
    port = ("--base-port", str(nodes.free_ports(nodes.PORTS_PER_NODE)), "--crypto", crypto)
    result = nodes.run_cli("testnet", "--validators", "1", "--output", out, *port)
    assert result.returncode == 0, result.stderr
    home = out / "node0"
    async with daemon(home) as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            while (await lines.until_event("committed block"))["height"] < 2:
                pass
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0
    other = tmp_path / "b"
    result = nodes.run_cli("testnet", "--validators", "1", "--output", other, *port)
    assert result.returncode == 0, result.stderr
    foreign = other / "node0"
    (foreign / "data").mkdir(exist_ok=True)
    subprocess.run(["cp", "-a", str(home / "data" / "store"), str(foreign / "data")], check=True)
    refused = await trio.to_thread.run_sync(nodes.run_cli, "start", "--home", str(foreign))
    assert_one_line_error(refused, str(foreign / "data" / "store"), "another chain")

    result = nodes.run_cli("testnet", "--validators", "1", "--output", out, "--force", *port)
    assert result.returncode == 0, result.stderr
    assert not (home / "data" / "store").exists() and not (home / "data" / "wal").exists()
    async with daemon(home) as (process, lines):
        with trio.fail_after(START_TIMEOUT_S):
            first = await lines.until_event("committed block")
        assert first["height"] == 1
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(SHUTDOWN_TIMEOUT_S):
            assert await process.wait() == 0


def test_relay_stops_on_sigint_even_when_started_with_it_ignored(home: Path) -> None:
    """A relay started in the background of a script inherits SIGINT ignored, which Python
    keeps; `relay` installs its own handler, so SIGINT still stops it cleanly (exit 0)."""
    key = str(home / "validator_key.json")
    process = subprocess.Popen(
        [
            str(nodes.ARCHIPELAGO),
            "relay",
            "--from",
            "http://127.0.0.1:9",
            "--to",
            "http://127.0.0.1:10",
            "--key",
            key,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=nodes.env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert process.stderr is not None
    try:
        first = process.stderr.readline()  # its handlers are installed before it logs
        assert b"retrying" in first, first
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=SHUTDOWN_TIMEOUT_S) == 0
        assert b'"relay stopped"' in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
