"""The one task that owns the consensus state machine (STYLE.md habit 2).

It reads its inputs in order from two bounded inboxes (peers' messages, and
the node's own: timeouts, signed messages fed back, validation results),
writes each input to the WAL before stepping the machine, and performs the
machine's actions:

- SignVote / SignProposal: WAL fsync, then the sign state's durable
  check-and-sign, then broadcast and feed the signed message back. The sign
  state refusing (a conflicting message was signed before a crash) is not an
  error: the machine moves on by its timeouts.
- ScheduleTimeout: one timer heap served by one task, not a task per timer.
- ValidateBlock / BuildBlock / Decide: run on the chain in a worker thread,
  holding the chain lock, so the event loop keeps serving peers and clients.

At start the machine is rebuilt at the next height and the WAL records of
that height are replayed into it, so a restarted validator resumes the round
it was in with the votes it had seen and signed.

The service runs only while the node is in consensus mode; block sync takes
the chain while the node catches up, then hands it back (`core.mode`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from consensus.codec import DecodeError
from consensus.crypto import verify
from consensus.events import (
    Action,
    BlockBuilt,
    BlockValidated,
    Broadcast,
    BuildBlock,
    Decide,
    Event,
    HeightCommitted,
    Misbehaviour,
    ProposalReceived,
    ReportEvidence,
    ScheduleTimeout,
    SignProposal,
    SignVote,
    StartHeight,
    TimeoutFired,
    ValidateBlock,
    VoteReceived,
    decode_event,
    encode_event,
)
from consensus.machine import ConsensusConfig, ConsensusMachine
from consensus.types import Proposal, Vote, proposal_sign_bytes, vote_sign_bytes
from consensus.validation import BlockInvalid
from network import CONSENSUS, EVIDENCE
from network import Misbehaviour as PeerFault
from node.chain import now_ms
from node.logging import get_logger
from node.messages import EvidenceMsg, ProposalMsg, VoteMsg, encode_message
from node.signstate import DoubleSignRefused, SignStateError, SignStep, step_of_vote
from node.storage import StorageError
from node.wal import WALError

if TYPE_CHECKING:
    from node.core import NodeCore

log = get_logger(__name__)

# Peers' proposals and votes waiting for the core. Policy when full: drop the
# message (counted); peers re-send what we lack when our status shows us stuck.
PEER_EVENTS_MAX = 4096
# ... and their bytes: a few blocks of the largest size (the genesis block limit
# is at most 16 MiB); same policy when full.
PEER_EVENTS_BYTES_MAX = 64 * 1024 * 1024
# Received proposals' payloads kept for relaying them unchanged; they are a
# subset of the inbox's bytes until relayed or dropped (cleared when full).
PROPOSAL_PAYLOADS_MAX = 16
# Our own inputs: at most a few timers, one validation and one signed message
# per step are outstanding at once, so this bound is never reached in practice;
# if it were, the put would wait (it is never dropped).
OWN_EVENTS_MAX = 1024
# A validator's vote proves it alive; checked at most this often per validator.
ALIVE_CHECK_INTERVAL_S = 1.0
# Distinct proposals logged to the WAL, remembered to log each once (cleared
# when full: at worst a proposal is logged twice).
LOGGED_PROPOSALS_MAX = 1024
# Own signed messages of the current height, re-sent to peers that stall.
OWN_MESSAGES_MAX = 64
# The doppelganger watch ends early when no block commits for this long: a
# halted chain cannot show whether another instance signs, and waiting longer
# would keep the chain halted if it needs our vote.
DOPPELGANGER_WATCH_S_MAX = 60.0


class ConsensusService:
    name = "consensus"

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        cfg = core.config.consensus
        self.config = ConsensusConfig(
            timeout_propose_ms=cfg.timeout_propose_ms,
            timeout_propose_delta_ms=cfg.timeout_propose_delta_ms,
            timeout_prevote_ms=cfg.timeout_prevote_ms,
            timeout_prevote_delta_ms=cfg.timeout_prevote_delta_ms,
            timeout_precommit_ms=cfg.timeout_precommit_ms,
            timeout_precommit_delta_ms=cfg.timeout_precommit_delta_ms,
            timeout_commit_ms=cfg.timeout_commit_ms,
        )
        self._peer_events: deque[tuple[str, Event, int]] = deque()
        self._peer_bytes = 0
        self._proposal_payloads: dict[bytes, bytes] = {}  # signature -> payload as received
        self._own_events: deque[Event] = deque()
        self._wakeup = trio.Event()
        self.machine: ConsensusMachine | None = None
        self.dropped_events = 0
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._timer_seq = itertools.count()
        self._timer_changed = trio.Event()
        self._sender = ""  # peer whose message is being stepped ("" for our own inputs)
        self.own_messages: list[bytes] = []  # encoded, for re-sending to stalled peers
        self._replayed = False
        self._logged_proposals: set[tuple[int, int, bytes]] = set()
        self.watch_until_height = 0  # doppelganger watch: no signing before this height
        self._watch_deadline = 0.0

    # ------------------------------------------------------------ inputs

    def submit_from_peer(
        self, peer_id: str, event: ProposalReceived | VoteReceived, payload: bytes = b""
    ) -> bool:
        """Queue a peer's message for the core; False (and dropped) when the inbox is full.

        `payload` is the message as it arrived: the inbox is bounded in bytes
        too (a proposal carries a whole block), and a proposal is relayed as
        those bytes rather than encoded again.
        """
        size_bytes = len(payload)
        if self.machine is None:
            return False
        if isinstance(event, VoteReceived):
            address = event.vote.validator_address
            if address == self.core.validator_address:
                self._check_doppelganger(peer_id, event.vote)
            else:
                self._note_alive(event.vote)
        if (
            len(self._peer_events) >= PEER_EVENTS_MAX
            or self._peer_bytes + size_bytes > PEER_EVENTS_BYTES_MAX
        ):
            self.dropped_events += 1
            return False
        self._peer_events.append((peer_id, event, size_bytes))
        if payload and isinstance(event, ProposalReceived):
            if len(self._proposal_payloads) >= PROPOSAL_PAYLOADS_MAX:
                self._proposal_payloads.clear()
            self._proposal_payloads[event.proposal.signature] = payload
        self._peer_bytes += size_bytes
        self._wakeup.set()
        return True

    def _note_alive(self, vote: Vote) -> None:
        """Record that a validator signed something recently (for the doctor's silent list).

        Duplicates count too (a stalled validator re-sends its votes), so the
        signature is checked here, at most once per validator per interval.
        """
        machine = self.machine
        assert machine is not None
        now = trio.current_time()
        last = self.core.validator_last_seen.get(vote.validator_address, -math.inf)
        if now - last < ALIVE_CHECK_INTERVAL_S:
            return
        index = machine.validators.index_of(vote.validator_address)
        if index is None:
            return
        public_key = machine.validators[index].public_key
        if verify(public_key, vote.sign_bytes(machine.chain_id), vote.signature):
            self.core.validator_last_seen[vote.validator_address] = now

    def _submit_own(self, event: Event) -> None:
        assert len(self._own_events) < OWN_EVENTS_MAX, "own inputs are bounded by construction"
        self._own_events.append(event)
        self._wakeup.set()

    def wake(self) -> None:
        """Make the loop look at the node's mode again (block sync wants the chain)."""
        self._wakeup.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.core.wait_mode("consensus")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer_loop)
                await self._run_machine()
                nursery.cancel_scope.cancel()
            self.machine = None
            self._timers.clear()
            self._drain_inboxes()

    # ------------------------------------------------------------ doppelganger

    def _start_watch(self) -> None:
        """At start, watch `doppelganger_heights` heights before signing (unless never signed)."""
        heights = self.core.config.consensus.doppelganger_heights
        sign_state = self.core.sign_state
        if heights == 0 or sign_state is None or sign_state.last.height == 0:
            return
        self.watch_until_height = self.core.chain.state.height + heights
        self._watch_deadline = trio.current_time() + DOPPELGANGER_WATCH_S_MAX
        log.info(
            "watching for another instance of this validator before signing",
            heights=heights,
            until_height=self.watch_until_height,
        )

    @property
    def watching(self) -> bool:
        return self.core.chain.state.height < self.watch_until_height

    def _end_watch_if_due(self, machine: ConsensusMachine) -> None:
        if not self.watch_until_height or machine.own_address is not None:
            return
        timed_out = trio.current_time() >= self._watch_deadline
        if (not self.watching or timed_out) and self.core.can_sign:
            if timed_out and self.watching:
                log.warning(
                    "doppelganger watch ended early: no block committed",
                    waited_s=DOPPELGANGER_WATCH_S_MAX,
                )
            self.watch_until_height = 0
            machine.own_address = self.core.validator_address  # takes effect at this height
            log.info("doppelganger watch passed; signing", height=machine.height)

    def _check_doppelganger(self, peer_id: str, vote: Vote) -> None:
        """A vote with our key that this process did not sign and could not have signed."""
        sign_state = self.core.sign_state
        if sign_state is None:
            return
        last = sign_state.last
        step = step_of_vote(vote.type)
        if (vote.height, vote.round, int(step)) <= last.hrs:
            return  # at or before our own last signature: ours from before a restart
        chain_id = self.core.chain.state.chain_id
        if not verify(
            self.core.validator_key.public_key, vote.sign_bytes(chain_id), vote.signature
        ):
            return  # a forgery, not another instance: the machine scores its sender
        self.core.sign_state = None
        self.core.sign_state_error = (
            f"another instance signs with this validator key (vote at height {vote.height}, "
            f"round {vote.round} received from peer {peer_id}); stop it, then restart this node"
        )
        if self.machine is not None:
            self.machine.own_address = None
        log.critical(
            "doppelganger detected: this node stops signing",
            peer=peer_id,
            height=vote.height,
            round=vote.round,
            type=vote.type.name,
        )

    def _drain_inboxes(self) -> None:
        self._peer_events.clear()
        self._peer_bytes = 0
        self._proposal_payloads.clear()
        self._own_events.clear()

    def _new_machine(self) -> ConsensusMachine:
        chain = self.core.chain
        own = self.core.validator_address if self.core.can_sign and not self.watching else None
        return ConsensusMachine(
            chain_id=chain.state.chain_id,
            height=chain.state.height,
            validators=chain.state.validators,
            schedule=chain.schedule(),
            own_address=own,
            config=self.config,
        )

    async def _run_machine(self) -> None:
        """Step the machine until the node leaves consensus mode."""
        machine = self._new_machine()
        self.machine = machine
        self.own_messages.clear()
        actions: list[Action] = []
        if not self._replayed:
            self._replayed = True
            self._start_watch()
            if self.watching:
                machine.own_address = None
            actions = self._replay(machine)
        if machine.current_step.name == "NEW_HEIGHT":
            self._log(StartHeight(machine.height))
            actions += machine.step(StartHeight(machine.height))
        await self._perform(actions)
        while self.core.mode == "consensus":
            event, sender = await self._next_event()
            if event is None:
                continue
            self._sender = sender
            if self._worth_logging(machine, event, sender):
                self._log(event)
            actions = machine.step(event)
            await self._perform(actions)
            self._sender = ""
            if self.watch_until_height:
                self._end_watch_if_due(machine)
            self.core.on_consensus_progress(machine)

    def _worth_logging(self, machine: ConsensusMachine, event: Event, sender: str) -> bool:
        """Whether a peer's message can change this height's state, so replay needs it.

        Messages for other heights are never replayed into this height's
        machine (next-height ones are re-gossiped after a restart), and a
        proposal already logged this height is not logged twice: so a peer
        cannot fill the WAL with copies of blocks.
        """
        if not sender or not isinstance(event, ProposalReceived | VoteReceived):
            return True
        if event.height != machine.height:
            return False
        if isinstance(event, ProposalReceived):
            key = (machine.height, event.proposal.round, event.proposal.signature)
            if key in self._logged_proposals:
                return False
            if len(self._logged_proposals) >= LOGGED_PROPOSALS_MAX:
                self._logged_proposals.clear()
            self._logged_proposals.add(key)
        return True

    def _log(self, event: Event) -> None:
        try:
            self.core.wal.append(encode_event(event))
        except WALError as e:
            log.critical("cannot write the consensus WAL; stopping", error=str(e))
            self.core.node.request_stop("consensus WAL unwritable")
            raise

    def _replay(self, machine: ConsensusMachine) -> list[Action]:
        """Feed the WAL's records of the current height back into a fresh machine."""
        events: list[Event] = []
        skipped = 0
        for record in self.core.wal.replay_from_last_height():
            try:
                event = decode_event(record)
            except DecodeError as e:
                log.error("unreadable WAL record skipped", error=str(e))
                continue
            height = getattr(event, "height", machine.height)
            if height < machine.height:
                skipped += 1
                continue
            events.append(event)
        if not events:
            return []
        actions = machine.replay(events)
        log.info(
            "resumed from WAL",
            height=machine.height,
            round=machine.round,
            step=machine.current_step.name,
            events=len(events),
            skipped=skipped,
        )
        return actions

    async def _next_event(self) -> tuple[Event | None, str]:
        """Our own inputs first (they unblock the round), then peers', in order."""
        while True:
            if self._own_events:
                return self._own_events.popleft(), ""
            if self._peer_events:
                sender, event, size = self._peer_events.popleft()
                self._peer_bytes -= size
                return event, sender
            if self.core.mode != "consensus":
                return None, ""
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    # ------------------------------------------------------------ actions

    async def _perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Broadcast):
                self._broadcast(action)
            elif isinstance(action, SignVote):
                await self._sign_vote(action)
            elif isinstance(action, SignProposal):
                await self._sign_proposal(action)
            elif isinstance(action, ScheduleTimeout):
                self._schedule(action)
            elif isinstance(action, ValidateBlock):
                await self._validate(action)
            elif isinstance(action, BuildBlock):
                await self._build(action)
            elif isinstance(action, Decide):
                await self._decide(action)
            elif isinstance(action, ReportEvidence):
                self._evidence(action)
            elif isinstance(action, Misbehaviour):
                self._misbehaviour(action)

    def _broadcast(self, action: Broadcast) -> None:
        msg = action.message
        if isinstance(msg, VoteReceived):
            payload = encode_message(VoteMsg(msg.vote))
        else:
            received = self._proposal_payloads.pop(msg.proposal.signature, None)
            payload = received or encode_message(ProposalMsg(msg.proposal, msg.block))
        self.core.net.gossip(CONSENSUS, payload, exclude_peer=self._sender or None)
        if not self._sender and len(self.own_messages) < OWN_MESSAGES_MAX:
            self.own_messages.append(payload)

    async def _sign(
        self, step: SignStep, height: int, round: int, sign_bytes: bytes
    ) -> bytes | None:
        core = self.core
        sign_state = core.sign_state
        if sign_state is None:
            return None
        await trio.to_thread.run_sync(core.wal.sync)
        if core.sign_state is not sign_state:
            return None  # signing was stopped meanwhile (a doppelganger was seen)
        try:
            return await trio.to_thread.run_sync(
                sign_state.check_and_sign,
                height,
                round,
                step,
                sign_bytes,
                core.validator_key.sign,
            )
        except DoubleSignRefused as e:
            log.warning(
                "refused to sign a conflicting message",
                height=height,
                round=round,
                step=step.name,
                reason=str(e),
            )
        except SignStateError as e:
            log.error("sign state failed; this validator stops signing", error=str(e))
            core.sign_state = None
        return None

    async def _sign_vote(self, action: SignVote) -> None:
        machine = self.machine
        assert machine is not None
        index = machine.validators.index_of(self.core.validator_address)
        if index is None:
            return
        sign_bytes = vote_sign_bytes(
            self.core.chain.state.chain_id,
            action.type,
            action.height,
            action.round,
            action.block_hash,
        )
        signature = await self._sign(
            step_of_vote(action.type), action.height, action.round, sign_bytes
        )
        if signature is None:
            return
        vote = Vote(
            action.type,
            action.height,
            action.round,
            action.block_hash,
            self.core.validator_address,
            index,
            signature,
        )
        self._submit_own(VoteReceived(vote))

    async def _sign_proposal(self, action: SignProposal) -> None:
        block_hash = action.block.hash
        sign_bytes = proposal_sign_bytes(
            self.core.chain.state.chain_id,
            action.height,
            action.round,
            action.pol_round,
            block_hash,
        )
        signature = await self._sign(SignStep.PROPOSE, action.height, action.round, sign_bytes)
        if signature is None:
            return
        proposal = Proposal(action.height, action.round, action.pol_round, block_hash, signature)
        log.debug("proposing", height=action.height, round=action.round, txs=len(action.block.txs))
        self._submit_own(ProposalReceived(proposal, action.block))

    async def _validate(self, action: ValidateBlock) -> None:
        chain = self.core.chain
        block = action.block
        started = trio.current_time()
        async with chain.lock:
            try:
                await trio.to_thread.run_sync(chain.validate, block)
                event = BlockValidated(block.hash, True)
            except BlockInvalid as e:
                # Not the sender's fault: honest peers relay a validly signed
                # proposal before validating its block (Algorithm 1 relays).
                log.warning(
                    "invalid block proposed",
                    height=block.height,
                    proposer=block.header.proposer_address.hex(),
                    reason=str(e),
                )
                event = BlockValidated(block.hash, False, str(e))
        self.core.metrics.validation_time.observe(trio.current_time() - started)
        self._submit_own(event)

    async def _build(self, action: BuildBlock) -> None:
        core = self.core
        chain = core.chain
        params = chain.state.params
        txs = core.mempool.reap(bytes_max=chain.tx_bytes_budget(), txs_max=params.block_txs_max)
        evidence = core.evidence.pending(chain.state)
        block = chain.build(
            txs=txs,
            evidence=evidence,
            time_ms=now_ms(),
            proposer_address=core.validator_address,
        )
        self._submit_own(BlockBuilt(action.height, action.round, block))

    async def _decide(self, action: Decide) -> None:
        machine = self.machine
        assert machine is not None
        try:
            applied = await self.core.apply_block(action.block, action.commit)
        except BlockInvalid as e:
            # +2/3 of the voting power committed a block this node cannot apply:
            # its state has diverged from the chain's. Stop rather than fork.
            log.critical(
                "a committed block is invalid here: this node's state diverged; stopping",
                height=action.block.height,
                reason=str(e),
            )
            self.core.node.request_stop("state diverged from the chain")
            return
        except StorageError as e:
            # The block is decided: a node that cannot store it cannot go on.
            log.critical(
                "cannot store a committed block; stopping", height=action.block.height, error=str(e)
            )
            self.core.node.request_stop("cannot store a committed block")
            return
        if applied is None:
            return  # block sync applied this height meanwhile
        await trio.to_thread.run_sync(self.core.wal.mark_height_end, action.block.height)
        self.own_messages.clear()
        self._timers = [t for t in self._timers if t[2].height > action.block.height]
        heapq.heapify(self._timers)
        self._end_watch_if_due(machine)
        self._submit_own(HeightCommitted(action.block.height, self.core.chain.state.validators))

    def _evidence(self, action: ReportEvidence) -> None:
        if self.core.evidence.add(action.evidence):
            self.core.metrics.evidence.inc()
            log.warning(
                "equivocation detected",
                validator=action.evidence.validator_address.hex(),
                height=action.evidence.height,
            )
            self.core.net.gossip(EVIDENCE, encode_message(EvidenceMsg(action.evidence)))

    def _misbehaviour(self, action: Misbehaviour) -> None:
        log.warning(
            "peer message rejected",
            peer=self._sender,
            height=action.height,
            round=action.round,
            reason=action.reason,
        )
        # Only what the sender could have checked before relaying is its fault:
        # a second proposal in a round is the proposer's, and honest peers relay
        # whichever one they saw first.
        if self._sender and "two proposals" not in action.reason:
            fault = (
                PeerFault.INVALID_SIGNATURE
                if "signature" in action.reason
                else PeerFault.PROTOCOL_VIOLATION
            )
            self.core.net.report_misbehaviour(self._sender, fault)

    # ------------------------------------------------------------ timers

    def _schedule(self, action: ScheduleTimeout) -> None:
        deadline = trio.current_time() + action.duration_ms / 1000
        event = TimeoutFired(action.height, action.round, action.step)
        heapq.heappush(self._timers, (deadline, next(self._timer_seq), event))
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            self._timer_changed = trio.Event()
            if not self._timers:
                await self._timer_changed.wait()
                continue
            deadline = self._timers[0][0]
            with trio.move_on_at(deadline):
                await self._timer_changed.wait()
                continue
            while self._timers and self._timers[0][0] <= trio.current_time():
                _, _, event = heapq.heappop(self._timers)
                self._submit_own(event)
