"""A stand-in validator for the kill -9 tests: the real WAL, sign state and block store.

Why a separate process: only a real SIGKILL shows what survives a crash. This
script does what the consensus task does at each height, in the same order,
and prints every signature it releases (and flushes) before "sending" it:

    per round r of height h:
      WAL: append ["proposal", h, r, block bytes]; sync
      sign proposal, prevote, precommit (SignState.check_and_sign), print SIG each
    then: save the block with its commit and app writes (one store transaction),
          print COMMIT, WAL: mark_height_end(h)

At start it resumes like a node: height from the block store, round and the
proposal it had from WAL replay. With `--forget-wal` it ignores the WAL (like a
consensus bug that rebuilds a different block); the sign state must then refuse
the conflicting signatures (printed REFUSED), and it moves to the next round.

`--crypto NAME` is the chain's suite (consensus/crypto.py SUITES): the key, the
signatures and every hash are that suite's.

Output lines (stdout): START <height> <round> <wal_last_height_end|-> <replayed> <public key>,
SIG <h> <r> <step> <sign bytes hex> <signature hex>, REFUSED <h> <r> <step>,
COMMIT <h> <block hash hex>. Runs until killed, or --heights more heights commit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from consensus import merkle
from consensus.codec import decode, encode
from consensus.crypto import SUITES, PrivateKey, activate
from consensus.state import ChainState
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Header,
    Transaction,
    Validator,
    ValidatorSet,
    VoteType,
    data_hash,
    evidence_hash,
    proposal_sign_bytes,
    tx_id,
    vote_sign_bytes,
)
from node import wal
from node.signstate import DoubleSignRefused, SignState, SignStep
from node.storage import BlockStore, open_store

CHAIN = "crash-test"
KEY_SEED = b"\x42" * 32  # the validator's secret, in whichever suite
GENESIS_TIME_MS = 1_700_000_000_000
TXS_PER_BLOCK = 40
STORE_MAP_BYTES = 256 * 1024 * 1024


def legacy_state(
    chain_id: str,
    last_height: int,
    last_block_hash: bytes,
    last_block_time_ms: int,
    app_hash: bytes,
    last_results_hash: bytes,
    validators: ValidatorSet,
    next_validators: ValidatorSet,
) -> ChainState:
    """A chain state from the fields the store checks (the rest at their defaults)."""
    return ChainState(
        chain_id=chain_id,
        last_height=last_height,
        last_block_hash=last_block_hash,
        last_block_time_ms=last_block_time_ms,
        last_validators=None if last_height == 0 else validators,
        validators=validators,
        next_validators=next_validators,
        app_hash=app_hash,
        last_results_hash=last_results_hash,
    )


def validator_set(key: PrivateKey) -> ValidatorSet:
    return ValidatorSet.of([Validator(key.public_key, 10)])


def genesis_state(valset: ValidatorSet) -> ChainState:
    return legacy_state(CHAIN, 0, b"", GENESIS_TIME_MS, b"", merkle.root([]), valset, valset)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def build_block(state: ChainState, last_commit: Commit | None, key: PrivateKey) -> Block:
    """A fresh block (random payloads: a rebuilt block differs from the lost one)."""
    height = state.last_height + 1
    txs = tuple(
        Transaction.create(key, CHAIN, height * 1000 + i, os.urandom(150)).encode()
        for i in range(TXS_PER_BLOCK)
    )
    header = Header(
        CHAIN,
        height,
        GENESIS_TIME_MS + height,
        state.last_block_hash,
        b"" if last_commit is None else last_commit.hash,
        data_hash(txs),
        state.validators.hash,
        state.next_validators.hash,
        state.app_hash,
        state.last_results_hash,
        evidence_hash(()),
        key.address,
    )
    return Block(header, txs, last_commit)


def sign(
    ss: SignState, key: PrivateKey, h: int, r: int, step: SignStep, sign_bytes: bytes
) -> bytes | None:
    try:
        sig = ss.check_and_sign(h, r, step, sign_bytes, key.sign)
    except DoubleSignRefused:
        out(f"REFUSED {h} {r} {int(step)}")
        return None
    out(f"SIG {h} {r} {int(step)} {sign_bytes.hex()} {sig.hex()}")
    return sig


def resume_point(w: wal.WAL, height: int, forget: bool) -> tuple[int, bytes | None, int]:
    """(round, proposal bytes seen at that round or None, records replayed) for `height`."""
    round_, proposal, count = 0, None, 0
    for record in w.replay_from_last_height():
        count += 1
        kind, h, r, data = decode(record)
        if h != height:
            continue  # a height the store already committed (marker not yet written)
        if kind == "proposal" and not forget:
            round_, proposal = r, data
    return round_, proposal, count


def run_height(
    store: BlockStore,
    w: wal.WAL,
    ss: SignState,
    key: PrivateKey,
    round_: int,
    proposal: bytes | None,
) -> None:
    state = store.load_state()
    assert state is not None
    height = state.last_height + 1
    last_commit = store.load_commit(state.last_height) if state.last_height else None
    while True:
        if proposal is None:
            block = build_block(state, last_commit, key)
            w.append(encode(["proposal", height, round_, block.encode()]))
        else:
            block = Block.decode(proposal)
        proposal = None
        w.sync()
        ok = sign(
            ss,
            key,
            height,
            round_,
            SignStep.PROPOSE,
            proposal_sign_bytes(CHAIN, height, round_, -1, block.hash),
        )
        h = block.hash
        votes = [
            sign(ss, key, height, round_, step, vote_sign_bytes(CHAIN, vt, height, round_, h))
            for step, vt in (
                (SignStep.PREVOTE, VoteType.PREVOTE),
                (SignStep.PRECOMMIT, VoteType.PRECOMMIT),
            )
        ]
        precommit = votes[1]
        if ok is not None and precommit is not None:
            break
        round_ += 1
    commit = Commit(height, round_, block.hash, (CommitSig(0, precommit),))
    results = [b"ok"] * len(block.txs)
    new_state = legacy_state(
        CHAIN,
        height,
        block.hash,
        block.header.time_ms,
        merkle.root([block.hash]),
        merkle.root(results),
        state.validators,
        state.next_validators,
    )
    app_writes: dict[bytes, bytes | None] = {b"height": encode(height)}
    app_writes[f"acct/{height % 50:02d}".encode()] = block.hash
    store.save_block(block, commit, [tx_id(t) for t in block.txs], results, app_writes, new_state)
    out(f"COMMIT {height} {block.hash.hex()}")
    w.mark_height_end(height)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home", type=Path)
    parser.add_argument("--forget-wal", action="store_true")
    parser.add_argument("--heights", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--crypto", choices=tuple(SUITES), required=True)
    args = parser.parse_args()
    activate(SUITES[args.crypto])  # before anything is hashed, as the daemon does
    key = PrivateKey(KEY_SEED)
    ss = SignState.load(args.home / "sign_state.json")
    w = wal.open_wal(
        args.home / "wal", file_bytes_max=64 * 1024, files_max=4, record_bytes_max=32 * 1024
    )
    store = open_store(args.home / "store", map_bytes=STORE_MAP_BYTES)
    if store.load_state() is None:
        store.init_genesis(genesis_state(validator_set(key)), {})
    height = store.latest_height() + 1
    round_, proposal, replayed = resume_point(w, height, args.forget_wal)
    last_end = "-" if w.last_height_end is None else str(w.last_height_end)
    out(f"START {height} {round_} {last_end} {replayed} {key.public_key.hex()}")
    done = 0
    while args.heights == 0 or done < args.heights:
        run_height(store, w, ss, key, round_, proposal)
        round_, proposal = 0, None
        done += 1
    w.close()
    store.close()


if __name__ == "__main__":
    main()
