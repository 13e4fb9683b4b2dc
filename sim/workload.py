"""The simulated chain's keys and the transactions its clients send.

Validator and client keys come from fixed seeds, so every run of a seed
signs the same bytes. Each block a node builds carries seed-chosen signed
kvstore writes from `CLIENTS` clients and, now and then, one validator power
change that keeps the Byzantine power below a third; a Byzantine node's
second version of a block may be corrupted (a wrong app hash or a broken
signature). Every choice is drawn from the run's one `random.Random`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from apps.kvstore import set_tx
from consensus.codec import encode
from consensus.crypto import PrivateKey, digest
from consensus.types import Block, Transaction, data_hash
from node.chain import Chain

CHAIN_ID = "archipelago-sim"
BLOCK_TXS_MAX = 4  # client transactions per block (a validator change adds one)
CLIENTS = 3  # simulated client keys signing kvstore transactions
VALUE_BYTES = 16  # random bytes after the 8-byte nonce record in each written value
POWER_MAX = 10  # seed-chosen voting power per validator is 1..POWER_MAX
VALIDATOR_CHANGE_PROBABILITY = 0.2  # per built block: try one ["val", pk, power]


def validator_keys(count: int) -> list[PrivateKey]:
    return [PrivateKey(digest(b"sim-validator-%d" % i)) for i in range(count)]


def client_keys() -> list[PrivateKey]:
    return [PrivateKey(digest(b"sim-client-%d" % i)) for i in range(CLIENTS)]


def _client_record(client: int) -> bytes:
    """The kvstore key each client's writes go to: its next nonce, then random bytes."""
    return b"client/%d" % client


class Workload:
    """Signed client transactions for the next block on a node's committed state."""

    def __init__(self, rng: random.Random, keys: Sequence[PrivateKey], bad: set[int]) -> None:
        self.rng = rng
        self.keys = keys
        self.bad = bad  # indexes of the Byzantine validators in `keys`
        self.clients = client_keys()

    def txs(self, chain: Chain, txs_min: int, txs_max: int = BLOCK_TXS_MAX) -> list[bytes]:
        """txs_min..txs_max client writes (and maybe one validator change before them)."""
        rng = self.rng
        count = rng.randint(txs_min, txs_max)
        change = None
        if count and rng.random() < VALIDATOR_CHANGE_PROBABILITY:
            change = self._validator_change(chain)
        nonces: dict[int, int] = {}
        txs: list[bytes] = []
        for _ in range(count):
            client = rng.randrange(CLIENTS)
            key = self.clients[client]
            nonce = nonces.get(client)
            if nonce is None:
                nonce = _next_nonce(chain, client)
            if change is not None:
                payload = encode(["val", change[0], change[1]])
                txs.append(Transaction.create(key, CHAIN_ID, nonce, payload).encode())
                nonce += 1
                change = None
            value = (nonce + 1).to_bytes(8, "big") + rng.randbytes(VALUE_BYTES)
            txs.append(set_tx(key, CHAIN_ID, nonce, _client_record(client), value).encode())
            nonces[client] = nonce + 1
        return txs

    def _validator_change(self, chain: Chain) -> tuple[bytes, int] | None:
        """One seed-chosen power change for height + 2 that keeps Byzantine power below 1/3."""
        key = self.rng.choice(self.keys)
        power = self.rng.randint(0, POWER_MAX)
        powers = {v.public_key: v.power for v in chain.state.next_validators}
        if powers.get(key.public_key, 0) == power:
            return None
        if power == 0:
            del powers[key.public_key]
        else:
            powers[key.public_key] = power
        bad = sum(powers.get(self.keys[i].public_key, 0) for i in self.bad)
        if not powers or 3 * bad >= sum(powers.values()):
            return None
        return key.public_key, power


def _next_nonce(chain: Chain, client: int) -> int:
    result = chain.app.query("key", _client_record(client))
    return int.from_bytes(result.value[:8], "big") if result.ok else 0


def corrupted(block: Block, rng: random.Random) -> Block:
    """An invalid variant: a wrong app hash, or a transaction with a broken signature."""
    if block.txs and rng.random() < 0.5:
        tx = Transaction.decode(block.txs[0])
        signature = bytes([tx.signature[0] ^ 1]) + tx.signature[1:]
        broken = dataclasses.replace(tx, signature=signature).encode()
        txs = (broken, *block.txs[1:])
        header = dataclasses.replace(block.header, data_hash=data_hash(txs))
        return Block(header, txs, block.last_commit, block.evidence)
    header = dataclasses.replace(block.header, app_hash=digest(b"not the state"))
    return Block(header, block.txs, block.last_commit, block.evidence)
