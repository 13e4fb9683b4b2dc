"""Files that survive kill -9 and power loss: the fsync rules, written once.

A rename or a new name in a directory is durable only once the directory
itself is fsync'd (CometBFT issue #6031 lost sign states to exactly this),
and `os.write` may write less than it was given. The key files, the sign
state, the store's folder and the WAL all follow these rules through this
module.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["fsync_directory", "replace_durably", "write_all", "write_new_file"]


def fsync_directory(directory: Path) -> None:
    """fsync a directory so a rename or create inside it is durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_new_file(path: Path, data: bytes, mode: int) -> Path:
    """A temp file beside `path` holding `data`, fsync'd; created O_EXCL with `mode`.

    The mode is set on the open descriptor too (an inherited default ACL could
    add bits the umask cannot remove), so the data is never readable by anyone
    else, not even for an instant. The caller renames or links it into place.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def replace_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: after return the new content survives power loss."""
    tmp = write_new_file(path, data, mode)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)
