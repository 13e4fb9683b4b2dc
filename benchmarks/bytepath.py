"""CPU of one block's byte path, on its proposer and on a peer, against encoding each time.

Why: a block travels as bytes into the WAL, onto the network and into the
store. The node encodes it once where it is built (or keeps the bytes that
arrived) and splices those bytes into every message and record; the baseline,
measured in the same run, is what the node did before: every message, record
and store write encoded from the fields again, and the store hashing every
transaction id again.

    .venv/bin/python benchmarks/bytepath.py [--txs 5000] [--rounds 15]

Proposer: the WAL's BlockBuilt and own-proposal records, the broadcast, the
store's bytes (and, in the baseline, its check that they are the block's
encoding and the tx ids). Peer: the edge's decode (with its canonical check,
the same in both), then the store's bytes (baseline: encode, check, tx ids).
Best CPU time of the rounds; readable lines on stderr, JSON last on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.codec import encode
from consensus.crypto import PrivateKey
from consensus.events import BlockBuilt, ProposalReceived, encode_event, event_to_obj
from consensus.types import Block, Commit, CommitSig, Header, Proposal, Transaction, tx_id
from node.messages import ProposalMsg, decode_message, encode_message, to_obj

CHAIN_ID = "bytepath"
KEY = PrivateKey(b"\x07" * 32)


def make_block(txs_count: int) -> tuple[Block, Proposal]:
    txs = tuple(
        Transaction.create(KEY, CHAIN_ID, i + 1, b"x" * 100).encode() for i in range(txs_count)
    )
    h32 = b"\x02" * 32
    commit = Commit(1, 0, h32, tuple(CommitSig(i, b"\x04" * 64) for i in range(4)))
    header = Header(CHAIN_ID, 2, 6, h32, commit.hash, h32, h32, h32, h32, h32, h32, KEY.address)
    block = Block(header, txs, commit)
    return block, Proposal.create(KEY, CHAIN_ID, 2, 0, -1, block.hash)


def fresh(block: Block) -> Block:
    """The same block as a new object, its encoding not made yet (as just built)."""
    return Block(block.header, block.txs, block.last_commit, block.evidence)


def proposer_node(block: Block, proposal: Proposal) -> None:
    encode_event(BlockBuilt(2, 0, block))
    logged = encode_message(ProposalMsg(proposal, block))
    sent = logged  # the driver relays the bytes it logged
    stored = block.encode()
    assert sent is logged and stored is block.encode()


def proposer_baseline(block: Block, proposal: Proposal) -> None:
    encode(event_to_obj(BlockBuilt(2, 0, block)))
    encode(event_to_obj(ProposalReceived(proposal, block)))
    encode(to_obj(ProposalMsg(proposal, block)))
    stored = encode(block.to_obj())
    assert stored == encode(block.to_obj())
    [tx_id(tx) for tx in block.txs]


def peer_node(payload: bytes) -> None:
    msg = decode_message(payload)
    assert isinstance(msg, ProposalMsg)
    msg.block.encode()  # the store's bytes: those that arrived


def peer_baseline(payload: bytes) -> None:
    msg = decode_message(payload)
    assert isinstance(msg, ProposalMsg)
    block = msg.block
    stored = encode(block.to_obj())
    assert stored == encode(block.to_obj())
    [tx_id(tx) for tx in block.txs]


def best_cpu_s(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    ns = parser.parse_args()
    block, proposal = make_block(ns.txs)
    payload = encode_message(ProposalMsg(proposal, block))
    result: dict[str, object] = {
        "benchmark": "bytepath",
        "txs": ns.txs,
        "block_bytes": len(block.encode()),
    }
    cases = (
        ("proposer", lambda: proposer_node(fresh(block), proposal)),
        ("proposer_baseline", lambda: proposer_baseline(fresh(block), proposal)),
        ("peer", lambda: peer_node(payload)),
        ("peer_baseline", lambda: peer_baseline(payload)),
    )
    for name, fn in cases:
        result[f"{name}_ms"] = round(1000 * best_cpu_s(fn, ns.rounds), 2)
    for side in ("proposer", "peer"):
        ms, base = result[f"{side}_ms"], result[f"{side}_baseline_ms"]
        assert isinstance(ms, float) and isinstance(base, float)
        result[f"{side}_speedup"] = round(base / ms, 2)
        print(
            f"{side:>8}: {ms:6.2f} ms CPU per {ns.txs}-tx block, baseline {base:6.2f} ms "
            f"({base / ms:.2f}x)",
            file=sys.stderr,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
