"""Transactions that come in bursts and idle gaps: the simulator's `create_empty_blocks = false`.

With `idle` on, every node's driver waits after an empty block until its
mempool holds a transaction, or a peer's valid message of the height arrives
(docs/PROTOCOL.md 9.5). `Mempools` is the model behind it: client
transactions arrive in bursts at seed-chosen times separated by idle gaps of
many block times; a burst enters one honest node's mempool and reaches each
other node's after a per-node gossip delay, or never (a full mempool drops
it; a transaction committed first is never gossiped on). A node's mempool is
a set of pending transaction ids: a proposer's block carries up to
BLOCK_TXS_MAX of its ids (signed kvstore writes from the workload), and a
node that commits the block drops them. Byzantine nodes wait too: one that
made empty blocks at will would start every height, which the protocol
cannot refuse.

Checks, besides the run's safety and height liveness: every burst is
committed within BURST_COMMIT_BOUND_MS of its arrival (or of the heal, if
later), and after the heal the chain makes no empty block while no burst is
open but the one follow-up block after a block with transactions or evidence.
Every draw comes from the run's second `random.Random`, so a seed's faults
are the same with and without this mode and the default mode's runs are
unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from consensus.types import Block
from sim.workload import BLOCK_TXS_MAX

BURST_GAP_MS_MIN = 3_000  # idle gaps between bursts: many block times (~0.1-0.5 s here)
BURST_GAP_MS_MAX = 8_000
BURST_FIRST_MS_MAX = 2_000  # the first burst arrives by then
BURST_TXS_MAX = 2 * BLOCK_TXS_MAX  # a burst may need two blocks
GOSSIP_DELAY_MS_MAX = 15_000  # a burst reaches another node's mempool this late at most
GOSSIP_LOSS_PROBABILITY = 0.3  # or never: that node's mempool was full
BURST_COMMIT_BOUND_MS = 60_000
IDLE_TAIL_MS = 10_000  # the run watches the idle chain this long after the last burst committed


@dataclass(frozen=True, slots=True)
class Burst:
    at_ms: int
    entry: int  # the honest node whose mempool it enters first
    ids: range  # its transactions' ids


@dataclass(frozen=True, slots=True)
class IdleReport:
    bursts: int
    # From a burst's arrival, or the heal if later, to the first honest commit of its last tx.
    burst_delay_ms_max: int
    idle_blocks: int  # empty blocks after the heal while no burst was open (follow-ups too)
    violation: str | None  # an empty block while idle that was no follow-up


class Mempools:
    """Every node's pending transaction ids, the bursts that fill them, and the idle checks."""

    def __init__(self, seed: int, nodes: int) -> None:
        self.rng = random.Random(f"idle-{seed}")
        self.pending: list[dict[int, None]] = [{} for _ in range(nodes)]  # insertion ordered
        self.done: list[set[int]] = [set() for _ in range(nodes)]
        self.bursts: list[Burst] = []
        self.carried: dict[bytes, tuple[int, ...]] = {}  # block hash -> the ids it carries
        self.committed_at: dict[int, int] = {}  # id -> first honest commit (ms)
        self.heights: dict[int, tuple[int, bool]] = {}  # height -> (first commit ms, busy)
        self.idle_blocks = 0
        self.violation: str | None = None

    def plan(
        self, honest: list[int], nodes: int, after_ms: int, count_min: int
    ) -> list[tuple[int, int, int]]:
        """Draw the bursts, at least `count_min` and the last after `after_ms`.

        Returns the arrivals (at_ms, node, burst index), the entry's first.
        """
        arrivals: list[tuple[int, int, int]] = []
        at = self.rng.randint(0, BURST_FIRST_MS_MAX)
        next_id = 0
        while len(self.bursts) < count_min or self.bursts[-1].at_ms <= after_ms:
            size = self.rng.randint(1, BURST_TXS_MAX)
            burst = Burst(at, self.rng.choice(honest), range(next_id, next_id + size))
            index = len(self.bursts)
            self.bursts.append(burst)
            next_id += size
            for node in range(nodes):
                if node == burst.entry:
                    arrivals.append((at, node, index))
                elif self.rng.random() >= GOSSIP_LOSS_PROBABILITY:
                    arrivals.append((at + self.rng.randint(1, GOSSIP_DELAY_MS_MAX), node, index))
            at += self.rng.randint(BURST_GAP_MS_MIN, BURST_GAP_MS_MAX)
        return arrivals

    def arrive(self, node: int, burst: int) -> bool:
        """A burst reached `node`'s mempool; True when it added a transaction there."""
        new = [i for i in self.bursts[burst].ids if i not in self.done[node]]
        self.pending[node].update(dict.fromkeys(new))
        return bool(new)

    def holds(self, node: int) -> bool:
        return bool(self.pending[node])

    def take(self, node: int) -> tuple[int, ...]:
        """The ids a block `node` builds carries: its oldest pending, up to a block's worth."""
        return tuple(self.pending[node])[:BLOCK_TXS_MAX]

    def carry(self, block: Block, ids: tuple[int, ...]) -> None:
        if ids:
            self.carried[block.hash] = ids

    def committed(self, node: int, block: Block, now_ms: int, heal_ms: int, honest: bool) -> None:
        """`node` committed `block`: its mempool drops what the block carried."""
        ids = self.carried.get(block.hash, ())
        self.done[node].update(ids)
        for i in ids:
            self.pending[node].pop(i, None)
        if not honest:
            return
        for i in ids:
            self.committed_at.setdefault(i, now_ms)
        if block.height not in self.heights:
            busy = bool(block.txs or block.evidence)
            self.heights[block.height] = (now_ms, busy)
            self._check_idle(block, now_ms, heal_ms)

    def _check_idle(self, block: Block, now_ms: int, heal_ms: int) -> None:
        """An empty block after the heal while no burst was open must follow a busy block."""
        previous = self.heights.get(block.height - 1)
        if previous is None or block.txs or block.evidence:
            return
        since_ms, follows_busy = previous
        if since_ms < heal_ms or self._open_between(since_ms, now_ms):
            return
        self.idle_blocks += 1
        if not follows_busy and self.violation is None:
            self.violation = (
                f"height {block.height} committed at {now_ms} ms, empty, with no transaction "
                f"waiting since height {block.height - 1} (empty) at {since_ms} ms"
            )

    def _open_between(self, start_ms: int, end_ms: int) -> bool:
        """Whether a burst had arrived and was not yet committed at some time in [start, end]."""
        for burst in self.bursts:
            done_ms = self._commit_ms(burst)
            if burst.at_ms <= end_ms and (done_ms is None or done_ms > start_ms):
                return True
        return False

    def _commit_ms(self, burst: Burst) -> int | None:
        times = [self.committed_at.get(i) for i in burst.ids]
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def all_committed(self, now_ms: int) -> bool:
        """Every burst committed, the last at least IDLE_TAIL_MS ago."""
        times = [self._commit_ms(b) for b in self.bursts]
        return all(t is not None and t + IDLE_TAIL_MS <= now_ms for t in times)

    def late(self, heal_ms: int) -> str | None:
        """The liveness report for the first burst not committed, or committed too late."""
        for index, burst in enumerate(self.bursts):
            due = max(burst.at_ms, heal_ms) + BURST_COMMIT_BOUND_MS
            done_ms = self._commit_ms(burst)
            if done_ms is None or done_ms > due:
                when = "not committed" if done_ms is None else f"committed at {done_ms} ms"
                return (
                    f"burst {index} ({len(burst.ids)} txs at {burst.at_ms} ms) {when}; "
                    f"due {BURST_COMMIT_BOUND_MS} ms after it arrived or the heal"
                )
        return None

    def report(self, heal_ms: int) -> IdleReport:
        delays = [
            t - max(b.at_ms, heal_ms) for b in self.bursts if (t := self._commit_ms(b)) is not None
        ]
        return IdleReport(
            len(self.bursts), max(delays, default=0), self.idle_blocks, self.violation
        )
