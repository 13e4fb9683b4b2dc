"""The SM2 verification ceiling next to Ed25519's, measured in one run.

What the "sm2-sm3" suite can verify on this machine at most, with nothing
else to do: SM2 (consensus/sm2.py: libcrypto's arithmetic, through the
compiled chunk loop of consensus/_sm2.c or OpenSSL's EVP verifier through
ctypes) and, in the same rounds, Ed25519 (libsodium, the ways
benchmarks/validation.py measures it). For each scheme: one thread, and
`--cores` threads (or processes) each verifying its share in chunks of
consensus.sigverify.CHUNK_ITEMS, as the validation core's pool does. Each
figure is the best of `--repeat` rounds, so other load lowers it, never
raises it; one thread's CPU time per verification is printed too (steady
under load). Lines for people on stderr; the last line, on stdout, is JSON.

    python benchmarks/sm2.py --items 2000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.validation import Item, _loop_chunk, _loop_detached, threads_rate
from consensus import sm2
from consensus.crypto import PrivateKey
from consensus.sigverify import CHUNK_ITEMS, _verify_chunk

log = partial(print, file=sys.stderr, flush=True)
Loop = Callable[[list[Item]], None]


def sm2_items(n: int, keys: int, message_bytes: int, rng: random.Random) -> list[Item]:
    secrets = [sm2.generate_secret() for _ in range(keys)]
    publics = [sm2.public_key(s) for s in secrets]
    items = []
    for i in range(n):
        message = rng.randbytes(message_bytes)
        items.append((publics[i % keys], message, sm2.sign(secrets[i % keys], message)))
    return items


def ed25519_items(n: int, keys: int, message_bytes: int, rng: random.Random) -> list[Item]:
    private = [PrivateKey(rng.randbytes(32)) for _ in range(keys)]
    items = []
    for i in range(n):
        message = rng.randbytes(message_bytes)
        items.append((private[i % keys].public_key, message, private[i % keys].sign(message)))
    return items


def _in_chunks(verify_chunk: Callable[[list[Item]], Any], items: list[Item]) -> None:
    for start in range(0, len(items), CHUNK_ITEMS):
        verify_chunk(items[start : start + CHUNK_ITEMS])


def sm2_compiled(items: list[Item]) -> None:
    """The compiled loop, one call per chunk (what a pool thread does)."""
    _in_chunks(sm2.verify_chunk, items)


def sm2_evp(items: list[Item]) -> None:
    """OpenSSL's EVP verifier through ctypes, one signature per call (the fallback)."""
    verify = sm2._verify_evp
    for pk, msg, sig in items:
        verify(pk, msg, sig, sm2.DEFAULT_ID)


def ed25519_compiled(items: list[Item]) -> None:
    _in_chunks(_loop_chunk, items)


def _process_main(loop: Loop, items: list[Item], barrier: Any, out: Any) -> None:
    barrier.wait()
    t0 = time.perf_counter()
    loop(items)
    out.put((t0, time.perf_counter()))


def processes_rate(items: list[Item], workers: int, loop: Loop) -> float:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_main, args=(loop, items[i::workers], barrier, out))
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    spans: list[tuple[float, float]] = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return len(items) / (max(e for _, e in spans) - min(s for s, _ in spans))


def cpu_us(loop: Loop, items: list[Item], repeat: int) -> float:
    """Least thread CPU time per item over `repeat` runs (others' load barely moves it)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        loop(items)
        best = min(best, time.thread_time() - t0)
    return best / len(items) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=2_000, help="SM2 signatures per round")
    ap.add_argument("--keys", type=int, default=100, help="distinct signers")
    ap.add_argument("--message-bytes", type=int, default=120, help="about a transfer's")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if sm2.unavailable_reason() is not None:
        sys.exit(f"SM2 is unavailable here: {sm2.unavailable_reason()}")
    cores = args.cores
    load_before = os.getloadavg()[0]
    rng = random.Random(7)
    log(f"signing {args.items} SM2 items from {args.keys} keys ...")
    sm2_set = sm2_items(args.items, args.keys, args.message_bytes, rng)
    # Ed25519 is about 8x faster: more items, so each round lasts about as long.
    ed_set = ed25519_items(args.items * 8, args.keys, args.message_bytes, rng)
    assert all(sm2.verify_batch(sm2_set)), "an SM2 item does not verify"

    compiled = sm2._compiled_chunk is not None
    candidates: dict[str, tuple[str, int, Callable[[], float]]] = {}

    def add(name: str, scheme: str, workers: int, fn: Callable[[], float]) -> None:
        candidates[name] = (scheme, workers, fn)

    if compiled:
        add("SM2 compiled chunk loop, 1 thread", "sm2", 1,
            lambda: threads_rate(sm2_set, 1, sm2_compiled))  # fmt: skip
        add(f"SM2 compiled chunk loop, {cores} threads", "sm2", cores,
            lambda: threads_rate(sm2_set, cores, sm2_compiled))  # fmt: skip
        add(f"SM2 compiled chunk loop, {cores} processes", "sm2", cores,
            lambda: processes_rate(sm2_set, cores, sm2_compiled))  # fmt: skip
    add("SM2 EVP via ctypes, 1 thread", "sm2", 1, lambda: threads_rate(sm2_set, 1, sm2_evp))
    add(f"SM2 EVP via ctypes, {cores} threads", "sm2", cores,
        lambda: threads_rate(sm2_set, cores, sm2_evp))  # fmt: skip
    add("Ed25519 cffi verify_detached, 1 thread", "ed25519", 1,
        lambda: threads_rate(ed_set, 1, _loop_detached))  # fmt: skip
    add(f"Ed25519 cffi verify_detached, {cores} threads", "ed25519", cores,
        lambda: threads_rate(ed_set, cores, _loop_detached))  # fmt: skip
    if _verify_chunk is not None:
        add("Ed25519 compiled chunk loop, 1 thread", "ed25519", 1,
            lambda: threads_rate(ed_set, 1, ed25519_compiled))  # fmt: skip
        add(f"Ed25519 compiled chunk loop, {cores} threads", "ed25519", cores,
            lambda: threads_rate(ed_set, cores, ed25519_compiled))  # fmt: skip

    rates: dict[str, float] = {}
    for _ in range(args.repeat):  # rounds interleave every way, so all meet the same load
        for name, (_, _, fn) in candidates.items():
            rates[name] = max(rates.get(name, 0.0), fn())
    for name, rate in rates.items():
        log(f"  {name:45s} {rate:10.0f} sig/s")

    def best(scheme: str, multi: bool) -> tuple[float, str]:
        pool = {
            n: r
            for n, r in rates.items()
            if candidates[n][0] == scheme and (candidates[n][1] > 1) == multi
        }
        name = max(pool, key=pool.__getitem__)
        return pool[name], name

    sm2_one, sm2_one_how = best("sm2", False)
    sm2_all, sm2_all_how = best("sm2", True)
    ed_one, ed_one_how = best("ed25519", False)
    ed_all, ed_all_how = best("ed25519", True)
    sm2_cpu = cpu_us(sm2_compiled if compiled else sm2_evp, sm2_set, 3)
    evp_cpu = cpu_us(sm2_evp, sm2_set, 3)
    ed_cpu = cpu_us(ed25519_compiled if _verify_chunk else _loop_detached, ed_set, 3)
    log(f"SM2 ceiling, 1 thread:        {sm2_one:8.0f} sig/s ({sm2_one_how})")
    log(f"SM2 ceiling, {cores} cores:        {sm2_all:8.0f} sig/s ({sm2_all_how})")
    log(f"Ed25519 ceiling, 1 thread:    {ed_one:8.0f} sig/s ({ed_one_how})")
    log(f"Ed25519 ceiling, {cores} cores:    {ed_all:8.0f} sig/s ({ed_all_how})")
    log(
        f"one thread's CPU per verification: SM2 {sm2_cpu:.1f} us"
        f" (EVP via ctypes {evp_cpu:.1f} us), Ed25519 {ed_cpu:.1f} us"
    )
    report = {
        "benchmark": "sm2",
        "items": args.items,
        "keys": args.keys,
        "message_bytes": args.message_bytes,
        "cores": cores,
        "sm2_compiled": compiled,
        "sm2_one_thread_sig_per_s": round(sm2_one),
        "sm2_ceiling_sig_per_s": round(sm2_all),
        "sm2_ceiling_method": sm2_all_how,
        "sm2_cores_speedup": round(sm2_all / sm2_one, 2),
        "ed25519_one_thread_sig_per_s": round(ed_one),
        "ed25519_ceiling_sig_per_s": round(ed_all),
        "ed25519_ceiling_method": ed_all_how,
        "ed25519_over_sm2": round(ed_all / sm2_all, 2),
        "sm2_cpu_us": round(sm2_cpu, 1),
        "sm2_evp_cpu_us": round(evp_cpu, 1),
        "ed25519_cpu_us": round(ed_cpu, 1),
        "candidates": {n: round(r) for n, r in rates.items()},
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
