"""Archipelago's pure core: canonical types, Tendermint state machine, validation.

Nothing in this package performs I/O, reads a clock or draws randomness; the
daemon (`node/`) and the simulator (`sim/`) drive it with events.
"""
