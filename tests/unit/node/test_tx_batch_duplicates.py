"""One gossiped batch holding one valid transaction many times costs one signature check.

A peer may relay a transaction batch (a TxsMsg of up to 10,000 transactions)
that repeats one validly signed transaction; copies within the batch are
refused as duplicates before any signature is verified, so one frame cannot
buy thousands of Ed25519 verifications on the threads block validation uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from consensus.codec import encode
from consensus.crypto import PrivateKey, digest
from consensus.types import Transaction
from node.daemon import Node
from node.resources import Resources
from node.sdnotify import Notifier
from tests.unit.node.test_consensus_shell import _home

COPIES = 2000


def test_a_batch_repeating_one_transaction_costs_one_signature_check(tmp_path: Path) -> None:
    """Real Resources (store, mempool, verifier) of a kvstore node: a peer's batch of
    2,000 copies of one valid transaction admits it once and verifies its signature once
    (or refuses the batch); it must not verify 2,000 signatures for one transaction."""
    node = Node.from_home(_home(tmp_path / "n"), notifier=Notifier(None), shutdown_grace_ms=None)
    res = Resources(node.paths, node.config, node.genesis, node.node_key, node.validator_key)
    checked: list[int] = []
    real = res.verifier.verify_many

    def counting(items: Any) -> list[bool]:
        checked.append(len(items))
        return real(items)

    res.verifier.verify_many = counting  # type: ignore[method-assign]
    raw = Transaction.create(
        PrivateKey(digest(b"dup-client")), "shell-test", 0, encode(["set", b"k", b"v"])
    ).encode()

    async def main() -> list[Any]:
        return await res.mempool_add_batch([raw] * COPIES, origin="f" * 40)

    try:
        results = trio.run(main)
    finally:
        res.store.close()
        res.verifier.close()
    assert len(res.mempool) == 1
    refused = [r for r in results if not isinstance(r, tuple)]
    assert len(refused) == COPIES - 1
    assert sum(checked) <= 1, (
        f"{sum(checked)} signatures verified for one transaction sent {COPIES} times in one "
        f"batch (refusals: {sorted({getattr(r, 'reason', '?') for r in refused})})"
    )
