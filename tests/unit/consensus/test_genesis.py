"""genesis.json parsing: the app is checked for its shape only, the registry is the node's."""

from __future__ import annotations

import json

import pytest

from consensus.crypto import PrivateKey
from consensus.genesis import Genesis, GenesisError, GenesisValidator

KEY = PrivateKey(b"\x07" * 32)


def _obj(app: str = "ledger") -> dict[str, object]:
    genesis = Genesis("g", 0, (GenesisValidator("v", KEY.public_key, 1),), "ledger", {})
    return genesis.to_json_obj() | {"app": app}


def test_any_well_formed_app_name_parses() -> None:
    """A name the node may not have still parses: consensus does not know the registry."""
    assert Genesis.from_json_obj(_obj("bank")).app == "bank"
    assert Genesis.from_json_obj(_obj("a" * 32)).app == "a" * 32


@pytest.mark.parametrize("app", ["", "a" * 33, "é" * 17, "bad\nname", "\ud800"])
def test_a_malformed_app_name_is_one_genesis_error(app: str) -> None:
    """Empty, over 32 UTF-8 bytes, unprintable or not encodable: GenesisError naming `app`."""
    with pytest.raises(GenesisError, match=r"^app: "):
        Genesis.from_json(json.dumps(_obj(app)))


def test_a_chain_id_that_is_not_utf8_is_one_genesis_error() -> None:
    """A lone surrogate in chain_id (valid JSON, not UTF-8) is a GenesisError, not a crash."""
    with pytest.raises(GenesisError, match=r"^chain_id: "):
        Genesis.from_json(json.dumps(_obj() | {"chain_id": "\ud800"}))
