"""A hostile peer against 4 validator processes: each attack of issues 10 and 11, and its cost.

What it proves, for each attack (tests/integration/hostile_peer.py, run as its
own process on the real wire protocol, its own checks removed) against a live
network under light transfer load:

- the network keeps committing: every honest node commits new heights during
  the attack and RECOVERY_HEIGHTS more after it, none falls more than
  PACE_HEIGHTS_MAX behind the others, none is pushed out of consensus;
- every honest node has the same block hash at their lowest common height
  (blocks chain by hash, so that covers every height below it too);
- the target's peak RSS (VmHWM, reset before the attack) stays within
  RSS_GROWTH_MAX_MB of its RSS before the attack;
- the target's event loop never stalls longer than LAG_MAX_S (node/loopwatch.py);
- the attacker is cut off: the target closes the connection the attack ran
  on; for attacks spread over many fresh identities, those whose messages the
  node took in and judged (each test says which).

These are the outcomes issue 11 requires, not what b186c6b does: on b186c6b
most of them fail (see the report of the branch that added this file and the
"Hostile peers and clients" section of benchmarks/README.md).

The network is open (hostile_peer.open_network: no genesis members), the
worst case, where a fresh identity per connection costs nothing; on a
permissioned network strangers are refused at the handshake, and these
tests say what a member can still do.

One network serves the whole module (starting one costs seconds of a 2-core
machine); an attack that leaves it unable to commit fails its own test, and
the next test starts a fresh one. Attacks that move a node (a restart) or
that are known to halt the chain run last. The module runs under each crypto
suite (`module_crypto`, tests/integration/conftest.py): a network of each,
every attack against it; forged votes and swapped bodies are the suite's.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from node.config import ConsensusConfig
from tests.integration import hostile_peer as hostile
from tests.integration import nodes

# Memory a target may gain, at its peak, over its RSS before the attack.
# network/config.py states what the network holds for all peers together
# with every budget full (about 475 MiB). One attacker of these kinds can
# fill two of those budgets at most: 64 MiB of incomplete large frames and
# the 64 MiB inbox (16 MiB proposals); add one frame being decoded and one
# block decoded from it (16 MiB each): 160 MiB, and 32 MiB for Python's
# allocator. b186c6b: 1.2-1.3 GiB for one decode bomb, 750 MiB for 30 slow
# frames (benchmarks/README.md); the merged edge: 30-140 MiB.
RSS_GROWTH_MAX_MB = 192
# Issue 11's target is 10 ms of event-loop stall per attacker frame. A node
# under light load on this shared 2-core machine shows ~15 ms without any
# attack (benchmarks/README.md); b186c6b stalls for 0.4 to 5+ s.
LAG_MAX_S = 0.2
# Heights an honest node may trail the others by at the end of an attack
# (one block is ~1 s with the default timeouts; a node that loses its event
# loop or its inbox to a peer falls further behind).
PACE_HEIGHTS_MAX = 2
# How long the flooding attacks run: a node must cut the attacker off within it.
FLOOD_S = 10.0
# How long slow frames are held: past the frame deadline (frame_timeout_s,
# 20 s by default), before the idle timeout (30 s) that would close them anyway.
SLOW_FRAMES_HOLD_S = 25.0
# How long half-open handshakes are watched: past handshake_timeout_s (10 s).
HANDSHAKE_HOLD_S = 12.0
# Pre-handshake abuse from the honest nodes' own IP (loopback): over three
# times the 20 failures that banned 127.0.0.1 at b186c6b.
GARBAGE_CONNECTIONS = 60

# Bounds on the target's responsiveness (event-loop lag, probe latency, a
# client's close within a grace): under `make test`'s workers no two modules of
# this group run at once (the group's lock, tests/integration/conftest.py).
pytestmark = pytest.mark.xdist_group("timing")


class Shared:
    """The module's network, replaced by a fresh one when an attack broke it."""

    def __init__(self, root: Path, crypto: str) -> None:
        self.root = root
        self.crypto = crypto
        self.generation = 0
        self.net: Any = None

    def create(self) -> Any:
        self.generation += 1
        folder = self.root / f"net{self.generation}"
        # The default timeouts: what operators run, and what the figures assume.
        self.net = nodes.create_testnet(
            folder, validators=4, accounts=4, consensus=ConsensusConfig(), crypto=self.crypto
        )
        hostile.open_network(self.net)
        return self.net


async def _start(net: Any) -> None:
    for n in net.nodes:
        await n.start()
    async with nodes.open_api() as api:
        await api.wait_height(net.validators, 2, nodes.START_TIMEOUT_S)


async def _kill(net: Any) -> None:
    for n in net.nodes:
        await n.kill()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, module_crypto: str) -> Iterator[Shared]:
    holder = Shared(tmp_path_factory.mktemp("hostile"), module_crypto)
    trio.run(_start, holder.create())
    try:
        yield holder
    finally:
        trio.run(_kill, holder.net)
        shutil.rmtree(holder.root, ignore_errors=True)


@pytest.fixture
async def net(shared: Shared) -> Any:
    """The shared network, committing; a fresh one if the previous attack broke it."""
    current = shared.net
    healthy = all(n.running for n in current.nodes)
    if healthy:
        async with nodes.open_api() as api:
            healthy = await hostile.wait_committing(
                api, current.validators, hostile.HEALTHY_TIMEOUT_S
            )
    if not healthy:
        print(
            f"previous attack left the network broken; starting a fresh one\n"
            f"{current.diagnostics()}"
        )
        await _kill(current)
        await _start(shared.create())
    return shared.net


async def _attack(
    net: Any,
    attack: str,
    *,
    targets: list[Any],
    duration_s: float,
    args: tuple[str, ...] = (),
    after: Any = None,
) -> Any:
    async with nodes.open_api() as api, hostile.transfer_load(api, net):
        outcome = await hostile.run_attack(
            net, api, attack, targets=targets, duration_s=duration_s, args=args, after=after
        )
    print(outcome.summary())
    return outcome


def _assert_network_survived(outcome: Any) -> None:
    """The outcomes every attack must leave: liveness, agreement, bounded cost."""
    o = outcome
    assert not o.exited, f"{o.attack}: honest nodes exited: {o.exited}"
    assert o.committed_during, (
        f"{o.attack}: not every honest node committed during the attack: "
        f"{o.heights_start} -> {o.heights_end}"
    )
    assert o.committed_after, (
        f"{o.attack}: not every honest node committed {hostile.RECOVERY_HEIGHTS} heights "
        f"after the attack: {o.heights_end} -> {o.heights_after}"
    )
    behind = max(o.heights_end.values()) - min(o.heights_end.values())
    assert behind <= PACE_HEIGHTS_MAX, (
        f"{o.attack}: an honest node fell {behind} heights behind: {o.heights_end}"
    )
    assert not o.left_consensus, f"{o.attack}: pushed out of consensus: {o.left_consensus}"
    assert o.hashes_agree, f"{o.attack}: block hashes differ at {o.common_height}: {o.hashes}"
    assert o.rss_growth_mb <= RSS_GROWTH_MAX_MB, (
        f"{o.attack}: target RSS grew {o.rss_growth_mb:.0f} MB "
        f"({o.rss_baseline_mb:.0f} -> {o.rss_peak_mb:.0f}), bound {RSS_GROWTH_MAX_MB} MB"
    )
    assert o.lag_probe, "the target exports no event-loop lag probe"
    assert o.lag_max_s <= LAG_MAX_S, (
        f"{o.attack}: target event loop stalled {o.lag_max_s * 1000:.0f} ms, "
        f"bound {LAG_MAX_S * 1000:.0f} ms"
    )


def _assert_cut_off(outcome: Any) -> None:
    r = outcome.report
    # Refused at the handshake is a fine defence against strangers, but then
    # nothing behind it was tested: these tests need a network that lets the
    # attacker's keys in (open membership, as `archipelago init` makes, or
    # the attacker's node ids admitted), as a compromised member would be.
    assert r.connections > 0, (
        f"{outcome.attack}: the attacker was never admitted ({r.refused} refused), "
        "so nothing after the handshake was tested"
    )
    assert r.cut_off, (
        f"{outcome.attack}: the target closed {r.closed_by_target} of the attacker's "
        f"{r.connections} connections"
    )


async def test_without_an_attack_the_harness_sees_a_quiet_network(net: Any) -> None:
    """The measurement itself: with no attacker, every check below holds (so a failure
    below is the attack's doing, not the harness's or the machine's)."""
    outcome = await _attack(net, "none", targets=[net.validators[0]], duration_s=5.0)
    _assert_network_survived(outcome)


async def test_a_decode_bomb_frame_costs_bounded_memory_and_no_stall(net: Any) -> None:
    """One 16 MiB frame [2, 1, [[], [], ...]] (issue 11 item 2: 0.9-1.2 GiB and a 7-11 s
    freeze at b186c6b): rejected without building the object graph, sender banned."""
    outcome = await _attack(
        net, "decode-bomb", targets=[net.validators[0]], duration_s=0, args=("--variant", "frame")
    )
    _assert_network_survived(outcome)
    _assert_cut_off(outcome)


async def test_a_decode_bomb_payload_in_a_valid_batch_costs_bounded_memory_and_no_stall(
    net: Any,
) -> None:
    """A valid consensus batch whose one payload is [1, [{}, {}, ...]] of 16 MiB: the
    node-message decoder (node/messages.py) must be bounded too, sender banned."""
    outcome = await _attack(
        net,
        "decode-bomb",
        targets=[net.validators[0]],
        duration_s=0,
        args=("--variant", "payload"),
    )
    _assert_network_survived(outcome)
    _assert_cut_off(outcome)


async def test_slow_frames_from_many_identities_are_bounded_and_dropped(net: Any) -> None:
    """16 connections with fresh keys each announce a 16 MiB frame and send all but one
    byte (issue 11 item 3: 30 of them held ~750 MiB until the 30 s idle timeout). The
    node holds a bounded amount of them at once and drops each it holds at the frame
    deadline; the others wait unread (in the kernel's buffers, not the node's) for their
    turn, which comes after this test's hold, so only some connections are closed here."""
    outcome = await _attack(
        net,
        "slow-frames",
        targets=[net.validators[0]],
        duration_s=SLOW_FRAMES_HOLD_S,
        args=("--connections", "16"),
    )
    _assert_network_survived(outcome)
    r = outcome.report
    assert r.connections > 0, f"the attacker was never admitted: {r}"
    assert r.closed_by_target > 0, (
        f"none of the {r.connections} slow frames was dropped within {SLOW_FRAMES_HOLD_S} s"
    )


async def test_a_ping_flood_that_never_reads_is_bounded_and_dropped(net: Any) -> None:
    """PINGs as fast as the socket takes them, PONGs never read (issue 11 item 4: +75 MiB
    in 12 s, still connected)."""
    outcome = await _attack(net, "ping-flood", targets=[net.validators[0]], duration_s=FLOOD_S)
    _assert_network_survived(outcome)
    _assert_cut_off(outcome)


async def test_a_sync_request_flood_that_never_reads_is_bounded_and_dropped(net: Any) -> None:
    """sync_request(1, 16) repeated as fast as possible, never reading (issue 11 item 5:
    16 blocks loaded and re-encoded per 4 bytes, no rate limit)."""
    outcome = await _attack(net, "sync-flood", targets=[net.validators[0]], duration_s=FLOOD_S)
    _assert_network_survived(outcome)
    _assert_cut_off(outcome)


async def test_forged_and_duplicate_consensus_messages_are_dropped_and_their_senders_banned(
    net: Any,
) -> None:
    """Issue 10 items 5 and 6: copies of real votes in DIRECT batches, forged proposals near
    the frame limit, a forged decided block, forged next-height proposals and votes, forged
    votes with each validator's address. The network lives, and senders of forged
    messages are cut off (copies of valid votes need only be dropped)."""
    outcome = await _attack(net, "forged-flood", targets=[net.validators[0]], duration_s=FLOOD_S)
    _assert_network_survived(outcome)
    parts = outcome.report.notes.get("parts", {})
    forged = {k: v for k, v in parts.items() if k != "duplicate_votes"}
    assert forged and all(p["connections"] > 0 for p in forged.values()), parts
    # Each part keeps sending on fresh identities until its time is up. A forged message
    # the node drops unread (a height or round it is not in, a signer's full quota of
    # next-height messages) costs it nothing and proves nothing, so the last identity
    # of a part may go unjudged; every part must get senders judged and cut off.
    spared = {k: v for k, v in forged.items() if v["closed_by_target"] == 0}
    assert not spared, f"no sender of these forged messages was cut off: {spared}"


async def test_a_body_swapped_under_a_real_header_is_blamed_on_its_relayer(net: Any) -> None:
    """Issue 10 item 4: a peer relays every real proposal with another transaction list
    under its header to every other node. The chain goes on with one history, and the
    relayer is blamed: a body that does not match its header is the sender's fault."""
    outcome = await _attack(net, "body-swap", targets=list(net.validators), duration_s=FLOOD_S)
    _assert_network_survived(outcome)
    r = outcome.report
    assert r.notes.get("swapped", 0) > 0, "no proposal was seen to swap"
    assert r.connections > 0, f"no swapped body was delivered: {r}"
    # A swapped copy that arrives after the genuine proposal may be dropped as a
    # duplicate without its body being read (harmless: it is never used), so not every
    # connection that carried one is closed; one whose copy was examined must be.
    assert r.closed_by_target > 0, (
        f"no node blamed the relayer of {r.notes['swapped']} swapped bodies "
        f"({r.connections} connections carried them)"
    )


async def test_handshake_garbage_from_a_shared_ip_does_not_lock_out_honest_nodes(
    net: Any,
) -> None:
    """Issue 11 item 6: 60 garbage or half-open handshakes from 127.0.0.1, the honest
    nodes' own address. Each is closed; then a validator restarted on another port (so
    only its own dial can bring it back to the target) is let in again."""
    target, moved = net.validators[0], net.validators[3]

    async def restart() -> dict[str, Any]:
        async with nodes.open_api() as api:
            result: dict[str, Any] = await hostile.restart_on_new_port(api, moved, target)
            return result

    outcome = await _attack(
        net,
        "handshake-garbage",
        targets=[target],
        duration_s=HANDSHAKE_HOLD_S,
        args=("--connections", str(GARBAGE_CONNECTIONS)),
        after=restart,
    )
    _assert_network_survived(outcome)
    _assert_cut_off(outcome)
    assert outcome.extra.get("rejoined"), (
        f"{moved.name}, restarted, was not let back in by {target.name}: {outcome.extra}"
    )


async def test_false_height_claims_to_two_nodes_change_nothing(net: Any) -> None:
    """Issue 10 item 2: sync_status claiming height + 10^6 every second, to two validators at
    once (at b186c6b this halted the chain, often for good). Claims alone move nothing: no
    node leaves consensus, the chain commits during the attack and after it leaves."""
    outcome = await _attack(
        net, "false-height", targets=[net.validators[1], net.validators[2]], duration_s=FLOOD_S
    )
    _assert_network_survived(outcome)
    r = outcome.report
    # The claimer is either cut off (it was asked for blocks it claimed and did not serve
    # them) or ignored: _assert_network_survived already required that no victim left
    # consensus, which is what "ignored" means.
    assert r.connections > 0, r
