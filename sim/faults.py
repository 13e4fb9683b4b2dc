"""What a seed may make go wrong: the fault schedule, the Byzantine modes and the peer attacks.

A run draws its faults from a `Faults` within its window (virtual ms):
network delays, drops, duplicates and partitions, honest crashes and mass
restarts, and one hostile-peer attack out of `attacks`. Up to f validators
are Byzantine in one of `MODES`: they equivocate (each peer gets one of two
signed versions), run as twins (two nodes with one key), or follow a script
("lock-attack", "amnesia-attack", sim/scenarios.py) that brings its own
partitions and heals at a fixed time.

The hostile peer, without a key and connected to every node, runs one of
`ATTACKS` (sim/scenarios.py): false height claims to one or several nodes
("claims"), proposals whose body is not their header's before the genuine
one ("body-swap") or after it ("overwrite"), forged next-height proposals
and votes ("next-flood"), copies of real votes in direct batches
("dup-flood"), forged decided blocks ("forged-decided"), forged votes
carrying a validator's address ("victim").
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("equivocate", "twins", "lock-attack", "amnesia-attack")
SCRIPTED_MODES = ("lock-attack", "amnesia-attack")
ATTACKS = (
    "claims",
    "body-swap",
    "overwrite",
    "next-flood",
    "dup-flood",
    "forged-decided",
    "victim",
)
ATTACK_HEAL_MS = 4_000  # lock-attack: the network heals, x falls silent
AMNESIA_HEAL_MS = 12_000  # amnesia-attack: the same, after the false claims


@dataclass(frozen=True, slots=True)
class Faults:
    """What the network, the nodes and a hostile peer do wrong, and until when (virtual ms)."""

    drop_probability: float = 0.1
    duplicate_probability: float = 0.05
    delay_ms_min: int = 1
    delay_ms_max: int = 150
    partitions: int = 1  # partition episodes within the window
    crashes: int = 1  # single honest node crash/restart episodes within the window
    mass_restarts: int = 0  # episodes restarting 2..all honest validators together
    attacks: tuple[str, ...] = ()  # hostile peer attacks; one is chosen by the seed
    window_ms: int = 8_000

    @classmethod
    def none(cls) -> Faults:
        return cls(0.0, 0.0, 1, 50, 0, 0, 0, (), 0)

    @classmethod
    def everything(cls) -> Faults:
        """Network faults, crashes, a mass restart and one seed-chosen peer attack."""
        return cls(mass_restarts=1, attacks=ATTACKS)

    @classmethod
    def scripted(cls, mode: str) -> Faults:
        """A scripted scenario's network: short delays, its own partitions until the heal."""
        heal_ms = ATTACK_HEAL_MS if mode == "lock-attack" else AMNESIA_HEAL_MS
        return cls(0.0, 0.0, 1, 20, 0, 0, 0, (), heal_ms)
