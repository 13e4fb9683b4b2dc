"""kill -9 of a real validator process, again and again (issue 3's must-show, on the node).

tests/integration/test_crash.py proves the sign state and WAL survive SIGKILL
in a stand-in process; this proves it for the assembled node: in a
4-validator testnet one validator is SIGKILLed at seeded random points of its
work (counted in the log lines it writes since its start, so kills land during
start-up, block sync, and rounds it is signing in) and restarted, several
times. Afterwards no validator signed two different votes for one (height,
round, type), as far as anyone can see: every commit certificate every node
stores, and every block's last commit, hold one signature per (height, round,
validator), all valid; no node saw equivocation evidence (its metrics) and no
block carries any. And the victim resumed: it caught up and signs again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from consensus.types import Commit, ValidatorSet
from tests.integration import nodes

SEED = 3
KILLS = 5
# A kill comes after 1..KILL_AFTER_LINES_MAX log lines of the new life: the first few
# are start-up, then about one line per committed block.
KILL_AFTER_LINES_MAX = 40
TIMEOUT_S = 90  # generous for a loaded 2-core machine; healthy runs take a few seconds
EVIDENCE_METRIC = "archipelago_consensus_byzantine_evidence_total"


async def _lines_since_start(node: Any, start_offset: int) -> int:
    return len(node.log_events()) - start_offset


async def test_a_validator_killed_repeatedly_never_double_signs_and_resumes(
    tmp_path: Path, crypto: str
) -> None:
    """5 SIGKILLs of one validator at seeded random points, each followed by a restart: every
    stored certificate holds at most one valid precommit per (height, round, validator), no
    node counts equivocation evidence, no block carries any, and the victim catches up and
    its precommits appear in commits after its last restart."""
    rng = random.Random(SEED)
    net = nodes.create_testnet(tmp_path / "net", validators=4, accounts=0, crypto=crypto)
    victim = net.validators[2]
    kill_points: list[int] = []
    async with nodes.running(net), nodes.open_api() as api:
        for n in net.validators:
            await api.wait_serving(n)
        index = await api.validator_index(net.validators[0], victim)

        offset = 0  # log lines written before the victim's current life
        for _ in range(KILLS):
            after = rng.randint(1, KILL_AFTER_LINES_MAX)
            await nodes.wait_for(
                lambda offset=offset: _lines_since_start(victim, offset),
                lambda n, after=after: n >= after,
                TIMEOUT_S,
                f"{victim.name} to write {after} log lines (seed {SEED})",
            )
            await victim.kill()
            kill_points.append(after)
            offset = len(victim.log_events())
            await victim.start()
        last_start = max((await api.wait_height(net.validators[:2], 1, TIMEOUT_S)).values())

        # Resumed: caught up with the others and signing again.
        async def signed_heights() -> list[int]:
            top = min([await api.height(n) for n in net.validators])
            out = []
            for h in range(last_start + 1, top + 1):
                if index in await api.signers(net.validators[0], h):
                    out.append(h)
            return out

        await nodes.wait_for(
            signed_heights,
            bool,
            TIMEOUT_S,
            f"a commit after height {last_start} signed by {victim.name} (seed {SEED})",
        )
        top = min([await api.height(n) for n in net.validators])
        assert top > last_start
        status = await api.status(victim)
        assert status["latest_height"] >= top, status
        assert status["sync"]["mode"] == "consensus", status["sync"]
        assert status["validator"]["signing"] is True, status["validator"]

        # Every precommit anyone can see: each node's certificates and blocks' last commits.
        seen: dict[tuple[int, int, int], set[tuple[str, str]]] = {}
        validator_set = None
        for n in net.validators:
            for h in range(1, top + 1):
                body = await api.get(n, f"/commit/{h}")
                validator_set = ValidatorSet.decode(bytes.fromhex(body["validators_encoded"]))
                commits = [Commit.decode(bytes.fromhex(body["commit"]["encoded"]))]
                block = await api.get(n, f"/block/{h}")
                assert block["evidence"] == [], f"{n.name}: evidence in block {h}"
                if block["last_commit"] is not None:
                    commits.append(Commit.decode(bytes.fromhex(block["last_commit"]["encoded"])))
                for commit in commits:
                    assert commit.verify(net.chain_id, validator_set) is None, (n.name, h)
                    for s in commit.signatures:
                        key = (commit.height, commit.round, s.validator_index)
                        seen.setdefault(key, set()).add(
                            (commit.block_hash.hex(), s.signature.hex())
                        )
        doubles = {k: v for k, v in seen.items() if len(v) > 1}
        assert not doubles, f"two precommits for one (height, round, validator): {doubles}"
        signed_after = [k for k in seen if k[2] == index and k[0] > last_start]
        assert signed_after, f"no precommit by {victim.name} above {last_start} (top {top})"

        for n in net.validators:
            assert await api.metric(n, EVIDENCE_METRIC) == 0, n.name

    refused = victim.events("refused to sign a conflicting message")
    assert len(kill_points) == KILLS, kill_points
    assert victim.starts == KILLS + 1, victim.starts
    print(
        f"seed {SEED}: killed after {kill_points} log lines of each life; "
        f"{len(refused)} conflicting signatures refused by its sign state; chain at {top}"
    )
