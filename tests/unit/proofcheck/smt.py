"""The state tree of docs/PROTOCOL.md section 11, built here from that text alone.

A small, slow, obviously-correct reference (recursion over a dict) that the
tests use to make app hashes and proofs independent of the node's tree.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.crypto import Suite

E = bytes(32)


def _bit(path: bytes, i: int) -> int:
    return (path[i // 8] >> (7 - i % 8)) & 1


def _leaves(suite: Suite, state: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {suite.hash(k): suite.hash(v) for k, v in state.items()}


def _root(suite: Suite, leaves: dict[bytes, bytes], depth: int) -> bytes:
    if not leaves:
        return E
    if len(leaves) == 1:
        ((p, v),) = leaves.items()
        return suite.hash(b"\x10" + p + v)
    left = {p: v for p, v in leaves.items() if _bit(p, depth) == 0}
    right = {p: v for p, v in leaves.items() if _bit(p, depth) == 1}
    return suite.hash(b"\x11" + _root(suite, left, depth + 1) + _root(suite, right, depth + 1))


def root(suite: Suite, state: dict[bytes, bytes]) -> bytes:
    """The app hash of `state` (key -> stored value bytes)."""
    return _root(suite, _leaves(suite, state), 0)


def prove(suite: Suite, state: dict[bytes, bytes], key: bytes) -> bytes:
    """The encoded proof `[siblings, leaf]` for `key`, present or absent."""
    path = suite.hash(key)
    node = _leaves(suite, state)
    siblings: list[bytes] = []
    while len(node) > 1:
        depth = len(siblings)
        same = {p: v for p, v in node.items() if _bit(p, depth) == _bit(path, depth)}
        other = {p: v for p, v in node.items() if _bit(p, depth) != _bit(path, depth)}
        sibling = _root(suite, other, depth + 1)
        siblings.append(b"" if sibling == E else sibling)
        node = same
    leaf: Any = list(next(iter(node.items()))) if node else None
    packed: bytes = msgpack.packb([siblings, leaf], use_bin_type=True)
    return packed
