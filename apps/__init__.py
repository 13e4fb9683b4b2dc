"""The built-in applications, by the name genesis gives them in `app`.

Consensus runs whatever application it is handed (consensus/app.py); this
registry is where the node finds the class that builds one from genesis or
reloads one from the store. Adding an application is adding it here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from apps.kvstore import KVStore
from apps.ledger import Ledger
from consensus.app import Application
from consensus.genesis import Genesis, GenesisError

__all__ = ["APPS", "AppClass", "app_class"]


class AppClass(Protocol):
    """The class side of an application: how the node creates one."""

    def from_genesis(self, genesis: Genesis) -> Application:
        """The application in its initial state; ValueError names a wrong `app_state` field."""
        ...

    def load(
        self, items: Iterable[tuple[bytes, bytes]], app_hash: bytes, height: int
    ) -> Application:
        """The application as committed at `height`, from the pairs `items` and commits wrote."""
        ...


APPS: Final[Mapping[str, AppClass]] = {"ledger": Ledger, "kvstore": KVStore}


def app_class(genesis: Genesis) -> AppClass:
    """The class of the application genesis names; GenesisError (one line) if there is none."""
    cls = APPS.get(genesis.app)
    if cls is None:
        raise GenesisError(f"app: expected one of {', '.join(APPS)}, got {genesis.app!r}")
    return cls
