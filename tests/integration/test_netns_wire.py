"""The wire of tests/integration/netns.py on its own: what it does to each frame.

The namespace tests rely on it for every delay, loss and partition they
claim, and they run only as root; this checks its rules anywhere, on
datagram socket pairs standing in for the TAPs and with time passed in.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.integration.netns import LinkShape, Wire

HOSTS = 3  # ports 0..2; port 3 is the operator's
BROADCAST = b"\xff" * 6


def mac(port: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, port])


def frame(src: int, dst: bytes, payload: bytes = b"x") -> bytes:
    return dst + mac(src) + b"\x08\x00" + payload


@pytest.fixture
def wire() -> Iterator[tuple[Wire, list[socket.socket]]]:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(HOSTS + 1)]
    for _, host_end in pairs:
        host_end.setblocking(False)
    w = Wire([wire_end.fileno() for wire_end, _ in pairs], seed=1)
    for port in range(HOSTS + 1):  # every port's MAC learnt
        w.receive(port, frame(port, BROADCAST), 0.0)
    for _, host_end in pairs:
        drain(host_end)
    yield w, [host_end for _, host_end in pairs]
    for a, b in pairs:
        a.close()
        b.close()


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(65536))
        except BlockingIOError:
            return out


def test_a_hosts_frames_wait_its_delay_and_keep_their_order(
    wire: tuple[Wire, list[socket.socket]],
) -> None:
    """With 25 ms on host 0, its frames to host 1 arrive at +25 ms, in order; host 1's
    answer (no shape) goes at once."""
    w, hosts = wire
    w.shapes[0] = LinkShape(delay_ms=25)
    w.receive(0, frame(0, mac(1), b"a"), 1.0)
    w.receive(0, frame(0, mac(1), b"b"), 1.001)
    w.send_due(1.024)
    assert drain(hosts[1]) == []
    w.send_due(1.026)
    assert [f[14:] for f in drain(hosts[1])] == [b"a", b"b"]
    w.receive(1, frame(1, mac(0), b"c"), 1.03)
    assert [f[14:] for f in drain(hosts[0])] == [b"c"]


def test_the_operators_frames_are_never_shaped_nor_partitioned(
    wire: tuple[Wire, list[socket.socket]],
) -> None:
    """Loss 100 % and a partition between hosts leave the operator's port reaching each."""
    w, hosts = wire
    w.shapes = [LinkShape(delay_ms=25, loss_pct=100) for _ in w.shapes]
    w.control(b'{"groups": [[0], [1, 2]]}')
    w.receive(0, frame(0, mac(HOSTS)), 2.0)
    w.receive(HOSTS, frame(HOSTS, mac(2)), 2.0)
    assert len(drain(hosts[HOSTS])) == 1 and len(drain(hosts[2])) == 1
    w.receive(0, frame(0, mac(1)), 2.0)
    w.send_due(3.0)
    assert drain(hosts[1]) == [] and w.counts["partitioned"] == 1


def test_loss_reorder_and_partitions_count_what_they_drop(
    wire: tuple[Wire, list[socket.socket]],
) -> None:
    """100 % loss drops everything between hosts; 100 % reordering skips the delay; a
    partition drops across groups and a broadcast reaches only its own group; heal undoes it."""
    w, hosts = wire
    w.control(b'{"shape": [0, 25, 100, 0]}')
    w.receive(0, frame(0, mac(1)), 1.0)
    assert w.counts["lost"] == 1
    w.control(b'{"shape": [0, 25, 0, 100]}')
    w.receive(0, frame(0, mac(1)), 1.0)
    assert len(drain(hosts[1])) == 1 and w.counts["reordered"] == 1
    w.control(b'{"shape": [0, 0, 0, 0], "groups": [[0, 1], [2]]}')
    w.receive(0, frame(0, BROADCAST), 1.0)
    assert [len(drain(h)) for h in hosts] == [0, 1, 0, 1]
    w.control(b'{"groups": null}')
    w.receive(0, frame(0, mac(2)), 1.0)
    assert len(drain(hosts[2])) == 1
