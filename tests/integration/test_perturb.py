"""`archipelago perturb`: a short seeded run passes its checks, and its checker can fail.

The run is real: seven validator processes on loopback under load, killed
with SIGKILL, paused with SIGSTOP, partitioned and given a skewed clock, then
every block, certificate and acknowledged transaction read back over HTTP.
The checker tests hand devnet/perturb_checks.py histories with really signed
votes, first as honest nodes would report them and then doctored (a forked
hash, a double-signed precommit, a forged signature, a lost transaction), so
that a passing run means something.

Both run with the default crypto suite: `archipelago perturb` has no
`--crypto` (devnet/perturb.py), and the checker is a tool's, not the node's.
Kills, restarts, pauses and catch-up of the node itself run under both suites
in test_node_crash.py, test_network_node.py and test_netns.py.
"""

from __future__ import annotations

import re
import subprocess

from consensus.crypto import PrivateKey
from consensus.types import VoteType, vote_sign_bytes
from devnet.perturb_checks import (
    AckedTx,
    BlockRecord,
    NodeHistory,
    SignedVote,
    check_acked_txs,
    check_block_hashes,
    check_votes,
)
from devnet.perturb_rounds import fault_tolerance, schedule
from tests.integration import nodes

# 7 rounds of about 12 s each with 7 nodes on a loaded 2-core machine, plus start and reads.
RUN_TIMEOUT_S = 600
CHAIN_ID = "perturb-test"
HEIGHTS = 3


def test_short_run_under_load_passes_every_check() -> None:
    """4 kills, 1 kill while another validator is paused, 1 partition and 1 clock skew on 7
    validators under load: every check passes, each perturbed node caught up (its time is
    reported), and no stall happened while at most f were affected."""
    base_port = nodes.free_ports(7 * nodes.PORTS_PER_NODE)
    result = subprocess.run(
        [
            *(str(nodes.ARCHIPELAGO), "perturb", "--validators", "7", "--seed", "7"),
            *("--kills", "4", "--paused-kills", "1", "--disconnects", "1", "--clock-skews", "1"),
            *("--pauses", "0", "--restarts", "0", "--disk-fulls", "0", "--load", "20"),
            *("--base-port", str(base_port)),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=nodes.env(),
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "perturb: 5/5 checks passed" in out, out
    assert "perturbations: clock-skew 1, disconnect 1, kill 5, pause 1" in out, out
    catch_up = re.search(r"catch-up after kill -9: n 5, median ([\d.]+) s, max ([\d.]+) s", out)
    assert catch_up is not None, out
    assert re.search(r"\[PASS\] identical block hashes: \d+ heights on 7 nodes", out), out
    acked = re.search(r"(\d+) acknowledged transactions found on every node", out)
    # 4 prober accounts, one transaction each at a time, for well over a minute: an account
    # that stopped at its first unanswered transaction would leave only a handful.
    assert acked is not None and int(acked[1]) >= 20, out


def test_paused_kill_is_refused_when_two_validators_exceed_f() -> None:
    """With 4 validators (f = 1) a paused-kill round would take two down at once: refused
    with the reason before any node starts."""
    result = subprocess.run(
        [str(nodes.ARCHIPELAGO), "perturb", "--validators", "4", "--paused-kills", "1"],
        capture_output=True,
        text=True,
        timeout=nodes.COMMAND_TIMEOUT_S,
        env=nodes.env(),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "f = 1: use --validators 7 or more" in result.stderr


def test_schedule_is_the_seeds_and_f_is_a_third() -> None:
    """One seed gives one order of rounds, with every requested round in it."""
    import random

    counts = {"kill": 5, "paused-kill": 2, "pause": 1}
    first = schedule(random.Random(3), counts)
    assert first == schedule(random.Random(3), counts)
    assert sorted(first) == sorted(["kill"] * 5 + ["paused-kill"] * 2 + ["pause"])
    assert [fault_tolerance(n) for n in (1, 3, 4, 6, 7, 10)] == [0, 0, 1, 1, 2, 3]


# ---------------------------------------------------------------- the checker on doctored input

KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
PUBLIC_KEYS = [k.public_key for k in KEYS]


def _precommit(i: int, height: int, block_hash: bytes, where: str, round_: int = 0) -> SignedVote:
    message = vote_sign_bytes(CHAIN_ID, VoteType.PRECOMMIT, height, round_, block_hash)
    return SignedVote(
        i, height, round_, VoteType.PRECOMMIT, block_hash, KEYS[i].sign(message), where
    )


def _block_hash(height: int) -> bytes:
    return bytes([height]) * 32


def _history(name: str) -> NodeHistory:
    """What an honest node reports: blocks 1..HEIGHTS, each certified by validators 0-2."""
    blocks = {}
    commits = {}
    for h in range(1, HEIGHTS + 1):
        last = (
            tuple(_precommit(i, h - 1, _block_hash(h - 1), name) for i in range(3)) if h > 1 else ()
        )
        blocks[h] = BlockRecord(h, _block_hash(h).hex(), frozenset({f"tx{h}"}), last, 0)
        commits[h] = tuple(_precommit(i, h, _block_hash(h), name) for i in range(3))
    return NodeHistory(name, blocks, commits)


def test_checker_passes_honest_histories() -> None:
    """The baseline: identical honest histories pass all three checks."""
    histories = [_history("node0"), _history("node1")]
    assert check_block_hashes(histories, HEIGHTS).passed
    assert check_votes(histories, CHAIN_ID, PUBLIC_KEYS).passed
    assert check_acked_txs(histories, [AckedTx("tx2", 2, "node0")], HEIGHTS).passed


def test_checker_fails_when_two_nodes_report_different_hashes() -> None:
    """A node whose block 2 differs (a fork) fails the hash check, naming the height."""
    honest, forked = _history("node0"), _history("node1")
    blocks = dict(forked.blocks)
    blocks[2] = BlockRecord(2, "ab" * 32, blocks[2].tx_hashes, blocks[2].votes, 0)
    forked = NodeHistory("node1", blocks, forked.commit_votes)
    result = check_block_hashes([honest, forked], HEIGHTS)
    assert not result.passed
    assert "height 2:" in result.detail and "node1" in result.detail


def test_checker_fails_when_a_node_misses_a_height() -> None:
    """A node that answers no block at height 3 fails the hash check too."""
    honest, behind = _history("node0"), _history("node1")
    behind = NodeHistory("node1", {h: b for h, b in behind.blocks.items() if h != 3}, {})
    result = check_block_hashes([honest, behind], HEIGHTS)
    assert not result.passed and "missing on node1" in result.detail


def test_checker_fails_on_a_validator_that_signed_two_blocks() -> None:
    """Validator 1's really signed precommit for another block at height 2, round 0, in one
    node's stored commit, fails the vote check, naming the validator and the slot."""
    honest, other = _history("node0"), _history("node1")
    commits = dict(other.commit_votes)
    commits[2] = (*commits[2][:1], _precommit(1, 2, b"\x77" * 32, "node1"), *commits[2][2:])
    other = NodeHistory("node1", other.blocks, commits)
    result = check_votes([honest, other], CHAIN_ID, PUBLIC_KEYS)
    assert not result.passed
    assert "validator 1 signed 2 different precommits (blocks) at height 2 round 0" in result.detail


def test_checker_fails_on_a_forged_signature() -> None:
    """A precommit whose signature is not the validator's fails even when nothing conflicts."""
    history = _history("node0")
    commits = dict(history.commit_votes)
    real = commits[1][0]
    forged = SignedVote(0, 1, 0, VoteType.PRECOMMIT, real.block_hash, KEYS[3].sign(b"x"), "n0")
    commits[1] = (forged, *commits[1][1:])
    history = NodeHistory("node0", history.blocks, commits)
    result = check_votes([history], CHAIN_ID, PUBLIC_KEYS)
    assert not result.passed and "bad signature by validator 0" in result.detail


def test_checker_fails_on_evidence_in_a_block() -> None:
    """Evidence in a block names a validator that signed twice: in an honest run, a failure."""
    history = _history("node0")
    blocks = dict(history.blocks)
    b = blocks[3]
    blocks[3] = BlockRecord(b.height, b.hash, b.tx_hashes, b.votes, 1)
    result = check_votes([NodeHistory("node0", blocks, {})], CHAIN_ID, PUBLIC_KEYS)
    assert not result.passed and "duplicate-vote evidence" in result.detail


def test_checker_fails_when_an_acknowledged_transaction_is_missing() -> None:
    """A transaction acknowledged at height 2 but absent from node1's block 2 fails."""
    honest, lossy = _history("node0"), _history("node1")
    blocks = dict(lossy.blocks)
    b = blocks[2]
    blocks[2] = BlockRecord(2, b.hash, frozenset(), b.votes, 0)
    lossy = NodeHistory("node1", blocks, lossy.commit_votes)
    result = check_acked_txs([honest, lossy], [AckedTx("tx2", 2, "node0")], HEIGHTS)
    assert not result.passed and "not in that block on node1" in result.detail
    above = check_acked_txs([honest], [AckedTx("tx9", 9, "node0")], HEIGHTS)
    assert not above.passed
