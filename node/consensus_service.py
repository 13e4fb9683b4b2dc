"""The trio shell around the consensus driver: one task, one fair inbox, effects performed in order.

All decisions are the driver's (node/driver.py), which the simulator runs too;
this module only moves bytes and time in and effects out:

- Peers' consensus, evidence and block sync messages wait in one inbox with a
  share per peer (`PEER_EVENTS_BYTES_MAX` and `PEER_EVENTS_MAX` each, and a
  total), taken round-robin so that one busy peer cannot starve the others.
  Policy when a share or the total is full: drop the message, count it, and
  tell the network to forget its digest so the next copy (gossip brings it
  from other peers) is delivered again.
- One task owns the driver: it takes the next due timer or inbox message,
  calls the driver, and performs the effects in order. Signing syncs the WAL
  and asks the durable sign state in a worker thread, so a signature never
  leaves before the record that allows it is on disk; validation, building
  and applying run on the chain in worker threads, holding the chain lock.
- A store or WAL failure stops the node (it cannot go on safely); a
  committed block this node cannot apply means its state diverged: it stops
  rather than fork.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import trio

from consensus.attack import AttackCheck, AttackInvalid
from consensus.types import Block, Commit, Evidence, LightClientAttackEvidence
from consensus.validation import BlockInvalid
from network import BLOCKSYNC, CONSENSUS
from node.clock import now_ms
from node.driver import CLIENT_PEER, Driver
from node.effects import (
    AnnounceVoterState,
    Apply,
    Build,
    DriverConfig,
    Effect,
    Gossip,
    Log,
    Penalise,
    Send,
    ServeBlocks,
    ServeDecided,
    Sign,
    StopSigning,
    Validate,
    VerifySynced,
)
from node.logging import get_logger
from node.messages import (
    TAG_DECIDED,
    TAG_SYNC_BLOCK,
    DecidedMsg,
    EvidenceMsg,
    Message,
    ProposalMsg,
    VoterStateMsg,
    encode_message,
    stored_block_message,
    voter_state_sign_bytes,
)
from node.metrics import PulledSample
from node.resources import Resources
from node.signstate import DoubleSignRefused, SignStateError
from node.storage import StorageError
from node.wal import WALError

log = get_logger(__name__)

# The inbox: a share per peer and a total, by count and by bytes (a proposal
# carries a block). 16 MiB per peer holds a few blocks of the largest size;
# 64 MiB in all. Policy when full: drop (counted; the digest is forgotten so
# another copy is delivered).
PEER_EVENTS_MAX = 1024
PEER_EVENTS_BYTES_MAX = 16 * 1024 * 1024
INBOX_EVENTS_MAX = 8192
INBOX_BYTES_MAX = 64 * 1024 * 1024


class FairInbox:
    """Peers' messages for the driver: a share per peer, taken round-robin.

    `put` refuses (returns False) when the peer's share or the total is full,
    by count or by bytes; the caller counts the drop. No peer can take more
    than its share, so one flooding peer delays only its own messages.
    """

    def __init__(
        self,
        *,
        per_peer_max: int = PEER_EVENTS_MAX,
        per_peer_bytes_max: int = PEER_EVENTS_BYTES_MAX,
        total_max: int = INBOX_EVENTS_MAX,
        total_bytes_max: int = INBOX_BYTES_MAX,
    ) -> None:
        self.per_peer_max = per_peer_max
        self.per_peer_bytes_max = per_peer_bytes_max
        self.total_max = total_max
        self.total_bytes_max = total_bytes_max
        self._queues: dict[str, collections.deque[tuple[Message, bytes, bytes]]] = {}
        self._bytes_by_peer: dict[str, int] = {}
        self._order: collections.deque[str] = collections.deque()  # peers with messages
        self.count = 0
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self._order)

    def put(self, peer: str, msg: Message, payload: bytes, digest: bytes = b"") -> bool:
        """Queue `msg` with its bytes and their SHA-256 (`digest`, b"" if not computed)."""
        size = len(payload)
        queue = self._queues.get(peer)
        if (
            self.count >= self.total_max
            or self.bytes + size > self.total_bytes_max
            or (queue is not None and len(queue) >= self.per_peer_max)
            or self._bytes_by_peer.get(peer, 0) + size > self.per_peer_bytes_max
        ):
            return False
        if queue is None:
            queue = self._queues[peer] = collections.deque()
        if not queue:
            self._order.append(peer)
        queue.append((msg, payload, digest))
        self._bytes_by_peer[peer] = self._bytes_by_peer.get(peer, 0) + size
        self.count += 1
        self.bytes += size
        return True

    def drop_peer(self, peer: str) -> None:
        """Forget everything queued from `peer` (it was found faulty)."""
        queue = self._queues.pop(peer, None)
        if queue is None:
            return
        self.count -= len(queue)
        self.bytes -= self._bytes_by_peer.pop(peer)
        self._order.remove(peer)

    def take(self) -> tuple[str, Message, bytes, bytes] | None:
        """The next message with its bytes and digest, round-robin over the peers."""
        if not self._order:
            return None
        peer = self._order.popleft()
        queue = self._queues[peer]
        msg, payload, digest = queue.popleft()
        size = len(payload)
        self.count -= 1
        self.bytes -= size
        if queue:
            self._order.append(peer)
            self._bytes_by_peer[peer] -= size
        else:
            del self._queues[peer]
            del self._bytes_by_peer[peer]
        return peer, msg, payload, digest


class ConsensusService:
    name = "consensus"

    def __init__(
        self, res: Resources, driver_config: DriverConfig, stop: Callable[[str], None]
    ) -> None:
        """`stop(reason)` begins the node's clean shutdown (store, WAL or state failures)."""
        self.res = res
        self._request_stop = stop
        sign_state = res.sign_state
        self.driver = Driver(
            state=res.chain.state,
            validator_address=res.validator_address,
            can_sign=sign_state is not None,
            last_signed=None if sign_state is None else sign_state.last,
            wal=res.wal,
            config=driver_config,
            validators_at=res.store.load_validators,
            commit_at=res.store.load_commit,
            now=trio.current_time(),
            txs_waiting=lambda: len(res.mempool) > 0,
        )
        self.inbox = FairInbox()
        self._wakeup = trio.Event()
        self._mode = self.driver.mode
        self._last_round = 0
        self._txs_arrived = False
        self.dropped_events = 0
        # The peer message being handled, its bytes and their digest: the driver
        # relays those very bytes, and the network need not hash them again.
        self._handling: tuple[bytes, bytes] = (b"", b"")
        res.metrics.add_source(self._pulled_samples)

    # ------------------------------------------------------------ inbox

    def submit_from_peer(self, peer: str, msg: Message, payload: bytes, digest: bytes) -> bool:
        """Queue one decoded peer message; False (dropped, counted) when its share is full."""
        if not self.inbox.put(peer, msg, payload, digest):
            self.dropped_events += 1
            if digest:
                self.res.net.forget(digest)  # another copy may be delivered, and taken
            return False
        self._wakeup.set()
        return True

    # ------------------------------------------------------------ the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        driver = self.driver
        started = False
        try:
            await self._perform(driver.start(trio.current_time()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_txs)
                task_status.started()
                started = True
                await self._loop()
        except* WALError as group:
            if not started:
                raise  # the node does not start: `start` says why in one line
            # A full disk, say: the driver logs every message before it steps on it,
            # so without its WAL this node can take no further part.
            self._stop("consensus WAL unwritable", group.exceptions[0])
        await trio.sleep_forever()  # until the node, asked to stop, cancels this

    async def _watch_txs(self) -> None:
        """Wake the task when transactions are admitted while a height waits for them."""
        while True:
            self.res.txs_admitted = trio.Event()
            await self.res.txs_admitted.wait()
            if self.driver.waiting_for_txs:
                self._txs_arrived = True
                self._wakeup.set()

    async def _loop(self) -> None:
        driver = self.driver
        while True:
            deadline = driver.next_deadline()
            if not self.inbox and not self._txs_arrived:
                self._wakeup = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
            now = trio.current_time()
            if self._txs_arrived:
                self._txs_arrived = False
                await self._perform(driver.on_txs(now))
            if driver.next_deadline() <= now:
                driver.on_peers([p.node_id for p in self.res.net.peers()], now)
                await self._perform(driver.on_time(now))
            item = self.inbox.take()
            if item is not None:
                peer, msg, payload, digest = item
                if (
                    isinstance(msg, ProposalMsg | DecidedMsg)
                    and len(msg.block.txs) > 64
                    and msg.block.height == driver.state.last_height + 1
                ):
                    # Hashing a large block's body (tens of ms) happens off the event
                    # loop; the block remembers the answer for the driver's check. A
                    # block of another height is not hashed: the driver has no use for it.
                    await trio.to_thread.run_sync(msg.block.body_error)
                elif isinstance(msg, EvidenceMsg):
                    await self._verify_light_attack_off_loop(msg.evidence)
                self._handling = (payload, digest)
                try:
                    effects = driver.on_message(peer, msg, payload, trio.current_time())
                    await self._perform(effects)
                finally:
                    self._handling = (b"", b"")
            if driver.mode != self._mode:
                self._mode = driver.mode
                log.info(
                    "mode changed",
                    mode=driver.mode,
                    reason=driver.mode_reason,
                    height=self.res.chain.state.last_height,
                )
            self._progress_metrics()

    async def _verify_light_attack_off_loop(self, evidence: Evidence) -> None:
        """Judge a light-client attack in a worker thread: the driver's screen (hashing
        a set of up to 1,000), then, only if it passes, the signatures (up to one per
        validator). The driver and the evidence remember the answers for the driver's
        own call. Anything else is left to the driver."""
        if isinstance(evidence, LightClientAttackEvidence):
            await trio.to_thread.run_sync(self._prejudge, evidence)

    def _prejudge(self, evidence: LightClientAttackEvidence) -> None:
        """In a worker thread, while the loop awaits it (the driver does not move)."""
        driver = self.driver
        if driver.is_known_evidence(evidence) or driver.evidence_refusal(evidence) is not None:
            return
        if not isinstance(driver.screen_light_attack(evidence), AttackInvalid):
            evidence.signature_error(driver.chain_id)

    async def submit_evidence(self, evidence: Evidence) -> str | None:
        """Evidence a client sent (node/rpc.py): None if it is new and valid, and queued for
        the driver to pool and gossip; else why not ("known: ...", "busy: ...", or the
        failed check). Signatures are verified off the event loop, after the cheap checks."""
        driver = self.driver
        if driver.is_known_evidence(evidence):
            return "known: this evidence (or another of the same attack) is pending or committed"
        if isinstance(evidence, LightClientAttackEvidence):
            # Refused before: the same answer for a hash lookup, not the checks again.
            refusal = driver.evidence_refusal(evidence)
            if refusal is not None:
                return refusal
            # In a worker thread: the screen hashes a set of up to 1,000 validators. It
            # reads the driver's state once and the store; the driver may move meanwhile
            # (it judges the evidence again at its own height).
            screened = await trio.to_thread.run_sync(driver.screen_light_attack, evidence)
            if isinstance(screened, AttackInvalid):
                if screened.check not in (AttackCheck.HEIGHT, AttackCheck.TOO_OLD):
                    driver.refuse_light_attack(evidence, str(screened))
                return str(screened)
            error = await trio.to_thread.run_sync(evidence.signature_error, driver.chain_id)
            if error is not None:
                refusal = f"{AttackCheck.SIGNATURE.value}: {error}"
                driver.refuse_light_attack(evidence, refusal)
                return refusal
        else:
            validators = self.res.store.load_validators(evidence.height)
            if validators is None or evidence.height > driver.state.last_height:
                return f"height: {evidence.height} is not committed here"
            reason = evidence.verify(driver.chain_id, validators)
            if reason is not None:
                return f"duplicate vote: {reason}"
        msg = EvidenceMsg(evidence)
        if not self.inbox.put(CLIENT_PEER, msg, encode_message(msg)):
            self.dropped_events += 1
            return "busy: the consensus inbox is full, try again"
        self._wakeup.set()
        return None

    # ------------------------------------------------------------ effects

    async def _perform(self, effects: Sequence[Effect]) -> None:
        """Perform effects in order; the driver's answers add theirs, performed first."""
        queue = collections.deque(effects)
        while queue:
            effect = queue.popleft()
            more = await self._perform_one(effect)
            queue.extendleft(reversed(more))

    async def _perform_one(self, effect: Effect) -> list[Effect]:
        res = self.res
        net = res.net
        match effect:
            case Send(peer, channel, payload):
                peers = [p.node_id for p in net.peers()] if peer is None else [peer]
                for p in peers:
                    net.send(p, channel, payload)
            case Gossip(channel, payload, exclude):
                handling, digest = self._handling
                known = digest if payload is handling and digest else None
                net.gossip(channel, payload, exclude_peer=exclude, digest=known)
            case Penalise(peer, fault, detail):
                log.warning("peer message refused", peer=peer, fault=fault.value, detail=detail)
                net.report_misbehaviour(peer, fault)
                self.inbox.drop_peer(peer)  # what it sent meanwhile is not worth the work
            case Sign():
                return await self._sign(effect)
            case Validate(block):
                return await self._validate(block)
            case Build():
                return await self._build(effect)
            case Apply(block, commit):
                return await self._apply(block, commit)
            case VerifySynced(block, commit, peer):
                return await self._verify_synced(block, commit, peer)
            case ServeBlocks(peer, height, count):
                self._serve(peer, height, count, TAG_SYNC_BLOCK)
            case ServeDecided(peer, height):
                self._serve(peer, height, 1, TAG_DECIDED)
            case AnnounceVoterState(height, state, until):
                address = res.validator_address
                sign_bytes = voter_state_sign_bytes(
                    res.chain.state.chain_id, address, height, state, until
                )
                signature = res.validator_key.sign(sign_bytes)
                payload = encode_message(VoterStateMsg(address, height, state, until, signature))
                for info in net.peers():
                    net.send(info.node_id, CONSENSUS, payload)
            case StopSigning(reason):
                res.sign_state = None
                res.sign_state_error = reason
            case Log(level, event, fields):
                getattr(log, level)(event, **dict(fields))
        return []

    async def _sign(self, request: Sign) -> list[Effect]:
        res = self.res
        driver = self.driver
        sign_state = res.sign_state
        if sign_state is None:
            # Unreadable since start (this node was a full node then), or stopped.
            log.error(
                "no sign state: this validator stops signing",
                error=res.sign_state_error,
                path=str(res.paths.sign_state),
            )
            driver.stop_signing()
            return []
        try:
            await trio.to_thread.run_sync(res.wal.sync)
        except WALError as e:
            self._stop("consensus WAL unwritable", e)
            return []
        if res.sign_state is not sign_state:
            return []  # signing was stopped meanwhile (a doppelganger was seen)
        try:
            signature = await trio.to_thread.run_sync(
                sign_state.check_and_sign,
                request.height,
                request.round,
                request.step,
                request.sign_bytes,
                res.validator_key.sign,
            )
        except DoubleSignRefused as e:
            log.warning(
                "refused to sign a conflicting message; sending what was signed instead",
                height=request.height,
                round=request.round,
                step=request.step.name,
                reason=str(e),
            )
            return driver.on_signed(request, None, sign_state.last, trio.current_time())
        except SignStateError as e:
            log.error("sign state failed; this validator stops signing", error=str(e))
            res.sign_state = None
            res.sign_state_error = str(e)
            driver.stop_signing()
            return []
        return driver.on_signed(request, signature, None, trio.current_time())

    async def _validate(self, block: Block) -> list[Effect]:
        chain = self.res.chain
        started = trio.current_time()
        async with chain.lock:
            try:
                await trio.to_thread.run_sync(chain.validate, block)
                valid, reason = True, ""
            except BlockInvalid as e:
                # Not the sender's fault: honest peers relay a validly signed
                # proposal before validating its block (Algorithm 1 relays).
                log.warning(
                    "invalid block proposed",
                    height=block.height,
                    proposer=block.header.proposer_address.hex(),
                    reason=str(e),
                )
                valid, reason = False, str(e)
        self.res.metrics.validation_time.observe(trio.current_time() - started)
        return self.driver.on_validated(block.hash, valid, reason, trio.current_time())

    async def _build(self, request: Build) -> list[Effect]:
        res = self.res
        chain = res.chain
        params = chain.state.params
        # The evidence (up to a quarter of the block, node/evidence.py) leaves the rest to txs.
        evidence_bytes = sum(len(e.encode()) for e in request.evidence)
        txs = res.mempool.reap(
            bytes_max=max(0, chain.tx_bytes_budget() - evidence_bytes),
            txs_max=params.block_txs_max,
        )
        block = chain.build(
            txs=txs,
            evidence=request.evidence,
            time_ms=now_ms(),
            proposer_address=res.validator_address,
            last_commit=request.last_commit,
        )
        return self.driver.on_built(request.height, request.round, block, trio.current_time())

    async def _apply(self, block: Block, commit: Commit) -> list[Effect]:
        res = self.res
        try:
            applied = await res.apply_block(block, commit)
            if applied is not None:
                await trio.to_thread.run_sync(res.wal.mark_height_end, block.height)
        except BlockInvalid as e:
            # +2/3 of the voting power committed a block this node cannot apply:
            # its state has diverged from the chain's. Stop rather than fork.
            log.critical(
                "a committed block is invalid here: this node's state diverged; stopping",
                height=block.height,
                reason=str(e),
            )
            self.driver.on_apply_failed(block.height)
            self._request_stop("state diverged from the chain")
            return []
        except (StorageError, WALError) as e:
            # The block is decided: a node that cannot store it cannot go on.
            self.driver.on_apply_failed(block.height)
            self._stop("cannot store a committed block", e)
            return []
        done = block if applied is not None else None
        return self.driver.on_applied(done, res.chain.state, trio.current_time())

    async def _verify_synced(self, block: Block, commit: Commit, peer: str) -> list[Effect]:
        chain = self.res.chain
        # The body's hashes and up to 1,000 signatures: not on the event loop.
        error = await trio.to_thread.run_sync(block.body_error)
        if error is None:
            try:
                async with chain.lock:
                    await trio.to_thread.run_sync(chain.verify_commit, commit, block)
            except BlockInvalid as e:
                error = str(e)
        if error is None:
            self.res.metrics.blocksync_blocks.inc()
        return self.driver.on_synced(block, commit, peer, error, trio.current_time())

    def _serve(self, peer: str, height: int, count: int, tag: int) -> None:
        """Send stored blocks with their certificates as stored: nothing decoded or re-encoded."""
        store = self.res.store
        net = self.res.net
        channel = BLOCKSYNC if tag == TAG_SYNC_BLOCK else CONSENSUS
        for h in range(height, height + count):
            if not net.has_room(peer, channel):
                return  # it would be dropped: do not load it
            block_bytes = store.load_block_bytes(h)
            commit_bytes = store.load_seen_commit_bytes(h)
            if block_bytes is None or commit_bytes is None:
                return
            if not net.send(peer, channel, stored_block_message(tag, block_bytes, commit_bytes)):
                return  # its queue is full: the rest would be dropped too

    def _stop(self, reason: str, error: Exception) -> None:
        log.critical("stopping the node", reason=reason, error=str(error))
        self._request_stop(reason)

    # ------------------------------------------------------------ metrics

    def _progress_metrics(self) -> None:
        driver = self.driver
        m = self.res.metrics
        m.blocksync_syncing.set(1 if driver.mode == "blocksync" else 0)
        m.waiting_for_txs.set(1 if driver.waiting_for_txs else 0)
        peer_max = driver.sync.peer_max(trio.current_time())
        m.peer_max_height.set(peer_max)
        m.blocksync_lag.set(max(0, peer_max - self.res.chain.state.last_height))
        machine = driver.machine
        if machine is None:
            return
        if machine.round != self._last_round:
            if machine.round > self._last_round:
                m.round_changes.inc(machine.round - self._last_round)
            self._last_round = machine.round
        m.round.set(machine.round)

    def _pulled_samples(self) -> list[PulledSample]:
        return [
            PulledSample(
                "archipelago_evidence_pending",
                "Evidence waiting for a block.",
                "gauge",
                (),
                len(self.driver.evidence),
            ),
            PulledSample(
                "archipelago_consensus_dropped_events",
                "Peer consensus messages dropped: inbox full.",
                "counter",
                (),
                self.dropped_events,
            ),
        ]
