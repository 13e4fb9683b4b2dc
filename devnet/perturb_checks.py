"""What the perturbation runner checks afterwards, on the data read from every node.

Pure functions over records built from the nodes' HTTP answers (GET
/block/{h}, GET /commit/{h}, GET /validators), so that a test can hand them
doctored histories and see each check fail: a checker that cannot fail
proves nothing. devnet/perturb.py reads the records; this module only judges.

The checks:
- every node holds a block at every height 1..H, and all hold the same hash;
- no validator signed two different votes for one (height, round, type):
  every precommit in every commit certificate (each block's last commit and
  each node's own stored commit) and both votes of every piece of evidence
  are gathered per signer; a signer with two distinct votes fails the check,
  and so does a signature that does not verify (evidence in an honest run is
  itself a failure: it names a validator that signed twice);
- every transaction the API acknowledged as committed at height h is in the
  block at h on every node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consensus.crypto import verify
from consensus.types import VoteType, vote_sign_bytes

DETAIL_ITEMS_MAX = 5  # offending items named in a failed check's detail; the rest are counted


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SignedVote:
    """One signature found in a certificate or evidence, and where it was found."""

    validator_index: int
    height: int
    round: int
    type: VoteType
    block_hash: bytes  # b"" is nil
    signature: bytes
    where: str  # e.g. "node2 block 14 last_commit"


@dataclass(frozen=True, slots=True)
class BlockRecord:
    height: int
    hash: str
    tx_hashes: frozenset[str]
    votes: tuple[SignedVote, ...]  # its last commit's precommits and its evidence's votes
    evidence_count: int


@dataclass(frozen=True, slots=True)
class NodeHistory:
    """What one node answered for heights 1..H."""

    name: str
    blocks: Mapping[int, BlockRecord]
    commit_votes: Mapping[int, tuple[SignedVote, ...]]  # its stored commit per height


@dataclass(frozen=True, slots=True)
class AckedTx:
    """A transaction an API answer said was committed, at `height`, and which node said so."""

    tx_hash: str
    height: int
    node: str


# ---------------------------------------------------------------- parsing the JSON answers


def commit_votes(commit: Mapping[str, Any], where: str) -> tuple[SignedVote, ...]:
    """The precommits of a commit certificate as the API renders it (node/jsonview.py)."""
    height, round_ = int(commit["height"]), int(commit["round"])
    block_hash = bytes.fromhex(commit["block_hash"])
    return tuple(
        SignedVote(
            int(s["validator_index"]),
            height,
            round_,
            VoteType.PRECOMMIT,
            block_hash,
            bytes.fromhex(s["signature"]),
            where,
        )
        for s in commit["signatures"]
    )


def _vote(v: Mapping[str, Any], where: str) -> SignedVote:
    return SignedVote(
        int(v["validator_index"]),
        int(v["height"]),
        int(v["round"]),
        VoteType.PREVOTE if v["type"] == "prevote" else VoteType.PRECOMMIT,
        bytes.fromhex(v["block_hash"]),
        bytes.fromhex(v["signature"]),
        where,
    )


def block_record(block: Mapping[str, Any], node: str) -> BlockRecord:
    """A GET /block/{h} answer, reduced to what the checks need."""
    height = int(block["header"]["height"])
    votes: list[SignedVote] = []
    if block["last_commit"] is not None:
        votes += commit_votes(block["last_commit"], f"{node} block {height} last_commit")
    for i, ev in enumerate(block["evidence"]):
        where = f"{node} block {height} evidence {i}"
        votes += (_vote(ev["vote_a"], where), _vote(ev["vote_b"], where))
    return BlockRecord(
        height,
        str(block["hash"]),
        frozenset(str(t["hash"]) for t in block["txs"]),
        tuple(votes),
        len(block["evidence"]),
    )


# ---------------------------------------------------------------- the checks


def _listed(items: Sequence[str]) -> str:
    more = len(items) - DETAIL_ITEMS_MAX
    shown = "; ".join(items[:DETAIL_ITEMS_MAX])
    return shown + (f"; and {more} more" if more > 0 else "")


def check_block_hashes(histories: Sequence[NodeHistory], height_max: int) -> CheckResult:
    """Every node has a block at every height 1..height_max, and all have the same hash."""
    problems: list[str] = []
    for height in range(1, height_max + 1):
        hashes: dict[str, list[str]] = {}
        for h in histories:
            record = h.blocks.get(height)
            hashes.setdefault("missing" if record is None else record.hash, []).append(h.name)
        if len(hashes) != 1 or "missing" in hashes:
            seen = ", ".join(f"{k[:16]} on {'/'.join(v)}" for k, v in sorted(hashes.items()))
            problems.append(f"height {height}: {seen}")
    name = "identical block hashes"
    if problems:
        return CheckResult(name, False, f"{len(problems)} heights differ: {_listed(problems)}")
    return CheckResult(name, True, f"{height_max} heights on {len(histories)} nodes")


def _all_votes(histories: Sequence[NodeHistory]) -> Iterable[SignedVote]:
    for h in histories:
        for block in h.blocks.values():
            yield from block.votes
        for votes in h.commit_votes.values():
            yield from votes


def check_votes(
    histories: Sequence[NodeHistory], chain_id: str, public_keys: Sequence[bytes]
) -> CheckResult:
    """No validator has two different signed votes for one (height, round, type); all verify.

    `public_keys[i]` is validator i's key (the set is fixed in a testnet run).
    Each distinct vote is verified once, however many nodes and blocks hold it.
    """
    by_slot: dict[tuple[int, int, int, VoteType], dict[tuple[bytes, bytes], str]] = {}
    for v in _all_votes(histories):
        slot = (v.validator_index, v.height, v.round, v.type)
        by_slot.setdefault(slot, {}).setdefault((v.block_hash, v.signature), v.where)
    problems: list[str] = []
    distinct = 0
    for (index, height, round_, vtype), votes in sorted(by_slot.items()):
        distinct += len(votes)
        step = vtype.name.lower()
        for (block_hash, signature), where in votes.items():
            message = vote_sign_bytes(chain_id, vtype, height, round_, block_hash)
            if index >= len(public_keys) or not verify(public_keys[index], message, signature):
                problems.append(
                    f"bad signature by validator {index} on its {step} at {height}/{round_} "
                    f"({where})"
                )
        hashes = {block_hash for block_hash, _ in votes}
        if len(votes) > 1:
            shown = ", ".join(
                f"{(bh.hex()[:16] or 'nil')} in {where}" for (bh, _), where in votes.items()
            )
            kind = "blocks" if len(hashes) > 1 else "signatures"
            problems.append(
                f"validator {index} signed {len(votes)} different {step}s ({kind}) at "
                f"height {height} round {round_}: {shown}"
            )
    evidence = sum(b.evidence_count for h in histories for b in h.blocks.values())
    if evidence:
        problems.append(f"{evidence} pieces of duplicate-vote evidence in blocks (see above)")
    name = "no double signing"
    if problems:
        return CheckResult(name, False, _listed(problems))
    return CheckResult(name, True, f"{distinct} distinct signed votes verified, no evidence")


def check_acked_txs(
    histories: Sequence[NodeHistory], acked: Sequence[AckedTx], height_max: int
) -> CheckResult:
    """Every transaction acknowledged as committed at h is in the block at h on every node."""
    problems: list[str] = []
    for tx in acked:
        if tx.height > height_max:
            problems.append(f"{tx.tx_hash[:16]} acked at {tx.height} by {tx.node}, above the top")
            continue
        missing = [
            h.name
            for h in histories
            if (block := h.blocks.get(tx.height)) is None or tx.tx_hash not in block.tx_hashes
        ]
        if missing:
            problems.append(
                f"{tx.tx_hash[:16]} acked at {tx.height} by {tx.node}, "
                f"not in that block on {'/'.join(missing)}"
            )
    name = "acknowledged transactions committed everywhere"
    if problems:
        return CheckResult(name, False, f"{len(problems)} missing: {_listed(problems)}")
    return CheckResult(name, True, f"{len(acked)} acknowledged transactions found on every node")
