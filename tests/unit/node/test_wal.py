"""Unit tests for node/wal.py: framing, replay from the last height, rotation, crash recovery."""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import pytest

from node import wal
from node.wal import HEADER_BYTES, WALCorruptError, WALError, WALFullError


def records(n: int, size: int = 20, tag: str = "r") -> list[bytes]:
    return [f"{tag}{i:04d}".encode().ljust(size, b".") for i in range(n)]


def test_replay_yields_records_after_last_height_end(tmp_path: Path) -> None:
    """Replay starts after the last end-of-height marker, in append order, across reopen."""
    w = wal.open_wal(tmp_path / "wal")
    for r in records(3, tag="h1-"):
        w.append(r)
    w.mark_height_end(1)
    for r in records(4, tag="h2-"):
        w.append(r)
    w.close()
    w = wal.open_wal(tmp_path / "wal")
    assert w.recovery is None
    assert w.last_height_end == 1
    assert list(w.replay_from_last_height()) == records(4, tag="h2-")
    w.close()


def test_fresh_wal_replays_everything_and_empty_records(tmp_path: Path) -> None:
    """Without any marker replay yields every record, including empty ones."""
    with wal.open_wal(tmp_path / "wal") as w:
        assert w.last_height_end is None
        assert list(w.replay_from_last_height()) == []
        w.append(b"")
        w.append(b"x")
    with wal.open_wal(tmp_path / "wal") as w:
        assert list(w.replay_from_last_height()) == [b"", b"x"]


def test_marker_at_end_replays_nothing(tmp_path: Path) -> None:
    """Right after a height ends there is nothing to replay."""
    with wal.open_wal(tmp_path / "wal") as w:
        w.append(b"a")
        w.mark_height_end(7)
    with wal.open_wal(tmp_path / "wal") as w:
        assert w.last_height_end == 7
        assert list(w.replay_from_last_height()) == []


def test_every_truncation_point_recovers_a_prefix(tmp_path: Path) -> None:
    """Cutting the file at any byte (a torn write) reopens cleanly and replays a prefix."""
    src = tmp_path / "src"
    with wal.open_wal(src) as w:
        w.mark_height_end(1)
        for r in records(6):
            w.append(r)
    data = (src / "0000000000000001.wal").read_bytes()
    expected = records(6)
    marker_end = HEADER_BYTES + 9
    for cut in range(marker_end, len(data) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "0000000000000001.wal").write_bytes(data[:cut])
        w = wal.open_wal(d)
        got = list(w.replay_from_last_height())
        assert got == expected[: len(got)]
        frame = HEADER_BYTES + 1 + 20
        assert len(got) == (cut - marker_end) // frame
        assert (w.recovery is None) == ((cut - marker_end) % frame == 0)
        w.append(b"after")
        w.close()
        with wal.open_wal(d) as reopened:
            assert list(reopened.replay_from_last_height()) == [*got, b"after"]


def test_garbage_tail_is_truncated_and_reported(tmp_path: Path) -> None:
    """Zeros or random bytes after the last frame (power loss) are cut off and reported."""
    d = tmp_path / "wal"
    with wal.open_wal(d) as w:
        w.append(b"kept")
    f = d / "0000000000000001.wal"
    good_size = f.stat().st_size
    with f.open("ab") as out:
        out.write(b"\x00" * 3000 + os.urandom(500))
    w = wal.open_wal(d)
    assert w.recovery is not None
    assert w.recovery.offset == good_size
    assert w.recovery.bytes_dropped == 3500
    assert f.stat().st_size == good_size
    assert list(w.replay_from_last_height()) == [b"kept"]
    w.close()


def test_damage_before_a_completed_height_is_an_error(tmp_path: Path) -> None:
    """A flipped byte in a record followed by a valid marker is corruption, not a tail."""
    d = tmp_path / "wal"
    with wal.open_wal(d) as w:
        w.append(b"a" * 50)
        w.mark_height_end(1)
        w.append(b"b" * 50)
    f = d / "0000000000000001.wal"
    data = bytearray(f.read_bytes())
    data[HEADER_BYTES + 10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WALCorruptError, match="completed height"):
        wal.open_wal(d)
    assert f.stat().st_size == len(data)  # nothing truncated


def test_damage_after_last_marker_drops_the_rest_of_the_height(tmp_path: Path) -> None:
    """Damage after the last marker is tail: dropped with any intact frames after it."""
    d = tmp_path / "wal"
    with wal.open_wal(d) as w:
        w.mark_height_end(1)
        for r in records(3):
            w.append(r)
    f = d / "0000000000000001.wal"
    data = bytearray(f.read_bytes())
    second = HEADER_BYTES + 9 + HEADER_BYTES + 21
    data[second + HEADER_BYTES + 3] ^= 0x01
    f.write_bytes(bytes(data))
    w = wal.open_wal(d)
    assert w.recovery is not None
    assert w.recovery.valid_records_dropped == 1
    assert list(w.replay_from_last_height()) == records(1)
    w.close()


def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    """Files rotate at file_bytes_max; at most files_max stay; replay spans files."""
    d = tmp_path / "wal"
    w = wal.open_wal(d, file_bytes_max=512, files_max=3, record_bytes_max=100)
    height = 0
    for i in range(200):
        w.append(f"rec{i}".encode().ljust(60, b"-"))
        if i % 10 == 9:
            height += 1
            w.mark_height_end(height)
        assert len(w.files()) <= 3
        assert all(p.stat().st_size <= 512 for p in w.files())
    tail = [f"tail{i}".encode().ljust(60, b"-") for i in range(12)]
    for r in tail:
        w.append(r)
    w.close()
    assert len(list(d.glob("*.wal"))) == 3
    w = wal.open_wal(d, file_bytes_max=512, files_max=3, record_bytes_max=100)
    assert w.last_height_end == 20
    assert list(w.replay_from_last_height()) == tail
    w.close()


def test_one_height_larger_than_all_files_is_refused(tmp_path: Path) -> None:
    """Appends that would push the last height's records out of the WAL raise WALFullError."""
    w = wal.open_wal(tmp_path / "wal", file_bytes_max=256, files_max=2, record_bytes_max=100)
    w.mark_height_end(1)
    with pytest.raises(WALFullError):
        for _ in range(100):
            w.append(b"z" * 90)
    w.close()


def test_damage_in_a_sealed_file_is_an_error(tmp_path: Path) -> None:
    """An older (fsync'd) file with a bad frame is never silently truncated."""
    d = tmp_path / "wal"
    with wal.open_wal(d, file_bytes_max=256, files_max=8, record_bytes_max=100) as w:
        w.mark_height_end(1)
        for r in records(20, size=60):
            w.append(r)
    first = d / "0000000000000001.wal"
    data = bytearray(first.read_bytes())
    data[-5] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WALCorruptError, match="checksum"):
        wal.open_wal(d, file_bytes_max=256, files_max=8, record_bytes_max=100)
    # With a marker in a later file, open succeeds and the damage is past replay's start.
    data[-5] ^= 0xFF
    first.write_bytes(bytes(data))
    with wal.open_wal(d, file_bytes_max=256, files_max=8, record_bytes_max=100) as w:
        w.mark_height_end(2)
        w.append(b"next")
    data[-5] ^= 0xFF
    first.write_bytes(bytes(data))
    with wal.open_wal(d, file_bytes_max=256, files_max=8, record_bytes_max=100) as w:
        assert list(w.replay_from_last_height()) == [b"next"]


def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    """Two writers on one WAL would interleave frames; the lock refuses the second."""
    w = wal.open_wal(tmp_path / "wal")
    with pytest.raises(WALError, match="in use"):
        wal.open_wal(tmp_path / "wal")
    w.close()
    wal.open_wal(tmp_path / "wal").close()


def test_limits_and_height_order_are_enforced(tmp_path: Path) -> None:
    """Oversized records and non-increasing markers are rejected with WALError."""
    w = wal.open_wal(tmp_path / "wal", file_bytes_max=4096, record_bytes_max=1000)
    with pytest.raises(WALError, match="exceeds"):
        w.append(b"x" * 1001)
    w.mark_height_end(5)
    with pytest.raises(WALError, match="not above"):
        w.mark_height_end(5)
    w.close()
    with pytest.raises(WALError, match="closed"):
        w.append(b"x")


def test_a_full_disk_is_a_wal_error_and_what_was_written_replays(tmp_path: Path) -> None:
    """The kernel refuses a write beyond RLIMIT_FSIZE with EFBIG, as a full disk refuses
    with ENOSPC: the append raises WALError (which the node turns into an orderly stop,
    not a traceback), and the records appended before it replay after a reopen."""
    path = tmp_path / "wal"
    with wal.open_wal(path) as w:
        for r in records(3):
            w.append(r)
        w.sync()
        size = max(f.stat().st_size for f in path.iterdir())  # the head file
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
        try:
            with pytest.raises(WALError, match="cannot write"):
                w.append(b"x" * 100)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)
    with wal.open_wal(path) as w:
        assert list(w.replay_from_last_height()) == records(3)
