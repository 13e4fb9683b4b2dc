"""The daemon: one `Node` built from a home folder, running its services under trio.

This is where the node's lifetime is decided, so it is kept small and strict:

- Before anything runs, everything an operator can get wrong is checked and
  reported as one line: the config, the genesis, the key files (refused when
  group or others can read them) and the home's lock (`data/LOCK`, held with
  flock, so two daemons can never share one home and its stores).
- Services (network, consensus, storage, mempool, RPC, metrics) live in one
  nursery and are started in order with `nursery.start`, so each is serving
  before the next starts and READY=1 goes to systemd only when all are.
- SIGTERM or SIGINT cancels the nursery; shutdown is cancellation (only fsync
  and flush are shielded, inside the services). If shutdown still takes
  longer than `shutdown_grace_ms`, a last-resort timer ends the process with
  EXIT_SHUTDOWN_TIMEOUT so a supervisor never waits on a wedged node.

Adding a service: write a class with `name` and
`async def run(self, *, task_status=trio.TASK_STATUS_IGNORED)` that calls
`task_status.started()` once it serves, and add its constructor to
`build_services` below.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from consensus.crypto import PrivateKey, activate
from consensus.genesis import Genesis
from network import Network
from node.config import Config, load_config
from node.consensus_service import ConsensusService
from node.effects import DriverConfig
from node.gossip import MempoolGossip
from node.home import HomeLock, HomePaths, load_genesis_file
from node.keys import check_key_suite, load_key, node_id
from node.logging import get_logger
from node.loopwatch import LoopWatch
from node.metrics_server import METRICS_LIMITS, MetricsServer
from node.reactor import Reactor
from node.resources import Resources
from node.rpc import API_LIMITS, RpcServer
from node.sdnotify import Notifier
from node.status import StatusView

log = get_logger(__name__)

# Beyond this, a stop that has not finished is forced (os._exit); systemd's
# default TimeoutStopSec is 90 s, the operations issue asks for 5 s.
SHUTDOWN_GRACE_MS = 5000
EXIT_SHUTDOWN_TIMEOUT = 70
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """A long-running part of the node; cancellation stops it."""

    @property
    def name(self) -> str: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; call task_status.started() once serving."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    validator_address: str
    validator_public_key: str
    is_validator: bool


class Node:
    """A node built from its home folder. `run()` serves until SIGTERM/SIGINT or `request_stop`."""

    def __init__(
        self,
        paths: HomePaths,
        config: Config,
        genesis: Genesis,
        node_key: PrivateKey,
        validator_key: PrivateKey,
        *,
        notifier: Notifier | None = None,
        shutdown_grace_ms: int | None = SHUTDOWN_GRACE_MS,
    ) -> None:
        self.paths = paths
        self.config = config
        self.genesis = genesis
        self.node_key = node_key
        self.validator_key = validator_key
        self.notifier = notifier if notifier is not None else Notifier.from_environ()
        self.shutdown_grace_ms = shutdown_grace_ms
        # The chain's suite hashes and verifies everything this process does from here.
        activate(genesis.suite)
        for path, key in ((paths.node_key, node_key), (paths.validator_key, validator_key)):
            check_key_suite(path, key, genesis.suite)
        validators = genesis.validator_set
        self.identity = NodeIdentity(
            node_id=node_id(node_key),
            validator_address=validator_key.address.hex(),
            validator_public_key=validator_key.public_key.hex(),
            is_validator=validators.index_of(validator_key.address) is not None,
        )
        self._lock = HomeLock(paths)
        self._stop = trio.Event()
        self._stop_reason = ""
        self._fd_limit = 0  # the open-file limit, once `run` has raised it
        self.failure = ""  # why the node stopped itself, if it did (`fail`)
        # Extra services (tests, embedders) run after the node's own, which
        # build_services creates in run(), once the home's lock is held.
        self.services: list[Service] = []
        self.resources: Resources | None = None

    @classmethod
    def from_home(
        cls,
        home: Path,
        *,
        config: Config | None = None,
        notifier: Notifier | None = None,
        shutdown_grace_ms: int | None = SHUTDOWN_GRACE_MS,
    ) -> Node:
        """Load config, genesis and keys from `home`.

        Raises ConfigError, GenesisError, KeyFileError or HomeError, each with
        a one-line message naming the file; nothing is started yet.
        """
        paths = HomePaths(home)
        if config is None:
            config = load_config(paths.config)
        genesis = load_genesis_file(paths.genesis)
        node_key = load_key(paths.node_key)
        validator_key = load_key(paths.validator_key)
        return cls(
            paths,
            config,
            genesis,
            node_key,
            validator_key,
            notifier=notifier,
            shutdown_grace_ms=shutdown_grace_ms,
        )

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def fail(self, reason: str) -> None:
        """Stop because this node cannot go on (a full disk, a diverged state): `start`
        then exits 1, so a supervisor sees the failure."""
        self.failure = self.failure or reason
        self.request_stop(reason)

    def request_stop(self, reason: str) -> None:
        """Begin a clean shutdown (what SIGTERM does), from inside the event loop."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take the home's lock, start every service, serve until asked to stop.

        Raises HomeError (before starting anything) if another process holds
        the lock. Returns once every service has been cancelled and the lock
        released.
        """
        self._lock.acquire()
        self._fd_limit = raise_fd_limit()
        deadline: threading.Timer | None = None
        started = False
        try:
            self.services = [*build_services(self), *self.services]
            with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_signals, signals)
                    self.notifier.status("starting services")
                    for service in self.services:
                        await nursery.start(service.run)
                        log.debug("service started", service=service.name)
                    await nursery.start(self.notifier.run_watchdog)
                    self._log_started()
                    started = True
                    self.notifier.ready(status=f"serving chain {self.chain_id}")
                    task_status.started()
                    await self._stop.wait()
                    log.info("node stopping", reason=self._stop_reason)
                    self.notifier.stopping(status=f"stopping: {self._stop_reason}")
                    deadline = self._arm_shutdown_deadline()
                    nursery.cancel_scope.cancel()
        finally:
            if self.resources is not None:
                self.resources.close()
            self._lock.release()
            self.notifier.close()
            if deadline is not None:
                deadline.cancel()
            if started:  # one that never started says why in one line, nothing more
                log.info("node stopped", node_id=self.identity.node_id)

    async def _watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self.request_stop(signal.Signals(signum).name)

    def _log_started(self) -> None:
        log.info(
            "node started",
            node_id=self.identity.node_id,
            chain_id=self.chain_id,
            moniker=self.config.moniker,
            validator=self.identity.is_validator,
            validator_address=self.identity.validator_address,
            genesis_hash=self.genesis.hash.hex(),
            p2p_listen=str(self.config.p2p.listen),
            rpc_listen=str(self.config.rpc.listen),
            metrics_listen=str(self.config.metrics.listen) if self.config.metrics.enabled else "",
            services=[s.name for s in self.services],
            home=str(self.paths.root),
            pid=os.getpid(),
            fd_limit=self._fd_limit,
        )
        needed = fds_needed(self.config)
        if self._fd_limit < needed:
            log.warning(
                "open file limit below what the configured limits can use",
                fd_limit=self._fd_limit,
                fds_needed=needed,
                hint="raise LimitNOFILE (systemd) or ulimit -n; at the limit, "
                "connections are refused until others close",
            )

    def _arm_shutdown_deadline(self) -> threading.Timer | None:
        if self.shutdown_grace_ms is None:
            return None
        timer = threading.Timer(
            self.shutdown_grace_ms / 1000, _force_exit, (self.shutdown_grace_ms,)
        )
        timer.daemon = True
        timer.start()
        return timer


# Files the node holds besides connections: the store, the WAL, logs, the
# home's lock, the event loop's and worker threads' own descriptors.
FDS_BESIDES_CONNECTIONS = 64


def raise_fd_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; the new soft limit.

    Why: a login shell's soft limit is often 1,024 while the hard one is far
    higher, and the node's own limits (API and metrics connections, peers,
    handshakes) can use more than 1,024 descriptors; a limit the node reaches
    first turns into refused connections and failed file opens. The unit file
    sets LimitNOFILE; this covers a node started by hand. (Go's runtime does
    the same at start.)
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # an unlimited hard limit above the kernel's nr_open
            pass
    return sys.maxsize if soft == resource.RLIM_INFINITY else soft


def fds_needed(config: Config) -> int:
    """Descriptors the node can hold at once with `config`'s connection limits."""
    p2p = config.p2p
    peers = p2p.inbound_peers_max + p2p.outbound_peers_max + len(p2p.persistent_peers)
    connections = API_LIMITS.connections_max + METRICS_LIMITS.connections_max
    return peers + p2p.handshakes_pending_max + connections + FDS_BESIDES_CONNECTIONS


def _force_exit(grace_ms: int) -> None:
    log.error("shutdown took too long; exiting without waiting", grace_ms=grace_ms)
    os._exit(EXIT_SHUTDOWN_TIMEOUT)


def build_services(node: Node) -> list[Service]:
    """The node's services in start order; they stop together by cancellation.

    Opens the node's resources (so it runs only once the home's lock is held)
    and gives each service what it uses; none holds another but through its
    constructor, and a service that must stop the node calls `node.request_stop`.
    """
    res = Resources(node.paths, node.config, node.genesis, node.node_key, node.validator_key)
    node.resources = res
    cfg = node.config
    c = cfg.consensus
    consensus = ConsensusService(
        res,
        DriverConfig(
            consensus=c,
            watch_heights=c.doppelganger_heights,
            watch_halt_s=c.doppelganger_halt_ms / 1000,
            blocksync=cfg.blocksync.enabled,
            fallback_lag_heights=cfg.blocksync.fallback_lag_heights,
            create_empty_blocks=c.create_empty_blocks,
            empty_blocks_interval_s=c.create_empty_blocks_interval_ms / 1000,
        ),
        stop=node.fail,
    )
    services: list[Service] = [
        LoopWatch(res.metrics),
        _NetworkService(res.net),
        Reactor(res, consensus),
        consensus,
        MempoolGossip(res),
        RpcServer(res, StatusView(res, consensus)),
    ]
    if cfg.metrics.enabled:
        services.append(MetricsServer(res))
    return services


class _NetworkService:
    name = "network"

    def __init__(self, net: Network) -> None:
        self.net = net

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.net.run(task_status=task_status)
