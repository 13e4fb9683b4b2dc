"""A decided block of a height the node is not at is ignored before it is hashed.

The consensus task hashes the body of a ProposalMsg or DecidedMsg with over 64
transactions in a worker thread (`Block.body_error`) before the driver sees
it, only when the block is for the height the node works on: a keyless peer
cannot have the node hash blocks of heights it makes up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio
import trio.testing

from consensus.codec import encode
from consensus.crypto import PrivateKey, digest
from consensus.types import Block, Commit, Header, Transaction
from node.consensus_service import ConsensusService
from node.daemon import Node
from node.effects import DriverConfig
from node.messages import DecidedMsg, SyncStatusMsg, encode_message
from node.resources import Resources
from node.sdnotify import Notifier
from tests.unit.node.test_consensus_shell import _home

TXS = 5000
FAR = 1_000_000


def _made_up_block(header: Header, height: int) -> Block:
    """A block of `height` with TXS well-formed transactions; nothing about it is valid."""
    client = PrivateKey(digest(b"made-up"))
    txs = tuple(
        Transaction.create(client, "shell-test", n, encode(["set", b"k", b"v"])).encode()
        for n in range(TXS)
    )
    commit = Commit(height - 1, 0, b"\x11" * 32, ())
    return Block(dataclasses.replace(header, height=height), txs, commit)


def test_a_decided_block_of_another_height_is_not_hashed(tmp_path: Path) -> None:
    """A single-validator node (real Resources and ConsensusService) gets, from a peer, a
    DecidedMsg of height 1,000,000 carrying 5,000 transactions. Nothing is decided at that
    height here and the driver ignores it; its body must not have been hashed for it."""
    node = Node.from_home(_home(tmp_path / "n"), notifier=Notifier(None), shutdown_grace_ms=None)
    res = Resources(node.paths, node.config, node.genesis, node.node_key, node.validator_key)
    header = res.chain.build(
        txs=[], evidence=(), time_ms=1, proposer_address=res.validator_address
    ).header
    block = _made_up_block(header, FAR)
    msg = DecidedMsg(block, Commit(FAR, 0, block.hash, ()))

    async def main() -> None:
        service = ConsensusService(
            res, DriverConfig(consensus=node.config.consensus), stop=lambda reason: None
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            service.submit_from_peer("f" * 40, msg, encode_message(msg), b"")
            # A later message from another peer: once its claim is recorded, the
            # decided block before it has been handled.
            marker = SyncStatusMsg(1, 5)
            service.submit_from_peer("e" * 40, marker, encode_message(marker), b"")
            with trio.fail_after(60):
                while "e" * 40 not in service.driver.sync.claims:
                    await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        res.store.close()
        res.verifier.close()
    assert block._body is None, (
        f"the body of a made-up block of height {FAR} ({TXS} txs) was hashed "
        f"(body_error={block._body}) although the node works on height "
        f"{res.chain.height + 1} and ignored it"
    )
