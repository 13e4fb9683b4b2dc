"""Block sync decisions, free of I/O: whom to ask for which heights, and what a claim is worth.

A peer's `sync_status` is a claim ("I can serve blocks base..height"); a claim
is never proof. The planner uses claims only to decide whom to ask: it asks
for the heights above ours, a window at a time, spread over the peers that
claim them, and keeps an answer only if it was asked of that peer. The
driver (node/driver.py) verifies each answer's commit certificate before it
applies the block, and only an applied block (a certificate of the current
validator set) can move the node into block sync mode. So a false claim costs
the liar's target a few small requests and a wait, and changes nothing else.

A claim that is not honoured (a request that times out, or `sync_none` for a
height the peer claimed) lowers that peer's claim to what it did serve; an
explicit `sync_none` below its own claim contradicts the peer's own words and
is reported as its fault. Serving is rate-limited per peer here (a token
bucket of requests), and the shell also checks the peer's send queue before
it loads anything from the store.

Memory: at most `window_blocks` answers are kept (each asked for), claims and
buckets for at most the connected peers (`forget` on disconnect).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import Block, Commit
from node.messages import BLOCKS_PER_REQUEST_MAX

__all__ = [
    "REQUEST_TIMEOUT_S",
    "SERVE_REQUESTS_PER_S",
    "Claim",
    "Request",
    "SyncPlanner",
]

# An unanswered request is given up after this long and its heights asked of
# someone else; the peer's claim drops below the first unserved height.
REQUEST_TIMEOUT_S = 10.0
# A claim not refreshed for this long is ignored (peers announce every second).
CLAIM_STALE_S = 30.0
# A peer that did not serve a height it claimed is believed only below that
# height for this long, whatever it claims meanwhile (then it gets a new chance:
# an honest peer may have been slow).
DISTRUST_S = 60.0
# Serving: requests a peer may make per second (burst: two seconds' worth).
# 8 requests of 16 blocks is 128 blocks/s per peer, near what one node applies;
# over the rate a request is not answered (the asker times out and asks others).
SERVE_REQUESTS_PER_S = 8.0
# Requests refused in a row beyond the burst that make a peer an abuser: a node
# asks for a window of 128 blocks at most and only again as blocks arrive, so
# no correct requester runs this far over the rate; it is disconnected.
SERVE_DEBT_REQUESTS_MAX = 64


@dataclass(slots=True)
class Claim:
    base: int
    height: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class Request:
    peer: str
    height: int
    count: int


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class SyncPlanner:
    """Claims, outstanding requests and received answers of one node."""

    window_blocks: int
    claims: dict[str, Claim] = field(default_factory=dict)
    pending: dict[int, tuple[str, float]] = field(default_factory=dict)  # height -> peer, asked
    received: dict[int, tuple[Block, Commit, str]] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)  # block requests served
    _decided_buckets: dict[str, _Bucket] = field(default_factory=dict)  # decided blocks sent
    _distrust: dict[str, tuple[int, float]] = field(default_factory=dict)  # peer -> (cap, until)

    # ------------------------------------------------------------ claims

    def on_status(self, peer: str, base: int, height: int, now: float) -> None:
        distrust = self._distrust.get(peer)
        if distrust is not None:
            if distrust[1] > now:
                height = min(height, distrust[0])
            else:
                del self._distrust[peer]
        self.claims[peer] = Claim(base, height, now)

    def forget(self, peer: str) -> None:
        """A peer disconnected: its claim and requests go, its answers stay (asked for)."""
        self.claims.pop(peer, None)
        self._buckets.pop(peer, None)
        self._decided_buckets.pop(peer, None)
        self._distrust.pop(peer, None)
        for h in [h for h, (p, _) in self.pending.items() if p == peer]:
            del self.pending[h]

    def peers(self) -> set[str]:
        """Every peer something is kept about (claims, requests, serving budgets, distrust)."""
        return (
            {peer for peer, _ in self.pending.values()}
            | set(self.claims)
            | set(self._buckets)
            | set(self._decided_buckets)
            | set(self._distrust)
        )

    def peer_max(self, now: float) -> int:
        """The highest height a peer claims now (0 if none): a claim, not a fact."""
        cutoff = now - CLAIM_STALE_S
        return max((c.height for c in self.claims.values() if c.updated_at >= cutoff), default=0)

    def _lower(self, peer: str, height: int, now: float) -> None:
        """`peer` did not serve `height + 1`: believe it only below that, for a while."""
        claim = self.claims.get(peer)
        if claim is not None:
            claim.height = min(claim.height, height)
        cap = self._distrust.get(peer, (height, 0.0))[0]
        self._distrust[peer] = (min(cap, height), now + DISTRUST_S)

    # ------------------------------------------------------------ answers

    def on_block(self, peer: str, block: Block, commit: Commit) -> bool:
        """Keep an answer that was asked of this peer; False for anything unsolicited."""
        h = block.height
        asked = self.pending.get(h)
        if asked is None or asked[0] != peer or commit.height != h:
            return False
        del self.pending[h]
        self.received[h] = (block, commit, peer)
        return True

    def on_none(self, peer: str, height: int, now: float) -> bool:
        """The peer has no block `height`; True if that contradicts its own claim."""
        asked = self.pending.get(height)
        if asked is None or asked[0] != peer:
            return False
        del self.pending[height]
        claim = self.claims.get(peer)
        contradicts = claim is not None and claim.base <= height <= claim.height
        self._lower(peer, height - 1, now)
        return contradicts

    def take(self, height: int) -> tuple[Block, Commit, str] | None:
        """The answer for `height` (the next to apply), if it arrived."""
        return self.received.pop(height, None)

    def refused(self, peer: str, height: int) -> None:
        """An answer from `peer` failed verification: believe nothing more it claims."""
        self.claims.pop(peer, None)
        for h in [h for h, (_, _, p) in self.received.items() if p == peer]:
            del self.received[h]
        self.pending.pop(height, None)

    def applied(self, height: int) -> None:
        """Heights up to `height` are committed: drop what concerns them."""
        for h in [h for h in self.received if h <= height]:
            del self.received[h]
        for h in [h for h in self.pending if h <= height]:
            del self.pending[h]

    def clear(self) -> None:
        self.pending.clear()
        self.received.clear()

    # ------------------------------------------------------------ requests

    def requests(self, height: int, now: float, window: int) -> list[Request]:
        """New requests for heights above `height` (ours), at most `window` ahead.

        Timed-out requests are given up first and the peer's claim lowered.
        Each request asks one peer for a run of heights it claims; a run the
        window cuts short waits until the window has room for a whole request
        (else a node applying blocks one by one would ask one by one, far over
        the serving rate).
        """
        for h, (peer, asked_at) in list(self.pending.items()):
            if now - asked_at > REQUEST_TIMEOUT_S:
                del self.pending[h]
                self._lower(peer, h - 1, now)
        cutoff = now - CLAIM_STALE_S
        holders = sorted(
            (peer, c) for peer, c in self.claims.items() if c.updated_at >= cutoff and c.height
        )
        out: list[Request] = []
        limit = height + min(window, self.window_blocks)
        stop = min(self.peer_max(now), limit)
        turn = 0
        h = height + 1
        while h <= stop:
            if h in self.pending or h in self.received:
                h += 1
                continue
            able = [(peer, c) for peer, c in holders if c.base <= h <= c.height]
            if not able:
                h += 1
                continue
            peer, claim = able[turn % len(able)]
            end = min(stop, claim.height)
            count = 1
            while (
                count < BLOCKS_PER_REQUEST_MAX
                and h + count <= end
                and h + count not in self.pending
                and h + count not in self.received
            ):
                count += 1
            if count < BLOCKS_PER_REQUEST_MAX and h + count > limit and claim.height > limit:
                break  # cut short by the window alone: ask once it has room
            turn += 1
            out.append(Request(peer, h, count))
            for k in range(h, h + count):
                self.pending[k] = (peer, now)
            h += count
        return out

    def may_send_decided(self, peer: str, now: float) -> bool:
        """Take one token for sending `peer` a decided block (no debt: statuses are routine)."""
        bucket = self._take(self._decided_buckets, peer, now)
        if bucket.tokens < 0:
            bucket.tokens += 1
            return False
        return True

    @staticmethod
    def _take(buckets: dict[str, _Bucket], peer: str, now: float) -> _Bucket:
        bucket = buckets.get(peer)
        burst = 2 * SERVE_REQUESTS_PER_S
        if bucket is None:
            bucket = buckets[peer] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * SERVE_REQUESTS_PER_S)
        bucket.at = now
        bucket.tokens -= 1
        return bucket

    def may_serve(self, peer: str, now: float) -> bool | None:
        """Take one serving token for `peer`: True to serve, False over the rate, None to cut it.

        Refused requests still count (as debt), so a peer that keeps asking
        far over the rate reaches SERVE_DEBT_REQUESTS_MAX and is an abuser.
        """
        bucket = self._take(self._buckets, peer, now)
        if bucket.tokens >= 0:
            return True
        return None if -bucket.tokens > SERVE_DEBT_REQUESTS_MAX else False
