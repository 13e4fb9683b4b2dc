"""Typed errors raised at the network edge.

Why a hierarchy: every byte that arrives from a socket is untrusted input, and
the code that owns a connection must tell an operating error (a peer that
sent garbage: close it, score it) from a programmer error (an `assert`, which
crashes). Everything the wire can cause derives from `NetworkError`, so one
`except NetworkError` around a connection closes that peer only.
"""

from __future__ import annotations


class NetworkError(Exception):
    """Base of every error a remote peer can cause."""


class NoiseError(NetworkError):
    """Noise: authentication failed, bad key, truncated or oversized message."""


class HandshakeError(NetworkError):
    """The connection handshake failed (Noise, identity binding, expected id, chain id)."""


class HandshakeAbandoned(HandshakeError):
    """The connection ended before any check refused the peer's bytes (EOF, reset, timeout).

    Not blamed on the source address: a crashed or unreachable honest node
    looks exactly like this (see network.service, "Handshake failures").
    """


class HandshakeTimeout(HandshakeAbandoned):
    """The peer did not finish the handshake within `handshake_timeout_s`."""


class FrameError(NetworkError):
    """A frame on the secured stream is malformed (bad msgpack, bad shape, bad field)."""


class FrameTooLarge(FrameError):
    """A frame header claims more than `frame_bytes_max`; nothing was allocated for it."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class ProtocolViolation(NetworkError):
    """A well-formed message that breaks the protocol (unknown channel, wrong state)."""


class PeerIdleTimeout(NetworkError):
    """Nothing arrived from the peer within `idle_timeout_s`."""


class FrameTimeout(NetworkError):
    """A frame whose first bytes arrived was not complete within `frame_timeout_s`."""


class SendTimeout(NetworkError):
    """The peer did not take our bytes within `send_timeout_s`: it stopped reading."""


class RateExceeded(ProtocolViolation):
    """The peer sent a kind of message that has no legitimate burst faster than allowed."""


class ConnectionClosed(NetworkError):
    """The peer closed the connection (EOF), possibly in the middle of a message."""
