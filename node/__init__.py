"""Archipelago's daemon: CLI, config, keys, storage, mempool, apps, HTTP API, metrics."""

__version__ = "0.1.0"
