"""A peer back within seconds of its link: dead links left fast, persistent peers redialled fast.

The dead-link check (network.peer.LinkWatch fed by the kernel's TCP_INFO) is
tested on its decisions and on real loopback sockets, where a peer that is
alive but not reading must never look dead; the end-to-end cut (a link taken
down, then up) is tests/integration/test_netns.py's cut-off test. The
dialler's bounds (connect_timeout_s, persistent_dial_backoff_max_s) are
tested on real sockets: a listener whose backlog is full drops SYNs as a
dead link does, and a refused port is a peer that is not there yet.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from dataclasses import replace

import pytest
import trio

from consensus.crypto import PrivateKey
from network import Network, NetworkConfig, PeerAddress
from network.peer import LinkWatch, tcp_retransmit_state
from network.testing import (
    TEST_CHAIN_ID,
    TEST_CONFIG,
    connect_raw,
    eventually,
    key_id,
    loopback_node,
)

MIB = 1024 * 1024
linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="TCP_INFO's layout is Linux's; elsewhere the check is off"
)


# -- the dead-link decision ----------------------------------------------------------


def test_retransmitting_without_an_ack_for_the_timeout_is_a_dead_link() -> None:
    watch = LinkWatch(4.0)
    assert not watch.dead(10.0, 1, 500)
    assert not watch.dead(12.0, 3, 2_500)
    assert not watch.dead(13.9, 4, 4_400)  # retransmitting for 3.9 s only
    assert watch.dead(14.0, 4, 4_500)


def test_a_sample_without_retransmissions_restarts_the_clock() -> None:
    watch = LinkWatch(4.0)
    assert not watch.dead(0.0, 2, 1_000)
    assert not watch.dead(3.0, 0, 10)  # acknowledged: the link works
    assert not watch.dead(3.5, 1, 200)
    assert not watch.dead(7.0, 3, 3_700)  # 3.5 s since the retransmissions restarted
    assert watch.dead(7.5, 3, 4_200)


def test_one_loss_after_a_long_idle_spell_is_not_a_dead_link() -> None:
    """The last ACK is a minute old because nothing was sent, not because the link died."""
    watch = LinkWatch(4.0)
    assert not watch.dead(100.0, 1, 60_000)
    assert not watch.dead(101.0, 0, 50)


def test_a_recent_ack_keeps_a_retransmitting_link_alive() -> None:
    """Losses, but acknowledgements still arrive: a lossy link, not a dead one."""
    watch = LinkWatch(4.0)
    for second in range(20):
        assert not watch.dead(float(second), 2, 900)


# -- the kernel's view, on real sockets ---------------------------------------------------


@linux_only
def test_tcp_info_of_a_healthy_connection_shows_no_retransmission() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"x" * 1000)
                assert accepted.recv(1000)
                state = tcp_retransmit_state(client)
                assert state is not None
                retransmits, last_ack_ms = state
                assert retransmits == 0
                assert last_ack_ms < 5_000


@linux_only
def test_tcp_info_reads_the_last_ack_not_the_last_data() -> None:
    """A sender that never receives data still gets ACKs: its figure is the ACK's age.

    tcpi_last_data_recv sits just before tcpi_last_ack_recv in struct tcp_info;
    reading it instead would count a peer that acknowledges but sends nothing
    as silent. The kernel's millisecond clocks need real time to pass here.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                for _ in range(6):
                    client.sendall(b"x" * 100)
                    assert accepted.recv(100)
                    time.sleep(0.15)
                state = tcp_retransmit_state(client)
                assert state is not None
                # Data was last received at the handshake, 900 ms ago; ACKs 150 ms ago.
                assert state[1] < 600, state


def test_tcp_info_of_what_is_not_a_tcp_socket_is_none() -> None:
    assert tcp_retransmit_state(None) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert tcp_retransmit_state(udp) is None


@linux_only
async def test_a_peer_that_does_not_read_is_not_taken_for_a_dead_link() -> None:
    """A raw peer stops reading while the node has 8 MiB for it: TCP's window closes and
    stays closed for 6 x retransmit_timeout_s, the kernel probing it; the peer still
    acknowledges, so the connection stays (send_timeout_s is what bounds a stalled reader)."""
    async with trio.open_nursery() as nursery:
        node = loopback_node(
            retransmit_timeout_s=0.5,
            link_check_interval_s=0.05,
            send_timeout_s=1000.0,
            idle_timeout_s=1000.0,
            ping_interval_s=100.0,
        )
        await nursery.start(node.run)
        conn = await connect_raw(node)
        await eventually(lambda: len(node.peers()) == 1)
        peer_id = node.peers()[0].node_id
        for index in range(8):
            assert node.send(peer_id, 3, bytes([index]) * MIB)
        # The scenario's length: the window stays shut this long (not a wait for an outcome).
        await trio.sleep(3.0)
        peers = node.peers()
        assert [p.node_id for p in peers] == [peer_id]
        assert peers[0].send_queue_messages > 0  # the window really is shut
        assert "link_dead" not in node.statistics().disconnects
        await conn.stream.aclose()
        nursery.cancel_scope.cancel()


# -- the dialler ------------------------------------------------------------------------


async def test_a_connect_into_dropped_syns_gives_up_after_connect_timeout() -> None:
    """A listener with a full backlog drops SYNs, as a dead link does: the dial gives up
    after connect_timeout_s, not dial_timeout_s or the kernel's SYN retries."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        host, port = server.getsockname()
        with socket.create_connection((host, port)):  # fills the backlog of one
            node = loopback_node(connect_timeout_s=0.3, dial_timeout_s=10.0)
            start = time.monotonic()
            stream = await node._connect(PeerAddress(key_id(PrivateKey.generate()), host, port))
            elapsed_s = time.monotonic() - start
    assert stream is None
    assert 0.3 <= elapsed_s < 5.0


async def test_persistent_peers_are_redialled_within_the_persistent_backoff_cap() -> None:
    """A persistent peer refused for 4 s (failures pile up: the PEX dials' backoff, 60 s at
    most, would be 1.6 to 9.6 s by then) is connected within persistent_dial_backoff_max_s
    (0.2 s here) of starting to listen, plus a handshake."""
    key = PrivateKey.generate()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now; nothing listens there yet
    config = replace(
        TEST_CONFIG,
        dial_backoff_base_s=0.2,
        dial_backoff_max_s=60.0,
        persistent_dial_backoff_max_s=0.2,
    )
    dialler = Network(
        identity=PrivateKey.generate(),
        chain_id=TEST_CHAIN_ID,
        listen=("127.0.0.1", 0),
        persistent_peers=[PeerAddress(key_id(key), "127.0.0.1", port)],
        config=config,
    )
    delays: list[float] = []
    draw = dialler._backoff_s

    def recorded(failures: int, cap_s: float) -> float:
        delays.append(draw(failures, cap_s))
        return delays[-1]

    dialler._backoff_s = recorded  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(dialler.run)
        await trio.sleep(4.0)  # the scenario: the peer is not there for 4 s
        # Redialled all along (an uncapped backoff would have drawn 5 growing delays).
        assert len(delays) >= 10 and max(delays) <= 0.2, delays
        peer = Network(
            identity=key, chain_id=TEST_CHAIN_ID, listen=("127.0.0.1", port), config=config
        )
        await nursery.start(peer.run)
        start = time.monotonic()
        with trio.fail_after(10):
            await dialler.wait_peers(1)
        elapsed_s = time.monotonic() - start
        nursery.cancel_scope.cancel()
    assert elapsed_s < 1.5, elapsed_s


def test_backoff_is_capped_and_jittered() -> None:
    node = loopback_node(dial_backoff_base_s=0.5)
    node._rng = random.Random(7)
    for failures in range(40):
        ceiling = min(2.0, 0.5 * 2**failures)
        delays = [node._backoff_s(failures, 2.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # not in lockstep


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("retransmit_timeout_s", -1.0),
        ("link_check_interval_s", 0.0),
        ("connect_timeout_s", 0.0),
        ("connect_timeout_s", 11.0),  # beyond dial_timeout_s (10 s)
        ("persistent_dial_backoff_max_s", 0.0),
    ],
)
def test_rejoin_limits_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        NetworkConfig(**{field: value})  # type: ignore[arg-type]


def test_retransmit_timeout_zero_turns_the_check_off() -> None:
    assert NetworkConfig(retransmit_timeout_s=0.0).retransmit_timeout_s == 0.0
