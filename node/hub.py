"""Fan-out of committed blocks to in-process subscribers (websocket streams, waiters).

The committer must never wait for a subscriber: each subscription has a
bounded queue and `publish` only ever calls `send_nowait`. A subscriber whose
queue is full has fallen too far behind; it is marked overflowed and its
queue closed, and the websocket handler tells the client why (it may resume
from the store with `from_height`). Memory bound: SUBSCRIBERS_MAX *
SUBSCRIPTION_EVENTS_MAX references to committed blocks that the store holds
anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from consensus.types import Block, Commit, Transaction

SUBSCRIBERS_MAX = 256  # websocket clients plus internal waiters; policy when full: refuse
SUBSCRIPTION_EVENTS_MAX = 512  # blocks a subscriber may lag; policy when full: disconnect it


class TooManySubscribers(Exception):
    """The hub already has SUBSCRIBERS_MAX subscriptions."""


@dataclass(frozen=True, slots=True)
class CommittedBlock:
    """A block that is durable in the store, with its results."""

    block: Block
    commit: Commit
    tx_results: tuple[tuple[int, str], ...]  # (code, log) per transaction; code 0 is success
    txs: tuple[Transaction, ...]  # the block's transactions, decoded once for every reader

    @property
    def height(self) -> int:
        return self.block.height


class Subscription:
    def __init__(self) -> None:
        self._send, self.receive = trio.open_memory_channel[CommittedBlock](SUBSCRIPTION_EVENTS_MAX)
        self.overflowed = False

    def _offer(self, event: CommittedBlock) -> None:
        if self.overflowed:
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
        except trio.ClosedResourceError:
            pass

    def _close(self) -> None:
        self._send.close()


class EventHub:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.published_total = 0
        self.overflowed_total = 0

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        if len(self._subscriptions) >= SUBSCRIBERS_MAX:
            raise TooManySubscribers(f"{SUBSCRIBERS_MAX} subscribers already")
        sub = Subscription()
        self._subscriptions.add(sub)
        try:
            yield sub
        finally:
            self._subscriptions.discard(sub)
            if sub.overflowed:
                self.overflowed_total += 1
            sub._close()

    def publish(self, event: CommittedBlock) -> None:
        self.published_total += 1
        for sub in list(self._subscriptions):
            sub._offer(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)
