"""Certificates signed with real keys, for tests of more than one package.

Test modules import this one as `from tests.signing import certificate` (pytest's
importlib mode imports tests/ as a namespace package from the rootdir; the
benchmarks put the repository root on sys.path).
"""

from __future__ import annotations

from consensus.crypto import PrivateKey
from consensus.types import Commit, CommitSig, Header, ValidatorSet, precommit_sign_bytes


def certificate(
    chain_id: str,
    header: Header,
    keys: list[PrivateKey],
    validators: ValidatorSet,
    round_: int = 0,
) -> Commit:
    """The commit of `header` in `round_` by those of `keys` that are in `validators`."""
    message = precommit_sign_bytes(chain_id, header.height, round_, header.hash)
    by_address = {k.address: k for k in keys}
    sigs = [
        CommitSig(i, by_address[v.address].sign(message))
        for i, v in enumerate(validators)
        if v.address in by_address
    ]
    return Commit(header.height, round_, header.hash, tuple(sigs))
