"""Real node processes on loopback for the integration tests: testnets, daemons, their API.

Why a shared helper: the network, API, metrics and crash tests all need the
same few things, done the same careful way. A testnet is made by the real
`archipelago testnet` command; each node runs as `archipelago start` in its
own process, its JSON log going to a file (a pipe nobody drains would
eventually block the node); every process is SIGKILLed on the way out of
`running(...)`, even when a test fails. Nothing here sleeps to synchronise:
`wait_for` polls the API until a condition holds or its deadline passes, and
then fails naming what it waited for and the last value seen.

Every port a test listens on comes from `free_ports`: no two testnets of one
test run share a port, whichever modules run together, and a port another
process holds (another run of these tests, a developer's localnet) is never
handed out.

Test modules import this one as `from tests.integration import nodes`
(pytest's importlib mode imports tests/ as a namespace package from the
rootdir).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from consensus.crypto import DEFAULT_SUITE, PrivateKey
from node.config import Address, Config, ConsensusConfig, Peer, load_config, save_config
from node.keys import load_key, node_id

ARCHIPELAGO = Path(sys.executable).parent / "archipelago"
COMMAND_TIMEOUT_S = 60
# Bounds for a 2-core machine shared with other jobs; a healthy run is far inside them.
START_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.1  # between polls of a condition; never used to wait for an outcome
STOP_TIMEOUT_S = 10
LOG_JSON = ("--log-format", "json")  # the nodes' logs are read back by `log_events`

# Consensus timeouts that make a loopback testnet commit several blocks a second
# while leaving a round enough time on a loaded machine (a missing proposer costs
# timeout_propose_ms).
FAST_CONSENSUS = ConsensusConfig(
    timeout_propose_ms=1500,
    timeout_propose_delta_ms=250,
    timeout_prevote_ms=300,
    timeout_prevote_delta_ms=200,
    timeout_precommit_ms=300,
    timeout_precommit_delta_ms=200,
    timeout_commit_ms=100,
)

# Ports handed out by `free_ports`: above the ports archipelago listens on by default
# (`testnet` from 26600, `init` 26656, 26657 and 26660: a developer's own nodes) and
# below Linux's ephemeral range (32768 and up, where the kernel picks the local port of
# every outgoing connection).
PORTS_FIRST = 27000
PORTS_END = 32700
# `archipelago testnet --base-port B`: node i listens on B + 10 i (p2p), + 1 (rpc), + 2
# (metrics); the other seven are free for a test to move a node to.
PORTS_PER_NODE = 10
# Under pytest-xdist a worker's slice of the range holds at least this many ports
# (several 7-node testnets at once).
PORTS_SLICE_MIN = 500

T = TypeVar("T")


def _worker_ports() -> tuple[int, int]:
    """This process's share of PORTS_FIRST..PORTS_END: all of it, or under pytest-xdist
    (`make test` runs workers side by side) worker k of n gets the k-th of n slices.

    Why slices: the bind check in `free_ports` cannot see a port another worker has
    handed out and its node has not bound yet (a testnet's ports are listened on
    seconds later); disjoint slices make that impossible among one run's workers.
    With more workers than slices of PORTS_SLICE_MIN ports, workers share slices
    round robin (and rely on the bind check and their random starts, as two
    separate runs do).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    slices = min(count, (PORTS_END - PORTS_FIRST) // PORTS_SLICE_MIN)
    if not worker.startswith("gw") or slices <= 1:
        return PORTS_FIRST, PORTS_END
    index = int(worker[2:]) % slices
    size = (PORTS_END - PORTS_FIRST) // slices
    return PORTS_FIRST + index * size, PORTS_FIRST + (index + 1) * size


_ports_first, _ports_end = _worker_ports()
# The next port `free_ports` considers. A random start keeps two test runs at the same
# time (two worktrees) from trying the same ports in the same order.
_next_port = random.randrange(_ports_first, _ports_end)

# Nodes started and not stopped by a test: one that exits on its own fails the
# waiting test at once (with its log), instead of after the wait's deadline.
_LIVE: set[NodeProcess] = set()


def env() -> dict[str, str]:
    """The environment for a node: never let it talk to the runner's service manager."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports, each free to listen on at 127.0.0.1 now.

    Within one test run a port is handed out once, until all of this process's ports
    (`_worker_ports`) have been (then the range starts over, and the bind check alone
    keeps a port that is still in use from being handed out).
    """
    global _next_port
    for _ in range((_ports_end - _ports_first) // count):
        first = _next_port if _next_port + count <= _ports_end else _ports_first
        _next_port = first + count
        if all(_can_listen(port) for port in range(first, first + count)):
            return first
    raise AssertionError(f"no {count} consecutive free ports in {_ports_first}..{_ports_end}")


def _can_listen(port: int) -> bool:
    with socket.socket() as s:
        # As the node's listeners do: a port held only by connections in TIME_WAIT
        # (a stopped node's) is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ARCHIPELAGO), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=env(),
        check=False,
    )


@dataclass(eq=False)
class NodeProcess:
    """One node's home and, while it runs, its `archipelago start` process."""

    home: Path
    process: trio.Process | None = None
    starts: int = 0
    # A command prefix the daemon runs under, e.g. `ip netns exec NS` (tests/integration/netns.py).
    wrapper: tuple[str, ...] = ()
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.home.name

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    @property
    def rpc(self) -> str:
        return f"http://{load_config(self.config_path).rpc.listen}"

    @property
    def ws(self) -> str:
        return f"ws://{load_config(self.config_path).rpc.listen}"

    @property
    def metrics(self) -> str:
        return f"http://{load_config(self.config_path).metrics.listen}/metrics"

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    @property
    def node_id(self) -> str:
        return node_id(load_key(self.home / "node_key.json"))

    @property
    def validator_key(self) -> PrivateKey:
        return load_key(self.home / "validator_key.json")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the daemon; its log is appended to home/node.log across restarts."""
        assert not self.running, f"{self.name} is already running"
        self._close_log()
        self._log = open(self.log_path, "ab")
        self.process = await trio.lowlevel.open_process(
            [*self.wrapper, str(ARCHIPELAGO), "start", "--home", str(self.home), *LOG_JSON],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env(),
            # Its own session: a signal meant for the test runner's process group
            # (a terminal's Ctrl-C, a CI job's stop) does not reach the node.
            start_new_session=True,
        )
        self.starts += 1
        _LIVE.add(self)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or `kill -9`."""
        _LIVE.discard(self)
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await self.process.wait()
        self._close_log()

    async def stop(self) -> int:
        """SIGTERM and wait for the exit code (SIGKILL after STOP_TIMEOUT_S)."""
        assert self.process is not None
        _LIVE.discard(self)
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            code = await self.process.wait()
            self._close_log()
            return code
        await self.kill()
        raise AssertionError(f"{self.name} did not stop within {STOP_TIMEOUT_S} s of SIGTERM")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_events(self) -> list[dict[str, Any]]:
        """Every JSON log line the node wrote so far (non-JSON lines kept as {'text': ...})."""
        if not self.log_path.exists():
            return []
        out: list[dict[str, Any]] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"event": "", "text": line}
            out.append(obj if isinstance(obj, dict) else {"event": "", "text": line})
        return out

    def events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of `event` the node wrote so far."""
        return [e for e in self.log_events() if e.get("event") == event]

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return f"{self.name}: no log"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} log tail ---\n" + "\n".join(tail)


@dataclass
class Testnet:
    root: Path
    nodes: list[NodeProcess]
    chain_id: str
    accounts: list[PrivateKey]

    @property
    def validators(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.name.startswith("node")]

    def diagnostics(self) -> str:
        return "\n".join(n.log_tail() for n in self.nodes)


def on_free_ports(config: Config) -> Config:
    """`config` listening on free ports of 127.0.0.1: p2p, rpc + 1, metrics + 2."""
    base = free_ports(PORTS_PER_NODE)
    return replace(
        config,
        p2p=replace(config.p2p, listen=Address("127.0.0.1", base)),
        rpc=replace(config.rpc, listen=Address("127.0.0.1", base + 1)),
        metrics=replace(config.metrics, listen=Address("127.0.0.1", base + 2)),
    )


def create_testnet(
    root: Path,
    *,
    validators: int,
    accounts: int = 4,
    app: str = "ledger",
    consensus: ConsensusConfig = FAST_CONSENSUS,
    hosts: Sequence[str] = (),
    crypto: str = DEFAULT_SUITE.name,
    chain_id: str | None = None,
) -> Testnet:
    """`archipelago testnet` into root on free ports (of `hosts`, when given), then each
    config's [consensus] set.

    `crypto` is the chain's suite; tests take it from the `crypto` fixture
    (tests/integration/conftest.py) to run under each suite.
    """
    result = run_cli(
        "testnet",
        "--validators",
        str(validators),
        "--output",
        root,
        "--base-port",
        str(free_ports(PORTS_PER_NODE * validators)),
        "--accounts",
        str(accounts),
        "--app",
        app,
        *(["--hosts", ",".join(hosts)] if hosts else []),
        "--crypto",
        crypto,
        *(["--chain-id", chain_id] if chain_id else []),
    )
    assert result.returncode == 0, result.stderr
    homes = [root / f"node{i}" for i in range(validators)]
    for home in homes:
        config = load_config(home / "config.toml")
        save_config(home / "config.toml", replace(config, consensus=consensus))
    genesis = json.loads((homes[0] / "genesis.json").read_text())
    keys = [load_key(root / "accounts" / f"account{k}.json") for k in range(accounts)]
    return Testnet(root, [NodeProcess(h) for h in homes], genesis["chain_id"], keys)


def add_full_node(net: Testnet, *, name: str) -> NodeProcess:
    """A non-validator on free ports: `archipelago init`, the testnet's genesis, its
    validators as peers.

    Not a member of the network yet: see `admit_member`.
    """
    home = net.root / name
    genesis = (net.nodes[0].home / "genesis.json").read_text()
    crypto = json.loads(genesis).get("crypto", DEFAULT_SUITE.name)
    result = run_cli(
        "init", "--home", home, "--chain-id", net.chain_id, "--moniker", name, "--crypto", crypto
    )
    assert result.returncode == 0, result.stderr
    (home / "genesis.json").write_text(genesis)
    peers = []
    for v in net.validators:
        shown = run_cli("keys", "show", "--home", v.home, "--json")
        assert shown.returncode == 0, shown.stderr
        listen = load_config(v.config_path).p2p.listen
        peers.append(Peer(json.loads(shown.stdout)["node_id"], listen))
    config = on_free_ports(load_config(home / "config.toml"))
    consensus = load_config(net.nodes[0].config_path).consensus
    config = replace(
        config, p2p=replace(config.p2p, persistent_peers=tuple(peers)), consensus=consensus
    )
    save_config(home / "config.toml", config)
    node = NodeProcess(home)
    net.nodes.append(node)
    return node


def admit_member(net: Testnet, node: NodeProcess, *, remove: bool = False) -> None:
    """`archipelago tx member` by the testnet's admin (node0's validator key), committed.

    A testnet is permissioned: a node made after it (`add_full_node`) is refused
    by the others until the admin adds its node id.
    """
    admin = net.validators[0]
    args: list[str | Path] = ["tx", "member", node.node_id, "--key"]
    args += [admin.home / "validator_key.json", "--node", admin.rpc]
    result = run_cli(*args, *(["--remove"] if remove else []))
    assert result.returncode == 0, result.stdout + result.stderr


@asynccontextmanager
async def running(net: Testnet) -> AsyncIterator[Testnet]:
    """Start every node of `net`; SIGKILL whatever still runs on the way out.

    On failure the tail of each node's log is printed (pytest shows it with
    the failure), so a broken run says what the nodes were doing.
    """
    try:
        for n in net.nodes:
            await n.start()
        yield net
    except BaseException:
        print(net.diagnostics())
        raise
    finally:
        for n in net.nodes:
            await n.kill()


class Api:
    """JSON over HTTP to the nodes (one pooled httpx client)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def get(self, node: NodeProcess, path: str) -> Any:
        r = await self.client.get(node.rpc + path)
        assert r.status_code == 200, f"GET {path} on {node.name}: {r.status_code} {r.text}"
        return r.json()

    async def try_get(self, node: NodeProcess, path: str) -> Any | None:
        """The JSON body, or None while the node is not answering (starting or down)."""
        try:
            r = await self.client.get(node.rpc + path)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 200 else None

    async def status(self, node: NodeProcess) -> dict[str, Any]:
        body: dict[str, Any] = await self.get(node, "/status")
        return body

    async def height(self, node: NodeProcess) -> int:
        status = await self.try_get(node, "/status")
        return -1 if status is None else int(status["latest_height"])

    async def submit(self, node: NodeProcess, raw: bytes, *, wait: str = "check") -> httpx.Response:
        return await self.client.post(
            node.rpc + "/tx", params={"wait": wait}, json={"tx": raw.hex()}
        )

    async def headers(self, node: NodeProcess, top: int) -> list[tuple[str, str]]:
        """(block hash, app hash) of heights 1..top, as `node` serves them."""
        out = []
        for h in range(1, top + 1):
            block = await self.get(node, f"/block/{h}")
            assert block["header"]["height"] == h, node.name
            out.append((block["hash"], block["header"]["app_hash"]))
        return out

    async def signers(self, node: NodeProcess, height: int) -> set[int]:
        """The validator indexes in the commit certificate of `height`, as `node` serves it."""
        body = await self.get(node, f"/commit/{height}")
        return {s["validator_index"] for s in body["commit"]["signatures"]}

    async def validator_index(self, node: NodeProcess, validator: NodeProcess) -> int:
        """`validator`'s index in the validator set of height 1, as `node` serves it."""
        body = await self.get(node, "/validators?height=1")
        addresses = [v["address"] for v in body["validators"]]
        return addresses.index(validator.validator_key.address.hex())

    async def metric(self, node: NodeProcess, name: str) -> float:
        """The sum of the samples named `name` on `node`'s /metrics; fails if there are none."""
        r = await self.client.get(node.metrics)
        assert r.status_code == 200, f"GET /metrics on {node.name}: {r.status_code} {r.text}"
        families = text_string_to_metric_families(r.text)
        values = [s.value for f in families for s in f.samples if s.name == name]
        assert values, f"{node.name} does not export {name}"
        return float(sum(values))

    async def account(self, node: NodeProcess, address: bytes) -> tuple[int, int]:
        body = await self.get(node, f"/account/{address.hex()}")
        return int(body["balance"]), int(body["nonce"])

    async def wait_serving(self, node: NodeProcess, timeout_s: float = START_TIMEOUT_S) -> Any:
        """Wait until the node's API answers /status; that status."""
        return await wait_for(
            lambda: self.try_get(node, "/status"),
            lambda s: s is not None,
            timeout_s,
            f"{node.name} to serve its API",
        )

    async def wait_height(
        self, nodes: Sequence[NodeProcess], height: int, timeout_s: float
    ) -> dict[str, int]:
        """Wait until every node in `nodes` has committed `height`; their heights."""

        async def heights() -> dict[str, int]:
            return {n.name: await self.height(n) for n in nodes}

        return await wait_for(
            heights, lambda hs: min(hs.values()) >= height, timeout_s, f"height {height}"
        )


@asynccontextmanager
async def open_api() -> AsyncIterator[Api]:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
        yield Api(client)


async def wait_for(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout_s: float,
    what: str,
) -> T:
    """Poll `probe` until `done(value)`; fail after `timeout_s` naming `what` and the last value."""
    last: T | None = None
    with trio.move_on_after(timeout_s):
        while True:
            assert_live()
            last = await probe()
            if done(last):
                return last
            await trio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last seen: {last!r}")


def assert_live() -> None:
    """Fail if a node the tests started (and did not stop) has exited on its own."""
    for n in list(_LIVE):
        if n.process is not None and n.process.poll() is not None:
            _LIVE.discard(n)
            raise AssertionError(
                f"{n.name} exited unexpectedly with code {n.process.returncode}\n{n.log_tail()}"
            )
