"""Build proof files (docs/PROTOCOL.md section 13) from a node's HTTP API.

`archipelago proof tx HASH` and `archipelago proof state KEY` write one
self-contained file: the hops from genesis (or a header the user trusts)
to the header that proves the target, and the target's Merkle path.
The node is not trusted: the hops are chosen with the light client's
bisection (consensus/light.py `verify_to`, which verifies each one as it
goes), so a file stays a few hops long across validator-set changes, and
whatever the node serves is checked again offline by proofcheck/verify.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from consensus.crypto import SUITES, Suite, using
from consensus.light import LightBlock, LightError, TrustOptions, verify_to
from consensus.types import Commit, Header, ValidatorSet
from node.client import ClientError, request
from proofcheck.verify import FORMAT_TAG, HOPS_MAX

__all__ = ["LightSource", "ProofBuildError", "build_state_proof", "build_tx_proof", "select_hops"]

# The builder trusts nothing it fetches, and the file's verifier chooses its own
# trusting period: the bisection here runs without one.
_UNLIMITED_MS: Final = 2**62
# Each distinct height is fetched once (two requests); bisection over any chain of
# at most 2^62 heights asks for at most a few hundred.
FETCHES_MAX: Final = 4 * HOPS_MAX


class ProofBuildError(Exception):
    """The node could not serve what the proof needs; the message says what."""


@dataclass(frozen=True, slots=True)
class LightSource:
    """A node's light blocks, each fetched once, with their canonical bytes."""

    node: str
    suite: Suite
    cache: dict[int, tuple[LightBlock, list[Any]]]

    def light_block(self, height: int) -> LightBlock:
        return self.hop(height)[0]

    def hop(self, height: int) -> tuple[LightBlock, list[Any]]:
        """The light block of `height` and its hop for the file (section 13.1)."""
        if height in self.cache:
            return self.cache[height]
        if len(self.cache) >= FETCHES_MAX:
            raise ProofBuildError(f"more than {FETCHES_MAX} heights fetched")
        body = _get(self.node, f"/commit/{height}")
        if body.get("validators_encoded") is None:
            raise ProofBuildError(f"the node no longer has the validator set of height {height}")
        following = _get(self.node, f"/validators?height={height + 1}")
        raw = [
            bytes.fromhex(body["header_encoded"]),
            bytes.fromhex(body["commit"]["encoded"]),
            bytes.fromhex(body["validators_encoded"]),
            bytes.fromhex(following["encoded"]),
        ]
        try:
            with using(self.suite):
                block = LightBlock(
                    Header.decode(raw[0]),
                    Commit.decode(raw[1]),
                    ValidatorSet.decode(raw[2]),
                    ValidatorSet.decode(raw[3]),
                )
        except ValueError as e:
            raise ProofBuildError(f"the node served a malformed light block {height}: {e}") from e
        hop: list[Any] = [raw[0], raw[1], raw[2], None if raw[3] == raw[2] else raw[3]]
        self.cache[height] = (block, hop)
        return block, hop


def _get(node: str, path: str) -> Any:
    try:
        return request(node, "GET", path)
    except ClientError as e:
        raise ProofBuildError(str(e)) from None


def _open(node: str) -> tuple[dict[str, Any], LightSource]:
    """The node's status, and a source of light blocks in the chain's suite.

    The suite is the one whose hash of header 1 is the block hash certificate 1 signs.
    """
    status = _get(node, "/status")
    first = _get(node, "/commit/1")
    header = bytes.fromhex(first["header_encoded"])
    block_hash = bytes.fromhex(first["commit"]["block_hash"])
    for suite in SUITES.values():
        if suite.hash(header) == block_hash:
            return status, LightSource(node, suite, {})
    raise ProofBuildError("header 1 does not hash to its certificate's block hash in any suite")


def select_hops(
    source: LightSource, final: int, chain_id: str, trusted: tuple[int, bytes] | None
) -> list[Any]:
    """Hops from genesis (starting at height 1) or from the trusted header to height `final`."""
    start = 1 if trusted is None else trusted[0]
    if final < start:
        raise ProofBuildError(f"the proof needs height {final}, below the trusted height {start}")
    first, first_hop = source.hop(start)
    if trusted is not None and source.suite.hash(first_hop[0]) != trusted[1]:
        raise ProofBuildError(f"the node's header {start} is not the trusted one: another chain?")
    hops = [first_hop]
    if final == start:
        return hops
    options = TrustOptions(trusting_period_ms=_UNLIMITED_MS)
    try:
        with using(source.suite):
            trace = verify_to(
                first, final, source.light_block, chain_id, time.time_ns() // 1_000_000, options
            )
    except LightError as e:
        raise ProofBuildError(f"the node's chain does not verify: {e}") from e
    hops.extend(source.hop(b.height)[1] for b in trace)
    if len(hops) > HOPS_MAX:
        raise ProofBuildError(f"{len(hops)} hops, more than a file may hold ({HOPS_MAX})")
    return hops


def _file(
    kind: str,
    status: dict[str, Any],
    trusted: tuple[int, bytes] | None,
    hops: list[Any],
    target: Any,
) -> bytes:
    packed: bytes = msgpack.packb(
        [
            FORMAT_TAG,
            kind,
            status["chain_id"],
            bytes.fromhex(status["genesis_hash"]),
            None if trusted is None else [trusted[0], trusted[1]],
            hops,
            target,
        ],
        use_bin_type=True,
    )
    return packed


def _path(proof: dict[str, Any]) -> list[Any]:
    return [proof["index"], proof["total"], [bytes.fromhex(a) for a in proof["aunts"]]]


def build_tx_proof(
    node: str, tx_hash: bytes, trusted: tuple[int, bytes] | None = None
) -> tuple[bytes, str]:
    """The proof file of a committed transaction, and a line saying what it holds.

    With a result proof when the node serves one (`result_proof`) and block h + 1
    exists; else the file proves inclusion only.
    """
    status, source = _open(node)
    tx = _get(node, f"/tx/{tx_hash.hex()}")
    if tx.get("status") != "committed":
        raise ProofBuildError(f"transaction {tx_hash.hex()} is not committed yet")
    height = tx["height"]
    result_proof = tx.get("result_proof")
    with_result = result_proof is not None and height + 1 <= status["latest_height"]
    final = height + 1 if with_result else height
    hops = select_hops(source, final, status["chain_id"], trusted)
    header_h = bytes.fromhex(_get(node, f"/commit/{height}")["header_encoded"])
    result = None
    if with_result:
        assert result_proof is not None
        result = [bytes.fromhex(result_proof["result_encoded"]), _path(result_proof)]
    target = [
        bytes.fromhex(tx["encoded"]),
        bytes.fromhex(tx["hash"]),
        header_h if with_result else None,
        _path(tx["proof"]),
        result,
    ]
    what = "inclusion and result" if with_result else "inclusion only"
    return _file("tx", status, trusted, hops, target), (
        f"tx {tx_hash.hex()} at height {height}: {len(hops)} hops, {what}"
    )


def build_state_proof(
    node: str, key: bytes, trusted: tuple[int, bytes] | None = None
) -> tuple[bytes, str]:
    """The proof file of a state key's value (or absence) in the newest state a header carries.

    That is the state after block latest - 1, whose app hash header `latest`
    carries (section 12.3, `GET /state/proof`).
    """
    status, source = _open(node)
    answer = _get(node, f"/state/proof?key={key.hex()}")
    final = answer["header_height"]
    hops = select_hops(source, final, status["chain_id"], trusted)
    value = answer.get("value")
    target = [
        key,
        None if value is None else bytes.fromhex(value),
        bytes.fromhex(answer["proof_encoded"]),
    ]
    held = "absent" if value is None else f"{len(bytes.fromhex(value))} bytes"
    return _file("state", status, trusted, hops, target), (
        f"state key {key.hex()} after block {answer['height']} ({held}): {len(hops)} hops"
    )
