"""What one node knows and shares between its services: chain, mempool, network, mode.

`NodeCore` is built from a `Node` (its home, config, genesis and keys) and
owns the long-lived resources: the store, the WAL, the sign state, the
signature verifier, the application (through `Chain`), the mempool, the
network and the metrics. The services in node/services.py are thin tasks
over it. Nothing here reads peer input without checking it first: messages
are decoded in the reactor, transactions in the mempool, blocks by the
validation core.

Whether the node votes or catches up by block sync is the consensus
driver's decision (node/driver.py); the mode and its reason are on /status
and in metrics, so an operator can see why a node is not voting.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from consensus.app import QueryResult
from consensus.codec import DecodeError, decode
from consensus.crypto import PrivateKey
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.types import Block, Commit
from network import Network, NetworkConfig, NetworkStatistics, PeerAddress
from node import __version__
from node.chain import Applied, Chain, decode_result, now_ms, worker_threads
from node.driver import Driver
from node.events import CommittedBlock, EventHub
from node.logging import get_logger
from node.mempool import Candidate, Mempool, MempoolError, MempoolLimits
from node.metrics import Metrics, PulledSample
from node.signstate import SignState, SignStateError
from node.storage import BlockStore, open_store
from node.wal import WAL
from node.wal import open as open_wal

if TYPE_CHECKING:
    from consensus.app import TxResult
    from node.consensus_service import ConsensusService
    from node.daemon import Node

log = get_logger(__name__)

TX_WAITERS_MAX = 10_000  # clients waiting for a commit; policy when full: answer 503
_PENDING = MempoolError("pending", "not yet admitted")  # placeholder while signatures verify


class TooManyWaiters(Exception):
    """TX_WAITERS_MAX clients already wait for a commit: answered with 503."""


class NodeCore:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = node.config
        self.genesis = node.genesis
        self.node_id = node.identity.node_id
        self.validator_key: PrivateKey = node.validator_key
        self.validator_address = node.validator_key.address
        self.metrics = Metrics()
        data = node.paths.data
        data.mkdir(parents=True, exist_ok=True)
        self.verifier = SignatureVerifier(threads=worker_threads())
        self.store: BlockStore = open_store(data / "store", map_bytes=self.config.storage.map_bytes)
        self.chain = Chain(self.genesis, self.store, self.verifier)
        self.wal: WAL = open_wal(data / "wal")
        self.sign_state: SignState | None = None
        self.sign_state_error = ""
        if self.chain.state.validators.index_of(self.validator_address) is not None or (
            self.genesis.validator_set.index_of(self.validator_address) is not None
        ):
            self._load_sign_state()
        mp = self.config.mempool
        self.mempool = Mempool(
            chain_id=self.genesis.chain_id,
            app=self.chain.app,
            verifier=self.verifier,
            limits=MempoolLimits(mp.txs_max, mp.bytes_max, mp.tx_bytes_max, mp.recheck),
            on_reject=lambda reason: self.metrics.mempool_rejected.labels(reason).inc(),
        )
        self.hub = EventHub()
        self.net = self._make_network()
        self.request_stop = node.request_stop
        self.consensus: ConsensusService | None = None
        self._tx_waiters: dict[bytes, tuple[trio.Event, list[tuple[int, int, int, str]]]] = {}
        # Admitted transactions not yet gossiped, by origin peer (None: a client).
        # Bounded by the mempool itself: each entry is also a mempool entry.
        self._gossip: dict[str | None, list[bytes]] = {}
        self.gossip_ready = trio.Event()
        self.started_at_ms = now_ms()
        self.last_progress_ms = now_ms()
        self._last_round = 0
        self.metrics.add_source(self._pulled_samples)
        self._update_chain_metrics(None)

    def _load_sign_state(self) -> None:
        try:
            self.sign_state = SignState.load(self.node.paths.sign_state)
        except SignStateError as e:
            self.sign_state_error = str(e)
            log.error(
                "sign state missing or unreadable: this validator will not sign",
                error=str(e),
                path=str(self.node.paths.sign_state),
            )

    def _make_network(self) -> Network:
        p2p = self.config.p2p
        peers = [
            PeerAddress(p.node_id, p.address.host, p.address.port) for p in p2p.persistent_peers
        ]
        net_config = NetworkConfig(
            frame_bytes_max=p2p.frame_bytes_max,
            inbound_peers_max=p2p.inbound_peers_max,
            outbound_peers_max=p2p.outbound_peers_max,
            ban_duration_s=float(p2p.ban_duration_s),
            pex_interval_s=30.0 if p2p.pex else 10**9,
            handshake_timeout_s=float(p2p.handshake_timeout_s),
            handshakes_pending_max=p2p.handshakes_pending_max,
            handshakes_per_ip_per_s_max=float(p2p.handshakes_per_ip_per_s_max),
            handshake_failures_ip_ban=p2p.handshake_failures_ip_ban,
            idle_timeout_s=float(p2p.idle_timeout_s),
            frame_timeout_s=float(p2p.frame_timeout_s),
            send_timeout_s=float(p2p.send_timeout_s),
            rate_bytes_per_s_max=p2p.rate_bytes_per_s_max,
            rate_messages_per_s_max=p2p.rate_messages_per_s_max,
            large_frames_bytes_max=p2p.large_frames_bytes_max,
            inbox_bytes_max=p2p.inbox_bytes_max,
            send_queues_bytes_max=p2p.send_queues_bytes_max,
        )
        return Network(
            identity=self.node.node_key,
            chain_id=self.genesis.chain_id,
            listen=(p2p.listen.host, p2p.listen.port),
            persistent_peers=peers,
            config=net_config,
            admit=self._admit,
            on_refused=self._on_refused,
        )

    def _admit(self, node_id: str) -> bool:
        """Membership: with a member list (the chain's or [p2p] allowed_peers), only those."""
        members: frozenset[bytes] = self.chain.app.members()
        allowed = self.config.p2p.allowed_peers
        if not members and not allowed:
            return True  # an open network
        return node_id in allowed or bytes.fromhex(node_id) in members

    def _on_refused(self, node_id: str, reason: str) -> None:
        log.warning(
            "peer refused: its node id is not a member of this network "
            "(genesis members, set_member transactions, [p2p] allowed_peers)",
            peer=node_id,
            reason=reason,
        )

    def close(self) -> None:
        """Release files and threads once every service has stopped."""
        self.verifier.close()
        self.wal.close()
        self.store.close()

    # ------------------------------------------------------------ properties

    @property
    def height(self) -> int:
        return self.chain.height

    @property
    def app(self) -> Any:
        return self.chain.app

    @property
    def can_sign(self) -> bool:
        return self.sign_state is not None

    @property
    def driver(self) -> Driver | None:
        return None if self.consensus is None else self.consensus.driver

    # ------------------------------------------------------------ applying blocks

    async def apply_block(self, block: Block, commit: Commit) -> Applied | None:
        """Commit a decided or synced block; everything that follows a commit happens here."""
        chain = self.chain
        started = trio.current_time()
        async with chain.lock:
            if block.height != chain.height + 1:
                return None  # applied meanwhile (consensus and block sync race at a mode change)
            previous = chain.state
            applied = await trio.to_thread.run_sync(chain.persist, block, commit)
            # From here to the mempool update nothing awaits: admissions never
            # see the application between its commit and the recheck.
            members = chain.app.members()
            chain.finish(applied)
            dropped = self.mempool.update(applied.tx_ids)
        self.metrics.store_commit_time.observe(trio.current_time() - started)
        if chain.app.members() != members:
            closed = self.net.enforce_admission()
            log.info("member list changed", members=len(chain.app.members()), closed=closed)
        committed = applied.committed
        self.hub.publish(committed)
        self._resolve_waiters(committed, applied.tx_ids)
        self._update_chain_metrics(applied, previous)
        self.last_progress_ms = now_ms()
        log.info(
            "committed block",
            height=block.height,
            hash=block.hash.hex()[:16],
            txs=len(block.txs),
            round=commit.round,
            app_hash=chain.state.app_hash.hex()[:16],
            rechecked_out=dropped,
        )
        return applied

    def _update_chain_metrics(
        self, applied: Applied | None, previous: ChainState | None = None
    ) -> None:
        m = self.metrics
        state = self.chain.state
        m.height.set(state.last_height)
        m.validators.set(len(state.validators))
        m.validators_power.set(state.validators.total_power)
        m.is_validator.set(
            1 if state.validators.index_of(self.validator_address) is not None else 0
        )
        m.mempool_txs_max.set(self.config.mempool.txs_max)
        if state.last_height > 0:
            m.latest_block_time.set(state.last_block_time_ms / 1000)
        if applied is None:
            return
        block = applied.committed.block
        m.block_txs.set(len(block.txs))
        m.block_size_bytes.set(applied.block_bytes)
        m.committed_txs.inc(len(block.txs))
        m.failed_txs.inc(sum(1 for code, _ in applied.committed.tx_results if code != 0))
        if previous is not None and block.height > 1:
            interval_ms = block.header.time_ms - previous.last_block_time_ms
            m.block_interval.observe(max(0, interval_ms) / 1000)
        # The certificate of the previous block as this block carries it (the one every
        # node stores), against the set that signed that block.
        last_commit = block.last_commit
        signers = None if previous is None else previous.last_validators
        if last_commit is not None and signers is not None:
            signed = {s.validator_index for s in last_commit.signatures}
            missing = [v for i, v in enumerate(signers) if i not in signed]
            m.missing_validators.set(len(missing))
            m.missing_validators_power.set(sum(v.power for v in missing))
        m.validator_power.clear()
        for v in state.validators:
            m.validator_power.labels(v.address.hex()).set(v.power)

    def on_consensus_progress(self, driver: Driver) -> None:
        m = self.metrics
        m.blocksync_syncing.set(1 if driver.mode == "blocksync" else 0)
        peer_max = driver.sync.peer_max(trio.current_time())
        m.peer_max_height.set(peer_max)
        m.blocksync_lag.set(max(0, peer_max - self.chain.state.last_height))
        machine = driver.machine
        if machine is None:
            return
        if machine.round != self._last_round:
            if machine.round > self._last_round:
                self.metrics.round_changes.inc(machine.round - self._last_round)
            self._last_round = machine.round
        self.metrics.round.set(machine.round)

    # ------------------------------------------------------------ transactions

    def mempool_add(self, raw: bytes) -> tuple[bytes, TxResult]:
        """Admit one client transaction (verified on this thread); gossiped in the next batch."""
        txid, result = self.mempool.add(raw)
        self.queue_gossip([raw], origin=None)
        self._mempool_metrics()
        return txid, result

    async def mempool_add_batch(
        self, raws: Sequence[bytes], *, origin: str | None
    ) -> list[tuple[bytes, TxResult] | MempoolError]:
        """Admit many transactions: cheap checks here, signatures on the verifier's threads.

        Returns, in order, each one's (id, result) or the refusal. Admitted
        ones are queued for gossip to every peer but `origin`.
        """
        out: list[tuple[bytes, TxResult] | MempoolError] = []
        screened: list[tuple[int, Candidate]] = []
        for raw in raws:
            try:
                screened.append((len(out), self.mempool.screen(raw)))
                out.append(_PENDING)
            except MempoolError as e:
                out.append(e)
        if screened:
            items = [(c.txid, c.tx, c.raw) for _, c in screened]
            oks = await trio.to_thread.run_sync(
                self.verifier.verify_txs, items, self.genesis.chain_id
            )
            admitted: list[bytes] = []
            for (i, c), ok in zip(screened, oks, strict=True):
                try:
                    out[i] = (c.txid, self.mempool.admit(c, ok))
                    admitted.append(c.raw)
                except MempoolError as e:
                    out[i] = e
            if admitted:
                self.queue_gossip(admitted, origin=origin)
        self._mempool_metrics()
        return out

    def _mempool_metrics(self) -> None:
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.mempool_bytes.set(self.mempool.bytes)

    def queue_gossip(self, txs: list[bytes], *, origin: str | None) -> None:
        self._gossip.setdefault(origin, []).extend(txs)
        self.gossip_ready.set()

    def take_gossip(self) -> list[tuple[str | None, list[bytes]]]:
        items = list(self._gossip.items())
        self._gossip.clear()
        self.gossip_ready = trio.Event()
        return items

    async def wait_for_tx(self, txid: bytes, timeout_s: float) -> tuple[int, int, int, str] | None:
        """(height, index, code, log) once committed, or None after `timeout_s`."""
        record = self.store.load_tx(txid)
        if record is not None:
            code, text = decode_result(record.result)
            return record.height, record.index, code, text
        entry = self._tx_waiters.get(txid)
        if entry is None:
            if len(self._tx_waiters) >= TX_WAITERS_MAX:
                raise TooManyWaiters(f"{TX_WAITERS_MAX} clients are waiting for commits already")
            entry = (trio.Event(), [])
            self._tx_waiters[txid] = entry
        event, result = entry
        with trio.move_on_after(timeout_s):
            await event.wait()
        if not event.is_set() and self._tx_waiters.get(txid) is entry:
            del self._tx_waiters[txid]
        return result[0] if result else None

    def _resolve_waiters(self, committed: CommittedBlock, tx_ids: tuple[bytes, ...]) -> None:
        if not self._tx_waiters:
            return
        for index, txid in enumerate(tx_ids):
            entry = self._tx_waiters.pop(txid, None)
            if entry is not None:
                code, text = committed.tx_results[index]
                entry[1].append((committed.height, index, code, text))
                entry[0].set()

    def committed_block(self, height: int) -> CommittedBlock | None:
        return self.chain.committed_block(height)

    def render_query(self, path: str, result: QueryResult) -> dict[str, Any]:
        out: dict[str, Any] = {"path": path, "height": result.height, "value": result.value.hex()}
        if path != "account":
            return out  # other values are the application's (or a client's) bytes: shown as hex
        try:
            value = decode(result.value)
        except DecodeError:
            return out
        if isinstance(value, tuple) and len(value) == 2:
            out.update(balance=value[0], nonce=value[1])
        return out

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        from node.doctor import diagnose

        state = self.chain.state
        driver = self.driver
        machine = None if driver is None else driver.machine
        ds = None if driver is None else driver.status()
        peer_max = 0 if ds is None else ds.peer_max_height
        watch = None
        if ds is not None and ds.watch_until_height:
            halt_in_s = max(0.0, ds.watch_halt_at - trio.current_time())
            watch = {
                "until_height": ds.watch_until_height,
                "ends_by_time_ms": now_ms() + int(halt_in_s * 1000),
            }
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "chain_id": state.chain_id,
            "genesis_hash": self.genesis.hash.hex(),
            "moniker": self.config.moniker,
            "version": __version__,
            "latest_height": state.last_height,
            "latest_block_hash": state.last_block_hash.hex(),
            "latest_app_hash": state.app_hash.hex(),
            "latest_block_time_ms": state.last_block_time_ms,
            "catching_up": ds is not None and ds.mode == "blocksync",
            "sync": {
                "mode": "consensus" if ds is None else ds.mode,
                "reason": "starting" if ds is None else ds.mode_reason,
                "peer_max_height": peer_max,
                "lag_blocks": max(0, peer_max - state.last_height),
            },
            "validator": {
                "address": self.validator_address.hex(),
                "public_key": self.validator_key.public_key.hex(),
                "in_set": state.validators.index_of(self.validator_address) is not None,
                "signing": ds is not None and ds.signing and self.can_sign,
                "doppelganger_watch": watch,
                "sign_state_error": self.sign_state_error,
            },
            "consensus": None,
            "mempool": {
                "txs": len(self.mempool),
                "bytes": self.mempool.bytes,
                "txs_max": self.config.mempool.txs_max,
                "bytes_max": self.config.mempool.bytes_max,
            },
            "peers": len(self.net.peers()),
            "time_ms": now_ms(),
        }
        if machine is not None:
            ms = machine.state()
            out["consensus"] = {
                "height": ms.height,
                "round": ms.round,
                "step": ms.step.name.lower(),
                "locked_round": ms.locked_round,
                "valid_round": ms.valid_round,
                "proposer": machine.proposer(ms.round).address.hex(),
            }
        out["diagnosis"] = diagnose(self, out)
        return out

    def stalled_ms(self) -> int:
        """How long no block has committed here (since the start, before the first)."""
        return now_ms() - self.last_progress_ms

    def health(self) -> tuple[bool, list[str]]:
        problems: list[str] = []
        if self.config.p2p.persistent_peers and not self.net.peers():
            problems.append("no peers connected")
        free = shutil.disk_usage(self.node.paths.data).free
        if free < 256 * 1024 * 1024:
            problems.append(f"only {free // (1024 * 1024)} MiB of disk left")
        cfg = self.config.consensus
        if cfg.health_stall_intervals:
            limit_ms = cfg.health_stall_intervals * cfg.block_interval_ms()
            stalled_ms = self.stalled_ms()
            if stalled_ms > limit_ms:
                problems.append(
                    f"no block committed for {stalled_ms // 1000} s "
                    f"(limit {cfg.health_stall_intervals} block intervals, {limit_ms // 1000} s)"
                )
        return not problems, problems

    def net_info(self) -> dict[str, Any]:
        from network import CHANNEL_NAMES

        stats = self.net.statistics()
        peers = []
        driver = self.driver
        claims = {} if driver is None else driver.sync.claims
        for p in self.net.peers():
            claim = claims.get(p.node_id)
            peers.append(
                {
                    "node_id": p.node_id,
                    "host": p.host,
                    "port": p.port,
                    "direction": p.direction,
                    "connected_since": p.connected_since,
                    "bytes_sent": p.bytes_sent,
                    "bytes_received": p.bytes_received,
                    "height": None if claim is None else claim.height,
                }
            )
        return {
            "listening": True,
            "listen": str(self.config.p2p.listen),
            "peers": peers,
            "peer_count": len(peers),
            "bytes_sent_by_channel": {
                CHANNEL_NAMES[c]: v for c, v in stats.bytes_sent_by_channel.items()
            },
            "bytes_received_by_channel": {
                CHANNEL_NAMES[c]: v for c, v in stats.bytes_received_by_channel.items()
            },
        }

    @staticmethod
    def _p2p_edge_samples(stats: NetworkStatistics) -> list[PulledSample]:
        """What the network refused, closed and holds: the edge an operator watches."""
        out = [
            PulledSample(
                "archipelago_p2p_rejected_connections",
                "Connections refused, by reason (before or after the handshake).",
                "counter",
                (("reason", reason),),
                v,
            )
            for reason, v in stats.connections_rejected.items()
        ]
        out += [
            PulledSample(
                "archipelago_p2p_disconnects",
                "Connections closed, by reason.",
                "counter",
                (("reason", reason),),
                v,
            )
            for reason, v in stats.disconnects.items()
        ]
        for outcome, v in (
            ("failed", stats.handshake_failures),
            ("abandoned", stats.handshakes_abandoned),
        ):
            out.append(
                PulledSample(
                    "archipelago_p2p_handshakes_unfinished",
                    "Handshakes that did not finish: failed (a check refused the peer's bytes) "
                    "or abandoned (closed or timed out first).",
                    "counter",
                    (("outcome", outcome),),
                    v,
                )
            )
        for reason, v in (
            ("rate", stats.reads_throttled),
            ("memory", stats.reads_paused_for_memory),
        ):
            out.append(
                PulledSample(
                    "archipelago_p2p_read_pauses",
                    "Times a peer's reader paused: over its rate, or waiting for memory.",
                    "counter",
                    (("reason", reason),),
                    v,
                )
            )
        for kind, v in (
            ("send_queues", stats.send_queues_bytes),
            ("large_frames", stats.large_frames_bytes),
            ("inbox", stats.inbox_bytes),
        ):
            out.append(
                PulledSample(
                    "archipelago_p2p_held_bytes",
                    "Bytes the network holds for peers now, by kind (each bounded in [p2p]).",
                    "gauge",
                    (("kind", kind),),
                    v,
                )
            )
        out.append(
            PulledSample(
                "archipelago_p2p_bans_active",
                "Bans in force (node ids and IPs).",
                "gauge",
                (),
                stats.bans_active,
            )
        )
        return out

    def _pulled_samples(self) -> list[PulledSample]:
        from network import CHANNEL_NAMES

        stats = self.net.statistics()
        out: list[PulledSample] = []
        for direction, count in (
            ("inbound", stats.peers_inbound),
            ("outbound", stats.peers_outbound),
        ):
            out.append(
                PulledSample(
                    "archipelago_p2p_peers",
                    "Connected peers by direction.",
                    "gauge",
                    (("direction", direction),),
                    count,
                )
            )
        for c, v in stats.bytes_sent_by_channel.items():
            out.append(
                PulledSample(
                    "archipelago_p2p_sent_bytes",
                    "Bytes sent by channel.",
                    "counter",
                    (("channel", CHANNEL_NAMES[c]),),
                    v,
                )
            )
        for c, v in stats.bytes_received_by_channel.items():
            out.append(
                PulledSample(
                    "archipelago_p2p_received_bytes",
                    "Bytes received by channel.",
                    "counter",
                    (("channel", CHANNEL_NAMES[c]),),
                    v,
                )
            )
        for reason, v in stats.messages_dropped.items():
            out.append(
                PulledSample(
                    "archipelago_p2p_dropped_messages",
                    "Messages dropped by reason.",
                    "counter",
                    (("reason", reason),),
                    v,
                )
            )
        out.append(
            PulledSample(
                "archipelago_p2p_banned_peers", "Peers banned.", "counter", (), stats.peers_banned
            )
        )
        out += self._p2p_edge_samples(stats)
        if self.consensus is not None:
            out.append(
                PulledSample(
                    "archipelago_evidence_pending",
                    "Evidence waiting for a block.",
                    "gauge",
                    (),
                    len(self.consensus.driver.evidence),
                )
            )
            out.append(
                PulledSample(
                    "archipelago_consensus_dropped_events",
                    "Peer consensus messages dropped: inbox full.",
                    "counter",
                    (),
                    self.consensus.dropped_events,
                )
            )
        cache = self.verifier.cache
        hits, misses = getattr(cache, "hits", 0), getattr(cache, "misses", 0)
        ratio = hits / (hits + misses) if hits + misses else 0.0
        out.append(
            PulledSample(
                "archipelago_sigcache_hit_ratio",
                "Share of transaction signatures found already verified.",
                "gauge",
                (),
                ratio,
            )
        )
        out.append(
            PulledSample(
                "archipelago_sigcache_entries",
                "Verified transaction signatures remembered.",
                "gauge",
                (),
                len(cache),
            )
        )
        return out
