"""Why is this node, or the chain, not progressing? Facts and a plain sentence of what to do.

`diagnose` runs inside the node (its findings are part of /status);
`archipelago doctor --home DIR` reads that status from the running node
through the API and prints the findings, or, when the node is not running,
checks what it can from the home folder alone.
"""

from __future__ import annotations

import math
import shutil
from typing import TYPE_CHECKING, Any

import trio

from node.clock import now_ms
from node.messages import VOTER_CATCHING_UP, VOTER_NOT_SIGNING, VOTER_WATCHING

if TYPE_CHECKING:
    from node.driver import Driver
    from node.resources import Resources

DISK_FREE_WARN_BYTES = 1024 * 1024 * 1024
# Below this the doctor's finding is critical and /health fails.
DISK_FREE_CRITICAL_BYTES = 256 * 1024 * 1024
MEMPOOL_PRESSURE_RATIO = 0.8
CLOCK_SKEW_WARN_MS = 2_000
SILENT_AFTER_S_MIN = 10.0  # a validator with no vote for this long (or 3 rounds) is silent
STALL_FACTOR = 5  # no block for this many (commit timeout + one round) is a stall


def _finding(severity: str, what: str, advice: str) -> dict[str, str]:
    return {"severity": severity, "problem": what, "advice": advice}


def diagnose(res: Resources, driver: Driver, status: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    out += _peers(res, status)
    out += _sync(status)
    out += _consensus(res, driver, status)
    out += _validator(status)
    out += _resources(res, status)
    return out


def _peers(res: Resources, status: dict[str, Any]) -> list[dict[str, str]]:
    configured = len(res.config.p2p.persistent_peers)
    connected = status["peers"]
    if configured and connected == 0:
        return [
            _finding(
                "critical",
                f"no peers connected ({configured} persistent peers configured)",
                "check that the peers run and that [p2p] persistent_peers and firewalls "
                "allow their p2p ports; the log shows each failed dial",
            )
        ]
    if configured and connected < configured:
        connected_ids = {p.node_id for p in res.net.peers()}
        missing = [
            p.node_id[:12]
            for p in res.config.p2p.persistent_peers
            if p.node_id not in connected_ids
        ]
        return [
            _finding(
                "warning",
                f"{connected} of {configured} persistent peers connected; missing: "
                + ", ".join(missing),
                "those nodes are down or unreachable; the node keeps re-dialling them",
            )
        ]
    return []


def _sync(status: dict[str, Any]) -> list[dict[str, str]]:
    sync = status["sync"]
    if sync["mode"] == "blocksync":
        return [
            _finding(
                "info",
                f"catching up by block sync: {sync['lag_blocks']} blocks behind "
                f"(peers at {sync['peer_max_height']}): {sync['reason']}",
                "wait; the node joins consensus by itself once it is caught up",
            )
        ]
    return []


def _consensus(res: Resources, driver: Driver, status: dict[str, Any]) -> list[dict[str, str]]:
    c = status["consensus"]
    if c is None:
        return []
    out: list[dict[str, str]] = []
    cfg = res.config.consensus
    round_ms = cfg.timeout_propose_ms + cfg.timeout_prevote_ms + cfg.timeout_precommit_ms
    stalled_ms = now_ms() - res.last_progress_ms
    idle = c.get("waiting_for_txs", False)  # by choice: create_empty_blocks = false
    if c["round"] > 0 or (
        not idle and stalled_ms > STALL_FACTOR * (cfg.timeout_commit_ms + round_ms)
    ):
        silent = _silent_validators(res, driver)
        said = _not_voting_by_their_word(res, driver, [a for a, _ in silent])
        silent = [(a, p) for a, p in silent if a not in said]
        halted = False
        why = (
            f"height {c['height']} is in round {c['round']} (step {c['step']}); "
            f"no block for {stalled_ms // 1000} s"
        )
        waiting = sum(p for _, (p, _) in said.items())
        if said:
            why += "; not voting by their own signed word: " + ", ".join(
                f"{a[:12]} ({text})" for a, (_, text) in said.items()
            )
        total = res.chain.state.validators.total_power
        if silent:
            power = sum(p for _, p in silent)
            why += f"; silent validators: {', '.join(a[:12] for a, _ in silent)} "
            why += f"({power} of {total} voting power)"
            halted = 3 * (power + waiting) >= total
            advice = (
                "at least a third of the voting power is silent: the chain cannot commit "
                "until enough of those validators are back online"
                if halted
                else "rounds fail while some validators are silent; bring them back"
            )
        elif said:
            halted = 3 * waiting >= total
            advice = (
                "validators restarted together watch for another instance of their key or "
                "catch up before they vote: the chain resumes by itself once they sign (at most "
                f"[consensus] doppelganger_halt_ms = {cfg.doppelganger_halt_ms} ms after the "
                "last block); one that stopped signing needs its operator"
            )
        else:
            advice = (
                "all validators vote but rounds fail: look for 'invalid block proposed' and "
                "clock skew in the logs, or raise the [consensus] timeouts on a slow network"
            )
        stopped = any("stopped signing" in text for _, text in said.values())
        critical = (halted and bool(silent or stopped)) or c["round"] >= 3
        out.append(_finding("critical" if critical else "warning", why, advice))
    skew = _clock_skew_ms(res)
    if skew is not None and abs(skew) > CLOCK_SKEW_WARN_MS:
        out.append(
            _finding(
                "warning",
                f"our clock is {-skew / 1000:.1f} s behind the latest block time set by our peers",
                "run NTP (chrony or systemd-timesyncd) on every validator",
            )
        )
    return out


def _silent_validators(res: Resources, driver: Driver) -> list[tuple[str, int]]:
    """Validators of the current set from which no validly signed vote arrived recently.

    A live validator in a stalled height re-sends its votes every few seconds
    (the announcer), so "recently" means alive even when no round advances.
    """
    machine = driver.machine
    cfg = res.config.consensus
    window_s = max(
        SILENT_AFTER_S_MIN,
        3 * (cfg.timeout_propose_ms + cfg.timeout_prevote_ms + cfg.timeout_precommit_ms) / 1000,
    )
    now = trio.current_time()
    if machine is None:
        return []
    return [
        (v.address.hex(), v.power)
        for v in machine.validators
        if v.address != res.validator_address
        and now - driver.alive.get(v.address, -math.inf) > window_s
    ]


_STATE_TEXT = {
    VOTER_WATCHING: "watching for another instance of its key until height {until}",
    VOTER_CATCHING_UP: "catching up by block sync",
    VOTER_NOT_SIGNING: "stopped signing",
}


def _not_voting_by_their_word(
    res: Resources, driver: Driver, addresses: list[str]
) -> dict[str, tuple[int, str]]:
    """Of `addresses` (hex), those that recently said, signed, why they do not vote.

    Address -> (voting power, what it said). A validator that is up but
    watching or catching up is not silent, and needs no one to act.
    """
    cfg = res.config.consensus
    window_s = max(SILENT_AFTER_S_MIN, 3 * cfg.block_interval_ms() / 1000)
    now = trio.current_time()
    validators = res.chain.state.validators
    out: dict[str, tuple[int, str]] = {}
    for text_address in addresses:
        address = bytes.fromhex(text_address)
        said = driver.voter_states.get(address)
        index = validators.index_of(address)
        if said is None or index is None or now - said[2] > window_s:
            continue
        state, until, _ = said
        out[text_address] = (validators[index].power, _STATE_TEXT[state].format(until=until))
    return out


def _clock_skew_ms(res: Resources) -> int | None:
    """How far the latest block's time (set by the peers' proposers) is ahead of our clock.

    Block times only move forward from the proposer's clock, so a block time
    in our future means our clock is behind the other validators'.
    """
    state = res.chain.state
    if state.last_height == 0:
        return None
    ahead_ms = state.last_block_time_ms - now_ms()
    return -ahead_ms if ahead_ms > 0 else None


def _validator(status: dict[str, Any]) -> list[dict[str, str]]:
    v = status["validator"]
    watch = v.get("doppelganger_watch")
    if v["in_set"] and watch is not None and not v["sign_state_error"]:
        return [
            _finding(
                "info",
                "this validator watches for another instance of its key before it signs, "
                f"until height {watch['until_height']} (or until no block has committed for "
                "[consensus] doppelganger_halt_ms)",
                "wait: it signs by itself when the watch ends; if another instance shows up it "
                "stops for good and says so here",
            )
        ]
    if v["in_set"] and status["sync"]["mode"] == "blocksync" and not v["sign_state_error"]:
        return []  # catching up: the sync finding says so
    if v["in_set"] and not v["signing"]:
        return [
            _finding(
                "critical",
                "this validator is in the set but does not sign: "
                + (v["sign_state_error"] or "no sign state"),
                "restore data/sign_state.json from this validator's own backup, or if it is "
                "certain that this key never signed elsewhere, create one with "
                "`archipelago unsafe-reset`",
            )
        ]
    return []


def _resources(res: Resources, status: dict[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    free = shutil.disk_usage(res.paths.data).free
    if free < DISK_FREE_WARN_BYTES:
        out.append(
            _finding(
                "critical" if free < DISK_FREE_CRITICAL_BYTES else "warning",
                f"{free // (1024 * 1024)} MiB of disk left in {res.paths.data}",
                "free disk space or move data/ to a larger volume before the store fills",
            )
        )
    mp = status["mempool"]
    if mp["txs"] >= MEMPOOL_PRESSURE_RATIO * mp["txs_max"] or (
        mp["bytes"] >= MEMPOOL_PRESSURE_RATIO * mp["bytes_max"]
    ):
        out.append(
            _finding(
                "warning",
                f"mempool at {mp['txs']} of {mp['txs_max']} transactions",
                "clients submit faster than blocks commit: raise the block limits in genesis "
                "for a new chain, or slow the clients; new transactions are refused when full",
            )
        )
    return out
