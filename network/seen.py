"""The gossip seen-cache: which payload digests this node delivered or gossiped, lately.

Why bounded in age as well as in count: with a count bound alone the cache
fills at the rate payloads arrive, so a node at 270 tx/s with four
validators (about 60 new digests a second) reaches the 200,000-entry bound
after some 50 minutes, its memory stepping up each time the dictionary's
table doubles, and a quiet node never lets go of what it filled. A payload
only needs remembering while copies of it may still arrive by gossip: the
copies of one payload come from the node's peers within the time it takes
to cross the network, seconds. With the age bound the cache holds about
ttl_s x (new digests per second) entries, reached one TTL after the rate
settles; the count bound stays as the ceiling on memory whatever peers
send. NetworkConfig.seen_cache_ttl_s says why the default is 60 s and what
a copy arriving later costs: it is delivered again and dropped by the
node's own checks, with no signature check and no forward, which is no
more than a hostile peer can cause at any time with payloads the cache
never saw (that is bounded by the per-peer read rates).

An entry is recorded when a peer's gossip is delivered (`add_delivered`) or
when this node gossips the payload (`add_gossiped`, which moves a delivered
entry to the end: it is remembered for a TTL after the node forwarded it).
`forget` removes a delivered entry that the node had to drop, so that a
later copy is delivered again; a gossiped one stays.

Cost: O(1) per insert. Entries sit in insertion order with non-decreasing
stamps, so expiry pops from the front while the oldest is expired, at most
EXPIRE_PER_CALL entries per call: a burst followed by a quiet spell leaves
up to entries_max expired entries, and removing them all in one call took
170-330 ms of the event loop (200,000, on a loaded 2-core machine). Each
recording removes up to 64 and adds one, so a backlog drains. Entries do
not hold their own time: all entries recorded within one quantum (ttl_s /
STAMP_QUANTA) share one stamp tuple, so an entry costs what an entry
holding a bool did before (about 170 bytes with its 32-byte key: 32 MiB at
the default 200,000), and the expiry horizon moves once a quantum. An
entry lives from ttl_s to ttl_s + 2 quanta (it may live longer while
nothing is recorded, or while a backlog of expired entries drains: the
cache is not scanned on a timer).

The caller passes the time (`now`, trio.current_time() in the service), so
a batch of payloads costs one clock read and tests need no real clock.
"""

from __future__ import annotations

import collections

# Stamps per TTL: entries expire at most 2/STAMP_QUANTA of a TTL late.
STAMP_QUANTA = 64
# Expired entries removed per recording, at most (see the module's "Cost").
EXPIRE_PER_CALL = 64

_Stamp = tuple[float, bool]  # (when recorded, gossiped by this node)


class SeenCache:
    """Digests remembered for at least `ttl_s` and at most `entries_max` of them."""

    __slots__ = (
        "_delivered",
        "_entries",
        "_expired_at",
        "_expiring",
        "_gossiped",
        "_quantum_s",
        "entries_max",
        "ttl_s",
    )

    def __init__(self, entries_max: int, ttl_s: float) -> None:
        if entries_max < 1 or not ttl_s > 0:
            raise ValueError("a seen-cache needs entries_max >= 1 and ttl_s > 0")
        self.entries_max = entries_max
        self.ttl_s = ttl_s
        self._quantum_s = ttl_s / STAMP_QUANTA
        self._entries: collections.OrderedDict[bytes, _Stamp] = collections.OrderedDict()
        # The stamps of the current quantum, shared by every entry recorded in it.
        self._delivered: _Stamp = (-float("inf"), False)
        self._gossiped: _Stamp = (-float("inf"), True)
        self._expired_at = -float("inf")  # entries stamped at or before it have expired
        self._expiring = False  # expired entries may be left at the front

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._entries

    def add_delivered(self, digest: bytes, now: float) -> bool:
        """Record a digest a peer gossiped; False (nothing changed) if it is remembered."""
        self._stamp(now)
        entries = self._entries
        if digest in entries:
            return False
        if len(entries) >= self.entries_max:
            entries.popitem(last=False)
        entries[digest] = self._delivered
        return True

    def add_gossiped(self, digest: bytes, now: float) -> bool:
        """Record a digest this node gossips; False if it already gossiped it."""
        self._stamp(now)
        entries = self._entries
        stamp = entries.get(digest)
        if stamp is not None:
            if stamp[1]:
                return False
            # Delivered, now forwarded: remembered for a TTL from now, and at the
            # end, so that the stamps stay in order.
            entries[digest] = self._gossiped
            entries.move_to_end(digest)
            return True
        if len(entries) >= self.entries_max:
            entries.popitem(last=False)
        entries[digest] = self._gossiped
        return True

    def forget(self, digest: bytes) -> bool:
        """Remove a delivered (not gossiped) digest; True if it was there."""
        stamp = self._entries.get(digest)
        if stamp is None or stamp[1]:
            return False
        del self._entries[digest]
        return True

    def _stamp(self, now: float) -> None:
        """Once a quantum, new stamps for what is recorded next and a new expiry
        horizon; then, on every call until none is left, up to EXPIRE_PER_CALL
        expired entries go.

        A stamp's time is at most one quantum before an entry's recording, so
        an entry goes once its stamp is ttl_s + one quantum old: never before
        ttl_s.
        """
        if now - self._delivered[0] >= self._quantum_s:
            self._delivered = (now, False)
            self._gossiped = (now, True)
            self._expired_at = now - self.ttl_s - self._quantum_s
            self._expiring = True
        if not self._expiring:
            return
        entries = self._entries
        expired_at = self._expired_at
        for _ in range(EXPIRE_PER_CALL):
            if not entries or next(iter(entries.values()))[0] > expired_at:
                self._expiring = False
                return
            entries.popitem(last=False)
