"""Network throughput: one secured connection and 4-node gossip, against raw loopback TCP.

Why: the network layer must never be what limits consensus or the mempool;
this measures what it costs over the machine's own loopback TCP, in the same
run, one process per node (as in production).

    .venv/bin/python benchmarks/network.py [--gossip-messages 200000] [--secure-mib 2048]

1. raw TCP: a blocking socket writes 64 KiB chunks to another process.
2. secured: node A `send`s 64 KiB payloads to node B over Noise (one 64 KiB
   payload per frame, `write_bytes_max` = 64 KiB); B counts its inbox.
3. gossip: 4 fully meshed nodes each originate a quarter of the 200-byte
   messages with `gossip`; every node forwards what it receives
   (`gossip(..., exclude_peer=sender)`), as the node does; the rate counts a
   message once it has reached all 4 nodes. The seen-cache dedupes copies.

Readable lines go to stderr; the last line, on stdout, is a JSON object with
the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from consensus.crypto import PrivateKey
from network import BLOCKSYNC, MEMPOOL, Network, NetworkConfig, PeerAddress
from network.secure import node_id_of

CHAIN_ID = "archipelago-bench"
CHUNK_BYTES = 64 * 1024
GOSSIP_PAYLOAD_BYTES = 200

# Benchmark config: receive throttles lifted (they guard against hostile
# peers, the benchmark measures the pipeline) and queues deep enough that the
# originators are paced by wait_send_capacity, not by drops.
BENCH_CONFIG = NetworkConfig(
    rate_bytes_per_s_max=1 << 40,
    rate_messages_per_s_max=1 << 40,
    send_queue_messages_max=((1, 10_000), (2, 1_000), (3, 1_000), (4, 100_000), (5, 100)),
    send_queue_bytes_max=64 * 1024 * 1024,
    inbox_messages_max=100_000,
    seen_cache_entries_max=1_000_000,
    dial_backoff_base_s=0.05,
    dial_backoff_max_s=0.5,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- raw TCP --------------------------------------------------------------------


def _raw_receiver(port: int, total_bytes: int, out: Connection) -> None:
    with socket.create_server(("127.0.0.1", port)) as server:
        out.send("ready")
        conn, _ = server.accept()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        received = 0
        start = time.perf_counter()
        while received < total_bytes:
            n = conn.recv_into(view)
            if not n:
                break
            received += n
        out.send((received, time.perf_counter() - start))
        conn.close()


def bench_raw_tcp(total_bytes: int) -> dict[str, float]:
    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.Process(target=_raw_receiver, args=(port, total_bytes, child))
    proc.start()
    assert parent.recv() == "ready"
    chunk = os.urandom(CHUNK_BYTES)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        sent = 0
        while sent < total_bytes:
            conn.sendall(chunk)
            sent += len(chunk)
        received, elapsed_s = parent.recv()
    proc.join()
    return {"mb_per_s": received / elapsed_s / 1e6, "seconds": elapsed_s}


# -- one secured connection -------------------------------------------------------


def _secure_receiver(seed: bytes, port: int, count: int, out: Connection) -> None:
    async def main() -> None:
        net = Network(
            identity=PrivateKey(seed),
            chain_id=CHAIN_ID,
            listen=("127.0.0.1", port),
            config=replace(BENCH_CONFIG, write_bytes_max=CHUNK_BYTES),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            out.send("ready")
            received = 0
            payload_bytes = 0
            start = 0.0
            while received < count:
                envelope = await net.inbox.receive()
                if received == 0:
                    start = time.perf_counter()
                received += 1
                payload_bytes += len(envelope.payload)
                while received < count:
                    try:
                        envelope = net.inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    received += 1
                    payload_bytes += len(envelope.payload)
            # The first message's time is excluded: count the rest over the span.
            out.send((payload_bytes - CHUNK_BYTES, received - 1, time.perf_counter() - start))
            nursery.cancel_scope.cancel()

    trio.run(main)


def bench_secure(total_bytes: int) -> dict[str, float]:
    count = max(2, total_bytes // CHUNK_BYTES)
    receiver_key = PrivateKey.generate()
    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.Process(target=_secure_receiver, args=(receiver_key.seed, port, count, child))
    proc.start()
    assert parent.recv() == "ready"
    receiver_id = node_id_of(receiver_key.public_key)

    async def sender() -> None:
        net = Network(
            identity=PrivateKey.generate(),
            chain_id=CHAIN_ID,
            listen=("127.0.0.1", 0),
            persistent_peers=[PeerAddress(receiver_id, "127.0.0.1", port)],
            config=replace(BENCH_CONFIG, write_bytes_max=CHUNK_BYTES),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            await net.wait_peers(1)
            payloads = [os.urandom(CHUNK_BYTES) for _ in range(16)]
            sent = 0
            while sent < count:
                await net.wait_send_capacity(BLOCKSYNC)
                while sent < count and net.send(receiver_id, BLOCKSYNC, payloads[sent % 16]):
                    sent += 1
            result = await trio.to_thread.run_sync(parent.recv)
            nursery.cancel_scope.cancel()
        nonlocal outcome
        outcome = result

    outcome: tuple[int, int, float] = (0, 0, 1.0)
    trio.run(sender)
    proc.join()
    payload_bytes, messages, elapsed_s = outcome
    return {
        "mb_per_s": payload_bytes / elapsed_s / 1e6,
        "messages_per_s": messages / elapsed_s,
        "seconds": elapsed_s,
    }


# -- 4-node gossip -------------------------------------------------------------------


def _gossip_node(
    index: int,
    seeds: list[bytes],
    ports: list[int],
    total: int,
    barrier: mp.synchronize.Barrier,
    out: Connection,
) -> None:
    nodes = len(seeds)
    ids = [node_id_of(PrivateKey(s).public_key) for s in seeds]

    async def main() -> None:
        net = Network(
            identity=PrivateKey(seeds[index]),
            chain_id=CHAIN_ID,
            listen=("127.0.0.1", ports[index]),
            persistent_peers=[PeerAddress(ids[j], "127.0.0.1", ports[j]) for j in range(index)],
            config=BENCH_CONFIG,
        )
        mine = [
            index.to_bytes(1, "big") + i.to_bytes(7, "big") + os.urandom(GOSSIP_PAYLOAD_BYTES - 8)
            for i in range(total // nodes)
        ]
        expected = (total // nodes) * (nodes - 1)
        done = trio.Event()
        received = 0
        finish = 0.0

        def handle(envelope_peer: str, channel: int, payload: bytes) -> None:
            nonlocal received, finish
            received += 1
            net.gossip(channel, payload, exclude_peer=envelope_peer)
            if received == expected:
                finish = time.perf_counter()
                done.set()

        async def relay() -> None:
            inbox = net.inbox
            while True:
                envelope = await inbox.receive()
                handle(envelope.peer_id, envelope.channel, envelope.payload)
                while True:
                    try:
                        envelope = inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    handle(envelope.peer_id, envelope.channel, envelope.payload)

        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            await net.wait_peers(nodes - 1)
            nursery.start_soon(relay)
            await trio.to_thread.run_sync(barrier.wait)
            start = time.perf_counter()
            for offset in range(0, len(mine), 500):
                await net.wait_send_capacity(MEMPOOL)
                for payload in mine[offset : offset + 500]:
                    net.gossip(MEMPOOL, payload)
            with trio.move_on_after(120):
                await done.wait()
            stats = net.statistics()
            out.send(
                {
                    "start": start,
                    "finish": finish if done.is_set() else float("nan"),
                    "received": received,
                    "expected": expected,
                    "dropped": dict(stats.messages_dropped),
                    "bytes_sent": sum(stats.bytes_sent_by_channel.values()),
                }
            )
            # Keep serving until every node is done, so nobody loses a peer early.
            await trio.to_thread.run_sync(barrier.wait)
            nursery.cancel_scope.cancel()

    trio.run(main)


def bench_gossip(total: int, nodes: int = 4) -> dict[str, float]:
    seeds = [PrivateKey.generate().seed for _ in range(nodes)]
    ports = [free_port() for _ in range(nodes)]
    barrier = mp.Barrier(nodes)
    pipes = [mp.Pipe() for _ in range(nodes)]
    procs = [
        mp.Process(target=_gossip_node, args=(i, seeds, ports, total, barrier, pipes[i][1]))
        for i in range(nodes)
    ]
    for proc in procs:
        proc.start()
    results = [parent.recv() for parent, _ in pipes]
    for proc in procs:
        proc.join()
    start = min(r["start"] for r in results)
    finish = max(r["finish"] for r in results)
    delivered = sum(r["received"] for r in results)
    expected = sum(r["expected"] for r in results)
    if delivered != expected:
        print(f"gossip: only {delivered} of {expected} deliveries; {results}", file=sys.stderr)
    elapsed_s = finish - start
    messages = (total // nodes) * nodes
    return {
        "messages_per_s": messages / elapsed_s,
        "mb_per_s": messages * GOSSIP_PAYLOAD_BYTES / elapsed_s / 1e6,
        "seconds": elapsed_s,
        "deliveries_complete": float(delivered == expected),
        "wire_mb": sum(r["bytes_sent"] for r in results) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gossip-messages", type=int, default=200_000)
    parser.add_argument("--secure-mib", type=int, default=2048)
    parser.add_argument("--raw-mib", type=int, default=4096)
    args = parser.parse_args()
    mp.set_start_method("fork")

    raw = bench_raw_tcp(args.raw_mib * 1024 * 1024)
    secure = bench_secure(args.secure_mib * 1024 * 1024)
    gossip = bench_gossip(args.gossip_messages)
    raw_small_per_s = raw["mb_per_s"] * 1e6 / GOSSIP_PAYLOAD_BYTES

    python = sys.version.split()[0]
    err = sys.stderr
    print(f"machine: {os.cpu_count()} cores, Python {python}, trio {trio.__version__}", file=err)
    print(f"raw loopback TCP (64 KiB writes)      {raw['mb_per_s']:10.1f} MB/s", file=err)
    print(
        f"secured connection (64 KiB frames)    {secure['mb_per_s']:10.1f} MB/s"
        f"  {secure['messages_per_s']:10.0f} msg/s"
        f"   ratio to raw {secure['mb_per_s'] / raw['mb_per_s']:.2f}",
        file=err,
    )
    print(
        f"4-node gossip (200 B, all delivered)  {gossip['mb_per_s']:10.1f} MB/s"
        f"  {gossip['messages_per_s']:10.0f} msg/s   ratio to raw 200 B rate "
        f"{gossip['messages_per_s'] / raw_small_per_s:.4f}",
        file=err,
    )
    figures = {
        "benchmark": "network",
        "raw_tcp_mb_per_s": round(raw["mb_per_s"], 1),
        "secure_mb_per_s": round(secure["mb_per_s"], 1),
        "secure_messages_per_s": round(secure["messages_per_s"]),
        "secure_ratio_to_raw": round(secure["mb_per_s"] / raw["mb_per_s"], 3),
        "gossip_nodes": 4,
        "gossip_messages": args.gossip_messages,
        "gossip_messages_per_s": round(gossip["messages_per_s"]),
        "gossip_mb_per_s": round(gossip["mb_per_s"], 2),
        "gossip_ratio_to_raw": round(gossip["messages_per_s"] / raw_small_per_s, 5),
        "gossip_deliveries_complete": bool(gossip["deliveries_complete"]),
        "targets_met": secure["mb_per_s"] >= 200 and gossip["messages_per_s"] >= 20_000,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
