"""Prometheus metrics of one node, served on `[metrics] listen`.

Each node owns a private registry (tests run several nodes in one process).
Instruments the node updates as things happen live here; figures that other
layers already count (the network's statistics record, the signature cache)
are read at scrape time by `_PulledCollector` (`network_samples`,
`sigcache_samples` and the services' own sources), so they are never copied
on the hot path. Names follow Prometheus conventions: `archipelago_` prefix,
base units in the name, `_total` on counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from network import CHANNEL_NAMES, NetworkStatistics

_NS = "archipelago"
# Block intervals from fast local nets (tens of ms) to stalled chains (minutes).
_INTERVAL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120)
_VALIDATION_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_FSYNC_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1)
# Event-loop lag: a free loop sits in the first bucket; 0.01 is issue 11's
# bound per attacker frame; the top buckets catch freezes of seconds.
_LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True, slots=True)
class PulledSample:
    """One figure read at scrape time: kind is 'counter' or 'gauge'."""

    name: str
    help: str
    kind: str
    labels: tuple[tuple[str, str], ...]
    value: float


class _PulledCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[PulledSample]]] = []

    def collect(self) -> Iterable[prom.Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for source in self.sources:
            for s in source():
                fam = families.get(s.name)
                if fam is None:
                    label_names = [k for k, _ in s.labels]
                    if s.kind == "counter":
                        fam = CounterMetricFamily(s.name, s.help, labels=label_names)
                    else:
                        fam = GaugeMetricFamily(s.name, s.help, labels=label_names)
                    families[s.name] = fam
                fam.add_metric([v for _, v in s.labels], s.value)
        yield from families.values()


@dataclass
class Metrics:
    registry: prom.CollectorRegistry = field(default_factory=prom.CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        prom.ProcessCollector(registry=r)
        prom.PlatformCollector(registry=r)
        self.pulled = _PulledCollector()
        r.register(self.pulled)
        g, c, h = prom.Gauge, prom.Counter, prom.Histogram

        # Consensus
        self.height = g(
            f"{_NS}_consensus_height", "Height of the latest committed block.", registry=r
        )
        self.round = g(
            f"{_NS}_consensus_round", "Round the node is in at the current height.", registry=r
        )
        self.round_changes = c(
            f"{_NS}_consensus_round_changes_total",
            "Rounds started beyond round 0 (each is a failed round).",
            registry=r,
        )
        self.block_interval = h(
            f"{_NS}_consensus_block_interval_seconds",
            "Time between the header times of consecutive blocks.",
            buckets=_INTERVAL_BUCKETS_S,
            registry=r,
        )
        self.latest_block_time = g(
            f"{_NS}_consensus_latest_block_timestamp_seconds",
            "Header time of the latest committed block (Unix seconds).",
            registry=r,
        )
        self.validators = g(
            f"{_NS}_consensus_validators", "Validators in the current set.", registry=r
        )
        self.validators_power = g(
            f"{_NS}_consensus_validators_power",
            "Total voting power of the current set.",
            registry=r,
        )
        self.validator_power = g(
            f"{_NS}_consensus_validator_power",
            "Voting power of each validator (label: address hex).",
            ["validator"],
            registry=r,
        )
        self.missing_validators = g(
            f"{_NS}_consensus_missing_validators",
            "Validators without a signature in the last commit.",
            registry=r,
        )
        self.missing_validators_power = g(
            f"{_NS}_consensus_missing_validators_power",
            "Voting power missing from the last commit.",
            registry=r,
        )
        self.evidence = c(
            f"{_NS}_consensus_byzantine_evidence_total",
            "Equivocation evidence seen (detected or committed).",
            registry=r,
        )
        self.committed_txs = c(
            f"{_NS}_consensus_committed_txs_total", "Transactions committed in blocks.", registry=r
        )
        self.failed_txs = c(
            f"{_NS}_consensus_failed_txs_total",
            "Committed transactions whose execution failed.",
            registry=r,
        )
        self.block_size_bytes = g(
            f"{_NS}_consensus_block_size_bytes", "Encoded size of the latest block.", registry=r
        )
        self.block_txs = g(
            f"{_NS}_consensus_block_txs", "Transactions in the latest block.", registry=r
        )
        self.is_validator = g(
            f"{_NS}_consensus_is_validator",
            "1 if this node's key is in the current validator set.",
            registry=r,
        )

        # Validation core
        self.validation_time = h(
            f"{_NS}_validation_duration_seconds",
            "Block validation core time per block.",
            buckets=_VALIDATION_BUCKETS_S,
            registry=r,
        )

        # Mempool
        self.mempool_txs = g(f"{_NS}_mempool_txs", "Transactions in the mempool.", registry=r)
        self.mempool_bytes = g(
            f"{_NS}_mempool_bytes", "Bytes of transactions in the mempool.", registry=r
        )
        self.mempool_txs_max = g(
            f"{_NS}_mempool_txs_max", "Mempool capacity in transactions.", registry=r
        )
        self.mempool_rejected = c(
            f"{_NS}_mempool_rejected_txs_total",
            "Transactions refused at admission, by reason.",
            ["reason"],
            registry=r,
        )

        # Block sync
        self.waiting_for_txs = g(
            f"{_NS}_consensus_waiting_for_txs",
            "1 while the next height waits for transactions (create_empty_blocks = false).",
            registry=r,
        )
        self.blocksync_syncing = g(
            f"{_NS}_blocksync_syncing", "1 while the node catches up by block sync.", registry=r
        )
        self.blocksync_lag = g(
            f"{_NS}_blocksync_lag_blocks",
            "Best height reported by peers minus our height.",
            registry=r,
        )
        self.peer_max_height = g(
            f"{_NS}_blocksync_peer_max_height", "Highest height reported by any peer.", registry=r
        )
        self.blocksync_blocks = c(
            f"{_NS}_blocksync_blocks_total", "Blocks applied through block sync.", registry=r
        )

        # Storage
        self.wal_fsync_time = h(
            f"{_NS}_wal_fsync_duration_seconds",
            "Time spent in fsync of the consensus WAL.",
            buckets=_FSYNC_BUCKETS_S,
            registry=r,
        )
        self.store_commit_time = h(
            f"{_NS}_store_commit_duration_seconds",
            "Time to durably save a committed block.",
            buckets=_FSYNC_BUCKETS_S,
            registry=r,
        )

        # API edge (node/http_edge.py, node/rpc.py)
        self.rpc_errors = c(
            f"{_NS}_rpc_errors_total",
            "API failures contained to one request or connection, by kind (handler, connection).",
            ["kind"],
            registry=r,
        )
        self.rpc_refused = c(
            f"{_NS}_rpc_refused_total",
            "API connections and requests refused or cut at a limit, by reason.",
            ["reason"],
            registry=r,
        )
        self.rpc_connections = g(
            f"{_NS}_rpc_connections", "Open API connections (HTTP and websocket).", registry=r
        )

        # Event loop (node/loopwatch.py sets the gauge's function)
        self.event_loop_lag = h(
            f"{_NS}_event_loop_lag_seconds",
            "How late the event loop ran a task due now (probe ticking every 10 ms).",
            buckets=_LOOP_LAG_BUCKETS_S,
            registry=r,
        )
        self.event_loop_lag_max = g(
            f"{_NS}_event_loop_lag_max_seconds",
            "Largest event-loop lag in the last 15 s (one scrape interval).",
            registry=r,
        )
        self.trio_tasks = g(
            f"{_NS}_trio_tasks",
            "Trio tasks alive in the node's process, counted at scrape time (a leak grows it).",
            registry=r,
        )

    def add_source(self, source: Callable[[], Iterable[PulledSample]]) -> None:
        """Register figures read at scrape time (network statistics, caches)."""
        self.pulled.sources.append(source)

    def exposition(self) -> bytes:
        data: bytes = prom.generate_latest(self.registry)
        return data


def network_samples(stats: NetworkStatistics) -> list[PulledSample]:
    """The network's own counts (node/resources.py registers them), read at scrape time."""
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
    out += _edge_samples(stats)
    return out


def _edge_samples(stats: NetworkStatistics) -> list[PulledSample]:
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
    out.append(
        PulledSample(
            "archipelago_p2p_seen_cache_entries",
            "Gossip digests remembered (bounded in count and in age).",
            "gauge",
            (),
            stats.seen_cache_entries,
        )
    )
    return out


def sigcache_samples(cache: Sized) -> list[PulledSample]:
    """How well the verified-signature cache works, read at scrape time."""
    hits, misses = getattr(cache, "hits", 0), getattr(cache, "misses", 0)
    return [
        PulledSample(
            "archipelago_sigcache_hit_ratio",
            "Share of transaction signatures found already verified.",
            "gauge",
            (),
            hits / (hits + misses) if hits + misses else 0.0,
        ),
        PulledSample(
            "archipelago_sigcache_entries",
            "Verified transaction signatures remembered.",
            "gauge",
            (),
            len(cache),
        ),
    ]
