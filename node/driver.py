"""The consensus driver: everything between the network and the pure machine, with no I/O.

The daemon (node/consensus_service.py, a thin trio shell) and the simulator
(sim/engine.py) run this very class, so every adversarial simulation
exercises the node's own logic around the state machine. It reads no clock,
socket or file: time comes in as `now` (seconds, monotonic), peers' messages
come in decoded with their bytes, and whatever it wants done goes out as
effects (send, sign, validate, build, apply, serve, penalise) whose results
come back as calls. The write-ahead log is the one port it writes to
directly (`WalPort.append` only hands bytes to the kernel; the shell makes
the log durable before a signature leaves, see `Sign`).

What it does, and the rule for each:

- **Edge.** A peer's proposal, vote or decided block is screened by the
  machine (`ConsensusMachine.screen`) before anything else: only a message
  that changes this height's state is written to the WAL and stepped; one no
  correct node would have relayed is the sender's fault (`Penalise`). Votes
  and proposals for the next height are verified against the next height's
  validator set and proposer before they are kept, a bounded number per
  signer, and stepped once the height starts.
- **WAL before step.** Each input is appended before the machine sees it;
  a peer's proposal or vote is logged as the bytes that arrived (the WAL's
  layout for them is the wire's), and relayed as those bytes.
- **Sign gate.** Signing is an effect; the shell syncs the WAL, asks the
  durable sign state, and answers `on_signed`. A refusal at the very
  (height, round, step) we signed before a restart returns what was signed
  then, which is fed back and sent: the vote this validator did cast is never
  withheld. Own messages of the height are kept and re-sent while the height
  does not move.
- **One machine per height.** A new machine is built from the chain state
  after each committed block, whatever committed it (consensus or block
  sync), and always restored from the WAL records of its height; no mode
  switch happens within a height, so none can make a node forget its lock.
- **Block sync.** Peers' height claims only choose whom to ask for blocks
  (node/syncplan.py); an answer is applied only after its certificate
  verifies against our validator set, and only an applied block moves the
  node into block sync mode. A claim alone changes nothing.
- **Doppelganger watch.** A validator that signed before starts without
  signing and watches `watch_heights` committed heights at the chain's tip
  (or until `watch_halt_s` after the later of the watch's start at the tip
  and the last committed block: a halted chain cannot show another instance
  and may need our vote) for a validly signed vote of its own key that it
  did not sign; one stops signing for good. When the
  watch ends, the machine performs the current round's due steps
  (`ConsensusMachine.start_signing`).
- **Complete certificates.** Precommits for the decided block that arrive
  after the decision are verified and added to the certificate the next
  block carries (CometBFT gathers them during timeout_commit the same way).

The module is longer than the house's 600 lines on purpose: it is one class,
the state of the node's one consensus task, whose rules call each other (a
tick drives block sync, re-sends and the voter state; an applied block ends
the watch, completes the certificate and starts the next machine). What it
asks for and is built with is node/effects.py.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable

from consensus.attack import (
    AttackCheck,
    AttackInvalid,
    ChainView,
    Screened,
    screen_light_attack,
)
from consensus.codec import DecodeError, decode
from consensus.crypto import verify
from consensus.events import (
    Action,
    BlockBuilt,
    BlockValidated,
    Broadcast,
    BuildBlock,
    CommitReceived,
    Decide,
    Event,
    Fault,
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
from consensus.machine import ConsensusMachine
from consensus.state import ChainState
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    DuplicateVoteEvidence,
    Evidence,
    LightClientAttackEvidence,
    Proposal,
    ValidatorSet,
    Vote,
    VoteType,
    proposal_sign_bytes,
    vote_sign_bytes,
)
from network import BLOCKSYNC, CONSENSUS, EVIDENCE
from network import Misbehaviour as PeerFault
from node.effects import (
    AnnounceVoterState,
    Apply,
    Build,
    DriverConfig,
    DriverStatus,
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
    WalPort,
)
from node.evidence import EvidencePool
from node.messages import (
    VOTER_CATCHING_UP,
    VOTER_NOT_SIGNING,
    VOTER_WATCHING,
    DecidedMsg,
    EvidenceMsg,
    Message,
    ProposalMsg,
    StatusMsg,
    SyncBlockMsg,
    SyncNoneMsg,
    SyncRequestMsg,
    SyncStatusMsg,
    VoteMsg,
    VoterStateMsg,
    encode_message,
)
from node.signstate import SignedRecord, SignStep, step_of_vote
from node.syncplan import SyncPlanner

__all__ = ["ANNOUNCE_INTERVAL_S", "RESEND_AFTER_S", "Driver"]

# Status to every peer this often; the sync planner runs on the same tick.
ANNOUNCE_INTERVAL_S = 1.0
# A height without progress for this long makes us re-send our own messages.
RESEND_AFTER_S = 3.0
# Own signed messages of the current height kept for re-sending (a height has
# a proposal and two votes per round; beyond this the oldest are not re-sent).
OWN_MESSAGES_MAX = 64
# Next-height messages kept until the height starts: rounds 0..N-1 only, one
# proposal per round, one vote per (validator, round, type); each verified
# first, so a forger can take none of the genuine messages' places.
NEXT_HEIGHT_ROUNDS = 4
# Block sync windows: in consensus mode a peer's claim is checked with a few
# heights; in block sync mode up to 128 heights are in flight (memory: that
# many blocks).
SYNC_WINDOW_CONSENSUS_BLOCKS = 16
SYNC_WINDOW_BLOCKS = 128


# Timer kinds on the driver's heap.
_TIMEOUT, _START, _TICK, _WATCH = range(4)


def _fault_of(fault: Fault) -> PeerFault:
    return (
        PeerFault.INVALID_SIGNATURE if fault == Fault.BAD_SIGNATURE else PeerFault.INVALID_MESSAGE
    )


# The origin the API gives evidence a client submitted (node/rpc.py verified it
# already; never penalised, and excluded from no peer's gossip).
CLIENT_PEER = "client"
# Checks that depend on where our chain is, not on the sender's honesty: such
# evidence is ignored (it may be valid later, or was once), not penalised.
_ATTACK_NOT_JUDGED = frozenset({AttackCheck.HEIGHT, AttackCheck.TOO_OLD})


class Driver:
    """One node's consensus, block sync and evidence logic. See the module docstring."""

    machine_class: type[ConsensusMachine] = ConsensusMachine  # the simulator plants others

    def __init__(
        self,
        *,
        state: ChainState,
        validator_address: bytes,
        can_sign: bool,
        last_signed: SignedRecord | None,
        wal: WalPort,
        config: DriverConfig,
        validators_at: Callable[[int], ValidatorSet | None],
        now: float,
        txs_waiting: Callable[[], bool] = lambda: True,
        commit_at: Callable[[int], Commit | None] | None = None,
    ) -> None:
        """`txs_waiting()`: whether the mempool holds transactions (read only when
        `config.create_empty_blocks` is false); `commit_at(h)`: the canonical
        certificate of a committed height, to judge light-client-attack evidence
        (without it such evidence is ignored)."""
        self.state = state
        self.chain_id = state.chain_id
        self.validator_address = validator_address
        self.can_sign = can_sign
        self.config = config
        self._wal = wal
        self._validators_at = validators_at
        self._commit_at = commit_at
        self._screened: tuple[LightClientAttackEvidence, int, Screened | AttackInvalid] | None = (
            None
        )
        self._txs_waiting = txs_waiting
        self._last_block_empty = False  # the last block applied here had no txs nor evidence
        self._peer_started = 0  # the last height of which a peer's message was stepped here
        self.waiting_for_txs = False
        self._last_signed = (0, 0, 0) if last_signed is None else last_signed.hrs
        self.machine: ConsensusMachine | None = None
        self.mode = "consensus"
        self.mode_reason = "starting"
        self.sync = SyncPlanner(SYNC_WINDOW_BLOCKS)
        self.evidence = EvidencePool()
        self.own_messages: list[bytes] = []
        self._timers: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._now = now
        self._sender: str | None = None  # peer whose message is being stepped
        # The input being stepped and its bytes (as received, or as logged): the
        # machine relays that very event, and the relay sends these bytes.
        self._stepping: tuple[Event, bytes] | None = None
        self._next: dict[
            tuple[int, int, bytes], tuple[ProposalReceived | VoteReceived, bytes, str]
        ] = {}
        self._next_checker: ConsensusMachine | None = None
        self._applying = 0  # height of the Apply in flight (0: none)
        # (height, round, hash) of the last decision, and a decision waiting for
        # a synced block's apply to finish (one apply at a time).
        self._decided: tuple[int, int, bytes] | None = None
        self._waiting_decision: tuple[Block, Commit] | None = None
        self._extra_sigs: dict[int, CommitSig] = {}
        self._last_commit: Commit | None = None
        self._height_since = now
        self._last_commit_at = now
        self._decided_sent: dict[str, int] = {}
        self.watch_until_height = 0
        self._watch_halt_at = 0.0
        self._watch_since = now  # when the watch began at the tip (start, or out of block sync)
        self._stopped_signing = not can_sign
        self._caught_up = False  # stepping a peer's certificate (a height not seen live)
        self._decided_live = False  # the last decision came from votes we counted
        self.alive: dict[bytes, float] = {}  # validator address -> when a valid vote arrived
        # Validators that say (signed) why they do not vote: address -> (state, until, when).
        self.voter_states: dict[bytes, tuple[int, int, float]] = {}

    # ------------------------------------------------------------ status

    def status(self) -> DriverStatus:
        return DriverStatus(
            self.mode,
            self.mode_reason,
            self.machine is not None and self.machine.own_address is not None,
            self.watch_until_height,
            self._watch_halt_at,
            self.sync.peer_max(self._now),
            self.waiting_for_txs,
        )

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else float("inf")

    # ------------------------------------------------------------ start

    def start(self, now: float) -> list[Effect]:
        """Begin: the doppelganger watch if due, then the next height restored from the WAL."""
        self._now = now
        out: list[Effect] = []
        if self.config.watch_heights and self.can_sign and self._last_signed[0] > 0:
            self.watch_until_height = self.state.last_height + 1 + self.config.watch_heights
            self._watch_since = now
            self._arm_watch()
            out.append(
                Log(
                    "info",
                    "watching for another instance of this validator before signing",
                    (
                        ("heights", self.config.watch_heights),
                        ("until_height", self.watch_until_height),
                    ),
                )
            )
        self._schedule(now + ANNOUNCE_INTERVAL_S, _TICK, None)
        self._enter_height(out, restored=True)
        return out

    def _signs_now(self) -> bool:
        return not self._stopped_signing and not self.watch_until_height

    def _enter_height(self, out: list[Effect], *, restored: bool = False) -> None:
        """Build the machine of the height after the committed state and restore it from the WAL.

        The WAL yields the records written after the last completed height;
        those of this height are replayed (a restart, or a height this node
        ran before block sync took over). The commit timeout has passed when
        the records show the height started; else round 0 starts after it.
        """
        s = self.state
        height = s.last_height + 1
        own = self.validator_address if self._signs_now() else None
        checker = self._next_checker
        if (
            checker is not None
            and checker.height == height
            and checker.validators == s.validators
            and checker.schedule == s.schedule
        ):
            machine = checker  # it verified the kept messages; it has stepped nothing
            machine.own_address = own
        else:
            machine = self.machine_class(
                chain_id=self.chain_id,
                height=height,
                validators=s.validators,
                schedule=s.schedule,
                own_address=own,
                config=self.config.consensus,
            )
        self.machine = machine
        self.own_messages = []
        self._height_since = self._now
        self._timers = [t for t in self._timers if t[2] != _TIMEOUT and t[2] != _START]
        heapq.heapify(self._timers)
        events = self._replay_records(height)
        self._perform(machine.replay(events), out)
        if events:
            out.append(
                Log(
                    "info",
                    "resumed from WAL",
                    (
                        ("height", height),
                        ("round", machine.round),
                        ("step", machine.current_step.name),
                        ("events", len(events)),
                    ),
                )
            )
        if machine.current_step.name == "NEW_HEIGHT":
            delay_ms = 0 if restored else self.config.consensus.timeout_commit_ms
            if self.config.consensus.skip_timeout_commit:
                delay_ms = 0
            self._schedule(self._now + delay_ms / 1000, _START, height)
        self._next_checker = self._checker_for_next()
        if self.mode == "consensus":
            # Peers that are ahead answer a status with the blocks we lack: tell them now.
            out.append(Send(None, CONSENSUS, encode_message(StatusMsg(height, 0))))
        pending = sorted(self._next.items(), key=lambda kv: kv[0][:2])
        self._next.clear()
        for (h, _, _), (event, payload, peer) in pending:
            if h == height and self.mode == "consensus":
                if isinstance(event, VoteReceived):
                    self._on_vote(peer, event.vote, payload, out)  # our key's: a doppelganger
                else:
                    self._on_peer_consensus(peer, event, payload, out)

    def _replay_records(self, height: int) -> list[Event]:
        """The WAL's records of `height` (written after the last completed height)."""
        events: list[Event] = []
        for record in self._wal.replay_from_last_height():
            try:
                event = decode_event(record)
            except DecodeError:
                continue  # a record of a retired kind
            if getattr(event, "height", height) == height:
                events.append(event)
        return events

    def _checker_for_next(self, ahead: int = 2) -> ConsensusMachine:
        """A machine of height last + `ahead` (1 or 2), used only to verify that height's
        messages before keeping them."""
        s = self.state
        validators = s.next_validators if ahead == 2 else s.validators
        return self.machine_class(
            chain_id=self.chain_id,
            height=s.last_height + ahead,
            validators=validators,
            schedule=s.schedule.advance(validators) if ahead == 2 else s.schedule,
            own_address=None,
            config=self.config.consensus,
        )

    # ------------------------------------------------------------ time

    def _schedule(self, at: float, kind: int, data: object) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), kind, data))

    def on_time(self, now: float) -> list[Effect]:
        """Fire every timer due at `now`."""
        self._now = now
        out: list[Effect] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, data = heapq.heappop(self._timers)
            if kind == _TICK:
                self._tick(out)
                self._schedule(now + ANNOUNCE_INTERVAL_S, _TICK, None)
            elif kind == _WATCH:
                self._check_watch(out)
            elif self.mode != "consensus":
                continue  # block sync owns the chain; the next machine sets its own timers
            elif kind == _START:
                assert isinstance(data, int)
                if not self._holds_start(data, now):
                    self.waiting_for_txs = False
                    self._own_input(StartHeight(data), out)
            else:
                assert isinstance(data, TimeoutFired)
                self._own_input(data, out)
        return out

    def _holds_start(self, height: int, now: float) -> bool:
        """Whether round 0 of `height` waits for transactions (create_empty_blocks = false).

        As in CometBFT, only after an empty block: a block with transactions is
        followed by one more, whose header carries the app hash and results they
        made. Peers' messages of the height end the wait (`_step_peer`).
        """
        cfg = self.config
        machine = self.machine
        if (
            cfg.create_empty_blocks
            or not self._last_block_empty
            or machine is None
            or machine.height != height
            or machine.current_step.name != "NEW_HEIGHT"
            or self._peer_started == height
            or self._txs_waiting()
        ):
            return False
        interval = cfg.empty_blocks_interval_s
        if interval and now - self._last_commit_at >= interval:
            return False
        self.waiting_for_txs = True
        if interval:
            self._schedule(self._last_commit_at + interval, _START, height)
        return True

    def on_txs(self, now: float) -> list[Effect]:
        """Transactions were admitted to the mempool: a height waiting for them starts."""
        self._now = now
        out: list[Effect] = []
        if self.waiting_for_txs and self.mode == "consensus":
            self._start_held(out)
        return out

    def _start_held(self, out: list[Effect]) -> None:
        machine = self.machine
        assert machine is not None
        self.waiting_for_txs = False
        self._timers = [t for t in self._timers if t[2] != _START]
        heapq.heapify(self._timers)
        self._own_input(StartHeight(machine.height), out)

    # ------------------------------------------------------------ peers

    def on_peers(self, peers: Iterable[str], now: float) -> None:
        """The connected peers now: forget whatever concerned any other."""
        self._now = now
        current = set(peers)
        for gone in self.sync.peers() - current:
            self.sync.forget(gone)
        for gone in set(self._decided_sent) - current:
            del self._decided_sent[gone]

    def screen_proposal(self, proposal: Proposal) -> Fault | bool:
        """Whether a peer's proposal is worth decoding its block: signed by its round's proposer
        of this height or the next, and new. For the reactor, before it decodes a block."""
        machine = self.machine
        if machine is None or self.mode != "consensus":
            return False
        if proposal.height == machine.height + 1:
            checker = self._next_checker
            if checker is None or proposal.round >= NEXT_HEIGHT_ROUNDS:
                return False
            return checker.screen_proposal(proposal)
        return machine.screen_proposal(proposal)

    def on_message(self, peer: str, msg: Message, payload: bytes, now: float) -> list[Effect]:
        """One decoded message from `peer` (`payload`: its bytes as they arrived)."""
        self._now = now
        out: list[Effect] = []
        match msg:
            case VoteMsg(vote):
                self._on_vote(peer, vote, payload, out)
            case ProposalMsg(proposal, block):
                self._on_peer_consensus(peer, ProposalReceived(proposal, block), payload, out)
            case DecidedMsg(block, commit):
                if self.mode == "consensus" and self.machine is not None:
                    if block.height == self.machine.height:
                        self._on_peer_consensus(peer, CommitReceived(block, commit), b"", out)
            case StatusMsg(height, _):
                self._help_behind(peer, height, out)
            case VoterStateMsg():
                self._on_voter_state(peer, msg, out)
            case EvidenceMsg(evidence):
                self._on_evidence(peer, evidence, payload, out)
            case SyncStatusMsg(base, height):
                self.sync.on_status(peer, base, height, now)
            case SyncRequestMsg(height, count):
                self._serve(peer, height, count, out)
            case SyncBlockMsg(block, commit):
                if self.sync.on_block(peer, block, commit):
                    self._apply_synced(out)
            case SyncNoneMsg(height):
                if self.sync.on_none(peer, height, now):
                    out.append(
                        Penalise(
                            peer, PeerFault.PROTOCOL_VIOLATION, f"no block {height} it claimed"
                        )
                    )
        return out

    def _on_vote(self, peer: str, vote: Vote, payload: bytes, out: list[Effect]) -> None:
        if self.mode == "blocksync":
            self._on_vote_syncing(peer, vote, payload, out)
            return
        machine = self.machine
        if machine is None:
            return
        if self._collect_late_precommit(peer, vote, out):
            return
        if vote.validator_address == self.validator_address and self._doppelganger(peer, vote, out):
            return
        self._on_peer_consensus(peer, VoteReceived(vote), payload, out)

    def _on_peer_consensus(
        self,
        peer: str,
        event: ProposalReceived | VoteReceived | CommitReceived,
        payload: bytes,
        out: list[Effect],
    ) -> None:
        machine = self.machine
        if machine is None or self.mode != "consensus":
            return
        height = event.commit.height if isinstance(event, CommitReceived) else event.height
        if height == machine.height + 1 and not isinstance(event, CommitReceived):
            self._keep_next(peer, event, payload, out)
            return
        if isinstance(event, ProposalReceived) and not self._fits(event, payload):
            out.append(Penalise(peer, PeerFault.INVALID_MESSAGE, Fault.OVERSIZED_BLOCK.value))
            return
        verdict = machine.screen(event)
        if isinstance(verdict, Fault):
            out.append(Penalise(peer, _fault_of(verdict), verdict.value))
            return
        if isinstance(event, VoteReceived) and (verdict or machine.has_vote(event.vote)):
            # A validly signed vote, new or re-sent: its validator is alive.
            self.alive[event.vote.validator_address] = self._now
        if verdict:
            self._step_peer(peer, event, payload, out)

    def _fits(self, event: ProposalReceived, payload: bytes) -> bool:
        # The block is at most the chain's limit; the rest of a message is small.
        return len(payload) <= self.state.params.block_bytes_max + 64 * 1024

    def _step_peer(self, peer: str, event: Event, payload: bytes, out: list[Effect]) -> None:
        """Log and step a screened peer message; relay it as received if the machine says so."""
        machine = self.machine
        assert machine is not None
        if not isinstance(event, CommitReceived):
            # A peer works on this height: it had transactions, or its interval passed.
            self._peer_started = machine.height
            if self.waiting_for_txs:
                self._start_held(out)
        # A proposal's and a vote's WAL record is their wire message, byte for byte.
        payload = payload or encode_event(event)
        self._wal.append(payload)
        self._sender = peer
        self._caught_up = isinstance(event, CommitReceived)
        self._stepping = (event, payload)
        try:
            self._perform(machine.step(event), out)
        finally:
            self._sender = None
            self._caught_up = False
            self._stepping = None

    def _keep_next(
        self, peer: str, event: ProposalReceived | VoteReceived, payload: bytes, out: list[Effect]
    ) -> None:
        """Verify a next-height message against that height's set, keep a bounded number."""
        checker = self._next_checker
        if checker is None:
            return
        if isinstance(event, VoteReceived):
            v = event.vote
            if v.round >= NEXT_HEIGHT_ROUNDS:
                return
            key = (v.height, v.round, bytes([v.type]) + v.validator_address)
        else:
            p = event.proposal
            if p.round >= NEXT_HEIGHT_ROUNDS or not self._fits(event, payload):
                return
            key = (p.height, p.round, b"")
        if key in self._next:
            return
        verdict = checker.screen(event)
        if isinstance(verdict, Fault):
            out.append(Penalise(peer, _fault_of(verdict), verdict.value))
        elif verdict:
            self._next[key] = (event, payload, peer)

    # ------------------------------------------------------------ own inputs

    def _own_input(self, event: Event, out: list[Effect]) -> None:
        machine = self.machine
        if machine is None:
            return
        payload = encode_event(event)
        self._wal.append(payload)
        self._stepping = (event, payload)
        try:
            self._perform(machine.step(event), out)
        finally:
            self._stepping = None

    def on_validated(self, block_hash: bytes, valid: bool, reason: str, now: float) -> list[Effect]:
        self._now = now
        out: list[Effect] = []
        if self.mode == "consensus":
            self._own_input(BlockValidated(block_hash, valid, reason), out)
        return out

    def on_built(self, height: int, round: int, block: Block, now: float) -> list[Effect]:
        self._now = now
        out: list[Effect] = []
        machine = self.machine
        if self.mode == "consensus" and machine is not None and machine.height == height:
            self._own_input(BlockBuilt(height, round, block), out)
        return out

    def on_signed(
        self, request: Sign, signature: bytes | None, last: SignedRecord | None, now: float
    ) -> list[Effect]:
        """The sign state's answer: a signature, or a refusal with what it holds."""
        self._now = now
        out: list[Effect] = []
        if signature is None:
            if last is None or last.hrs != (request.height, request.round, int(request.step)):
                return out
            # We signed something else at this very step before a restart: that is
            # our vote (or proposal) here, so it is the one to send.
            recovered = self._recover(request, last)
            if recovered is None:
                return out
            request, signature = recovered
        self._last_signed = max(
            self._last_signed, (request.height, request.round, int(request.step))
        )
        machine = self.machine
        if machine is None or machine.height != request.height:
            return out
        event: Event
        if request.vote_type is not None:
            index = machine.validators.index_of(self.validator_address)
            if index is None:
                return out
            vote = Vote(
                request.vote_type,
                request.height,
                request.round,
                request.block_hash,
                self.validator_address,
                index,
                signature,
            )
            event = VoteReceived(vote)
        else:
            assert request.block is not None
            proposal = Proposal(
                request.height, request.round, request.pol_round, request.block_hash, signature
            )
            event = ProposalReceived(proposal, request.block)
        self._own_input(event, out)
        return out

    def _recover(self, request: Sign, last: SignedRecord) -> tuple[Sign, bytes] | None:
        """The request that produced `last`, rebuilt from its sign bytes."""
        try:
            fields = decode(last.sign_bytes, bytes_max=1024)
        except DecodeError:
            return None
        if request.vote_type is not None and len(fields) == 6:
            block_hash = fields[5]
            if last.sign_bytes != vote_sign_bytes(
                self.chain_id, request.vote_type, request.height, request.round, block_hash
            ):
                return None
            return Sign(
                request.step,
                request.height,
                request.round,
                last.sign_bytes,
                request.vote_type,
                block_hash,
            ), last.signature
        machine = self.machine
        if request.vote_type is None and machine is not None and len(fields) == 6:
            pol_round, block_hash = fields[4], fields[5]
            block = machine.blocks.get(block_hash)
            expected = proposal_sign_bytes(
                self.chain_id, request.height, request.round, pol_round, block_hash
            )
            if block is None or last.sign_bytes != expected:
                return None
            return Sign(
                request.step,
                request.height,
                request.round,
                last.sign_bytes,
                None,
                block_hash,
                pol_round,
                block,
            ), last.signature
        return None

    # ------------------------------------------------------------ the machine's actions

    def _perform(self, actions: list[Action], out: list[Effect]) -> None:
        machine = self.machine
        assert machine is not None
        for action in actions:
            if isinstance(action, Broadcast):
                self._broadcast(action, out)
            elif isinstance(action, SignVote):
                sign_bytes = vote_sign_bytes(
                    self.chain_id, action.type, action.height, action.round, action.block_hash
                )
                out.append(
                    Sign(
                        step_of_vote(action.type),
                        action.height,
                        action.round,
                        sign_bytes,
                        action.type,
                        action.block_hash,
                    )
                )
            elif isinstance(action, SignProposal):
                block_hash = action.block.hash
                sign_bytes = proposal_sign_bytes(
                    self.chain_id, action.height, action.round, action.pol_round, block_hash
                )
                out.append(
                    Sign(
                        SignStep.PROPOSE,
                        action.height,
                        action.round,
                        sign_bytes,
                        None,
                        block_hash,
                        action.pol_round,
                        action.block,
                    )
                )
            elif isinstance(action, ScheduleTimeout):
                event = TimeoutFired(action.height, action.round, action.step)
                self._schedule(self._now + action.duration_ms / 1000, _TIMEOUT, event)
            elif isinstance(action, ValidateBlock):
                out.append(Validate(action.block))
            elif isinstance(action, BuildBlock):
                evidence = tuple(self.evidence.pending(self.state))
                out.append(Build(action.height, action.round, self._last_commit, evidence))
            elif isinstance(action, Decide):
                self._decided_live = not self._caught_up
                self._decided = (action.block.height, action.commit.round, action.block.hash)
                self._extra_sigs = {s.validator_index: s for s in action.commit.signatures}
                self._apply(action.block, action.commit, out)
            else:
                assert isinstance(action, ReportEvidence)
                self._add_evidence(action.evidence, None, None, out)

    def _broadcast(self, action: Broadcast, out: list[Effect]) -> None:
        message = action.message
        stepping = self._stepping
        if stepping is not None and stepping[0] is message:
            payload = stepping[1]  # the bytes that arrived, or that the WAL holds
        elif isinstance(message, VoteReceived):
            payload = encode_message(VoteMsg(message.vote))
        else:
            payload = encode_message(ProposalMsg(message.proposal, message.block))
        out.append(Gossip(CONSENSUS, payload, self._sender))
        if self._is_ours(message) and len(self.own_messages) < OWN_MESSAGES_MAX:
            self.own_messages.append(payload)

    def _is_ours(self, message: ProposalReceived | VoteReceived) -> bool:
        if isinstance(message, VoteReceived):
            return message.vote.validator_address == self.validator_address
        machine = self.machine
        assert machine is not None
        return machine.proposer(message.proposal.round).address == self.validator_address

    # ------------------------------------------------------------ committing

    def _apply(self, block: Block, commit: Commit, out: list[Effect]) -> None:
        if block.height != self.state.last_height + 1:
            return
        if self._applying:
            self._waiting_decision = (block, commit)  # after the synced block in flight
            return
        self._applying = block.height
        out.append(Apply(block, commit))

    def on_applied(self, block: Block | None, state: ChainState, now: float) -> list[Effect]:
        """The chain is at `state` now (`block` committed, or None if another path did it)."""
        self._now = now
        out: list[Effect] = []
        self._applying = 0
        self._waiting_decision = None  # the height is committed, whichever way
        if state.last_height <= self.state.last_height:
            return out
        synced = self._decided is None or self._decided[0] != state.last_height
        if self.watch_until_height and (synced or not self._decided_live):
            # The watch counts heights whose votes we saw; this one we only caught up on.
            self.watch_until_height += state.last_height - self.state.last_height
        self.state = state
        self._last_commit_at = now
        self._last_block_empty = block is not None and not block.txs and not block.evidence
        self.waiting_for_txs = False
        if block is not None:
            self.evidence.committed(block.evidence)
        self.sync.applied(state.last_height)
        self._last_commit = self._complete_last_commit()
        if self.watch_until_height:
            self._check_watch(out)
        if synced:
            self._after_synced_block()
        if self.mode == "consensus":
            self._enter_height(out)
        else:
            self.machine = None
            self._sync_step(out)
        self._apply_synced(out)
        return out

    def on_apply_failed(self, height: int) -> None:
        """The shell could not apply (it stops the node); nothing more is applied."""
        self._applying = -1

    def _complete_last_commit(self) -> Commit | None:
        decided = self._decided
        if decided is None or decided[0] != self.state.last_height:
            self._extra_sigs = {}
            return None
        height, round_, block_hash = decided
        sigs = tuple(self._extra_sigs[i] for i in sorted(self._extra_sigs))
        return Commit(height, round_, block_hash, sigs)

    def _collect_late_precommit(self, peer: str, vote: Vote, out: list[Effect]) -> bool:
        """A precommit for the block we just decided, arriving after the decision: keep it.

        True when the vote was this function's business (kept, a duplicate, or
        refused); a bad signature is the sender's fault as anywhere else.
        """
        decided = self._decided
        if (
            decided is None
            or decided[0] < self.state.last_height  # an older decision: its block is built
            or vote.type != VoteType.PRECOMMIT
            or (vote.height, vote.round, vote.block_hash) != decided
        ):
            return False
        if vote.validator_index in self._extra_sigs:
            return True
        validators = (
            self.state.validators
            if self.state.last_height < vote.height
            else self.state.last_validators
        )
        if (
            validators is None
            or validators.index_of(vote.validator_address) != vote.validator_index
        ):
            out.append(Penalise(peer, PeerFault.INVALID_MESSAGE, Fault.NOT_A_VALIDATOR.value))
            return True
        public_key = validators[vote.validator_index].public_key
        if not verify(public_key, vote.sign_bytes(self.chain_id), vote.signature):
            out.append(Penalise(peer, PeerFault.INVALID_SIGNATURE, Fault.BAD_SIGNATURE.value))
            return True
        self._extra_sigs[vote.validator_index] = CommitSig(vote.validator_index, vote.signature)
        if self._last_commit is not None and self._last_commit.height == vote.height:
            self._last_commit = self._complete_last_commit()
        return True

    # ------------------------------------------------------------ block sync

    def _tick(self, out: list[Effect]) -> None:
        """Every second: status to peers, block sync requests, re-sends when stuck."""
        s = self.state
        out.append(
            Send(
                None,
                BLOCKSYNC,
                encode_message(SyncStatusMsg(1 if s.last_height else 0, s.last_height)),
            )
        )
        machine = self.machine
        if self.mode == "consensus" and machine is not None:
            out.append(
                Send(None, CONSENSUS, encode_message(StatusMsg(machine.height, machine.round)))
            )
            if self._now - self._height_since >= RESEND_AFTER_S:
                out.extend(Send(None, CONSENSUS, p) for p in self.own_messages)
        voter_state = self._voter_state()
        if voter_state:
            until = self.watch_until_height if voter_state == VOTER_WATCHING else 0
            out.append(AnnounceVoterState(s.last_height + 1, voter_state, until))
        self._sync_step(out)

    def _sync_step(self, out: list[Effect]) -> None:
        """Ask for the heights peers claim above ours; leave block sync once close enough.

        In consensus mode only a lag above `fallback_lag_heights` makes us ask
        (a few heights, to see whether the claim is true); in block sync mode
        we leave once at the height peers claim (claims are up to a second
        old: consensus catches up the rest, peers sending a node that is
        close behind the decided blocks), or once no peer serves what it claims.
        """
        if not self.config.blocksync:
            return
        s = self.state
        lag = self.sync.peer_max(self._now) - s.last_height
        if self.mode == "consensus" and lag <= self.config.fallback_lag_heights:
            self.sync.clear()
            return
        if self.mode == "blocksync" and lag <= 0:
            self._leave_sync("caught up with peers", out)
            return
        window = SYNC_WINDOW_BLOCKS if self.mode == "blocksync" else SYNC_WINDOW_CONSENSUS_BLOCKS
        for r in self.sync.requests(s.last_height, self._now, window):
            out.append(Send(r.peer, BLOCKSYNC, encode_message(SyncRequestMsg(r.height, r.count))))
        if self.mode == "blocksync":
            self.mode_reason = (
                f"fetching blocks {s.last_height + 1}..{self.sync.peer_max(self._now)} from peers"
            )
            if not self.sync.pending and not self.sync.received and not self._applying:
                self._leave_sync("no peer serves the heights it claims", out)

    def _apply_synced(self, out: list[Effect]) -> None:
        """Verify the next synced block, if it arrived (one at a time, in order)."""
        if self._applying:
            return
        item = self.sync.take(self.state.last_height + 1)
        if item is not None:
            block, commit, peer = item
            self._applying = block.height
            out.append(VerifySynced(block, commit, peer))

    def on_synced(
        self, block: Block, commit: Commit, peer: str, error: str | None, now: float
    ) -> list[Effect]:
        """The shell verified a synced block's certificate and body (`error` None: valid)."""
        self._now = now
        out: list[Effect] = []
        self._applying = 0
        if block.height != self.state.last_height + 1:
            self._apply_synced(out)
            return out
        if error is not None:
            self.sync.refused(peer, block.height)
            out.append(Penalise(peer, PeerFault.PROTOCOL_VIOLATION, f"synced block: {error}"))
            waiting, self._waiting_decision = self._waiting_decision, None
            if waiting is not None:
                self._apply(*waiting, out)  # our own decision of this height, held back
            return out
        self._applying = block.height
        out.append(Apply(block, commit))
        return out

    def _on_vote_syncing(self, peer: str, vote: Vote, payload: bytes, out: list[Effect]) -> None:
        """In block sync, verified votes on the height after ours are kept: once validators
        with over a third of the power prevote on it, we are at the chain's tip, whatever
        anyone claims, and leave block sync (the kept votes go to that height's machine)."""
        height = self.state.last_height + 1
        if vote.height != height or vote.validator_address == self.validator_address:
            return  # our own key's votes prove nothing to us (kept, they would skip the
            # doppelganger check; see _enter_height)
        checker = self._next_checker
        if checker is None or checker.height != height:
            self._next.clear()
            self._next_checker = self._checker_for_next(ahead=1)
        self._keep_next(peer, VoteReceived(vote), payload, out)
        if self._tip_proven():
            self._leave_sync(
                f"validators with over a third of the power prevote on height {height}", out
            )

    def _tip_proven(self, machine: ConsensusMachine | None = None) -> bool:
        """Whether validators with over a third of the power (one honest at least) prevoted
        on the height after ours (kept votes), or on `machine`'s height: evidence, not a
        claim, that the chain's tip is there.

        Prevotes only: a height's certificate, which block sync serves to anyone,
        carries its precommits, so precommits of a decided height can be replayed
        by any peer. (Prevotes recorded live can be replayed too; that slows a
        lagging node's catch-up, it cannot stop it: see docs/PROTOCOL.md 10.)
        """
        height = self.state.last_height + 1
        validators = self.state.validators
        voters = {
            key[2][1:]
            for key in self._next
            if key[0] == height and key[2][:1] == bytes([VoteType.PREVOTE])
        }
        voters.discard(self.validator_address)
        power = sum(
            validators[i].power for a in voters if (i := validators.index_of(a)) is not None
        )
        if validators.has_one_honest(power):
            return True
        if machine is None:
            return False
        own = machine.validators.index_of(self.validator_address)
        senders: set[int] = set().union(
            *(rv.prevotes.first for rv in machine.votes.rounds.values())
        )
        senders.discard(-1 if own is None else own)
        return machine.validators.has_one_honest(sum(machine.validators[i].power for i in senders))

    def _after_synced_block(self) -> None:
        """A certified block came by sync: if peers are far ahead, stop voting and fetch.

        Claims alone decide nothing when there is evidence that we are at the tip:
        over a third of the power prevoted on the height just synced (a peer
        merely served it before our own decision), or on the next one.
        """
        lag = self.sync.peer_max(self._now) - self.state.last_height
        machine = self.machine
        if machine is not None and machine.height != self.state.last_height:
            machine = None
        if (
            self.mode == "consensus"
            and lag > self.config.fallback_lag_heights
            and not self._tip_proven(machine)
        ):
            self.mode = "blocksync"
            self.mode_reason = (
                f"peers are {lag} blocks ahead (limit {self.config.fallback_lag_heights})"
            )

    def _leave_sync(self, reason: str, out: list[Effect]) -> None:
        self.mode = "consensus"
        self.mode_reason = f"{reason} at height {self.state.last_height}"
        self.sync.clear()
        if self.watch_until_height:
            # The watch counts heights seen at the chain's tip, not synced ones.
            self.watch_until_height = max(
                self.watch_until_height, self.state.last_height + 1 + self.config.watch_heights
            )
            self._watch_since = self._now
            self._arm_watch()
        self._enter_height(out)

    def _voter_state(self) -> int:
        """Why this validator does not vote now (0: it votes, or it is no validator)."""
        if self.state.validators.index_of(self.validator_address) is None:
            return 0
        if self._stopped_signing:
            return VOTER_NOT_SIGNING
        if self.mode == "blocksync":
            return VOTER_CATCHING_UP
        if self.watch_until_height:
            return VOTER_WATCHING
        return 0

    def _on_voter_state(self, peer: str, msg: VoterStateMsg, out: list[Effect]) -> None:
        """Record, for /status and doctor only, why a validator says it does not vote.

        Checked at most once per validator per announce interval (a forger
        pays with its connection), for validators of this height, and for
        statements about heights near ours (an old one cannot be replayed).
        """
        validators = self.state.validators
        index = validators.index_of(msg.validator_address)
        last = self.voter_states.get(msg.validator_address)
        if (
            index is None
            or abs(msg.height - (self.state.last_height + 1))
            > self.config.decided_heights_behind_max
            or (last is not None and self._now - last[2] < ANNOUNCE_INTERVAL_S)
        ):
            return
        if not verify(validators[index].public_key, msg.sign_bytes(self.chain_id), msg.signature):
            out.append(Penalise(peer, PeerFault.INVALID_SIGNATURE, "forged voter state"))
            return
        self.voter_states[msg.validator_address] = (msg.state, msg.until_height, self._now)
        for gone in [a for a in self.voter_states if validators.index_of(a) is None]:
            del self.voter_states[gone]

    def _serve(self, peer: str, height: int, count: int, out: list[Effect]) -> None:
        """Answer a block request at the serving rate; a flooder far over it is cut off."""
        allowed = self.sync.may_serve(peer, self._now)
        if allowed is None:
            out.append(Penalise(peer, PeerFault.PROTOCOL_VIOLATION, "block requests over the rate"))
        elif not allowed:
            return
        elif height <= self.state.last_height:
            count = min(count, self.state.last_height - height + 1)
            out.append(ServeBlocks(peer, height, count))
        else:
            out.append(Send(peer, BLOCKSYNC, encode_message(SyncNoneMsg(height))))

    def _help_behind(self, peer: str, height: int, out: list[Effect]) -> None:
        """A peer working on a height we committed gets that block and its certificate."""
        last = self.state.last_height
        if not 1 <= height <= last or last - height > self.config.decided_heights_behind_max:
            return
        if self._decided_sent.get(peer) == height or not self.sync.may_send_decided(
            peer, self._now
        ):
            return
        self._decided_sent[peer] = height
        out.append(ServeDecided(peer, height))

    # ------------------------------------------------------------ evidence

    def _on_evidence(
        self, peer: str, evidence: Evidence, payload: bytes, out: list[Effect]
    ) -> None:
        if isinstance(evidence, LightClientAttackEvidence):
            self._on_light_attack(peer, evidence, payload, out)
            return
        validators = self._validators_at(evidence.height)
        if validators is None:
            return  # a height we do not know yet: cannot judge it
        reason = evidence.verify(self.chain_id, validators)
        if reason is not None:
            out.append(Penalise(peer, PeerFault.INVALID_SIGNATURE, f"evidence: {reason}"))
            return
        self._add_evidence(evidence, payload, peer, out)

    def screen_light_attack(self, evidence: LightClientAttackEvidence) -> Screened | AttackInvalid:
        """Every check of the evidence against our chain but its signatures (no signature
        is verified, but a set of 1,000 is hashed: about 20 ms); the shell calls it in a
        worker thread and verifies the signatures only if it passes. The verdict for
        the last object screened is kept for the driver's own call. An AttackInvalid
        is returned, not raised: it is an answer."""
        if self._commit_at is None:
            return AttackInvalid(AttackCheck.HEIGHT, "this node cannot judge light-client attacks")
        state = self.state
        cached = self._screened
        if cached is not None and cached[0] is evidence and cached[1] == state.last_height:
            return cached[2]
        verdict = self._screen(evidence, state)
        # One entry, the object itself: the shell screens in a worker thread, then
        # hands this very object to on_message at the same height.
        self._screened = (evidence, state.last_height, verdict)
        return verdict

    def _screen(
        self, evidence: LightClientAttackEvidence, state: ChainState
    ) -> Screened | AttackInvalid:
        assert self._commit_at is not None
        chain = ChainView(
            chain_id=self.chain_id,
            next_height=state.last_height + 1,
            evidence_age_blocks_max=state.params.evidence_age_blocks_max,
            validators_at=self._validators_at,
            commit_at=self._commit_at,
        )
        try:
            return screen_light_attack(evidence, chain)
        except AttackInvalid as e:
            return e

    def is_known_evidence(self, evidence: Evidence) -> bool:
        """Pending or committed already (or another item of the same attack): nothing to
        verify."""
        return self.evidence.known_item(evidence)

    def evidence_refusal(self, evidence: Evidence) -> str | None:
        """Why this very evidence was refused for good before, if it was: a hash lookup."""
        return self.evidence.refusal(evidence.hash)

    def refuse_light_attack(self, evidence: LightClientAttackEvidence, refusal: str) -> None:
        """Remember a refusal that no later block changes (every check but height and age)."""
        self.evidence.refuse(evidence.hash, refusal)

    def _on_light_attack(
        self, peer: str, evidence: LightClientAttackEvidence, payload: bytes, out: list[Effect]
    ) -> None:
        if self.is_known_evidence(evidence):
            return
        refusal = self.evidence_refusal(evidence)
        if refusal is not None:
            if peer != CLIENT_PEER:
                out.append(Penalise(peer, PeerFault.PROTOCOL_VIOLATION, f"evidence: {refusal}"))
            return
        screened = self.screen_light_attack(evidence)
        if isinstance(screened, AttackInvalid):
            if screened.check not in _ATTACK_NOT_JUDGED:
                self.refuse_light_attack(evidence, str(screened))
                if peer != CLIENT_PEER:
                    out.append(
                        Penalise(peer, PeerFault.PROTOCOL_VIOLATION, f"evidence: {screened}")
                    )
            return
        # Remembered on the object: the shell verifies it off the event loop first.
        error = evidence.signature_error(self.chain_id)
        if error is not None:
            self.refuse_light_attack(evidence, f"{AttackCheck.SIGNATURE.value}: {error}")
            if peer != CLIENT_PEER:
                out.append(Penalise(peer, PeerFault.INVALID_SIGNATURE, f"evidence: {error}"))
            return
        if self.evidence.add(evidence):
            out.append(
                Log(
                    "warning",
                    "light-client attack evidence accepted",
                    (
                        ("height", evidence.height),
                        ("common_height", evidence.common_height),
                        ("lunatic", screened.lunatic),
                        ("byzantine", len(screened.byzantine)),
                    ),
                )
            )
            out.append(Gossip(EVIDENCE, payload or encode_message(EvidenceMsg(evidence)), peer))

    def _add_evidence(
        self,
        evidence: DuplicateVoteEvidence,
        payload: bytes | None,
        peer: str | None,
        out: list[Effect],
    ) -> None:
        if self.evidence.add(evidence):
            data = payload or encode_message(EvidenceMsg(evidence))
            out.append(Gossip(EVIDENCE, data, peer))

    # ------------------------------------------------------------ doppelganger

    def _arm_watch(self) -> None:
        """Set the watch's halt deadline: `watch_halt_s` after the later of the watch's
        start at the tip (at start, or on leaving block sync) and the last committed
        block; a timer fires at that very time.

        Only those move it, and a committed block only to its own commit time plus
        `watch_halt_s` (re-arming at the time the old deadline fired instead let one
        block early in the watch double it): a peer's claim or message cannot end
        the watch early, and a halted chain keeps this validator from signing for
        at most `watch_halt_s` after its last block.
        """
        at = max(self._watch_since, self._last_commit_at) + self.config.watch_halt_s
        if at != self._watch_halt_at:
            self._watch_halt_at = at
            self._schedule(at, _WATCH, None)

    def _check_watch(self, out: list[Effect]) -> None:
        if not self.watch_until_height or self.mode != "consensus":
            return
        self._arm_watch()  # a block committed since it was set moves it
        halted = self._now >= self._watch_halt_at
        if self.state.last_height + 1 < self.watch_until_height and not halted:
            return
        if halted and self.state.last_height + 1 < self.watch_until_height:
            out.append(
                Log(
                    "warning",
                    "doppelganger watch ended early: no block committed",
                    (
                        ("halt_s", self.config.watch_halt_s),
                        ("watched_s", round(self._now - self._watch_since, 3)),
                    ),
                )
            )
        self.watch_until_height = 0
        self._watch_halt_at = 0.0
        out.append(
            Log("info", "doppelganger watch passed; signing", (("height", self.state.last_height),))
        )
        self._start_signing(out)

    def _start_signing(self, out: list[Effect]) -> None:
        machine = self.machine
        if self._stopped_signing or machine is None:
            return
        self._perform(machine.start_signing(self.validator_address), out)

    def _doppelganger(self, peer: str, vote: Vote, out: list[Effect]) -> bool:
        """A validly signed vote of our key that this process did not sign (True: handled)."""
        hrs = (vote.height, vote.round, int(step_of_vote(vote.type)))
        if hrs <= self._last_signed or self._stopped_signing:
            return False  # ours from before a restart, or signing is off already
        machine = self.machine
        assert machine is not None
        if vote.height != machine.height:
            return False
        index = machine.validators.index_of(vote.validator_address)
        if index is None:
            return False
        if not verify(
            machine.validators[index].public_key, vote.sign_bytes(self.chain_id), vote.signature
        ):
            out.append(Penalise(peer, PeerFault.INVALID_SIGNATURE, "forged vote of our key"))
            return True
        self._stopped_signing = True
        machine.own_address = None
        self.watch_until_height = 0
        out.append(
            Log(
                "critical",
                "doppelganger detected: this node stops signing",
                (
                    ("peer", peer),
                    ("height", vote.height),
                    ("round", vote.round),
                    ("type", vote.type.name),
                ),
            )
        )
        out.append(
            StopSigning(
                f"another instance signs with this validator key (vote at height {vote.height}, "
                f"round {vote.round} received from peer {peer}); stop it, then restart this node"
            )
        )
        return False

    def stop_signing(self) -> None:
        """The shell's sign state failed: sign nothing more."""
        self._stopped_signing = True
        if self.machine is not None:
            self.machine.own_address = None
