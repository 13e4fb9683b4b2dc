"""GET /tx's result proofs from cached trees: the same paths as merkle.prove, one read per block.

node/rpc.py keeps the results trees of the last few heights asked for (leaf
hashes and the subtree roots proofs used), so a GET /tx no longer reads and
hashes every result of its block.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from consensus import merkle
from consensus.codec import decode, encode
from node.rpc import RESULT_TREES_CACHED, ResultTrees, _ResultTree
from node.storage import BlockStore, StorageCorruptError


def _stored(n: int) -> list[bytes]:
    """n stored results, [code, log, data]."""
    return [encode([i % 3, f"log {i}", b"d%d" % i]) for i in range(n)]


def _items(stored: list[bytes]) -> list[bytes]:
    """The results-hash leaf items, [code, data]."""
    fields: list[Any] = [decode(s) for s in stored]
    return [encode([f[0], f[2]]) for f in fields]


class CountingStore:
    def __init__(self, per_height: dict[int, list[bytes]]) -> None:
        self.per_height = per_height
        self.reads: list[int] = []

    def iter_block_results(self, height: int) -> Iterator[bytes]:
        self.reads.append(height)
        return iter(self.per_height[height])


def test_cached_paths_are_merkle_proves() -> None:
    for n in range(1, 40):
        items = _items(_stored(n))
        tree = _ResultTree([merkle.leaf_hash(i) for i in items])
        for index in range(n):
            assert tree.prove(index) == merkle.prove(items, index), (n, index)


def test_a_block_is_read_once_while_cached_and_the_cache_is_bounded() -> None:
    per_height = {h: _stored(h + 5) for h in range(1, RESULT_TREES_CACHED + 3)}
    store = CountingStore(per_height)
    trees = ResultTrees()
    fake = cast(BlockStore, store)
    root = {h: merkle.root(_items(r)) for h, r in per_height.items()}
    for index in range(6):
        proof = trees.proof(fake, 1, index, root[1])
        assert proof.verify(_items(per_height[1])[index], root[1])
    assert store.reads == [1]
    for h in range(2, RESULT_TREES_CACHED + 3):
        trees.proof(fake, h, 0, root[h])
    trees.proof(fake, 1, 0, root[1])
    assert store.reads.count(1) == 2  # forgotten: more heights than RESULT_TREES_CACHED
    with pytest.raises(StorageCorruptError):
        ResultTrees().proof(fake, 2, 0, root[3])
