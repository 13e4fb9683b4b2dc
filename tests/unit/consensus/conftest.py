"""Fixtures the consensus unit tests share."""

from __future__ import annotations

import pytest

from consensus import ed25519


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signatures verified during the test, in order.

    Every one is seen: the batch path in C is switched off, so each signature is
    verified alone, in Python.
    """
    calls: list[bytes] = []
    real = ed25519._verify_detached

    def counting(sig: bytes, msg: bytes, n: int, pk: bytes) -> int:
        calls.append(sig)
        return int(real(sig, msg, n, pk))

    monkeypatch.setattr(ed25519, "_verify_detached", counting)
    monkeypatch.setattr(ed25519, "_verify_chunk", None)
    return calls
