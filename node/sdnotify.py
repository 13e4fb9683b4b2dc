"""The systemd notify protocol (sd_notify), in pure Python.

With `Type=notify` systemd considers the node started only when it says
READY=1, so dependent units wait until the node actually serves; with
`WatchdogSec=` systemd restarts a node that stops sending WATCHDOG=1, which
catches a wedged event loop that a process check would miss. The protocol is
one datagram of newline-separated `KEY=value` lines sent to the unix socket
named by $NOTIFY_SOCKET (a path, or an abstract socket when it starts with
'@'), so it needs no libsystemd binding.

Notification is best effort, as in libsystemd: outside systemd (no
$NOTIFY_SOCKET) every call is a no-op, and a failed send is logged, never
raised, because a missing supervisor must not stop the node. Sends never
block the event loop: the socket is non-blocking and a datagram that would
block is dropped (systemd reads its notify socket promptly; a dropped
WATCHDOG=1 is followed by the next one at half the watchdog interval).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import trio

from node.logging import get_logger

log = get_logger(__name__)

# One datagram; systemd accepts far more, and our messages are a few lines.
NOTIFY_MESSAGE_BYTES_MAX = 4096
STATUS_CHARS_MAX = 200


class Notifier:
    """Sends notify messages to the service manager, if there is one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for $NOTIFY_SOCKET and $WATCHDOG_USEC (honouring $WATCHDOG_PID)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not (address.startswith("/") or address.startswith("@")):
            log.warning("NOTIFY_SOCKET is neither a path nor an abstract socket; ignored")
            address = None
        return cls(address, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the watchdog timeout, as sd_notify advises."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send one datagram with `lines`; True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode()
        assert all("\n" not in line for line in lines)
        if len(message) > NOTIFY_MESSAGE_BYTES_MAX:
            raise ValueError(f"notify message longer than {NOTIFY_MESSAGE_BYTES_MAX} bytes")
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message, target)
        except OSError as e:
            log.warning("sd_notify send failed", socket=self.address, error=str(e))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status is not None:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping WATCHDOG=1 every `watchdog_interval_s` until cancelled.

        The pings come from the event loop itself, so a loop that stops
        scheduling tasks stops the pings and systemd restarts the node.
        """
        task_status.started()
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(interval)


def _status_line(text: str) -> str:
    one_line = " ".join(text.split())
    return "STATUS=" + one_line[:STATUS_CHARS_MAX]


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # the watchdog belongs to another process (we were started by it)
    if not raw.isdigit() or int(raw) == 0:
        log.warning("WATCHDOG_USEC is not a positive integer; watchdog pings disabled")
        return None
    return int(raw)
