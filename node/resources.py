"""What one node owns: its stores, keys, chain, mempool, network and metrics.

`Resources` opens the long-lived resources of a node from its home (the
store, the WAL, the sign state, the signature verifier, the application
through `Chain`, the mempool, the network, the metrics and the event hub)
and closes them. It holds no service: each service (node/daemon.py builds
them) is given the resources it uses. What happens to them on a commit
(`apply_block`) and on a transaction's admission is here, next to what it
changes. Nothing here reads peer input without checking it first: messages
are decoded in the reactor, transactions in the mempool, blocks by the
validation core.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio
from prometheus_client import Counter

from consensus.crypto import PrivateKey
from consensus.genesis import Genesis
from consensus.sigverify import SignatureVerifier
from consensus.state import ChainState
from consensus.types import Block, Commit
from network import Network, NetworkConfig, PeerAddress
from node.chain import Applied, Chain, decode_result, worker_threads
from node.clock import now_ms
from node.config import Config
from node.home import HomePaths
from node.hub import CommittedBlock, EventHub
from node.keys import node_id
from node.logging import get_logger
from node.mempool import Candidate, Mempool, MempoolError, MempoolLimits
from node.metrics import Metrics, network_samples, sigcache_samples
from node.signstate import SignState, SignStateError
from node.storage import BlockStore, open_store
from node.wal import WAL, open_wal

if TYPE_CHECKING:
    from consensus.app import TxResult

log = get_logger(__name__)

TX_WAITERS_MAX = 10_000  # clients waiting for a commit; policy when full: answer 503
_PENDING = MempoolError("pending", "not yet admitted")  # placeholder while signatures verify


class TooManyWaiters(Exception):
    """TX_WAITERS_MAX clients already wait for a commit: answered with 503."""


class Resources:
    """Opened once the home's lock is held; `close` once every service has stopped."""

    def __init__(
        self,
        paths: HomePaths,
        config: Config,
        genesis: Genesis,
        node_key: PrivateKey,
        validator_key: PrivateKey,
    ) -> None:
        self.paths = paths
        self.config = config
        self.genesis = genesis
        self.genesis_hash = genesis.hash  # JSON of the whole genesis: made once
        self.node_key = node_key
        self.node_id = node_id(node_key)
        self.validator_key = validator_key
        self.validator_address = validator_key.address
        self.metrics = Metrics()
        data = paths.data
        data.mkdir(parents=True, exist_ok=True)
        self.verifier = SignatureVerifier(threads=worker_threads())
        self.store: BlockStore = open_store(data / "store", map_bytes=self.config.storage.map_bytes)
        self.chain = Chain(self.genesis, self.store, self.verifier)
        self.wal: WAL = open_wal(data / "wal")
        self.sign_state: SignState | None = None
        self.sign_state_error = ""
        # Every node loads it (init writes one for each): a full node may be made a
        # validator while it runs, and then signs at once.
        self._load_sign_state(
            validator=self.chain.state.validators.index_of(self.validator_address) is not None
            or self.genesis.validator_set.index_of(self.validator_address) is not None
        )
        mp = self.config.mempool
        # Refusal reasons are the mempool's few fixed codes: a handful of entries.
        self._rejected_children: dict[str, Counter] = {}
        self.mempool = Mempool(
            chain_id=self.genesis.chain_id,
            app=self.chain.app,
            verifier=self.verifier,
            limits=MempoolLimits(mp.txs_max, mp.bytes_max, mp.tx_bytes_max, mp.recheck),
            on_reject=self._count_rejected,
        )
        self.hub = EventHub()
        self.net = self._make_network()
        self._tx_waiters: dict[bytes, tuple[trio.Event, list[tuple[int, int, int, str]]]] = {}
        # Admitted transactions not yet gossiped, by origin peer (None: a client).
        # Bounded by the mempool itself: each entry is also a mempool entry.
        self._gossip: dict[str | None, list[bytes]] = {}
        self.gossip_ready = trio.Event()
        self.txs_admitted = trio.Event()  # set at each admission; a waiter replaces it
        self.started_at_ms = now_ms()
        self.last_progress_ms = now_ms()
        self.metrics.add_source(lambda: network_samples(self.net.statistics()))
        self.metrics.add_source(lambda: sigcache_samples(self.verifier.cache))
        self._update_chain_metrics(None)

    def _load_sign_state(self, *, validator: bool) -> None:
        """Load the sign state; a validator's failure is logged now, a full node's when it
        is made a validator and cannot sign (ConsensusService)."""
        try:
            self.sign_state = SignState.load(self.paths.sign_state)
        except SignStateError as e:
            self.sign_state_error = str(e)
            if not validator:
                return
            log.error(
                "sign state missing or unreadable: this validator will not sign",
                error=str(e),
                path=str(self.paths.sign_state),
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
            retransmit_timeout_s=float(p2p.retransmit_timeout_s),
            frame_timeout_s=float(p2p.frame_timeout_s),
            send_timeout_s=float(p2p.send_timeout_s),
            rate_bytes_per_s_max=p2p.rate_bytes_per_s_max,
            rate_messages_per_s_max=p2p.rate_messages_per_s_max,
            large_frames_bytes_max=p2p.large_frames_bytes_max,
            inbox_bytes_max=p2p.inbox_bytes_max,
            send_queues_bytes_max=p2p.send_queues_bytes_max,
        )
        return Network(
            identity=self.node_key,
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
    def can_sign(self) -> bool:
        return self.sign_state is not None

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
        return (await self.mempool_add_batches([(origin, raws)]))[0]

    async def mempool_add_batches(
        self, batches: Sequence[tuple[str | None, Sequence[bytes]]]
    ) -> list[list[tuple[bytes, TxResult] | MempoolError]]:
        """`mempool_add_batch` for several (origin, transactions), in one verification pass.

        The same outcomes as admitting the batches one after the other: they
        are screened and admitted in that order (`admit` checks duplicates and
        room again), and a transaction in several batches has its signature
        checked once. One thread hand-off and one parallel pass for all.
        """
        raws = [raw for _, txs in batches for raw in txs]
        out: list[tuple[bytes, TxResult] | MempoolError] = []
        screened: list[tuple[int, Candidate]] = []
        for r in self.mempool.screen_many(raws):
            if isinstance(r, MempoolError):
                out.append(r)
            else:
                screened.append((len(out), r))
                out.append(_PENDING)
        ends = list(itertools.accumulate(len(txs) for _, txs in batches))
        if screened:
            unique: dict[bytes, Candidate] = {}
            for _, c in screened:
                unique.setdefault(c.txid, c)
            items = [(c.txid, c.tx, c.raw) for c in unique.values()]
            oks = await trio.to_thread.run_sync(
                self.verifier.verify_txs, items, self.genesis.chain_id
            )
            ok_by_id = dict(zip(unique, oks, strict=True))
            admitted: list[list[bytes]] = [[] for _ in batches]
            for i, c in screened:
                try:
                    out[i] = (c.txid, self.mempool.admit(c, ok_by_id[c.txid]))
                    admitted[bisect.bisect_right(ends, i)].append(c.raw)
                except MempoolError as e:
                    out[i] = e
            for (origin, _), txs in zip(batches, admitted, strict=True):
                if txs:
                    self.queue_gossip(txs, origin=origin)
        self._mempool_metrics()
        return [out[end - len(txs) : end] for (_, txs), end in zip(batches, ends, strict=True)]

    def _count_rejected(self, reason: str) -> None:
        """One refusal counted; the reason's child is looked up once (`labels` costs ~3 us,
        and two of every three arrivals of a transaction are duplicates from peers)."""
        child = self._rejected_children.get(reason)
        if child is None:
            child = self._rejected_children[reason] = self.metrics.mempool_rejected.labels(reason)
        child.inc()

    def _mempool_metrics(self) -> None:
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.mempool_bytes.set(self.mempool.bytes)

    def queue_gossip(self, txs: list[bytes], *, origin: str | None) -> None:
        self._gossip.setdefault(origin, []).extend(txs)
        self.gossip_ready.set()
        self.txs_admitted.set()

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

    def stalled_ms(self) -> int:
        """How long no block has committed here (since the start, before the first)."""
        return now_ms() - self.last_progress_ms
