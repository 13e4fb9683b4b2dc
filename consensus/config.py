"""The consensus machine's settings: Tendermint's timeouts.

Algorithm 1 leaves the timeouts to the implementation; they only have to
grow with the round (so that after the network stabilises a round lasts long
enough to decide). Each field carries its range and meaning in its metadata,
so the node's config.toml section reads them from here (node/config.py)
instead of declaring the timeouts a second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["TIMEOUT_MS_MAX", "ConsensusConfig"]

TIMEOUT_MS_MAX = 3_600_000  # an hour: a longer timeout is a typo, not a slow network


def _timeout(default_ms: int, least_ms: int, doc: str) -> Any:
    """A timeout with its range and meaning, which node/config.py reads from config.toml."""
    return field(default=default_ms, metadata={"range": (least_ms, TIMEOUT_MS_MAX), "doc": doc})


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Timeouts, growing linearly with the round so that rounds eventually last long enough."""

    timeout_propose_ms: int = _timeout(3000, 1, "Wait for the round's proposal.")
    timeout_propose_delta_ms: int = _timeout(500, 0, "Added to timeout_propose_ms per round.")
    timeout_prevote_ms: int = _timeout(1000, 1, "Wait after +2/3 prevotes for anything.")
    timeout_prevote_delta_ms: int = _timeout(500, 0, "Added to timeout_prevote_ms per round.")
    timeout_precommit_ms: int = _timeout(1000, 1, "Wait after +2/3 precommits for anything.")
    timeout_precommit_delta_ms: int = _timeout(500, 0, "Added to timeout_precommit_ms per round.")
    timeout_commit_ms: int = _timeout(
        1000, 0, "Pause after a commit before the next height, to gather late precommits."
    )
    # Start the next height as soon as the block is applied (simulator, benchmarks).
    skip_timeout_commit: bool = False

    def propose_ms(self, round: int) -> int:
        return self.timeout_propose_ms + round * self.timeout_propose_delta_ms

    def prevote_ms(self, round: int) -> int:
        return self.timeout_prevote_ms + round * self.timeout_prevote_delta_ms

    def precommit_ms(self, round: int) -> int:
        return self.timeout_precommit_ms + round * self.timeout_precommit_delta_ms
