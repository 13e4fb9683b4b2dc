"""A real signed chain for the proof-file tests, and the proof files it yields.

Every header is built with the project's types, certified by real
signatures of its validator set, and carries the true Merkle roots of its
transactions and of the previous block's results. The validator set is a
window of SET_SIZE keys over a pool, moving one key every `shift_every`
heights, so a long skip finds none of the trusted validators left.
benchmarks/proofs.py builds its long chain here too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgpack

from consensus import merkle
from consensus.crypto import PrivateKey, Suite, using
from consensus.genesis import Genesis, GenesisValidator
from consensus.types import (
    Commit,
    Header,
    Transaction,
    Validator,
    ValidatorSet,
)
from proofcheck.verify import FORMAT_TAG
from tests.signing import certificate

SET_SIZE = 4
POWER = 10
GENESIS_MS = 1_764_000_000_000
BLOCK_MS = 1_000
TXS_PER_BLOCK = 5


def result_bytes(code: int) -> bytes:
    """A transaction result as the results hash encodes it: [code, data] (section 11)."""
    packed: bytes = msgpack.packb([code, b""], use_bin_type=True)
    return packed


@dataclass
class Chain:
    suite: Suite
    chain_id: str
    genesis: Genesis
    pool: list[PrivateKey]
    shift_every: int
    headers: dict[int, Header] = field(default_factory=dict)
    commits: dict[int, Commit] = field(default_factory=dict)
    sets: dict[int, ValidatorSet] = field(default_factory=dict)
    txs: dict[int, list[bytes]] = field(default_factory=dict)
    results: dict[int, list[bytes]] = field(default_factory=dict)

    @property
    def genesis_text(self) -> bytes:
        return self.genesis.to_json().encode()

    def keys_at(self, height: int) -> list[PrivateKey]:
        start = (height - 1) // self.shift_every
        return [self.pool[(start + i) % len(self.pool)] for i in range(SET_SIZE)]

    def hop(self, height: int, *, signers: int = SET_SIZE) -> list[Any]:
        """The file's hop of `height` (section 13.1), its certificate cut to `signers`."""
        commit = self.commits[height]
        if signers < len(commit.signatures):
            commit = Commit(
                commit.height, commit.round, commit.block_hash, commit.signatures[:signers]
            )
        vset, nxt = self.sets[height].encode(), self.sets[height + 1].encode()
        return [self.headers[height].encode(), commit.encode(), vset, None if nxt == vset else nxt]

    def tx_target(self, height: int, index: int, *, with_result: bool = True) -> list[Any]:
        txs = self.txs[height]
        proof = merkle.prove(txs, index)  # hashed with the suite active in the caller
        result = None
        if with_result:
            rproof = merkle.prove(self.results[height], index)
            result = [self.results[height][index], [rproof.index, rproof.total, list(rproof.aunts)]]
        return [
            txs[index],
            self.suite.hash(txs[index]),
            self.headers[height].encode() if with_result else None,
            [proof.index, proof.total, list(proof.aunts)],
            result,
        ]

    def file(
        self,
        kind: str,
        hops: list[list[Any]],
        target: list[Any],
        trusted: tuple[int, bytes] | None = None,
    ) -> bytes:
        packed: bytes = msgpack.packb(
            [
                FORMAT_TAG,
                kind,
                self.chain_id,
                self.genesis.hash,
                None if trusted is None else list(trusted),
                hops,
                target,
            ],
            use_bin_type=True,
        )
        return packed

    def tx_file(self, height: int, index: int, hop_heights: list[int]) -> bytes:
        """A tx proof through headers `hop_heights` (the last h + 1), with its result."""
        with using(self.suite):
            return self.file(
                "tx", [self.hop(h) for h in hop_heights], self.tx_target(height, index)
            )


def make_chain(
    suite: Suite,
    heights: int,
    *,
    shift_every: int = 3,
    chain_id: str = "proof-test",
    seed: bytes = b"",
    payload_tag: bytes = b"",
    app_hash: bytes | None = None,
    pool_size: int = 24,
    txs: dict[int, list[bytes]] | None = None,
) -> Chain:
    """Heights 1..heights, each certified by all of its validators, with real txs and results.

    `app_hash`, when given, is every header's (a state proof's root). `txs`, when
    given, are the blocks' transactions (a height not in it has an empty block),
    all succeeding; otherwise each block has TXS_PER_BLOCK, the odd ones failing.
    The set comes back to the first one after `pool_size * shift_every` heights.
    """
    with using(suite):
        pool = [
            PrivateKey(hashlib.sha256(b"proof %d" % i + seed).digest(), suite)
            for i in range(pool_size)
        ]
        first = pool[:SET_SIZE]
        genesis = Genesis(
            chain_id=chain_id,
            genesis_time_ms=GENESIS_MS,
            validators=tuple(
                GenesisValidator(f"v{i}", k.public_key, POWER) for i, k in enumerate(first)
            ),
            app="ledger",
            app_state={"accounts": {}},
            crypto=suite.name,
        )
        chain = Chain(suite, chain_id, genesis, pool, shift_every)
        for h in range(1, heights + 2):
            chain.sets[h] = ValidatorSet.of(
                Validator(k.public_key, POWER) for k in chain.keys_at(h)
            )
        assert chain.sets[1] == genesis.validator_set
        sender = pool[-1]
        previous = b""
        for h in range(1, heights + 1):
            if txs is None:
                block = [
                    Transaction.create(
                        sender, chain_id, h * 100 + i, b"payload %d" % i + payload_tag
                    ).encode()
                    for i in range(TXS_PER_BLOCK)
                ]
                chain.results[h] = [result_bytes(i % 2) for i in range(len(block))]
            else:
                block = txs.get(h, [])
                chain.results[h] = [result_bytes(0)] * len(block)
            chain.txs[h] = block
            vset = chain.sets[h]
            header = Header(
                chain_id=chain_id,
                height=h,
                time_ms=GENESIS_MS + h * BLOCK_MS,
                last_block_hash=previous,
                last_commit_hash=b"" if h == 1 else suite.hash(chain.commits[h - 1].encode()),
                data_hash=merkle.root(block),
                validators_hash=vset.hash,
                next_validators_hash=chain.sets[h + 1].hash,
                app_hash=suite.hash(b"app %d" % h) if app_hash is None else app_hash,
                last_results_hash=merkle.root(chain.results.get(h - 1, [])),
                evidence_hash=merkle.root([]),
                proposer_address=vset[0].address,
            )
            chain.headers[h] = header
            chain.commits[h] = certificate(chain_id, header, chain.keys_at(h), vset)
            previous = header.hash
        return chain
