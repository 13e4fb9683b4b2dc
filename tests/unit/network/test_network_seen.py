"""The gossip seen-cache's two bounds: count (oldest evicted) and age (seen_cache_ttl_s).

The cache takes the time from its caller, so most tests drive it with
explicit times; the last runs real nodes on loopback under trio's virtual
clock, jumped past the TTL.
"""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from network import CONSENSUS, NetworkConfig
from network.seen import EXPIRE_PER_CALL, STAMP_QUANTA, SeenCache
from network.testing import address_of_node, eventually, loopback_node

TTL_S = 60.0
QUANTUM_S = TTL_S / STAMP_QUANTA


def _digest(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


def test_a_delivered_digest_is_a_duplicate_for_the_ttl_then_delivered_again() -> None:
    cache = SeenCache(1_000, TTL_S)
    assert cache.add_delivered(_digest(0), 100.0)
    # Never forgotten before the TTL, however the inserts fall on the quanta.
    for step in range(1, 64):
        now = 100.0 + step * TTL_S / 64
        assert cache.add_delivered(_digest(0), now) is False
        assert cache.add_delivered(_digest(step), now)
    # Forgotten by TTL plus two quanta, on the first insert after it.
    assert cache.add_delivered(_digest(0), 100.0 + TTL_S + 2 * QUANTUM_S)


def test_at_a_steady_rate_the_cache_plateaus_at_rate_times_ttl() -> None:
    """100 digests/s for 10 TTLs: past 2 TTLs the size stays in [ttl, ttl + 2 quanta] x rate."""
    cache = SeenCache(1_000_000, TTL_S)
    rate = 100
    sizes = []
    for i in range(int(10 * TTL_S * rate)):
        assert cache.add_delivered(_digest(i), i / rate)
        if i >= 2 * TTL_S * rate:
            sizes.append(len(cache))
    assert TTL_S * rate <= min(sizes)
    assert max(sizes) <= (TTL_S + 2 * QUANTUM_S) * rate + 1


def test_a_backlog_of_expired_entries_goes_a_bounded_number_per_call() -> None:
    """A burst, then a quiet spell past the TTL: the next call removes at most
    EXPIRE_PER_CALL of the expired entries (not all 200,000 at once, which held the event
    loop for 170-330 ms), and the backlog drains as recordings go on."""
    cache = SeenCache(200_000, TTL_S)
    for i in range(200_000):
        cache.add_delivered(_digest(i), 0.0)
    later = 2 * TTL_S
    assert cache.add_delivered(_digest(10**7), later)
    assert len(cache) == 200_000 + 1 - EXPIRE_PER_CALL
    calls = 1
    while _digest(199_999) in cache:
        cache.add_delivered(_digest(10**6 + calls), later)
        calls += 1
    assert calls <= 200_000 // (EXPIRE_PER_CALL - 1) + 1
    assert _digest(10**7) in cache  # recorded after the burst: not expired
    assert len(cache) == calls  # what was recorded at `later`, and only that


def test_the_count_bound_evicts_the_oldest_first() -> None:
    cache = SeenCache(3, TTL_S)
    for i in range(5):
        assert cache.add_delivered(_digest(i), 0.0)
    assert len(cache) == 3
    assert [_digest(i) in cache for i in range(5)] == [False, False, True, True, True]
    assert cache.add_gossiped(_digest(5), 0.0)
    assert _digest(2) not in cache and _digest(5) in cache


def test_gossiped_digests_stay_for_a_ttl_from_the_gossip_and_are_not_forgotten() -> None:
    """forget() removes delivered digests only; gossiping a delivered one restarts its TTL."""
    cache = SeenCache(1_000, TTL_S)
    assert cache.add_delivered(_digest(1), 0.0)
    assert cache.add_delivered(_digest(2), 0.0)
    assert cache.forget(_digest(1))
    assert cache.forget(_digest(1)) is False  # no longer there
    assert cache.add_delivered(_digest(1), 1.0)  # a later copy is delivered again
    # The node forwards digest 2 at 30 s: remembered until 30 s + TTL, not 0 s + TTL.
    assert cache.add_gossiped(_digest(2), 30.0)
    assert cache.add_gossiped(_digest(2), 31.0) is False
    assert cache.add_delivered(_digest(2), 32.0) is False
    assert cache.forget(_digest(2)) is False
    later = 30.0 + TTL_S - QUANTUM_S
    assert cache.add_delivered(_digest(3), later)
    assert _digest(1) not in cache  # delivered at 1 s: expired
    assert _digest(2) in cache
    assert cache.add_gossiped(_digest(2), 30.0 + TTL_S + 2 * QUANTUM_S)  # sent again


def test_expiry_pops_in_order_after_a_move_and_a_stale_time() -> None:
    """Stamps stay in order: a time older than the current stamp reuses it, never goes back."""
    cache = SeenCache(1_000, TTL_S)
    assert cache.add_delivered(_digest(1), 10.0)
    assert cache.add_delivered(_digest(2), 20.0)
    assert cache.add_delivered(_digest(3), 5.0)  # a stale clock read: stamped at 20 s
    assert cache.add_gossiped(_digest(1), 40.0)  # moved to the end, stamped at 40 s
    assert cache.add_delivered(_digest(4), 20.0 + TTL_S + 2 * QUANTUM_S)
    assert [_digest(i) in cache for i in (1, 2, 3, 4)] == [True, False, False, True]
    assert cache.add_delivered(_digest(5), 40.0 + TTL_S + 2 * QUANTUM_S)
    assert len(cache) == 2 and _digest(1) not in cache


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        SeenCache(0, TTL_S)
    with pytest.raises(ValueError):
        SeenCache(10, 0.0)
    with pytest.raises(ValueError, match="seen_cache_ttl_s"):
        NetworkConfig(seen_cache_ttl_s=0.5)
    with pytest.raises(ValueError, match="seen_cache_entries_max"):
        NetworkConfig(seen_cache_entries_max=0)
    assert NetworkConfig().seen_cache_ttl_s == TTL_S


async def test_a_node_delivers_a_payload_again_once_its_ttl_passed(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Real nodes, virtual time: a copy within the TTL is a duplicate, after it a delivery.

    The hub remembers for 1 s; each spoke gossips the payload once (a spoke
    remembers what it gossiped, for the default 60 s).
    """
    async with trio.open_nursery() as nursery:
        hub = loopback_node(seen_cache_ttl_s=1.0)
        await nursery.start(hub.run)
        spokes = [loopback_node(persistent=[address_of_node(hub)]) for _ in range(3)]
        for spoke in spokes:
            await nursery.start(spoke.run)
        await eventually(lambda: len(hub.peers()) == 3)
        payload = b"a vote gossiped three times"
        digest = hashlib.sha256(payload).digest()
        assert spokes[0].gossip(CONSENSUS, payload)
        with trio.fail_after(10):
            assert (await hub.inbox.receive()).peer_id == spokes[0].node_id
        assert spokes[1].gossip(CONSENSUS, payload)
        await eventually(lambda: hub.statistics().messages_dropped.get("duplicate") == 1)
        # The hub forwards it: to the one spoke that has not seen it from it.
        assert hub.gossip(CONSENSUS, payload, exclude_peer=spokes[0].node_id, digest=digest)
        assert hub.gossip(CONSENSUS, payload, digest=digest) is False
        mock_clock.jump(1.0 + 2 / STAMP_QUANTA)
        assert spokes[2].gossip(CONSENSUS, payload)
        with trio.fail_after(10):
            again = await hub.inbox.receive()
        assert (again.peer_id, again.digest) == (spokes[2].node_id, digest)
        assert hub.statistics().seen_cache_entries == 1  # the old entry went, the copy is in
        assert hub.gossip(CONSENSUS, payload, digest=digest)  # may be forwarded again
        nursery.cancel_scope.cancel()
