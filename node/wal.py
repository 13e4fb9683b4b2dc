"""The consensus write-ahead log: every input recorded before it is handled.

After a crash the node must resume the height (and round) it was in, with the
proposals and votes it had seen and the messages it had signed, or it could
stall its peers or contradict itself. The consensus task appends each input
here before stepping the core (`append`, which hands the bytes to the kernel,
so they survive kill -9), calls `sync` before it signs anything that depends
on them (so they survive power loss), and calls `mark_height_end(h)` once
block h is committed. At restart `replay_from_last_height` yields the records
written after the last completed height, in order; older records are history.

Records are opaque bytes: the consensus engineer defines their encoding. On
disk each is one frame:

    magic (4) | body length (u32 BE) | checksum (8) | body

where body = kind (1 byte: 0 a record, 1 an end-of-height marker) + payload,
and checksum = SHA-256(length || body)[:8]. The magic lets recovery find frame
boundaries after damage with a C-speed search instead of a byte-by-byte scan.

Files `<sequence>.wal` live in one directory and rotate at `file_bytes_max`;
at most `files_max` are kept (older ones are deleted once a later file holds
an end-of-height marker, since replay never reads before it). A file is
fsync'd before the next one is started, so only the newest file can have an
unsynced tail.

Crash recovery, on `open`: a damaged frame in the newest file with no
end-of-height marker after it is a torn tail (writes after the last durable
marker that did not fully reach the disk): it is truncated, and `recovery`
reports what was dropped. A damaged frame followed by a valid marker, or any
damage in an older file, is corruption of data that was fsync'd, and raises
`WALCorruptError`: recovering from it needs a person, not a guess.

The API is synchronous (os.write and os.fsync); the owner runs `sync` in a
worker thread if it must not block its event loop. One process at a time:
an exclusive flock on `LOCK` in the directory enforces it.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from consensus.types import BLOCK_BYTES_MAX, HEIGHT_MAX
from node.durable import fsync_directory, write_all

__all__ = [
    "FILES_MAX",
    "FILE_BYTES_MAX",
    "RECORD_BYTES_MAX",
    "WAL",
    "TailRecovery",
    "WALCorruptError",
    "WALError",
    "WALFullError",
    "open",
]

# A record can carry a whole proposed block, so the limit is the protocol's
# block limit plus room for the consensus engineer's envelope.
RECORD_BYTES_MAX = BLOCK_BYTES_MAX + 64 * 1024
# 64 MiB files, 16 of them: at most 1 GiB on disk, and a height may use up to
# 16 files of inputs before appends are refused (WALFullError).
FILE_BYTES_MAX = 64 * 1024 * 1024
FILES_MAX = 16

MAGIC = b"\xa7WAL"
_HEADER = struct.Struct(">4sI8s")
HEADER_BYTES = _HEADER.size  # 16
_KIND_RECORD = 0
_KIND_HEIGHT_END = 1
_HEIGHT = struct.Struct(">Q")
_SUFFIX = ".wal"


class WALError(Exception):
    """The WAL cannot be used as asked (locked by another process, bad arguments, a full
    disk or another write error)."""


class WALCorruptError(WALError):
    """Damage before the torn tail: fsync'd data is unreadable. Needs an operator."""


class WALFullError(WALError):
    """Appending would need more than `files_max` files for one height: refused."""


@dataclass(frozen=True, slots=True)
class TailRecovery:
    """What `open` truncated from the newest file after a crash."""

    file: Path
    offset: int  # where the damaged frame started (the file's new size)
    bytes_dropped: int
    valid_records_dropped: int  # intact frames after the damage, lost with it
    reason: str


@dataclass(frozen=True, slots=True)
class _Frame:
    offset: int
    end: int
    kind: int
    payload: bytes


class _BadFrame(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _checksum(length_bytes: bytes, body: bytes) -> bytes:
    # A checksum of this node's own file, not a chain hash: SHA-256 whatever the
    # chain's crypto suite, so the WAL format is one.
    return hashlib.sha256(length_bytes + body).digest()[:8]


def encode_frame(kind: int, payload: bytes) -> bytes:
    body = bytes([kind]) + payload
    length = struct.pack(">I", len(body))
    return MAGIC + length + _checksum(length, body) + body


def _parse_at(buf: bytes | mmap.mmap, offset: int, body_bytes_max: int) -> _Frame | None:
    """The valid frame starting at `offset` of an in-memory buffer, or None."""
    header = buf[offset : offset + HEADER_BYTES]
    if len(header) < HEADER_BYTES:
        return None
    magic, length, checksum = _HEADER.unpack(header)
    if magic != MAGIC or not 1 <= length <= body_bytes_max:
        return None
    end = offset + HEADER_BYTES + length
    body = bytes(buf[offset + HEADER_BYTES : end])
    if len(body) < length or _checksum(header[4:8], body) != checksum:
        return None
    if body[0] not in (_KIND_RECORD, _KIND_HEIGHT_END):
        return None
    if body[0] == _KIND_HEIGHT_END and len(body) != 1 + _HEIGHT.size:
        return None
    return _Frame(offset, end, body[0], body[1:])


def _read_frames(f: BinaryIO, offset: int, body_bytes_max: int) -> Iterator[_Frame]:
    """Frames from `offset` to EOF, one in memory at a time; _BadFrame on damage."""
    f.seek(offset)
    while True:
        header = f.read(HEADER_BYTES)
        if not header:
            return
        if len(header) < HEADER_BYTES:
            raise _BadFrame(offset, "incomplete frame header")
        magic, length, checksum = _HEADER.unpack(header)
        if magic != MAGIC:
            raise _BadFrame(offset, "bad magic")
        if not 1 <= length <= body_bytes_max:
            raise _BadFrame(offset, f"frame length {length} out of range")
        body = f.read(length)
        if len(body) < length:
            raise _BadFrame(offset, "incomplete frame body")
        if _checksum(header[4:8], body) != checksum:
            raise _BadFrame(offset, "checksum mismatch")
        kind = body[0]
        if kind == _KIND_HEIGHT_END and len(body) != 1 + _HEIGHT.size:
            raise _BadFrame(offset, "malformed end-of-height marker")
        if kind not in (_KIND_RECORD, _KIND_HEIGHT_END):
            raise _BadFrame(offset, f"unknown frame kind {kind}")
        end = offset + HEADER_BYTES + length
        yield _Frame(offset, end, kind, body[1:])
        offset = end


def _file_name(seq: int) -> str:
    return f"{seq:016d}{_SUFFIX}"


def open_wal(
    path: str | os.PathLike[str],
    *,
    file_bytes_max: int = FILE_BYTES_MAX,
    files_max: int = FILES_MAX,
    record_bytes_max: int = RECORD_BYTES_MAX,
) -> WAL:
    """Open (creating if needed) the WAL in directory `path`, recovering a torn tail."""
    return WAL._open(Path(path), file_bytes_max, files_max, record_bytes_max)


class WAL:
    """An open write-ahead log; see the module docstring. Create with `open_wal`."""

    def __init__(
        self,
        directory: Path,
        lock_fd: int,
        seqs: list[int],
        head_fd: int,
        head_size: int,
        marker: tuple[int, int, int] | None,
        recovery: TailRecovery | None,
        limits: tuple[int, int, int],
    ) -> None:
        self.directory = directory
        self._lock_fd = lock_fd
        self._seqs = seqs  # ascending; the last is the head (being appended to)
        self._head_fd: int | None = head_fd
        self._head_size = head_size
        self._synced_size = head_size
        # (height, file sequence, offset just after the marker) of the last end-of-height.
        self._marker = marker
        self.recovery = recovery
        self.file_bytes_max, self.files_max, self.record_bytes_max = limits

    # ------------------------------------------------------------ opening

    @classmethod
    def _open(
        cls, directory: Path, file_bytes_max: int, files_max: int, record_bytes_max: int
    ) -> WAL:
        if files_max < 2:
            raise WALError("files_max must be at least 2")
        if file_bytes_max < HEADER_BYTES + 1 + record_bytes_max:
            raise WALError("file_bytes_max must hold at least one record of record_bytes_max")
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if created:
            fsync_directory(directory.parent)
        lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise WALError(f"{directory}: in use by another process") from None
        try:
            return cls._open_locked(
                directory, lock_fd, (file_bytes_max, files_max, record_bytes_max)
            )
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, directory: Path, lock_fd: int, limits: tuple[int, int, int]) -> WAL:
        body_max = limits[2] + 1
        seqs = sorted(
            int(p.name[: -len(_SUFFIX)])
            for p in directory.iterdir()
            if p.name.endswith(_SUFFIX) and p.name[: -len(_SUFFIX)].isdigit()
        )
        if not seqs:
            seqs = [1]
            fd = os.open(directory / _file_name(1), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            fsync_directory(directory)
        head = directory / _file_name(seqs[-1])
        recovery, head_marker = _recover_head(head, body_max)
        marker = None
        if head_marker is not None:
            marker = (head_marker[0], seqs[-1], head_marker[1])
        else:
            for seq in reversed(seqs[:-1]):
                found = _last_marker_in_sealed(directory / _file_name(seq), body_max)
                if found is not None:
                    marker = (found[0], seq, found[1])
                    break
        head_fd = os.open(head, os.O_WRONLY | os.O_APPEND)
        head_size = os.fstat(head_fd).st_size
        return cls(directory, lock_fd, seqs, head_fd, head_size, marker, recovery, limits)

    # ------------------------------------------------------------ writing

    @property
    def last_height_end(self) -> int | None:
        """The last height marked complete, or None if none was."""
        return None if self._marker is None else self._marker[0]

    def append(self, record: bytes) -> None:
        """Hand one record to the kernel (it survives kill -9; `sync` for power loss)."""
        if not 0 <= len(record) <= self.record_bytes_max:
            raise WALError(f"record of {len(record)} bytes exceeds {self.record_bytes_max}")
        self._write_frame(encode_frame(_KIND_RECORD, record))

    def sync(self) -> None:
        """fsync what was appended; call before signing anything that depends on it."""
        fd = self._fd()
        if self._synced_size != self._head_size:
            try:
                os.fsync(fd)
            except OSError as e:
                raise WALError(f"{self.directory}: cannot sync: {e.strerror}") from e
            self._synced_size = self._head_size

    def mark_height_end(self, height: int) -> None:
        """Record that `height` is committed (and fsync): replay starts after this."""
        if not 1 <= height <= HEIGHT_MAX:
            raise WALError(f"height {height} out of range")
        if self._marker is not None and height <= self._marker[0]:
            raise WALError(f"height {height} not above the last marked {self._marker[0]}")
        self._write_frame(encode_frame(_KIND_HEIGHT_END, _HEIGHT.pack(height)))
        self.sync()
        self._marker = (height, self._seqs[-1], self._head_size)

    def _fd(self) -> int:
        if self._head_fd is None:
            raise WALError("WAL is closed")
        return self._head_fd

    def _write_frame(self, frame: bytes) -> None:
        """Append one frame; a full disk or any other write error is a WALError.

        A frame cut short by the error is a torn tail, which replay drops (as
        after kill -9), so what was appended before stays readable.
        """
        self._fd()
        try:
            if self._head_size > 0 and self._head_size + len(frame) > self.file_bytes_max:
                self._rotate()
            write_all(self._fd(), frame)
        except OSError as e:
            raise WALError(f"{self.directory}: cannot write: {e.strerror}") from e
        self._head_size += len(frame)

    def _rotate(self) -> None:
        """Seal the head (fsync) and start the next file, pruning ones replay no longer needs."""
        oldest_needed = self._seqs[0] if self._marker is None else self._marker[1]
        needed = [s for s in self._seqs if s >= oldest_needed]
        if len(needed) + 1 > self.files_max:
            raise WALFullError(
                f"{self.directory}: one height needs more than {self.files_max} files"
            )
        self.sync()
        os.close(self._fd())
        self._head_fd = None
        seq = self._seqs[-1] + 1
        fd = os.open(
            self.directory / _file_name(seq),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
            0o600,
        )
        self._head_fd = fd
        self._seqs.append(seq)
        self._head_size = self._synced_size = 0
        while len(self._seqs) > self.files_max:
            (self.directory / _file_name(self._seqs.pop(0))).unlink()
        fsync_directory(self.directory)

    # ------------------------------------------------------------ reading

    def replay_from_last_height(self) -> Iterator[bytes]:
        """The records appended after the last end-of-height marker, oldest first.

        Reads one record at a time (memory bounded by `record_bytes_max`).
        Raises WALCorruptError on damage (a torn tail was already removed by open).
        """
        if self._marker is None:
            start_seq, start_offset = self._seqs[0], 0
        else:
            start_seq, start_offset = self._marker[1], self._marker[2]
        body_max = self.record_bytes_max + 1
        for seq in [s for s in self._seqs if s >= start_seq]:
            path = self.directory / _file_name(seq)
            offset = start_offset if seq == start_seq else 0
            with path.open("rb") as f:
                try:
                    for frame in _read_frames(f, offset, body_max):
                        if frame.kind == _KIND_RECORD:
                            yield frame.payload
                except _BadFrame as e:
                    raise WALCorruptError(f"{path}: offset {e.offset}: {e.reason}") from None

    def files(self) -> list[Path]:
        """The WAL's files, oldest first (for operators and tests)."""
        return [self.directory / _file_name(s) for s in self._seqs]

    def close(self) -> None:
        """fsync and close; the WAL object cannot be used afterwards."""
        if self._head_fd is None:
            return
        try:
            self.sync()
        finally:
            os.close(self._head_fd)
            self._head_fd = None
            os.close(self._lock_fd)

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recover_head(path: Path, body_max: int) -> tuple[TailRecovery | None, tuple[int, int] | None]:
    """Validate the newest file, truncate a torn tail; return it and the last marker seen."""
    marker: tuple[int, int] | None = None
    with path.open("rb") as f:
        try:
            for frame in _read_frames(f, 0, body_max):
                if frame.kind == _KIND_HEIGHT_END:
                    marker = (_HEIGHT.unpack(frame.payload)[0], frame.end)
            return None, marker
        except _BadFrame as e:
            bad = e
    size = path.stat().st_size
    dropped = _valid_frames_after(path, bad.offset, body_max)
    if any(kind == _KIND_HEIGHT_END for kind in dropped):
        raise WALCorruptError(
            f"{path}: offset {bad.offset}: {bad.reason}, before a completed height: "
            "fsync'd records are damaged"
        )
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, bad.offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    recovery = TailRecovery(path, bad.offset, size - bad.offset, len(dropped), bad.reason)
    return recovery, marker


def _valid_frames_after(path: Path, offset: int, body_max: int) -> list[int]:
    """Kinds of the intact frames anywhere after a damaged one (found via the magic)."""
    kinds: list[int] = []
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size <= offset + 1:
            return kinds
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            at = buf.find(MAGIC, offset + 1)
            while at != -1:
                frame = _parse_at(buf, at, body_max)
                if frame is not None:
                    kinds.append(frame.kind)
                    at = buf.find(MAGIC, frame.end)
                else:
                    at = buf.find(MAGIC, at + 1)
    return kinds


def _last_marker_in_sealed(path: Path, body_max: int) -> tuple[int, int] | None:
    """The last marker in an older (sealed, fsync'd) file; any damage there is corruption."""
    marker: tuple[int, int] | None = None
    with path.open("rb") as f:
        try:
            for frame in _read_frames(f, 0, body_max):
                if frame.kind == _KIND_HEIGHT_END:
                    marker = (_HEIGHT.unpack(frame.payload)[0], frame.end)
        except _BadFrame as e:
            raise WALCorruptError(f"{path}: offset {e.offset}: {e.reason}") from None
    return marker
