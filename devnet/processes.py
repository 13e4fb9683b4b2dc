"""The node processes of a local network: their homes, starting, readiness and stopping.

`archipelago localnet` and the cluster and block-sync benchmarks start nodes
the same way, with this module: a testnet (node/home.py `create_testnet`) in
a folder, with the few config changes a local run wants; one `archipelago
start` process per node, in its own session (so Ctrl-C in the terminal
reaches only the tool, which then stops the nodes in order) with its log in
a file; a wait until every node answers and has committed a block; SIGTERM
to every node, and SIGKILL to any still running after `NODE_STOP_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import httpx
import trio

from consensus.crypto import DEFAULT_SUITE, SUITES, PrivateKey, activate
from node.config import load_config, save_config
from node.home import PORT_STRIDE, NodeHome, create_testnet
from node.keys import load_key

# Funded accounts in a localnet: load is spread over them, and each has at
# most one request in flight, so this bounds the useful submit concurrency.
DEFAULT_LOCALNET_ACCOUNTS = 256
NODE_START_TIMEOUT_S = 60.0  # generous: four nodes starting on a loaded 2-core machine
NODE_STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL after this long
READY_POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 20


class LocalnetError(Exception):
    """An operating problem running the local network (ports in use, a node that will not start)."""


def archipelago_command() -> list[str]:
    """How to run the `archipelago` CLI from this interpreter: the console script next to it."""
    script = Path(sys.executable).parent / "archipelago"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]


def _node_env() -> dict[str, str]:
    # The nodes must not notify a service manager this tool may itself run under.
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    return {k: v for k, v in os.environ.items() if k not in drop}


def check_ports_free(base_port: int, validators: int) -> None:
    """Refuse early, with the port's name, instead of letting a node fail to bind."""
    for i in range(validators):
        for offset, what in ((0, "p2p"), (1, "rpc"), (2, "metrics")):
            port = base_port + PORT_STRIDE * i + offset
            with socket.socket() as s:
                # As the node's listeners do: a port held only by connections in
                # TIME_WAIT (a previous run's) is free to listen on.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    raise LocalnetError(
                        f"port {port} (node{i} {what}) is in use; pass another --base-port"
                    ) from None


def make_testnet(
    folder: Path,
    *,
    validators: int,
    base_port: int,
    accounts: int = DEFAULT_LOCALNET_ACCOUNTS,
    log_format: str = "json",
    timeout_commit_ms: int | None = None,
    mempool_txs_max: int | None = None,
    hosts: Sequence[str] | None = None,
    crypto: str = DEFAULT_SUITE.name,
) -> list[NodeHome]:
    """`archipelago testnet` into `folder`, then the few config changes a local run wants.

    The chain's suite also becomes this process's (the load generator hashes
    the transactions it sends to match them with the committed ones).
    """
    homes = create_testnet(
        folder,
        validators=validators,
        base_port=base_port,
        accounts=accounts,
        hosts=hosts,
        crypto=crypto,
    )
    activate(SUITES[crypto])
    for home in homes:
        config = load_config(home.paths.config)
        config = replace(config, log=replace(config.log, format=log_format))
        if timeout_commit_ms is not None:
            config = replace(
                config, consensus=replace(config.consensus, timeout_commit_ms=timeout_commit_ms)
            )
        if mempool_txs_max is not None:
            config = replace(config, mempool=replace(config.mempool, txs_max=mempool_txs_max))
        save_config(home.paths.config, config)
    return homes


def load_accounts(folder: Path) -> list[PrivateKey]:
    """The funded account keys `create_testnet` wrote, in account-number order."""
    paths = sorted(
        (folder / "accounts").glob("account*.json"),
        key=lambda p: int(p.stem.removeprefix("account")),
    )
    return [load_key(p) for p in paths]


@dataclass(slots=True)
class NodeProcess:
    """One running `archipelago start` and where to reach it."""

    index: int
    home: Path
    rpc_host: str
    rpc_port: int
    log_path: Path
    process: trio.Process
    log_file: IO[bytes]
    exit_code: int | None = None
    stopping: bool = False

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def url(self) -> str:
        return f"http://{self.rpc_host}:{self.rpc_port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_bytes(self) -> int | None:
        """VmHWM from /proc: the most resident memory this node has used; None once it exited."""
        return _proc_status_bytes(self.pid, "VmHWM")

    def rss_bytes(self) -> int | None:
        return _proc_status_bytes(self.pid, "VmRSS")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _proc_status_bytes(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    return None


async def start_node(
    index: int,
    home: NodeHome,
    log_path: Path,
    wrapper: Sequence[str] = (),
    env_extra: Mapping[str, str] | None = None,
) -> NodeProcess:
    """Start `archipelago start --home HOME` with its stderr (the log) going to `log_path`.

    `wrapper` is a command prefix to run it under (e.g. `ip netns exec NS`: it must
    exec the node, so that the process started is the node). `env_extra` adds to the
    node's environment (the perturbation runner's clock skew).
    """
    log_file = open(log_path, "ab")  # closed in stop_nodes, once the process is gone
    process = await trio.lowlevel.open_process(
        [*wrapper, *archipelago_command(), "start", "--home", str(home.paths.root)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        env={**_node_env(), **(env_extra or {})},
        # Its own session: a Ctrl-C in the terminal reaches this tool only, which stops
        # the nodes itself, in order, and can then report on them.
        start_new_session=True,
    )
    listen = home.config.rpc.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    return NodeProcess(index, home.paths.root, host, listen.port, log_path, process, log_file)


async def start_nodes(homes: Sequence[NodeHome], log_dir: Path) -> list[NodeProcess]:
    nodes = []
    for i, home in enumerate(homes):
        nodes.append(await start_node(i, home, log_dir / f"node{i}.log"))
    return nodes


async def wait_ready(nodes: Sequence[NodeProcess], timeout_s: float = NODE_START_TIMEOUT_S) -> None:
    """Until every node answers /status and has committed a block; LocalnetError otherwise."""
    pending = {n.index for n in nodes}
    with trio.move_on_after(timeout_s):
        async with httpx.AsyncClient(timeout=2.0) as http:
            while pending:
                for node in nodes:
                    if node.process.poll() is not None:
                        raise LocalnetError(death_report(node))
                    if node.index not in pending:
                        continue
                    try:
                        r = await http.get(node.url + "/status")
                        if r.status_code == 200 and r.json()["latest_height"] >= 1:
                            pending.discard(node.index)
                    except httpx.HTTPError:
                        pass  # not listening yet
                if pending:
                    await trio.sleep(READY_POLL_INTERVAL_S)
            return
    names = ", ".join(f"node{i}" for i in sorted(pending))
    raise LocalnetError(f"{names} did not commit a first block within {timeout_s:.0f} s")


def death_report(node: NodeProcess) -> str:
    code = node.process.returncode
    tail = "\n".join("    " + line for line in node.log_tail())
    return (
        f"{node.name} (pid {node.pid}) exited with code {code}; "
        f"last lines of {node.log_path}:\n{tail}"
    )


async def stop_nodes(nodes: Sequence[NodeProcess], timeout_s: float = NODE_STOP_TIMEOUT_S) -> None:
    """SIGTERM every node, wait for all of them, SIGKILL any still running after `timeout_s`."""
    for node in nodes:
        node.stopping = True
        if node.process.returncode is None:
            node.process.send_signal(signal.SIGTERM)
    with trio.CancelScope(shield=True):
        with trio.move_on_after(timeout_s):
            for node in nodes:
                await node.process.wait()
        for node in nodes:
            if node.process.returncode is None:
                node.process.kill()
                await node.process.wait()
            node.exit_code = node.process.returncode
            node.log_file.close()
