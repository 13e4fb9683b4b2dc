"""A hostile peer: the real handshake, then frames written by hand with no checks of its own.

Why: issue 11 wants the attacks that a peer written from docs/PROTOCOL.md
found at b186c6b to run against real nodes in every `make test`, and their
cost measured (benchmarks/hostile.py). The node's own network code would
refuse to send what these attacks need, so this peer shares only the
handshake with it (network/secure.py over network/noise.py: the one part
that must be honest, or the target reads nothing after it) and writes every
frame by hand: a 4-byte length, then msgpack (PROTOCOL.md section 8.4).

It is a library (`RawPeer`, one function per attack, each returning a
`Report`) and a process, which is how the tests and the benchmark run it, so
that its CPU never delays the process that observes the nodes:

    python tests/integration/hostile_peer.py decode-bomb \
        --target 127.0.0.1:26656 --home testnet/node0 [--variant frame|ping|payload]

prints what it does on stderr and its `Report` as one JSON line on stdout.
Every connection uses a fresh identity key (a new key costs nothing), unless
`--key` names a node_key.json. `--home` is any home of the chain: the attacker
reads the chain id, the validator set and the crypto suite (its fresh keys and
the hashes it computes are the chain's) from its genesis.json, nothing else.

Attacks (issues 10 and 11):

    decode-bomb        one 16 MiB frame of nested empty arrays ([2, 1, [[], ...]] or
                       [3, [[], ...]]), or a payload of 16 M empty maps inside a valid
                       batch on the consensus channel (node/messages.py decodes to tuples,
                       and an empty tuple costs nothing, an empty dict 64 bytes)
    slow-frames        N connections each announce a 16 MiB frame, send all but one byte, hold
    ping-flood         PING frames as fast as the socket takes them, never reading
    sync-flood         sync_request(height=1, count=16) as fast as possible, never reading
    handshake-garbage  garbage, bad third messages and half-open handshakes from one IP
    false-height       sync_status claiming the target's height + 10**6, every second,
                       to one or several targets; never serves a block
    forged-flood       copies of real votes in DIRECT batches, forged proposals near the
                       frame limit, a forged decided block, forged next-height proposals
                       and votes, forged votes carrying each validator's address
    body-swap          relay each real proposal with another body, to every other target
    none               nothing for --duration seconds: the baseline of an observation

The second half of this file (`run_attack`) runs one attack as a process
against a live testnet of tests/integration/nodes.py, under light transfer
load, and records what the honest nodes did: heights, block hashes, the
target's peak RSS and event-loop lag (node/loopwatch.py), whether the attacker
was cut off. test_hostile_peer.py asserts on that record;
benchmarks/hostile.py prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import trio

from consensus.crypto import PrivateKey, activate
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Header,
    Proposal,
    Transaction,
    ValidatorSet,
    Vote,
    VoteType,
)
from network import noise
from network.errors import ConnectionClosed, HandshakeError, NetworkError
from network.secure import (
    SecureConnection,
    encode_identity_payload,
    handshake,
    node_id_of,
)
from node.config import load_config, save_config
from node.home import load_genesis_file
from node.keys import load_key
from node.messages import (
    DecidedMsg,
    ProposalMsg,
    VoteMsg,
    decode_message,
    encode_message,
)

# The defaults of docs/PROTOCOL.md that the attacks aim at.
FRAME_BYTES_MAX = 16 * 1024 * 1024
KIND_HELLO, KIND_DIRECT, KIND_GOSSIP, KIND_PING = 0, 1, 2, 3
CONSENSUS, BLOCKSYNC = 1, 3
TAG_PROPOSAL, TAG_STATUS, TAG_SYNC_STATUS, TAG_SYNC_REQUEST = 1, 3, 20, 21
# Encoded transactions may be this long (consensus/types.py TX_BYTES_MAX).
TX_BYTES_MAX = 32 * 1024 + 256

HANDSHAKE_TIMEOUT_S = 10.0
# How long to read, after an attack, for the target to close a connection it
# has not closed yet: enough to drain what it queued for us on loopback.
CLOSE_CHECK_S = 2.0
# A connection that sees no HELLO from the target this soon after the
# handshake was refused (a node checks bans after the handshake, before HELLO).
HELLO_WAIT_S = 5.0
# How long the target has, after an attack that judged many messages, to
# close the connections it has not closed yet (its verdicts may queue behind
# 16 MiB proposals).
VERDICT_S = 5.0
# forged-flood: how many more slices a part may take to get one of its connections
# closed. The target drops unread, proving nothing, frames for a height it has
# left, and next-height frames while it is in block sync (a loaded target falls
# behind under the forged-decided flood and catches up by block sync: CI saw a
# whole 3-slice next-height part go unjudged that way).
PART_EXTRA_SLICES = 5
# Protocol rule (section 10): nodes send their status every second.
STATUS_INTERVAL_S = 1.0

_transport_errors = (
    NetworkError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


def log(*parts: object) -> None:
    print("hostile_peer:", *parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- msgpack by hand


def mp_uint(n: int) -> bytes:
    assert 0 <= n < 2**64
    if n < 0x80:
        return bytes([n])
    if n < 2**8:
        return b"\xcc" + n.to_bytes(1, "big")
    if n < 2**16:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 2**32:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


def mp_array(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 2**16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def mp_bin(data: bytes) -> bytes:
    n = len(data)
    if n < 2**8:
        return b"\xc4" + n.to_bytes(1, "big") + data
    if n < 2**16:
        return b"\xc5" + n.to_bytes(2, "big") + data
    return b"\xc6" + n.to_bytes(4, "big") + data


def frame(body: bytes) -> bytes:
    """A frame: the body's length as 4 bytes big-endian, then the body (section 8.4)."""
    return len(body).to_bytes(4, "big") + body


def hello_frame(listen_port: int = 0) -> bytes:
    return frame(mp_array(3) + mp_uint(KIND_HELLO) + mp_uint(1) + mp_uint(listen_port))


def ping_frame(nonce: int) -> bytes:
    return frame(mp_array(2) + mp_uint(KIND_PING) + mp_uint(nonce))


def batch_frame(channel: int, payloads: Sequence[bytes], *, gossip: bool = False) -> bytes:
    """[kind, channel, [payload, ...]] with no limit on count or size."""
    kind = KIND_GOSSIP if gossip else KIND_DIRECT
    items = b"".join(mp_bin(p) for p in payloads)
    return frame(mp_array(3) + mp_uint(kind) + mp_uint(channel) + mp_array(len(payloads)) + items)


def _unpack(data: bytes) -> Any:
    """Honest nodes' bytes, decoded leniently (the attacker trusts what it reads)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None


# ---------------------------------------------------------------- the connection


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Target:
        host, _, port = text.rpartition(":")
        return cls(host or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Chain:
    """What the attacker knows of the chain: the public genesis, nothing more."""

    chain_id: str
    validators: ValidatorSet

    @classmethod
    def from_home(cls, home: Path) -> Chain:
        genesis = load_genesis_file(home / "genesis.json")
        return cls(genesis.chain_id, genesis.validator_set)


class Refused(Exception):
    """The target completed the handshake and then closed without admitting us."""


class RawPeer:
    """One connection after an honest handshake; every frame on it is written by hand."""

    def __init__(self, stream: trio.SocketStream, conn: SecureConnection, key: PrivateKey) -> None:
        self.stream = stream
        self.conn = conn
        self.key = key
        self.node_id = node_id_of(key.public_key)
        self.closed = False
        self.closed_at = math.inf
        self.bytes_sent = 0
        self.hello_seen = False
        self._inbox = bytearray()

    @classmethod
    async def open(
        cls, target: Target, chain_id: str, key: PrivateKey | None = None, *, hello: bool = True
    ) -> RawPeer:
        """Dial, complete Noise XX as the initiator, send HELLO and wait for the target's.

        The target's HELLO is the proof it admitted us: a node checks bans and
        membership right after the handshake and closes without a word. Raises
        Refused when it does, HandshakeError or OSError when it refuses us
        before or during the handshake. With `hello=False`, sends nothing and
        does not wait.
        """
        key = key or PrivateKey.generate()
        stream = await trio.open_tcp_stream(target.host, target.port)
        static_private, static_public = noise.generate_keypair()
        try:
            conn = await handshake(
                stream,
                initiator=True,
                identity=key,
                static_private=static_private,
                identity_payload=encode_identity_payload(key, static_public),
                chain_id=chain_id,
                timeout_s=HANDSHAKE_TIMEOUT_S,
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        peer = cls(stream, conn, key)
        if hello:
            await peer.send(hello_frame())
            if not await peer.wait_hello():
                await peer.aclose()
                raise Refused(f"closed without a HELLO after the handshake ({peer.node_id})")
        return peer

    def _mark_closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.closed_at = trio.current_time()

    async def send(self, plaintext: bytes) -> bool:
        """Encrypt and write exactly these frame bytes; False once the target has closed."""
        if self.closed:
            return False
        try:
            await self.conn.send(plaintext)
        except _transport_errors:
            self._mark_closed()
            return False
        self.bytes_sent += len(plaintext)
        return True

    async def receive_frames(self) -> list[bytes]:
        """Bodies of the frames that arrived with the next read; [] once closed."""
        if self.closed:
            return []
        try:
            data = await self.conn.receive()
        except _transport_errors:
            self._mark_closed()
            return []
        inbox = self._inbox
        inbox += data
        bodies: list[bytes] = []
        offset = 0
        while len(inbox) - offset >= 4:
            length = int.from_bytes(inbox[offset : offset + 4], "big")
            if len(inbox) - offset - 4 < length:
                break
            bodies.append(bytes(inbox[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        del inbox[:offset]
        if not self.hello_seen:
            self.hello_seen = any(b[:2] == b"\x93\x00" for b in bodies)
        return bodies

    async def payloads(self) -> list[tuple[int, bytes]]:
        """(channel, payload) of the batches that arrived with the next read."""
        out: list[tuple[int, bytes]] = []
        for body in await self.receive_frames():
            value = _unpack(body)
            if type(value) is list and len(value) == 3 and value[0] in (KIND_DIRECT, KIND_GOSSIP):
                out.extend((value[1], p) for p in value[2] if type(p) is bytes)
        return out

    async def wait_closed(self, timeout_s: float) -> bool:
        """Read (and drop) whatever arrives until the target closes or `timeout_s` passes."""
        with trio.move_on_after(timeout_s):
            while not self.closed:
                await self.receive_frames()
        return self.closed

    async def wait_hello(self, timeout_s: float = HELLO_WAIT_S) -> bool:
        """True once the target's HELLO arrived: it registered us (it was not banned)."""
        with trio.move_on_after(timeout_s):
            while not self.hello_seen and not self.closed:
                await self.receive_frames()
        return self.hello_seen

    async def aclose(self) -> None:
        self._mark_closed()
        await trio.aclose_forcefully(self.stream)


@dataclass
class Report:
    """What one attack did and what the target did to the attacker's connections."""

    attack: str
    target: str
    connections: int = 0  # admitted (TCP connections opened, for handshake-garbage)
    refused: int = 0  # refused at connect, during the handshake, or right after it
    closed_by_target: int = 0  # of `connections`, closed by the target during the attack
    frames_sent: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    # For each connection the target closed: seconds from the attack's start.
    closed_after_s: list[float] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def cut_off(self) -> bool:
        """Every connection the attacker got was refused or closed by the target."""
        return self.closed_by_target >= self.connections

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["closed_after_s"] = [round(t, 2) for t in self.closed_after_s]
        out["duration_s"] = round(self.duration_s, 2)
        out["cut_off"] = self.cut_off
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Report:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


class _Tally:
    """Connections of one attack, for its report."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.started = trio.current_time()
        self.peers: list[RawPeer] = []

    async def open(
        self, target: Target, chain: Chain, key: PrivateKey | None = None
    ) -> RawPeer | None:
        try:
            peer = await RawPeer.open(target, chain.chain_id, key)
        except (HandshakeError, Refused, OSError, trio.BrokenResourceError) as exc:
            log("refused:", type(exc).__name__, exc)
            self.report.refused += 1
            return None
        self.report.connections += 1
        self.report.node_ids.append(peer.node_id)
        self.peers.append(peer)
        return peer

    async def finish(self, *, check_s: float = CLOSE_CHECK_S) -> Report:
        """Give the target `check_s` to close what it has not closed, then close the rest."""
        async with trio.open_nursery() as nursery:
            for peer in self.peers:
                if not peer.closed:
                    nursery.start_soon(peer.wait_closed, check_s)
        r = self.report
        for peer in self.peers:
            r.bytes_sent += peer.bytes_sent
            if peer.closed:
                r.closed_by_target += 1
                r.closed_after_s.append(peer.closed_at - self.started)
            else:
                await peer.aclose()
        r.duration_s = trio.current_time() - self.started
        return r


async def is_banned(target: Target, chain: Chain, key: PrivateKey) -> bool:
    """Whether the target refuses `key` now: it closes without sending HELLO."""
    try:
        peer = await RawPeer.open(target, chain.chain_id, key)
    except (HandshakeError, Refused, OSError, trio.BrokenResourceError):
        return True
    await peer.aclose()
    return False


# ---------------------------------------------------------------- attacks


def bomb_body(variant: str, size: int = FRAME_BYTES_MAX) -> bytes:
    """A frame body of exactly `size` bytes whose decoding builds one object per byte."""
    if variant == "frame":  # GOSSIP on consensus whose payload list is [[], [], ...]
        head = mp_array(3) + mp_uint(KIND_GOSSIP) + mp_uint(CONSENSUS)
        n = size - len(head) - 5
        return head + mp_array(n) + b"\x90" * n
    if variant == "ping":  # [3, [[], [], ...]]
        head = mp_array(2) + mp_uint(KIND_PING)
        n = size - len(head) - 5
        return head + mp_array(n) + b"\x90" * n
    if variant == "payload":  # a valid batch; its one payload is [1, [{}, {}, ...]]
        head = mp_array(3) + mp_uint(KIND_GOSSIP) + mp_uint(CONSENSUS) + mp_array(1)
        payload_bytes = size - len(head) - 5
        n = payload_bytes - 2 - 5
        payload = mp_array(2) + mp_uint(TAG_PROPOSAL) + mp_array(n) + b"\x80" * n
        return head + mp_bin(payload)
    raise ValueError(f"unknown decode-bomb variant {variant!r}")


async def decode_bomb(
    target: Target,
    chain: Chain,
    *,
    variant: str = "frame",
    key: PrivateKey | None = None,
    wait_s: float = 30.0,
) -> Report:
    """One frame of `FRAME_BYTES_MAX` bytes that costs ~70 bytes of objects per byte to decode."""
    report = Report(f"decode-bomb-{variant}", str(target))
    tally = _Tally(report)
    body = bomb_body(variant)
    peer = await tally.open(target, chain, key)
    if peer is not None and await peer.send(frame(body)):
        report.frames_sent += 1
        log(f"sent a {len(body)}-byte {variant} bomb; waiting up to {wait_s} s for the verdict")
        await peer.wait_closed(wait_s)
    await tally.finish()
    if peer is not None:
        report.notes["banned"] = await is_banned(target, chain, peer.key)
    return report


async def slow_frames(
    target: Target, chain: Chain, *, connections: int = 16, hold_s: float = 25.0
) -> Report:
    """Each connection announces a full-size frame, sends all but its last byte, and holds.

    Everything happens within `hold_s` of the start: a node that bounds what
    it buffers for incomplete frames stops reading some connections, and
    their sends (which the kernel's buffers may absorb whole on loopback)
    then wait their turn. The report says how many connections the target
    closed within `hold_s`; notes.sent counts the partial frames written out.
    """
    report = Report("slow-frames", str(target), notes={"announced_bytes": FRAME_BYTES_MAX})
    tally = _Tally(report)
    deadline = tally.started + hold_s
    head = mp_array(3) + mp_uint(KIND_GOSSIP) + mp_uint(CONSENSUS) + mp_array(1)
    payload_bytes = FRAME_BYTES_MAX - len(head) - 5
    body = head + b"\xc6" + payload_bytes.to_bytes(4, "big") + bytes(payload_bytes)
    partial = frame(body)[:-1]

    async def one() -> None:
        peer = await tally.open(target, chain)
        if peer is None:
            return
        with trio.move_on_at(deadline):
            if await peer.send(partial):
                report.frames_sent += 1
            # A send cut by the deadline leaves the stream unusable: it is over anyway.
            await peer.wait_closed(math.inf)

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    report.notes["sent"] = report.frames_sent
    return await tally.finish(check_s=0)


async def _flood(
    report: Report, peer: RawPeer, chunk: bytes, per_chunk: int, duration_s: float
) -> None:
    """Write `chunk` again and again for `duration_s`, never reading."""
    with trio.move_on_after(duration_s):
        while await peer.send(chunk):
            report.frames_sent += per_chunk
    # A write cut by the deadline leaves half a transport message: the
    # connection is useless to us from here on, which ends the attack anyway.


async def ping_flood(
    target: Target,
    chain: Chain,
    *,
    duration_s: float = 8.0,
    pings_per_write: int = 8192,
    key: PrivateKey | None = None,
) -> Report:
    """PINGs as fast as the target takes them; the PONGs it owes us are never read."""
    report = Report("ping-flood", str(target))
    tally = _Tally(report)
    peer = await tally.open(target, chain, key)
    if peer is not None:
        chunk = b"".join(ping_frame(n) for n in range(pings_per_write))
        await _flood(report, peer, chunk, pings_per_write, duration_s)
        report.notes["pings_per_s"] = round(report.frames_sent / duration_s)
    await tally.finish()
    if peer is not None:
        report.notes["banned"] = await is_banned(target, chain, peer.key)
    return report


async def sync_flood(
    target: Target,
    chain: Chain,
    *,
    duration_s: float = 8.0,
    requests_per_frame: int = 1000,
    key: PrivateKey | None = None,
) -> Report:
    """sync_request(height=1, count=16), 4 bytes each, as fast as possible, never reading."""
    report = Report("sync-flood", str(target))
    tally = _Tally(report)
    peer = await tally.open(target, chain, key)
    if peer is not None:
        request = mp_array(3) + mp_uint(TAG_SYNC_REQUEST) + mp_uint(1) + mp_uint(16)
        chunk = batch_frame(BLOCKSYNC, [request] * requests_per_frame)
        await _flood(report, peer, chunk, 1, duration_s)
        report.notes["requests"] = report.frames_sent * requests_per_frame
    await tally.finish()
    if peer is not None:
        report.notes["banned"] = await is_banned(target, chain, peer.key)
    return report


async def handshake_garbage(
    target: Target,
    chain: Chain,
    *,
    connections: int = 60,
    half_open: int = 30,
    hold_s: float = 12.0,
) -> Report:
    """Unauthenticated abuse from our (shared) IP: junk, bad third messages, half-open.

    A third of the `connections` send random bytes, a third complete messages
    1-2 honestly and send a random message 3, a third send random bytes with
    a plausible length; `half_open` more send message 1 and then nothing.
    Each is watched for `hold_s` for the target to close it.
    """
    report = Report("handshake-garbage", str(target), notes={"half_open": half_open})
    started = trio.current_time()
    rng = random.Random()

    async def one(kind: str) -> None:
        try:
            stream = await trio.open_tcp_stream(target.host, target.port)
        except OSError:
            report.refused += 1
            return
        report.connections += 1
        closed = False
        with trio.move_on_after(hold_s):
            try:
                await _garbage(stream, kind, chain.chain_id, rng)
                while await stream.receive_some(65536):
                    pass
                closed = True
            except _transport_errors:
                closed = True
        await trio.aclose_forcefully(stream)
        if closed:
            report.closed_by_target += 1
            report.closed_after_s.append(trio.current_time() - started)

    kinds = ["junk", "bad-final", "long-junk"] * (connections // 3) + ["half-open"] * half_open
    async with trio.open_nursery() as nursery:
        for kind in kinds:
            nursery.start_soon(one, kind)
            await trio.sleep(0.005)  # a burst, but in arrival order
    report.frames_sent = len(kinds)
    report.duration_s = trio.current_time() - started
    return report


async def _garbage(stream: trio.SocketStream, kind: str, chain_id: str, rng: random.Random) -> None:
    if kind == "junk":
        await stream.send_all(rng.randbytes(rng.randrange(64, 512)))
        return
    if kind == "long-junk":  # a well-formed message 1 (any 32 bytes), then junk
        await stream.send_all((32).to_bytes(2, "big") + rng.randbytes(32) + rng.randbytes(200))
        return
    state = noise.HandshakeState(
        initiator=True, prologue=chain_id.encode(), static_private=noise.generate_keypair()[0]
    )
    first = state.write_message(b"")
    await stream.send_all(len(first).to_bytes(2, "big") + first)
    if kind == "half-open":
        return
    # bad-final: read message 2, answer with 165 random bytes in place of message 3.
    buffer = bytearray()
    while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
        data = await stream.receive_some(4096)
        if not data:
            raise ConnectionClosed("closed during the handshake")
        buffer += data
    await stream.send_all((165).to_bytes(2, "big") + rng.randbytes(165))


async def _learn_height(peer: RawPeer, timeout_s: float) -> int:
    """The target's committed height, from the sync_status it sends every second."""
    with trio.move_on_after(timeout_s):
        while not peer.closed:
            for channel, payload in await peer.payloads():
                value = _unpack(payload)
                if channel == BLOCKSYNC and type(value) is list and value[:1] == [TAG_SYNC_STATUS]:
                    return int(value[2])
    return -1


async def false_height(
    targets: Sequence[Target], chain: Chain, *, duration_s: float = 10.0, above: int = 10**6
) -> Report:
    """Claim a height `above` the target's every second; serve none of it (issue 10, item 2)."""
    report = Report("false-height", ",".join(map(str, targets)), notes={"sync_requests": 0})
    tally = _Tally(report)

    async def claim(target: Target) -> None:
        peer = await tally.open(target, chain)
        if peer is None:
            return
        with trio.move_on_after(duration_s):
            height = await _learn_height(peer, 2 * STATUS_INTERVAL_S)
            while not peer.closed:
                status = mp_array(3) + mp_uint(TAG_SYNC_STATUS) + mp_uint(1)
                if not await peer.send(batch_frame(BLOCKSYNC, [status + mp_uint(height + above)])):
                    break
                report.frames_sent += 1
                with trio.move_on_after(STATUS_INTERVAL_S):
                    while not peer.closed:
                        for channel, payload in await peer.payloads():
                            value = _unpack(payload)
                            if channel != BLOCKSYNC or type(value) is not list:
                                continue
                            if value[:1] == [TAG_SYNC_REQUEST]:
                                report.notes["sync_requests"] += 1  # never answered
                            elif value[:1] == [TAG_SYNC_STATUS]:
                                height = max(height, int(value[2]))

    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(claim, target)
    return await tally.finish()


@dataclass
class _View:
    """What an observing connection learnt: the target's position and real votes."""

    height: int = 0
    round: int = 0
    votes: dict[bytes, bytes] = field(default_factory=dict)  # signature -> payload
    proposal: ProposalMsg | None = None
    changed: trio.Event = field(default_factory=trio.Event)


async def _observe(peer: RawPeer, view: _View) -> None:
    while not peer.closed:
        for channel, payload in await peer.payloads():
            if channel != CONSENSUS or not payload:
                continue
            if payload[1:2] == bytes([TAG_STATUS]):
                value = _unpack(payload)
                if type(value) is list and len(value) == 3 and int(value[1]) >= view.height:
                    view.height, view.round = int(value[1]), int(value[2])
                    view.changed.set()
                continue
            try:
                msg = decode_message(payload)
            except ValueError:
                continue
            if isinstance(msg, VoteMsg) and msg.vote.height >= view.height:
                # Votes are gossiped as they are cast: a fresher position than status.
                if msg.vote.height > view.height:
                    view.height, view.round = msg.vote.height, msg.vote.round
                    view.votes.clear()
                if len(view.votes) >= 64:
                    view.votes.pop(next(iter(view.votes)))
                view.votes[msg.vote.signature] = payload
                view.changed.set()
            elif isinstance(msg, ProposalMsg):
                view.proposal = msg


def forged_block(chain: Chain, height: int, txs: Sequence[bytes], rng: random.Random) -> Block:
    """A block that decodes (right sizes everywhere) but that nobody proposed or signed."""
    proposer = chain.validators[height % len(chain.validators)].address
    header = Header(
        chain_id=chain.chain_id,
        height=height,
        time_ms=2**40 + rng.randrange(2**20),
        last_block_hash=rng.randbytes(32) if height > 1 else b"",
        last_commit_hash=rng.randbytes(32) if height > 1 else b"",
        data_hash=rng.randbytes(32),
        validators_hash=chain.validators.hash,
        next_validators_hash=chain.validators.hash,
        app_hash=rng.randbytes(32),
        last_results_hash=rng.randbytes(32),
        evidence_hash=rng.randbytes(32),
        proposer_address=proposer,
    )
    last_commit = None
    if height > 1:
        last_commit = forged_commit(chain, height - 1, rng.randbytes(32), rng)
    return Block(header, tuple(txs), last_commit)


def forged_commit(chain: Chain, height: int, block_hash: bytes, rng: random.Random) -> Commit:
    signatures = tuple(CommitSig(i, rng.randbytes(64)) for i in range(len(chain.validators)))
    return Commit(height, 0, block_hash, signatures)


def forged_vote(
    chain: Chain, height: int, round_: int, index: int, rng: random.Random, block_hash: bytes = b""
) -> bytes:
    validator = chain.validators[index]
    vote_type = VoteType.PREVOTE if rng.random() < 0.5 else VoteType.PRECOMMIT
    vote = Vote(
        vote_type,
        height,
        round_,
        block_hash or rng.randbytes(32),
        validator.address,
        index,
        rng.randbytes(64),
    )
    return encode_message(VoteMsg(vote))


def forged_proposal(
    chain: Chain, height: int, round_: int, block: Block, rng: random.Random
) -> bytes:
    proposal = Proposal(height, round_, -1, block.hash, rng.randbytes(64))
    return encode_message(ProposalMsg(proposal, block))


def big_txs(total_bytes: int, rng: random.Random) -> list[bytes]:
    """Transaction-shaped byte strings (each at most TX_BYTES_MAX) adding up to `total_bytes`."""
    size = TX_BYTES_MAX - 64
    one = Transaction(rng.randbytes(32), 0, rng.randbytes(size - 120), rng.randbytes(64)).encode()
    return [one[:-8] + i.to_bytes(8, "big") for i in range(total_bytes // (len(one) + 5))]


async def forged_flood(
    target: Target, chain: Chain, *, duration_s: float = 12.0, rng: random.Random | None = None
) -> Report:
    """Issue 10 items 5 and 6, one after the other, each from fresh identities.

    An observer connection (sends only HELLO, not counted as an attacker)
    follows the target's height and round and collects real votes. Then, each
    for a fifth of `duration_s`: copies of those votes in DIRECT batches (no
    seen-cache on DIRECT); forged proposals near the frame limit; a forged
    decided block naming another block; 4 forged next-height proposals and
    1,020 forged next-height votes; forged votes carrying each validator's
    address (the target's own among them). The report's notes give, per
    part, the connections it used and how many the target closed.
    """
    rng = rng or random.Random()
    report = Report("forged-flood", str(target))
    started = trio.current_time()
    view = _View()
    observer = await RawPeer.open(target, chain.chain_id)
    slice_s = duration_s / 5
    parts: dict[str, dict[str, int]] = {}

    tallies: dict[str, _Tally] = {}

    async def part(name: str, make_frames: Callable[[], list[bytes]]) -> None:
        """Send frames from `make_frames()` on connections with fresh keys for one slice.

        A slice that ends before the target has closed any of its connections goes
        on, up to PART_EXTRA_SLICES more: on a loaded machine the target may have
        moved past the height the frames name (then it drops them unread, which
        proves nothing) or not yet have read them.
        """
        tally = tallies[name] = _Tally(Report(name, str(target)))
        deadline = trio.current_time() + slice_s
        with trio.move_on_after(slice_s * (1 + PART_EXTRA_SLICES)):
            while trio.current_time() < deadline or not any(p.closed for p in tally.peers):
                peer = await tally.open(target, chain)
                if peer is None:
                    await trio.sleep(0.05)
                    continue
                while not peer.closed and (
                    trio.current_time() < deadline or not any(p.closed for p in tally.peers)
                ):
                    chunks = make_frames()
                    for chunk in chunks:
                        if not await peer.send(chunk):
                            break
                        tally.report.frames_sent += 1
                    await trio.sleep(0 if chunks else 0.05)

    async def verdicts() -> None:
        """Every part's connections get VERDICT_S after the last part to be closed."""
        async with trio.open_nursery() as nursery:
            for tally in tallies.values():
                nursery.start_soon(functools.partial(tally.finish, check_s=VERDICT_S))
        for name, tally in tallies.items():
            r = tally.report
            parts[name] = {
                "connections": r.connections,
                "closed_by_target": r.closed_by_target,
                "frames": r.frames_sent,
            }
            report.connections += r.connections
            report.closed_by_target += r.closed_by_target
            report.refused += r.refused
            report.frames_sent += r.frames_sent
            report.bytes_sent += r.bytes_sent
            report.node_ids.extend(r.node_ids)
            report.closed_after_s.extend(r.closed_after_s)

    def duplicates() -> list[bytes]:
        votes = list(view.votes.values())
        return [batch_frame(CONSENSUS, votes * (2000 // max(1, len(votes))))] if votes else []

    big = big_txs(FRAME_BYTES_MAX - 64 * 1024, rng)
    big_blocks: dict[int, Block] = {}  # one per height: hashing its body takes a while

    def big_proposals() -> list[bytes]:
        block = big_blocks.get(view.height)
        if block is None:
            big_blocks.clear()
            block = big_blocks[view.height] = forged_block(chain, view.height, big, rng)
        return [
            batch_frame(CONSENSUS, [forged_proposal(chain, view.height, view.round, block, rng)])
        ]

    def decided() -> list[bytes]:
        genuine = view.proposal
        if genuine is not None and genuine.block.height == view.height:
            header = replace(genuine.block.header, time_ms=genuine.block.header.time_ms + 1)
            block = replace(genuine.block, header=header)
        else:
            block = forged_block(chain, view.height, [], rng)
        commit = forged_commit(chain, view.height, block.hash, rng)
        return [batch_frame(CONSENSUS, [encode_message(DecidedMsg(block, commit))])]

    def next_height() -> list[bytes]:
        h = view.height + 1
        payloads = [
            forged_proposal(chain, h, 0, forged_block(chain, h, [], rng), rng) for _ in range(4)
        ]
        n = len(chain.validators)
        payloads += [forged_vote(chain, h, rng.randrange(4), i % n, rng) for i in range(1020)]
        return [batch_frame(CONSENSUS, payloads)]

    def own_address() -> list[bytes]:
        # Half for this height (ignored unread once it has decided, while it
        # waits timeout_commit), half for the next (verified before it is kept).
        n = len(chain.validators)
        payloads = [
            forged_vote(chain, view.height + i % 2, view.round * (1 - i % 2), i % n, rng)
            for i in range(1000)
        ]
        return [batch_frame(CONSENSUS, payloads)]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_observe, observer, view)
        with trio.move_on_after(2 * STATUS_INTERVAL_S):
            while not view.votes or not view.height:
                await view.changed.wait()
                view.changed = trio.Event()
        report.notes["observed_votes"] = len(view.votes)
        for name, make in (
            ("duplicate_votes", duplicates),
            ("big_proposals", big_proposals),
            ("forged_decided", decided),
            ("next_height", next_height),
            ("validator_addresses", own_address),
        ):
            log("part", name, "at height", view.height)
            await part(name, make)
        nursery.cancel_scope.cancel()
    await observer.aclose()
    await verdicts()
    report.notes["parts"] = parts
    report.duration_s = trio.current_time() - started
    return report


def swapped_body(msg: ProposalMsg, rng: random.Random) -> bytes:
    """The same signed proposal and header with another transaction list."""
    block = msg.block
    if block.txs:
        txs = block.txs[:-1]
    else:
        tx = Transaction(rng.randbytes(32), 0, b"swap", rng.randbytes(64))
        txs = (tx.encode(),)
    return encode_message(ProposalMsg(msg.proposal, replace(block, txs=txs)))


async def body_swap(
    targets: Sequence[Target],
    chain: Chain,
    *,
    duration_s: float = 10.0,
    rng: random.Random | None = None,
) -> Report:
    """Relay every real proposal, with another body under its header, to every other target.

    One connection per target, re-opened with a fresh key whenever the
    target closes it, so every target keeps being attacked for `duration_s`.
    The report counts as `connections` those that carried at least one
    swapped body, and whether the target closed each within VERDICT_S.
    """
    rng = rng or random.Random()
    report = Report("body-swap", ",".join(map(str, targets)), notes={"swapped": 0, "reconnects": 0})
    started = trio.current_time()
    done: set[bytes] = set()
    current: dict[int, RawPeer] = {}
    attacked: list[RawPeer] = []
    everyone: list[RawPeer] = []

    async def swap(msg: ProposalMsg, source: int) -> None:
        tampered = batch_frame(CONSENSUS, [swapped_body(msg, rng)], gossip=True)
        report.notes["swapped"] += 1
        for index, other in list(current.items()):
            if index != source and await other.send(tampered):
                report.frames_sent += 1
                if other not in attacked:
                    attacked.append(other)

    async def follow(index: int, target: Target) -> None:
        while True:
            try:
                peer = await RawPeer.open(target, chain.chain_id)
            except (HandshakeError, Refused, OSError, trio.BrokenResourceError):
                report.refused += 1
                await trio.sleep(0.1)
                continue
            report.node_ids.append(peer.node_id)
            everyone.append(peer)
            current[index] = peer
            while not peer.closed:
                for channel, payload in await peer.payloads():
                    if channel != CONSENSUS or payload[1:2] != bytes([TAG_PROPOSAL]):
                        continue
                    try:
                        msg = decode_message(payload)
                    except ValueError:
                        continue
                    assert isinstance(msg, ProposalMsg)
                    if msg.proposal.signature not in done:
                        done.add(msg.proposal.signature)
                        await swap(msg, index)
            report.notes["reconnects"] += 1

    with trio.move_on_after(duration_s):
        async with trio.open_nursery() as nursery:
            for index, target in enumerate(targets):
                nursery.start_soon(follow, index, target)
    async with trio.open_nursery() as nursery:
        for peer in attacked:
            nursery.start_soon(peer.wait_closed, VERDICT_S)
    report.connections = len(attacked)
    for peer in attacked:
        if peer.closed:
            report.closed_by_target += 1
            report.closed_after_s.append(peer.closed_at - started)
    for peer in everyone:
        report.bytes_sent += peer.bytes_sent
        await peer.aclose()
    report.duration_s = trio.current_time() - started
    return report


# ---------------------------------------------------------------- command line

ATTACKS = (
    "none",
    "decode-bomb",
    "slow-frames",
    "ping-flood",
    "sync-flood",
    "handshake-garbage",
    "false-height",
    "forged-flood",
    "body-swap",
)


async def run_cli_attack(ns: argparse.Namespace) -> Report:
    genesis = load_genesis_file(ns.home / "genesis.json")
    # As a node does: the keys it makes and the hashes it computes are the chain's suite.
    activate(genesis.suite)
    chain = Chain(genesis.chain_id, genesis.validator_set)
    targets = [Target.parse(t) for t in ns.target]
    key = load_key(ns.key) if ns.key else None
    first = targets[0]
    match ns.attack:
        case "none":  # the baseline: the same observation, no attacker
            await trio.sleep(ns.duration)
            return Report("none", str(first), duration_s=ns.duration)
        case "decode-bomb":
            return await decode_bomb(first, chain, variant=ns.variant, key=key)
        case "slow-frames":
            return await slow_frames(
                first, chain, connections=ns.connections or 16, hold_s=ns.duration
            )
        case "ping-flood":
            return await ping_flood(first, chain, duration_s=ns.duration, key=key)
        case "sync-flood":
            return await sync_flood(first, chain, duration_s=ns.duration, key=key)
        case "handshake-garbage":
            return await handshake_garbage(
                first, chain, connections=ns.connections or 60, hold_s=ns.duration
            )
        case "false-height":
            return await false_height(targets, chain, duration_s=ns.duration)
        case "forged-flood":
            return await forged_flood(first, chain, duration_s=ns.duration)
        case "body-swap":
            return await body_swap(targets, chain, duration_s=ns.duration)
    raise AssertionError(ns.attack)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("attack", choices=ATTACKS)
    p.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="a node's p2p address (repeat for false-height and body-swap)",
    )
    p.add_argument("--home", type=Path, required=True, help="a home of the chain (its genesis)")
    p.add_argument("--key", type=Path, help="identity key file to use (default: fresh keys)")
    p.add_argument("--duration", type=float, default=8.0, help="attack or hold time, seconds")
    p.add_argument(
        "--connections", type=int, help="slow-frames (default 16), handshake-garbage (60)"
    )
    p.add_argument("--variant", choices=("frame", "ping", "payload"), default="frame")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    report = trio.run(run_cli_attack, ns)
    print(json.dumps(report.to_json()), flush=True)
    return 0


# ---------------------------------------------------------------- one attack, observed


MB = 1024 * 1024
# How often the observer polls every node's /status and the target's metrics.
OBSERVE_INTERVAL_S = 0.25
# After the attacker exits, every honest node must commit this many more
# heights within RECOVERY_TIMEOUT_S for the network to count as live after it.
RECOVERY_HEIGHTS = 2
RECOVERY_TIMEOUT_S = 20.0
# The attack's window (heights_start to heights_end) lasts at least this
# long, even when the target cuts the attacker off at once: a few blocks
# with the default timeouts.
ATTACK_WINDOW_MIN_S = 5.0
# Before an attack the network must be committing: one new height this soon.
HEALTHY_TIMEOUT_S = 20.0
# Light background load: transfers per second over all honest nodes.
LOAD_TXS_PER_S = 10.0
ATTACKER_GRACE_S = 60.0  # beyond its own duration, before the attacker process is killed
LAG_GAUGE = "archipelago_event_loop_lag_max_seconds"
LAG_WINDOW_S = 15  # node/loopwatch.py LOOP_LAG_WINDOW_S
# Lag a loaded node shows without any attack (about 0.1 s here, see
# benchmarks/README.md); above it the gauge still shows an earlier stall.
LAG_QUIET_S = 0.25


def open_network(net: Any) -> None:
    """Make a testnet open (no genesis `members`), before its first start.

    `archipelago testnet` makes a permissioned network, which refuses every
    node id but its own right after the handshake. The attacks run against
    the worst case instead, a network whose identities cost nothing (as one
    made by `archipelago init`), so what they test is the edge behind the
    handshake; on a permissioned network the same holds for a member.
    """
    for node in net.nodes:
        path = node.home / "genesis.json"
        genesis = json.loads(path.read_text())
        if genesis.pop("members", None) is not None:
            path.write_text(json.dumps(genesis, indent=2) + "\n")


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} for pid {pid}")


def wal_bytes(home: Path) -> int:
    """Bytes in a node's consensus WAL files (data/wal, node/resources.py)."""
    total = 0
    for path in (home / "data" / "wal").glob("*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # rotated away while we looked
            pass
    return total


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0, our own processes)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Outcome:
    """What the honest nodes did while one attack ran, and after."""

    attack: str
    targets: list[str]
    report: Report
    rss_baseline_mb: float = 0.0
    rss_peak_mb: float = 0.0
    lag_max_s: float = 0.0  # the target's worst event-loop lag, attack and recovery
    lag_probe: bool = False  # whether the target exports the lag probe at all
    heights_start: dict[str, int] = field(default_factory=dict)
    heights_end: dict[str, int] = field(default_factory=dict)
    heights_after: dict[str, int] = field(default_factory=dict)
    commit_gap_max_s: float = 0.0  # longest an honest node went without a new height
    left_consensus: list[str] = field(default_factory=list)  # seen in block sync mid-attack
    hashes: dict[str, str] = field(default_factory=dict)  # at the lowest common height
    common_height: int = 0
    exited: list[str] = field(default_factory=list)
    banned_delta: float = 0.0  # the target's archipelago_p2p_banned_peers over the attack
    round_changes: float = 0.0  # failed rounds on the target over the attack and recovery
    wal_growth_mb: float = 0.0  # the target's consensus WAL at its largest, over its start
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_baseline_mb

    @property
    def committed_during(self) -> bool:
        return bool(self.heights_end) and all(
            self.heights_end[n] > self.heights_start.get(n, math.inf) for n in self.heights_end
        )

    @property
    def committed_after(self) -> bool:
        return bool(self.heights_after) and all(
            self.heights_after[n] >= self.heights_end[n] + RECOVERY_HEIGHTS
            for n in self.heights_after
        )

    @property
    def hashes_agree(self) -> bool:
        return len(self.hashes) > 1 and len(set(self.hashes.values())) == 1

    def summary(self) -> str:
        return (
            f"{self.attack}: rss +{self.rss_growth_mb:.0f} MB, lag {self.lag_max_s * 1000:.0f} ms, "
            f"heights {self.heights_start} -> {self.heights_end} -> {self.heights_after}, "
            f"gap {self.commit_gap_max_s:.1f} s, left consensus {self.left_consensus}, "
            f"hashes agree {self.hashes_agree} at {self.common_height}, exited {self.exited}, "
            f"attacker cut off {self.report.cut_off} ({self.report.closed_by_target}/"
            f"{self.report.connections} closed, {self.report.refused} refused), "
            f"banned +{self.banned_delta:.0f}, failed rounds +{self.round_changes:.0f}, "
            f"WAL +{self.wal_growth_mb:.0f} MB, "
            f"notes {self.report.notes}, extra {self.extra}"
        )


async def _scrape(api: Any, node: Any) -> dict[str, float]:
    """The node's metrics as name -> value (labelled samples summed); {} if not answering."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = await api.client.get(node.metrics)
    except Exception:
        return {}
    if r.status_code != 200:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@asynccontextmanager
async def transfer_load(
    api: Any, net: Any, rate_per_s: float = LOAD_TXS_PER_S
) -> AsyncIterator[dict[str, int]]:
    """Signed transfers between the testnet's accounts, spread over the running validators.

    Best effort: a node that does not answer (frozen, restarting) costs a
    request, never the test. Yields counters {"accepted": n, "failed": n}.
    """
    from apps.ledger import transfer_tx

    counts = {"accepted": 0, "failed": 0}
    nonces: dict[int, int] = {}

    async def sender(k: int, key: PrivateKey) -> None:
        to = net.accounts[(k + 1) % len(net.accounts)].address
        interval_s = len(net.accounts) / rate_per_s
        turn = k
        while True:
            await trio.sleep(interval_s)
            live = [n for n in net.validators if n.running]
            if not live:
                continue
            node = live[turn % len(live)]
            turn += 1
            try:
                if k not in nonces:
                    nonces[k] = (await api.account(node, key.address))[1]
                raw = transfer_tx(key, net.chain_id, nonces[k], to, 1).encode()
                r = await api.submit(node, raw)
            except Exception:
                counts["failed"] += 1
                nonces.pop(k, None)
                continue
            if r.status_code in (200, 202):
                counts["accepted"] += 1
                nonces[k] += 1
            else:
                counts["failed"] += 1
                nonces.pop(k, None)  # re-read: another node may be ahead or behind

    async with trio.open_nursery() as nursery:
        for k, key in enumerate(net.accounts):
            nursery.start_soon(sender, k, key)
        yield counts
        nursery.cancel_scope.cancel()


async def _heights(api: Any, nodes: Sequence[Any]) -> dict[str, int]:
    return {n.name: await api.height(n) for n in nodes}


async def wait_committing(api: Any, nodes: Sequence[Any], timeout_s: float) -> bool:
    """True once every node in `nodes` committed a height above the highest seen now."""
    start = await _heights(api, nodes)
    goal = max(start.values()) + 1
    with trio.move_on_after(timeout_s):
        while min((await _heights(api, nodes)).values()) < goal:
            await trio.sleep(OBSERVE_INTERVAL_S)
        return True
    return False


async def _settle(api: Any, node: Any) -> dict[str, float]:
    """The node's metrics once its lag gauge no longer shows an earlier stall.

    The gauge is the worst lag of the last 15 s; a stall from the previous
    attack must not be counted against this one.
    """
    deadline = trio.current_time() + LAG_WINDOW_S + 2
    while True:
        values = await _scrape(api, node)
        if values.get(LAG_GAUGE, 0.0) < LAG_QUIET_S or trio.current_time() > deadline:
            return values
        await trio.sleep(OBSERVE_INTERVAL_S)


async def run_attack(
    net: Any,
    api: Any,
    attack: str,
    *,
    targets: Sequence[Any],
    duration_s: float,
    args: Sequence[str] = (),
    after: Callable[[], Awaitable[dict[str, Any]]] | None = None,
) -> Outcome:
    """Run `attack` as a process against `targets` (NodeProcess) and observe every validator.

    Never raises for what the nodes do: the Outcome records it and the
    caller asserts. Raises only if the network is not committing before the
    attack (a spoiled network says nothing about this attack).
    """
    honest = [n for n in net.validators if n.running]
    if not await wait_committing(api, honest, HEALTHY_TIMEOUT_S):
        raise AssertionError(f"network not committing before {attack}\n{net.diagnostics()}")
    watched = targets[0]
    assert watched.process is not None
    pid = watched.process.pid
    outcome = Outcome(attack, [t.name for t in targets], Report(attack, ""))
    before = await _settle(api, watched)
    outcome.lag_probe = LAG_GAUGE in before
    reset_peak_rss(pid)
    outcome.rss_baseline_mb = rss_bytes(pid) / MB
    outcome.heights_start = await _heights(api, honest)
    last_change = {n.name: (trio.current_time(), outcome.heights_start[n.name]) for n in honest}
    gaps: dict[str, float] = dict.fromkeys(last_change, 0.0)
    attacking = True

    async def watch_node(n: Any) -> None:
        while True:
            status = await api.try_get(n, "/status")
            now = trio.current_time()
            if status is not None:
                height = int(status["latest_height"])
                if height > last_change[n.name][1]:
                    last_change[n.name] = (now, height)
                mode = status["sync"]["mode"]
                if attacking and mode != "consensus" and n.name not in outcome.left_consensus:
                    outcome.left_consensus.append(n.name)
            gaps[n.name] = max(gaps[n.name], now - last_change[n.name][0])
            await trio.sleep(OBSERVE_INTERVAL_S)

    wal_start = wal_bytes(watched.home)

    async def watch_target() -> None:
        while True:
            lag = (await _scrape(api, watched)).get(LAG_GAUGE, 0.0)
            outcome.lag_max_s = max(outcome.lag_max_s, lag)
            growth = (wal_bytes(watched.home) - wal_start) / MB
            outcome.wal_growth_mb = max(outcome.wal_growth_mb, growth)
            await trio.sleep(OBSERVE_INTERVAL_S)

    command = [
        sys.executable,
        str(Path(__file__)),
        attack,
        "--home",
        str(net.nodes[0].home),
        "--duration",
        str(duration_s),
        *args,
    ]
    for t in targets:
        command += ["--target", str(load_config(t.config_path).p2p.listen)]
    attack_started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in honest:
            nursery.start_soon(watch_node, n)
        nursery.start_soon(watch_target)
        with trio.move_on_after(duration_s + ATTACKER_GRACE_S):
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
            lines = result.stdout.decode().strip().splitlines()
            if result.returncode == 0 and lines:
                outcome.report = Report.from_json(json.loads(lines[-1]))
            else:
                tail = result.stderr.decode(errors="replace").strip().splitlines()[-5:]
                outcome.report.notes["error"] = f"attacker exited with {result.returncode}"
                outcome.report.notes["stderr"] = tail
        # An attack the target cuts short still gets a window long enough to see
        # every node commit through it.
        await trio.sleep_until(attack_started + ATTACK_WINDOW_MIN_S)
        attacking = False  # a node restarted by `after` starts in block sync, rightly
        outcome.heights_end = await _heights(api, honest)
        if after is not None:
            outcome.extra = await after()
        honest = [n for n in net.validators if n.running]
        goal = {n.name: outcome.heights_end.get(n.name, 0) + RECOVERY_HEIGHTS for n in honest}
        with trio.move_on_after(RECOVERY_TIMEOUT_S):
            while True:
                outcome.heights_after = await _heights(api, honest)
                if all(outcome.heights_after[k] >= v for k, v in goal.items()):
                    break
                await trio.sleep(OBSERVE_INTERVAL_S)
        await trio.sleep(2 * OBSERVE_INTERVAL_S)  # one more lag scrape after the last stall
        nursery.cancel_scope.cancel()
    outcome.commit_gap_max_s = max(gaps.values())
    outcome.exited = [
        n.name for n in net.validators if n.process is not None and n.process.poll() is not None
    ]
    if watched.running:
        outcome.rss_peak_mb = rss_bytes(pid, "VmHWM") / MB
        final = await _scrape(api, watched)
        outcome.lag_max_s = max(outcome.lag_max_s, final.get(LAG_GAUGE, 0.0))
        for name, attr in (
            ("archipelago_p2p_banned_peers_total", "banned_delta"),
            ("archipelago_consensus_round_changes_total", "round_changes"),
        ):
            setattr(outcome, attr, final.get(name, 0.0) - before.get(name, 0.0))
    live = [n for n in net.validators if n.running]
    heights = await _heights(api, live)
    outcome.common_height = min(heights.values(), default=0)
    if outcome.common_height > 0:
        for n in live:
            body = await api.try_get(n, f"/block/{outcome.common_height}")
            outcome.hashes[n.name] = "" if body is None else body["hash"]
    return outcome


REJOIN_TIMEOUT_S = 20.0  # a restarted node dials its peers at once; backoff starts at 0.5 s
MOVED_PORT_OFFSET = 5  # node i listens on base + 10 i; + 5 is free in every testnet


async def restart_on_new_port(api: Any, node: Any, target: Any) -> dict[str, Any]:
    """Restart `node` listening on another port; wait until `target` lists it as a peer.

    Every other node has the old port in persistent_peers, so `target` can
    no longer dial `node`: the only way back is `node` dialling `target`,
    an inbound connection from the same IP as the attacker. That is the
    bystander issue 11 item 6 is about.
    """
    config = load_config(node.config_path)
    listen = config.p2p.listen
    moved = replace(listen, port=listen.port + MOVED_PORT_OFFSET)
    await node.stop()
    save_config(node.config_path, replace(config, p2p=replace(config.p2p, listen=moved)))
    await node.start()
    started = trio.current_time()
    await api.wait_serving(node)
    node_id = node.node_id
    with trio.move_on_after(REJOIN_TIMEOUT_S):
        while True:
            info = await api.try_get(target, "/net_info")
            if info is not None and any(p["node_id"] == node_id for p in info["peers"]):
                return {"rejoined": True, "rejoin_s": round(trio.current_time() - started, 1)}
            await trio.sleep(OBSERVE_INTERVAL_S)
    return {"rejoined": False, "rejoin_s": None}


if __name__ == "__main__":
    sys.exit(main())
