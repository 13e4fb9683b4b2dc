"""What /status, /health and /net_info say about this node, and the doctor's findings.

`StatusView` reads the resources and the consensus driver; it changes
nothing, so the API may call it at any time.
"""

from __future__ import annotations

import shutil
from typing import Any

import trio

from network import CHANNEL_NAMES
from node import __version__
from node.clock import now_ms
from node.consensus_service import ConsensusService
from node.doctor import DISK_FREE_CRITICAL_BYTES, diagnose
from node.resources import Resources


class StatusView:
    def __init__(self, res: Resources, consensus: ConsensusService) -> None:
        self.res = res
        self.consensus = consensus

    def status(self) -> dict[str, Any]:
        res = self.res
        state = res.chain.state
        driver = self.consensus.driver
        machine = driver.machine
        ds = driver.status()
        peer_max = ds.peer_max_height
        watch = None
        if ds.watch_until_height:
            halt_in_s = max(0.0, ds.watch_halt_at - trio.current_time())
            watch = {
                "until_height": ds.watch_until_height,
                "ends_by_time_ms": now_ms() + int(halt_in_s * 1000),
            }
        out: dict[str, Any] = {
            "node_id": res.node_id,
            "chain_id": state.chain_id,
            "genesis_hash": res.genesis_hash.hex(),
            "moniker": res.config.moniker,
            "version": __version__,
            "latest_height": state.last_height,
            "latest_block_hash": state.last_block_hash.hex(),
            "latest_app_hash": state.app_hash.hex(),
            "latest_block_time_ms": state.last_block_time_ms,
            "catching_up": ds.mode == "blocksync",
            "sync": {
                "mode": ds.mode,
                "reason": ds.mode_reason,
                "peer_max_height": peer_max,
                "lag_blocks": max(0, peer_max - state.last_height),
            },
            "validator": {
                "address": res.validator_address.hex(),
                "public_key": res.validator_key.public_key.hex(),
                "in_set": state.validators.index_of(res.validator_address) is not None,
                "signing": ds.signing and res.can_sign,
                "doppelganger_watch": watch,
                "sign_state_error": res.sign_state_error,
            },
            "consensus": None,
            "mempool": {
                "txs": len(res.mempool),
                "bytes": res.mempool.bytes,
                "txs_max": res.config.mempool.txs_max,
                "bytes_max": res.config.mempool.bytes_max,
            },
            "peers": len(res.net.peers()),
            "time_ms": now_ms(),
        }
        if machine is not None:
            ms = machine.state()
            out["consensus"] = {
                "height": ms.height,
                "round": ms.round,
                "step": ms.step.name.lower(),
                "locked_round": ms.locked_round,
                "valid_round": ms.valid_round,
                "proposer": machine.proposer(ms.round).address.hex(),
                "waiting_for_txs": ds.waiting_for_txs,
            }
        out["diagnosis"] = diagnose(res, driver, out)
        return out

    def health(self) -> tuple[bool, list[str]]:
        """Whether a load balancer should send clients here, and if not why."""
        res = self.res
        problems: list[str] = []
        if res.config.p2p.persistent_peers and not res.net.peers():
            problems.append("no peers connected")
        free = shutil.disk_usage(res.paths.data).free
        if free < DISK_FREE_CRITICAL_BYTES:
            problems.append(f"only {free // (1024 * 1024)} MiB of disk left")
        cfg = res.config.consensus
        if cfg.health_stall_intervals and not self.consensus.driver.waiting_for_txs:
            limit_ms = cfg.health_stall_intervals * cfg.block_interval_ms()
            stalled_ms = res.stalled_ms()
            if stalled_ms > limit_ms:
                problems.append(
                    f"no block committed for {stalled_ms // 1000} s "
                    f"(limit {cfg.health_stall_intervals} block intervals, {limit_ms // 1000} s)"
                )
        return not problems, problems

    def net_info(self) -> dict[str, Any]:
        res = self.res
        stats = res.net.statistics()
        peers = []
        claims = self.consensus.driver.sync.claims
        for p in res.net.peers():
            claim = claims.get(p.node_id)
            peers.append(
                {
                    "node_id": p.node_id,
                    "host": p.host,
                    "port": p.port,
                    "direction": p.direction,
                    "connected_since": p.connected_since,
                    "bytes_sent": p.bytes_sent,
                    "bytes_received": p.bytes_received,
                    "height": None if claim is None else claim.height,
                }
            )
        return {
            "listening": True,
            "listen": str(res.config.p2p.listen),
            "peers": peers,
            "peer_count": len(peers),
            "bytes_sent_by_channel": {
                CHANNEL_NAMES[c]: v for c, v in stats.bytes_sent_by_channel.items()
            },
            "bytes_received_by_channel": {
                CHANNEL_NAMES[c]: v for c, v in stats.bytes_received_by_channel.items()
            },
        }
