"""Kill -9 tests: a validator process killed at random points never double-signs and resumes.

The helper (crash_helper.py) runs the real SignState, WAL and block store in
its own process and prints each signature before releasing it. The test kills
it with SIGKILL after a seeded random number of output lines (so at an
arbitrary point of its work, including during start-up), then checks the
files it left, restarts it, and repeats; under each crypto suite.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from consensus.crypto import PrivateKey, verify
from consensus.types import Validator, ValidatorSet
from node import wal
from node.signstate import SignState
from node.storage import open_store

HELPER = Path(__file__).with_name("crash_helper.py")
ROOT = Path(__file__).resolve().parents[2]
KILLS = 30
# Small WAL files so the helper rotates (and prunes) every few dozen heights.
WAL_LIMITS = {"file_bytes_max": 64 * 1024, "files_max": 4, "record_bytes_max": 32 * 1024}
RUN_TIMEOUT_S = 60  # a hung helper is killed and fails the test, never blocks it
# The helper's chain and key seed (tests/ is not a package, so they are restated here; the
# helper prints its public key at start and the test checks it against the one made here).
CHAIN = "crash-test"
KEY_SEED = b"\x42" * 32


@dataclass
class Released:
    """Everything the helper ever printed, across all of its lives."""

    public_key: bytes  # the key the helper must sign with
    sigs: dict[tuple[int, int, int], tuple[bytes, bytes]] = field(default_factory=dict)
    committed: dict[int, bytes] = field(default_factory=dict)
    refused: int = 0
    starts: list[tuple[int, int, int]] = field(default_factory=list)  # height, round, replayed

    def add(self, line: str) -> None:
        parts = line.split()
        if parts[0] == "SIG":
            hrs = (int(parts[1]), int(parts[2]), int(parts[3]))
            sign_bytes, sig = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
            previous = self.sigs.setdefault(hrs, (sign_bytes, sig))
            assert previous == (sign_bytes, sig), f"conflicting signatures released at {hrs}"
        elif parts[0] == "COMMIT":
            self.committed[int(parts[1])] = bytes.fromhex(parts[2])
        elif parts[0] == "REFUSED":
            self.refused += 1
        elif parts[0] == "START":
            assert parts[5] == self.public_key.hex(), "helper signs with another key"
            self.starts.append((int(parts[1]), int(parts[2]), int(parts[4])))


def spawn(home: Path, crypto: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(home), "--crypto", crypto, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run_and_kill(
    home: Path, crypto: str, released: Released, lines_before_kill: int, forget: bool
) -> None:
    proc = spawn(home, crypto, *(["--forget-wal"] if forget else []))
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for _ in range(lines_before_kill):
            line = proc.stdout.readline()
            if not line:
                break
            released.add(line.decode())
        proc.send_signal(signal.SIGKILL)
        # Lines already in the pipe were released before the kill: count them too.
        for line in proc.stdout:
            released.add(line.decode())
        proc.wait()
    finally:
        watchdog.cancel()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == -signal.SIGKILL, f"helper died on its own:\n{stderr}"


def check_files(home: Path, released: Released, pubkey: bytes, valset: ValidatorSet) -> None:
    """What a restarted node relies on: sign state, WAL and store all open and agree."""
    last = SignState.load(home / "sign_state.json").last
    if released.sigs:
        assert last.hrs >= max(released.sigs), "a signature was released before it was durable"
    for hrs, (sign_bytes, sig) in released.sigs.items():
        assert verify(pubkey, sign_bytes, sig), f"bad signature at {hrs}"
    if (home / "wal").exists():
        w = wal.open_wal(home / "wal", **WAL_LIMITS)
        assert all(isinstance(r, bytes) for r in w.replay_from_last_height())
        w.close()
    if not (home / "store").exists():
        return
    with open_store(home / "store", map_bytes=256 * 1024 * 1024) as store:
        top = store.latest_height()
        assert all(h <= top for h in released.committed), "a committed block was lost"
        prev_hash = b""
        for h in range(1, top + 1):
            block = store.load_block(h)
            assert block is not None and block.header.last_block_hash == prev_hash
            commit = store.load_commit(h)
            assert commit is not None and commit.block_hash == block.hash
            assert commit.verify(CHAIN, valset) is None
            assert released.committed.get(h, block.hash) == block.hash
            prev_hash = block.hash


def test_kill_9_at_random_points_never_double_signs_and_resumes(
    tmp_path: Path, crypto: str
) -> None:
    """30 SIGKILLs at seeded random points: no conflicting signature, nothing lost, progress."""
    rng = random.Random(20240601)
    home = tmp_path / "node"
    home.mkdir()
    SignState.create(home / "sign_state.json")
    key = PrivateKey(KEY_SEED)  # the chain's suite, as the helper's
    valset = ValidatorSet.of([Validator(key.public_key, 10)])
    released = Released(key.public_key)
    for _ in range(KILLS):
        run_and_kill(home, crypto, released, rng.randrange(0, 40), forget=rng.random() < 0.3)
        check_files(home, released, key.public_key, valset)
    proc = spawn(home, crypto, "--heights", "2")
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, stderr.decode()
    for line in stdout.decode().splitlines():
        released.add(line)
    check_files(home, released, key.public_key, valset)
    start_height = released.starts[-1][0]
    assert max(released.committed) == start_height + 1
    assert start_height > 5, "the node made no progress across restarts"
    assert released.refused > 0, "the conflicting-signature path was never exercised"
    assert any(replayed > 0 for _, _, replayed in released.starts), "no mid-height resume"
