"""The simulator runs a chain of either crypto suite: the node's code is the same for both."""

from __future__ import annotations

from consensus import crypto
from sim import Faults, main, simulate


def test_an_sm2_chain_with_faults_and_a_byzantine_validator_is_safe_and_live() -> None:
    """A seeded run under sm2-sm3 (keys, votes, blocks and ids in SM2/SM3) passes every check,
    and the process's suite is the default again afterwards. One seed: the faults and
    adversaries are the same code for both suites, which the other simulator tests cover."""
    result = simulate(1, heights=4, faults=Faults.everything(), crypto="sm2-sm3")
    assert result.ok, result
    assert crypto.active() is crypto.DEFAULT_SUITE


def test_simulate_takes_crypto_on_the_command_line() -> None:
    assert main(["--seeds", "1", "--heights", "2", "--no-faults", "--crypto", "sm2-sm3"]) == 0
