"""Several hosts on one machine: network namespaces joined by a shaping wire.

Why: the other integration tests run every node on 127.0.0.1, where a packet
takes microseconds and is never lost. Here each node gets a host of its own,
a network namespace with its own address, and the hosts are joined by links
with a one-way delay, loss and reordering, and partitions, so that a test or
a benchmark sees what a consortium's WAN does to the node.

The links. Each host has a TAP interface, its only link; the other end of
every TAP is one small process, the wire (`_wire_main`, this file run as a
script), which forwards Ethernet frames between the TAPs like a learning
switch and applies, to the frames a host sends, that host's `LinkShape`:
delay, loss, and reordering as netem does it (a frame picked for reordering
is sent without the delay, so it overtakes the ones in flight). A host's
egress is shaped, so two hosts with 25 ms each see a 50 ms round trip.
Why not a bridge with `tc qdisc ... netem`: the kernels this project is
tested on (a Firecracker VM's) are built without sch_netem (and without the
gact action), so netem is not there to call; the wire needs only TAP
devices and behaves the same (real frames, real TCP retransmissions).
Partitions: `partition` makes the wire drop frames between groups of hosts
(the operator's port, below, reaches every host); `set_link` takes a host's
interface down or up (`ip link set ... down`), which cuts it from everyone.

The operator's host is the root namespace: one more TAP there, with the
subnet's first address, through which tests and load generators reach the
nodes' APIs. Its frames are neither shaped nor partitioned: the delays are
between the hosts, and a client sits next to the node it uses, so what a
test or a benchmark measures is the network between validators.

Names and addresses are per run: namespaces `archipelago-<pid>-<n>-h<i>`,
TAPs `ap<pid hex>x<n>h<i>`, and a /24 of 10.77.0.0/16 that no interface or
route of the machine uses yet, chosen under a lock file so that parallel
runs do not collide. Teardown kills every process left in the namespaces,
stops the wire (its TAPs vanish with it: none is persistent) and deletes the
namespaces; namespaces left by a run whose process has died (kill -9 of the
test runner) are removed by the next run.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

SUBNET_PREFIX = "10.77"  # a private /16; each run takes one /24 of it
SUBNET_LOCK = Path("/run/lock/archipelago-netns.lock")
NETNS_DIR = Path("/run/netns")
TUN_DEVICE = Path("/dev/net/tun")
HOSTS_MAX = 200  # addresses .2 .. .201 of the run's /24; .1 is the operator's
IP_COMMAND_TIMEOUT_S = 10.0
WIRE_REPLY_TIMEOUT_S = 10.0
WIRE_STOP_TIMEOUT_S = 5.0
PROCESS_KILL_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05  # between checks that killed processes are gone

# ioctl and flags of <linux/if_tun.h>.
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

# The wire's bounds. Frames in flight: at 25 ms of delay this is 4 million frames
# a second, far beyond what the nodes send; policy when full: drop the frame
# (counted as "overflow"), as a full router queue would.
WIRE_QUEUE_FRAMES_MAX = 100_000
WIRE_FRAME_BYTES_MAX = 65_536  # a TAP hands over at most one MTU-sized frame per read
WIRE_READS_PER_WAKE_MAX = 64  # frames read from one TAP before the others get a turn
WIRE_CONTROL_BYTES_MAX = 65_536  # a control line longer than this is a bug in the caller

_NETNS_NAME = re.compile(r"archipelago-(\d+)-\d+-h\d+")
_runs = 0  # per-process counter, part of every name


class NetnsUnavailable(Exception):
    """This machine cannot host the namespaces (not root, no `ip`, no TAP device)."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (one line), or None when they can."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not installed: apt-get install iproute2"
    if not TUN_DEVICE.exists():
        return f"{TUN_DEVICE} missing: the kernel has no TUN/TAP support"
    return None


@dataclass(frozen=True, slots=True)
class LinkShape:
    """What a host's link does to each frame it sends to another host (netem on its egress)."""

    delay_ms: float = 0.0
    loss_pct: float = 0.0
    reorder_pct: float = 0.0  # of frames sent without the delay (so they overtake)

    def __post_init__(self) -> None:
        assert self.delay_ms >= 0
        assert 0 <= self.loss_pct <= 100 and 0 <= self.reorder_pct <= 100


@dataclass(frozen=True, slots=True)
class WireStatistics:
    forwarded: int  # frames handed to a TAP
    lost: int  # dropped by a LinkShape's loss
    reordered: int  # sent without the delay
    partitioned: int  # dropped between partitioned hosts
    overflow: int  # dropped because WIRE_QUEUE_FRAMES_MAX frames were in flight
    undeliverable: int  # the receiving interface was down


def _ip(*args: str) -> str:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_COMMAND_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(namespace: str) -> None:
    """SIGKILL everything running in `namespace` and wait until it is gone."""
    deadline = time.monotonic() + PROCESS_KILL_TIMEOUT_S
    while True:
        try:
            pids = [int(p) for p in _ip("netns", "pids", namespace).split()]
        except NetnsUnavailable:
            return  # the namespace is already gone
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsUnavailable(f"processes {pids} in {namespace} survive SIGKILL")
        time.sleep(POLL_INTERVAL_S)


def _delete_namespace(namespace: str) -> None:
    _kill_namespace_processes(namespace)
    with suppress(NetnsUnavailable):
        _ip("netns", "delete", namespace)


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of runs whose process no longer exists; their names."""
    removed = []
    names = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    for name in names:
        m = _NETNS_NAME.fullmatch(name)
        if m is not None and not _pid_alive(int(m.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


def _open_tap(name: str) -> int:
    """A new (not persistent) TAP `name`: it exists while a process holds the descriptor."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _subnet_in_use(third: int) -> bool:
    prefix = f"{SUBNET_PREFIX}.{third}."
    return prefix in _ip("-4", "-o", "addr", "show") or prefix in _ip("-4", "route", "show")


class Hosts:
    """`count` hosts (namespaces) on one wire, and the operator's port in the root namespace.

    Made by `open_hosts`, which also tears them down.
    """

    def __init__(self, count: int, *, seed: int) -> None:
        global _runs
        if not 1 <= count <= HOSTS_MAX:
            raise ValueError(f"hosts: expected 1..{HOSTS_MAX}, got {count}")
        _runs += 1
        pid = os.getpid()
        self.count = count
        self.seed = seed
        self.namespaces = [f"archipelago-{pid}-{_runs}-h{i}" for i in range(count)]
        self._taps = [f"ap{pid:x}x{_runs}h{i}" for i in range(count)]
        self._operator_tap = f"ap{pid:x}x{_runs}op"
        self._wire: subprocess.Popen[bytes] | None = None
        self._made: list[str] = []  # namespaces created so far (for teardown)
        self.addresses: list[str] = []
        self.operator_address = ""

    def setup(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise NetnsUnavailable(reason)
        remove_stale_namespaces()
        fds: list[int] = []
        try:
            for tap in [*self._taps, self._operator_tap]:
                fds.append(_open_tap(tap))
            self._wire = subprocess.Popen(
                [sys.executable, __file__, "wire", str(self.seed), *map(str, fds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)  # the wire holds them now
        self.statistics()  # the wire is up and answering
        SUBNET_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(SUBNET_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the subnet is taken
            third = self._free_subnet()
            self.operator_address = f"{SUBNET_PREFIX}.{third}.1"
            _ip("addr", "add", f"{self.operator_address}/24", "dev", self._operator_tap)
        _ip("link", "set", self._operator_tap, "up")
        for i, (namespace, tap) in enumerate(zip(self.namespaces, self._taps, strict=True)):
            address = f"{SUBNET_PREFIX}.{third}.{i + 2}"
            _ip("netns", "add", namespace)
            self._made.append(namespace)
            _ip("link", "set", tap, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", tap)
            _ip("-n", namespace, "link", "set", tap, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            self.addresses.append(address)

    def _free_subnet(self) -> int:
        rng = random.Random(os.getpid() ^ time.monotonic_ns())
        for third in rng.sample(range(1, 255), 254):
            if not _subnet_in_use(third):
                return third
        raise NetnsUnavailable(f"every /24 of {SUBNET_PREFIX}.0.0/16 is in use")

    @property
    def wire_pid(self) -> int:
        assert self._wire is not None
        return self._wire.pid

    def wrapper(self, host: int) -> tuple[str, ...]:
        """The command prefix that runs a program on `host`."""
        return ("ip", "netns", "exec", self.namespaces[host])

    def shape(self, shape: LinkShape, hosts: Sequence[int] | None = None) -> WireStatistics:
        """Give every host's link (or those of `hosts`) `shape`."""
        for i in range(self.count) if hosts is None else hosts:
            self._command({"shape": [i, shape.delay_ms, shape.loss_pct, shape.reorder_pct]})
        return self.statistics()

    def partition(self, groups: Sequence[Sequence[int]]) -> WireStatistics:
        """Drop every frame between hosts of different groups (each host in one group)."""
        seen = sorted(i for g in groups for i in g)
        assert seen == list(range(self.count)), f"groups must cover each host once: {groups}"
        return self._command({"groups": [list(g) for g in groups]})

    def heal(self) -> WireStatistics:
        """Undo `partition`."""
        return self._command({"groups": None})

    def set_link(self, host: int, *, up: bool) -> WireStatistics:
        """Take `host`'s interface down (it reaches no one, and no one it) or up again."""
        _ip("-n", self.namespaces[host], "link", "set", self._taps[host], "up" if up else "down")
        return self.statistics()

    def statistics(self) -> WireStatistics:
        return self._command({})

    def _command(self, command: dict[str, Any]) -> WireStatistics:
        wire = self._wire
        assert wire is not None and wire.stdin is not None and wire.stdout is not None
        wire.stdin.write(json.dumps(command).encode() + b"\n")
        wire.stdin.flush()
        reply = _read_line(wire.stdout, WIRE_REPLY_TIMEOUT_S)
        if not reply:
            raise NetnsUnavailable(f"the wire exited (code {wire.poll()})")
        return WireStatistics(**json.loads(reply))

    def close(self) -> None:
        """Kill what runs in the namespaces, stop the wire, delete the namespaces."""
        for namespace in self._made:
            _kill_namespace_processes(namespace)
        wire, self._wire = self._wire, None
        if wire is not None:
            assert wire.stdin is not None
            with suppress(OSError):
                wire.stdin.close()  # end of input: the wire exits
            try:
                wire.wait(WIRE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                wire.kill()
                wire.wait()
            if wire.stdout is not None:
                wire.stdout.close()
        for namespace in self._made:
            _delete_namespace(namespace)
        self._made.clear()


def _read_line(stream: IO[bytes], timeout_s: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise NetnsUnavailable(f"the wire did not answer within {timeout_s} s")
    return stream.readline()


@contextmanager
def open_hosts(count: int, *, seed: int = 0) -> Iterator[Hosts]:
    """`count` hosts on one wire; everything torn down on the way out, even on failure."""
    hosts = Hosts(count, seed=seed)
    try:
        hosts.setup()
        yield hosts
    finally:
        hosts.close()


# ---------------------------------------------------------------------- the wire


class Wire:
    """The forwarding loop: one port per TAP descriptor, the last one the operator's."""

    def __init__(self, fds: list[int], seed: int) -> None:
        self.fds = fds
        self.operator = len(fds) - 1
        self.rng = random.Random(seed)
        self.shapes = [LinkShape() for _ in fds]
        self.group: dict[int, int] | None = None  # host -> group while partitioned
        self.macs: dict[bytes, int] = {}  # learnt: source MAC -> port
        self.queue: list[tuple[float, int, int, bytes]] = []  # (due, seq, port, frame)
        self.seq = 0
        self.counts = dict.fromkeys(
            ("forwarded", "lost", "reordered", "partitioned", "overflow", "undeliverable"), 0
        )

    def control(self, line: bytes) -> bytes:
        command = json.loads(line)
        if "shape" in command:
            port, delay_ms, loss_pct, reorder_pct = command["shape"]
            self.shapes[port] = LinkShape(delay_ms, loss_pct, reorder_pct)
        if "groups" in command:
            groups = command["groups"]
            self.group = (
                None if groups is None else {i: g for g, hs in enumerate(groups) for i in hs}
            )
        return json.dumps(self.counts).encode() + b"\n"

    def _shaped(self, a: int, b: int) -> bool:
        return self.operator not in (a, b)

    def _connected(self, a: int, b: int) -> bool:
        if self.group is None or self.operator in (a, b):
            return True
        return self.group[a] == self.group[b]

    def receive(self, port: int, frame: bytes, now: float) -> None:
        if len(frame) < 14:
            return  # not an Ethernet frame
        self.macs[frame[6:12]] = port
        destination = self.macs.get(frame[:6]) if not frame[0] & 1 else None
        if destination == port:
            return
        outs = [destination] if destination is not None else range(len(self.fds))
        shape = self.shapes[port]
        for out in outs:
            if out == port:
                continue
            if not self._connected(port, out):
                self.counts["partitioned"] += 1
                continue
            if not self._shaped(port, out):
                self.send(out, frame)
                continue
            if shape.loss_pct and self.rng.random() * 100 < shape.loss_pct:
                self.counts["lost"] += 1
                continue
            delay_s = shape.delay_ms / 1000
            if delay_s and shape.reorder_pct and self.rng.random() * 100 < shape.reorder_pct:
                delay_s = 0.0
                self.counts["reordered"] += 1
            if not delay_s:
                self.send(out, frame)
            elif len(self.queue) >= WIRE_QUEUE_FRAMES_MAX:
                self.counts["overflow"] += 1
            else:
                self.seq += 1
                heapq.heappush(self.queue, (now + delay_s, self.seq, out, frame))

    def send(self, port: int, frame: bytes) -> None:
        try:
            os.write(self.fds[port], frame)
        except OSError:  # the interface is down (EIO) or its queue is full
            self.counts["undeliverable"] += 1
            return
        self.counts["forwarded"] += 1

    def send_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, port, frame = heapq.heappop(self.queue)
            self.send(port, frame)

    def run(self, control_fd: int) -> None:
        poller = select.epoll()
        poller.register(control_fd, select.EPOLLIN)
        by_fd = {fd: port for port, fd in enumerate(self.fds)}
        for fd in self.fds:
            poller.register(fd, select.EPOLLIN)
        pending = b""
        while True:
            timeout = max(0.0, self.queue[0][0] - time.monotonic()) if self.queue else -1.0
            for fd, _ in poller.poll(timeout):
                if fd == control_fd:
                    chunk = os.read(control_fd, WIRE_CONTROL_BYTES_MAX)
                    if not chunk:
                        return  # the parent closed our input (or died): stop
                    pending += chunk
                    assert len(pending) <= WIRE_CONTROL_BYTES_MAX, "control line too long"
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        os.write(1, self.control(line))
                    continue
                now = time.monotonic()
                for _ in range(WIRE_READS_PER_WAKE_MAX):
                    try:
                        frame = os.read(fd, WIRE_FRAME_BYTES_MAX)
                    except BlockingIOError:
                        break
                    except OSError:
                        break  # the interface is down or gone
                    self.receive(by_fd[fd], frame, now)
            self.send_due(time.monotonic())


def _wire_main(argv: list[str]) -> int:
    seed, *fds = (int(a) for a in argv)
    # The test runner's Ctrl-C is for the runner, which then stops the wire itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Wire(fds, seed).run(control_fd=0)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["wire"]:
        sys.exit(f"usage: {sys.argv[0]} wire SEED FD...")
    sys.exit(_wire_main(sys.argv[2:]))
