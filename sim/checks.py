"""What must hold after every simulated run, and the reports that say whether it did.

The checker is told of every signed proposal, every block an honest node
decides and every peer an honest node penalises, as they happen, and
records a violation of:

- agreement: no two honest nodes commit different blocks at a height;
- validity: each committed block was proposed, signed, by the proposer of its
  commit round, carries a valid certificate, and no evidence against an
  honest validator; an honest node never decides a block it cannot apply;
- no false blame: no honest node penalises another honest node;
- liveness (`liveness_failure`, at the end): every honest node reaches the
  target height within `LIVENESS_BOUND_MS` of virtual time after the last
  fault healed;
- in idle mode (sim/idle.py, its `IdleReport`): every burst of transactions
  committed in time, and no empty block while idle but the follow-ups.

A run stops at its first violation, and its report prints the seed and
every node's state, so that `archipelago simulate --seed-start S --seeds 1`
replays it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consensus.types import Block, Commit, LightClientAttackEvidence
from network import Misbehaviour as PeerFault
from sim.idle import IdleReport
from sim.workload import CHAIN_ID

LIVENESS_BOUND_MS = 120_000


@dataclass(frozen=True, slots=True)
class NodeReport:
    name: str
    honest: bool
    crashed: bool
    committed: int
    power: int  # in the validator set of its next height (0: not a validator)
    height: int
    round: int
    step: str
    locked_round: int
    mode: str

    def __str__(self) -> str:
        kind = "honest" if self.honest else "byzantine"
        down = " crashed" if self.crashed else ""
        return (
            f"{self.name}({kind}{down}): committed={self.committed} power={self.power} "
            f"height={self.height} round={self.round} step={self.step} "
            f"locked_round={self.locked_round} mode={self.mode}"
        )


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    byzantine_mode: str
    attack: str  # the hostile peer's attack ("" for none)
    safety_violations: tuple[str, ...]
    liveness_failure: str | None
    blocks: int  # heights every honest node committed
    virtual_ms: int
    heal_ms: int
    messages: int
    evidence_committed: int  # evidence in decided blocks (all against Byzantine validators)
    txs_committed: int  # client transactions in decided blocks
    validator_changes: int  # validator updates the application returned in decided blocks
    restarts: int
    synced_blocks: int  # blocks honest nodes applied through block sync
    penalties: int  # peers penalised by honest nodes (all Byzantine or hostile)
    attack_armed: bool  # scripted scenarios: their premise held (see sim/scenarios.py)
    chain_digest: bytes  # SHA-256 over every honest node's committed block hashes
    nodes: tuple[NodeReport, ...]
    idle: IdleReport | None = None  # idle mode's bursts and idle blocks (None: not that mode)

    @property
    def idle_violation(self) -> str | None:
        return None if self.idle is None else self.idle.violation

    @property
    def ok(self) -> bool:
        return (
            not self.safety_violations
            and self.liveness_failure is None
            and self.idle_violation is None
        )

    def describe(self) -> str:
        attack = f", attack {self.attack}" if self.attack else ""
        lines = [f"seed {self.seed} ({self.byzantine_mode}{attack}):"]
        lines += [f"  safety: {v}" for v in self.safety_violations]
        if self.liveness_failure:
            lines.append(f"  liveness: {self.liveness_failure}")
        if self.idle_violation:
            lines.append(f"  idle: {self.idle_violation}")
        lines += [f"  {n}" for n in self.nodes]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BatchResult:
    seeds: range
    results: tuple[RunResult, ...]

    @property
    def safety_failures(self) -> list[RunResult]:
        return [r for r in self.results if r.safety_violations]

    @property
    def liveness_failures(self) -> list[RunResult]:
        return [r for r in self.results if r.liveness_failure is not None]

    @property
    def idle_failures(self) -> list[RunResult]:
        return [r for r in self.results if r.idle_violation is not None]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def summary(self) -> str:
        s = self.seeds
        last = s.start + (len(s) - 1) * s.step if len(s) else s.start
        rs = self.results
        line = (
            f"runs={len(rs)} seeds={s.start}..{last} "
            f"safety_violations={len(self.safety_failures)} "
            f"liveness_failures={len(self.liveness_failures)} "
            f"blocks={sum(r.blocks for r in rs)} "
            f"txs={sum(r.txs_committed for r in rs)} "
            f"validator_changes={sum(r.validator_changes for r in rs)} "
            f"evidence_committed={sum(r.evidence_committed for r in rs)} "
            f"restarts={sum(r.restarts for r in rs)} "
            f"synced_blocks={sum(r.synced_blocks for r in rs)} "
            f"attacks={sum(1 for r in rs if r.attack)} "
            f"penalties={sum(r.penalties for r in rs)} "
            f"virtual_s={sum(r.virtual_ms for r in rs) / 1000:.1f}"
        )
        idle = [r.idle for r in rs if r.idle is not None]
        if idle:
            line += (
                f" idle_failures={len(self.idle_failures)} "
                f"bursts={sum(i.bursts for i in idle)} "
                f"burst_delay_ms_max={max(i.burst_delay_ms_max for i in idle)} "
                f"idle_blocks={sum(i.idle_blocks for i in idle)}"
            )
        failed = [r for r in rs if not r.ok]
        return "\n".join([line, *(r.describe() for r in failed)])


class Checker:
    """The safety checks of one run, fed as it goes; `violations` empty means none failed.

    It also counts what the decided chain carries (evidence, transactions,
    validator changes), once per height, from the first honest node that
    committed it.
    """

    def __init__(self, honest_ids: set[str], bad_addresses: set[bytes]) -> None:
        self.honest_ids = honest_ids
        self.bad_addresses = bad_addresses
        self.violations: list[str] = []
        self.decided: dict[int, bytes] = {}
        self.first_committer: dict[int, str] = {}
        self.proposed: dict[tuple[int, int], dict[bytes, bytes]] = {}  # (h, r) -> hash -> signer
        self.evidence_committed = 0
        self.txs_committed = 0
        self.validator_changes = 0

    def note_proposal(self, height: int, round: int, block_hash: bytes, signer: bytes) -> None:
        """A proposal for `block_hash` signed by `signer` left a node (honest or not)."""
        self.proposed.setdefault((height, round), {})[block_hash] = signer

    def on_penalise(
        self, name: str, honest: bool, peer: str, fault: PeerFault, detail: str
    ) -> None:
        if honest and peer in self.honest_ids:
            self.violations.append(
                f"false blame: {name} penalised honest {peer} ({fault.value}: {detail})"
            )

    def on_apply_failed(self, name: str, height: int, error: Exception) -> None:
        """An honest node decided a block that its application refused."""
        self.violations.append(
            f"validity: {name} decided an invalid block at height {height}: {error}"
        )

    def on_commit(
        self, name: str, block: Block, commit: Commit, state: Any, validated: Any
    ) -> None:
        """An honest node committed `block`; `state` is its chain state before the block."""
        height = block.height
        first = self.decided.setdefault(height, block.hash)
        if first != block.hash:
            self.violations.append(
                f"agreement: {name} committed {block.hash.hex()[:8]} at height {height}, "
                f"another honest node committed {first.hex()[:8]}"
            )
        elif name == self.first_committer.setdefault(height, name):
            self.evidence_committed += len(block.evidence)
            self.txs_committed += len(block.txs)
            self.validator_changes += len(validated.execution.validator_updates)
        proposer = state.schedule.proposer(commit.round).address
        signer = self.proposed.get((height, commit.round), {}).get(block.hash)
        if signer != proposer:
            self.violations.append(
                f"validity: height {height} block {block.hash.hex()[:8]} was not proposed "
                f"by round {commit.round}'s proposer"
            )
        if commit.verify(CHAIN_ID, state.validators) is not None:
            self.violations.append(f"validity: height {height} commit certificate invalid")
        for ev in block.evidence:
            accused = (
                ev.byzantine_validators
                if isinstance(ev, LightClientAttackEvidence)
                else (ev.validator_address,)
            )
            for address in accused:
                if address not in self.bad_addresses:
                    self.violations.append(
                        f"validity: height {height} carries evidence against honest "
                        f"validator {address.hex()[:8]}"
                    )


def liveness_failure(behind: Sequence[str], target: int, heal_ms: int) -> str:
    """The report for honest nodes still below the target height when the run ended."""
    return (
        f"{', '.join(behind)} below height {target} "
        f"{LIVENESS_BOUND_MS} ms after the last fault healed at {heal_ms} ms"
    )
