"""The state tree: the applications' state as a compacted sparse Merkle tree.

The app hash is the root of a binary tree over H(key) (256 bits) in which an
empty subtree hashes to 32 zero bytes, a subtree holding one key is that key's
leaf, and only subtrees of two or more keys have inner nodes. So any key has
a proof of its value, or of its absence, of about log2(keys) sibling hashes
against the app hash a header carries. docs/PROTOCOL.md (section 11, "App hash:
the state tree") gives the hashes, the proof encoding and the verification walk
byte-exactly; an offline verifier is written from that text alone.

Nodes are immutable tuples, so a block's update copies only the paths it
touches and the previous version stays whole (what `GET /state/proof` serves):

- a leaf is (hash, path, value): `path` the 32-byte H(key), `value` the stored bytes;
- an inner node is (hash, left, right), a child None when its subtree is empty.

The root after a block is computed when it is first asked for
(`PendingTree.tree`), which the node does while it stores the block, not while
it validates it: the validation core's cost per block stays the signatures'
(benchmarks/statetree.py measures both). The hash is the chain's suite's
(`consensus.crypto.active`), so an SM3 chain has an SM3 tree.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.codec import DecodeError, Reader, encode
from consensus.crypto import HASH_BYTES, active

__all__ = [
    "CHAIN_KEY",
    "EMPTY",
    "STATE_PROOF_BYTES_MAX",
    "STATE_VERSIONS_KEPT",
    "PendingTree",
    "StateCorrupt",
    "StateProof",
    "StateProofError",
    "StateTree",
    "StateVersions",
    "chain_value",
    "decode_state_proof",
    "verify_state_proof",
]

PATH_BITS = 256  # a key's path is H(key): 32 bytes in both suites
EMPTY = bytes(HASH_BYTES)  # the hash of an empty subtree (no hash is computed)
LEAF_TAG = b"\x10"
INNER_TAG = b"\x11"
# The state key that binds every app hash to the chain and the application.
CHAIN_KEY = b"m/chain"
CHAIN_TAG = "archipelago/app/v2"
# 256 siblings of 34 encoded bytes, the leaf (2 x 34 + 1) and three array
# headers (at most 3 bytes each) fit in 8,789 bytes: a longer input is refused
# before it is parsed.
STATE_PROOF_BYTES_MAX = 9_000
_HASH_HEAD = b"\xc4\x20"  # bin8 of 32 bytes
_LEAF_HEAD = b"\x92" + _HASH_HEAD  # fixarray(2), then the path's header

# A node: (hash, path, value) for a leaf, (hash, left, right) for an inner node.
Node = tuple[Any, ...]


def chain_value(chain_id: str, app: str) -> bytes:
    """The value of CHAIN_KEY: canonical ["archipelago/app/v2", chain_id, app]."""
    return encode([CHAIN_TAG, chain_id, app])


class StateCorrupt(ValueError):
    """The stored state does not hash to the app hash stored with it."""


def _is_leaf(node: Node) -> bool:
    return type(node[1]) is bytes


def _leaf(path: bytes, value: bytes, h: Any) -> Node:
    return (h(LEAF_TAG + path + h(value).digest()).digest(), path, value)


def _join(left: Node | None, right: Node | None, h: Any) -> Node | None:
    """The node over two subtrees: a lone leaf (or nothing) rises, others get an inner node."""
    if left is None:
        if right is None or type(right[1]) is bytes:
            return right
        return (h(INNER_TAG + EMPTY + right[0]).digest(), None, right)
    if right is None:
        if type(left[1]) is bytes:
            return left
        return (h(INNER_TAG + left[0] + EMPTY).digest(), left, None)
    return (h(INNER_TAG + left[0] + right[0]).digest(), left, right)


def _build(
    ints: Sequence[int], leaves: Sequence[Node], depth: int, lo: int, hi: int, h: Any
) -> Node | None:
    """The subtree over leaves[lo:hi] (sorted by path, distinct), rooted at `depth`."""
    if hi - lo <= 1:
        return leaves[lo] if hi > lo else None
    shift = PATH_BITS - 1 - depth
    mid = bisect_left(ints, ((ints[lo] >> shift) | 1) << shift, lo, hi)
    return _join(
        _build(ints, leaves, depth + 1, lo, mid, h),
        _build(ints, leaves, depth + 1, mid, hi, h),
        h,
    )


def _update(
    node: Node | None,
    ints: Sequence[int],
    changes: Sequence[Node | None],
    depth: int,
    lo: int,
    hi: int,
    h: Any,
) -> Node | None:
    """`node` (at `depth`) with changes[lo:hi] applied: a leaf to set, or None to delete.

    Only the paths to changed keys are rebuilt; every other subtree is shared
    with `node`, which stays as it was. Written inline: it runs once per
    changed node, about four times per write (20,000 writes, 100,000 keys).
    """
    if node is not None and type(node[1]) is not bytes:
        old_left = node[1]
        old_right = node[2]
        shift = PATH_BITS - 1 - depth
        mid = bisect_left(ints, ((ints[lo] >> shift) | 1) << shift, lo, hi)
        left = old_left if mid == lo else _update(old_left, ints, changes, depth + 1, lo, mid, h)
        right = old_right if mid == hi else _update(old_right, ints, changes, depth + 1, mid, hi, h)
        if left is None or right is None:  # a deletion: the subtree may shrink to a leaf
            return _join(left, right, h)
        return (h(INNER_TAG + left[0] + right[0]).digest(), left, right)
    if hi - lo == 1:  # the common cases: a key into an empty slot, or a value replaced
        change = changes[lo]
        if node is None or (change is not None and change[1] == node[1]):
            return change
    # An empty subtree or one leaf: rebuild it from the keys it will hold.
    kept_ints = [ints[i] for i in range(lo, hi) if changes[i] is not None]
    kept: list[Node] = [c for c in changes[lo:hi] if c is not None]
    if node is not None:
        p = int.from_bytes(node[1], "big")
        at = bisect_left(ints, p, lo, hi)
        if at == hi or ints[at] != p:  # not overwritten or deleted: it stays
            i = bisect_left(kept_ints, p)
            kept_ints.insert(i, p)
            kept.insert(i, node)
    return _build(kept_ints, kept, depth, 0, len(kept), h)


@dataclass(frozen=True, slots=True)
class StateProof:
    """A key's siblings down its path and what the path ends at (section 11's proof)."""

    siblings: tuple[bytes, ...]  # siblings[i]: the other child of the depth-i node; b"" = EMPTY
    leaf: tuple[bytes, bytes] | None  # (path, value hash) of the one key at the end, or None

    def encode(self) -> bytes:
        return encode([list(self.siblings), None if self.leaf is None else list(self.leaf)])


class StateProofError(ValueError):
    """A state proof does not hold; `check` names the failed check of section 11."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


def decode_state_proof(data: bytes) -> StateProof:
    """A proof from its canonical encoding; StateProofError("proof encoding") otherwise.

    The input's length is checked before anything is parsed, and the Reader
    never builds more than the schema allows (256 siblings of 32 bytes).
    """
    if len(data) > STATE_PROOF_BYTES_MAX:
        raise StateProofError("proof encoding", f"{len(data)} bytes, limit {STATE_PROOF_BYTES_MAX}")
    try:
        r = Reader(data, field_bytes_max=HASH_BYTES)
        r.array("state proof", length=2)
        siblings = r.binaries("state proof siblings", count_max=PATH_BITS, length_max=HASH_BYTES)
    except DecodeError as e:
        raise StateProofError("proof encoding", str(e)) from None
    # What follows the siblings is nil or [path, value hash]: fixed bytes, read by slicing.
    tail = data[1 + len(encode(list(siblings))) :]
    leaf: tuple[bytes, bytes] | None = None
    if tail == b"\xc0":
        pass
    elif len(tail) == len(_LEAF_HEAD) + 2 + 2 * HASH_BYTES and tail.startswith(_LEAF_HEAD):
        gap = len(_LEAF_HEAD) + HASH_BYTES
        if tail[gap : gap + 2] != _HASH_HEAD:
            raise StateProofError("proof encoding", "leaf: expected [path, value hash]")
        leaf = (tail[len(_LEAF_HEAD) : gap], tail[gap + 2 :])
    else:
        raise StateProofError("proof encoding", "leaf: expected nil or [path, value hash]")
    for s in siblings:
        if len(s) not in (0, HASH_BYTES) or s == EMPTY:
            raise StateProofError("proof encoding", "a sibling is neither 32 bytes nor empty")
    if siblings and not siblings[-1]:
        raise StateProofError("proof encoding", "the last sibling is empty (the walk ends higher)")
    proof = StateProof(siblings, leaf)
    if proof.encode() != data:
        raise StateProofError("proof encoding", "non-canonical encoding")
    return proof


def _bit(path: bytes, i: int) -> int:
    return (path[i >> 3] >> (7 - (i & 7))) & 1


def verify_state_proof(app_hash: bytes, key: bytes, value: bytes | None, proof: StateProof) -> None:
    """Check that `key` holds `value` (None: holds nothing) in the state `app_hash` commits to.

    Raises StateProofError naming the check that failed: "proof encoding",
    "state key", "state value", "absence" or "state proof step".
    """
    h = active().hash_new
    d = len(proof.siblings)
    if d > PATH_BITS or (d and not proof.siblings[-1]):
        raise StateProofError("proof encoding", "siblings")
    path = h(key).digest()
    leaf = proof.leaf
    if value is not None:
        if leaf is None or leaf[0] != path:
            raise StateProofError("state key", "the proof ends at another key's leaf or none")
        if leaf[1] != h(value).digest():
            raise StateProofError("state value", "the value's hash is not the leaf's")
    elif leaf is not None:
        if leaf[0] == path:
            raise StateProofError("absence", "the key is present")
        if any(_bit(leaf[0], i) != _bit(path, i) for i in range(d)):
            raise StateProofError("absence", "the leaf is not on the key's path")
    node = EMPTY if leaf is None else h(LEAF_TAG + leaf[0] + leaf[1]).digest()
    for i in range(d - 1, -1, -1):
        s = proof.siblings[i] or EMPTY
        node = h(INNER_TAG + (s + node if _bit(path, i) else node + s)).digest()
    if node != app_hash:
        raise StateProofError("state proof step", "the walk does not reach the app hash")


class StateTree:
    """One immutable version of the state tree."""

    __slots__ = ("_root",)

    def __init__(self, root: Node | None) -> None:
        self._root = root

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, bytes]]) -> StateTree:
        """The tree over key/value pairs, keys distinct (a later pair replaces an earlier)."""
        h = active().hash_new
        by_path: dict[bytes, bytes] = {h(k).digest(): v for k, v in items}
        paths = sorted(by_path)
        ints = [int.from_bytes(p, "big") for p in paths]
        leaves = [_leaf(p, by_path[p], h) for p in paths]
        return cls(_build(ints, leaves, 0, 0, len(leaves), h))

    @property
    def root(self) -> bytes:
        """The app hash: the root's hash, EMPTY for no keys."""
        return EMPTY if self._root is None else bytes(self._root[0])

    def updated(self, writes: Iterable[tuple[bytes, bytes | None]]) -> StateTree:
        """A new version with `writes` applied (value None deletes); this one is unchanged."""
        h = active().hash_new
        by_path: dict[bytes, bytes | None] = {h(k).digest(): v for k, v in writes}
        if not by_path:
            return self
        paths = sorted(by_path)
        ints = [int.from_bytes(p, "big") for p in paths]
        changes: list[Node | None] = []
        for p in paths:
            v = by_path[p]
            changes.append(None if v is None else _leaf(p, v, h))
        return StateTree(_update(self._root, ints, changes, 0, 0, len(paths), h))

    def get(self, key: bytes) -> bytes | None:
        return self.prove(key)[0]

    def prove(self, key: bytes) -> tuple[bytes | None, StateProof]:
        """The value under `key` (None if absent) and its proof: at most 256 steps."""
        h = active().hash_new
        path = h(key).digest()
        node = self._root
        siblings: list[bytes] = []
        while node is not None and not _is_leaf(node):
            if _bit(path, len(siblings)):
                sibling, node = node[1], node[2]
            else:
                node, sibling = node[1], node[2]
            siblings.append(b"" if sibling is None else bytes(sibling[0]))
        if node is None:
            return None, StateProof(tuple(siblings), None)
        value = node[2] if node[1] == path else None
        return value, StateProof(tuple(siblings), (node[1], h(node[2]).digest()))


class PendingTree:
    """The tree after a block's writes, computed once, when first asked for.

    The validation core builds one per block without hashing anything; the
    node asks for the root when it stores the block (header h + 1 needs it,
    validating block h does not). Two threads asking at once both compute the
    same tree; either result is kept.
    """

    __slots__ = ("_base", "_tree", "_writes")

    def __init__(self, base: StateTree, writes: Sequence[tuple[bytes, bytes | None]]) -> None:
        self._base = base
        self._writes = writes
        self._tree: StateTree | None = None

    @property
    def base(self) -> StateTree:
        return self._base

    def tree(self) -> StateTree:
        tree = self._tree
        if tree is None:
            tree = self._tree = self._base.updated(self._writes)
        return tree


# The versions an application keeps: its committed state and the one before.
# Header h + 1 carries height h's app hash, so the newest height a committed
# header proves is the one before the latest block; older versions are dropped
# (each costs the nodes its block changed, about five per write).
STATE_VERSIONS_KEPT = 2


class StateVersions:
    """The application's committed tree and its predecessor, by height."""

    __slots__ = ("_trees",)

    def __init__(self, tree: StateTree, height: int) -> None:
        self._trees: dict[int, StateTree] = {height: tree}

    @property
    def current(self) -> StateTree:
        return self._trees[max(self._trees)]

    def pending(self, writes: Sequence[tuple[bytes, bytes | None]]) -> PendingTree:
        """The tree after `writes` on the committed one, hashed only when asked for."""
        return PendingTree(self.current, writes)

    def commit(self, pending: PendingTree, height: int) -> StateTree:
        """Make the tree `pending` describes the committed one at `height`."""
        latest = max(self._trees)
        assert pending.base is self._trees[latest], "a tree for another state"
        assert height == latest + 1, "a tree for another height"
        tree = pending.tree()
        self._trees[height] = tree
        while len(self._trees) > STATE_VERSIONS_KEPT:
            del self._trees[min(self._trees)]
        return tree

    def at(self, height: int) -> StateTree | None:
        """The tree after block `height` (the genesis state at 0), if still kept."""
        return self._trees.get(height)
