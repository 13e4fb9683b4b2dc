"""The canonical data types whose bytes every node must agree on.

Each type encodes as a msgpack array of its fields in declaration order
(consensus/codec.py explains "canonical"), hashes with the chain's suite
(SHA-256 or SM3, consensus/crypto.py), and decodes
only from its canonical bytes, raising `DecodeError` for anything else.
docs/PROTOCOL.md gives the byte-level description; keep the two in step.

Signatures never cover an encoded object directly: each signed thing has a
`*_sign_bytes` function that prefixes a domain tag and the chain id, so a
signature is bound to one purpose and one chain and can never be replayed on
another.

It is longer than the house's 600 lines on purpose: every canonical type
with its encoding, decoding and bounds is here, in PROTOCOL.md's section 3
order, so the spec is checked against one file.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, Self

from consensus import merkle
from consensus.codec import DecodeError, Reader, decode_with, encode
from consensus.crypto import (
    ADDRESS_BYTES,
    HASH_BYTES,
    SIGNATURE_BYTES,
    PrivateKey,
    active,
    address_of,
    digest,
    verify,
)

__all__ = [
    "Block",
    "Commit",
    "CommitSig",
    "DecodeError",
    "DuplicateVoteEvidence",
    "Evidence",
    "Header",
    "LightClientAttackEvidence",
    "Proposal",
    "Transaction",
    "Validator",
    "ValidatorSet",
    "Vote",
    "VoteType",
    "decode_evidence",
    "precommit_sign_bytes",
    "proposal_sign_bytes",
    "read_evidence",
    "tx_sign_bytes",
    "vote_sign_bytes",
]

# Hard limits of the encoding itself. Chains set tighter block limits in genesis
# (consensus_params); these bound what a decoder will ever allocate.
CHAIN_ID_BYTES_MAX = 50
TX_PAYLOAD_BYTES_MAX = 32 * 1024
TX_BYTES_MAX = TX_PAYLOAD_BYTES_MAX + 256  # payload plus the fixed fields and msgpack framing
BLOCK_BYTES_MAX = 16 * 1024 * 1024
BLOCK_TXS_MAX = 200_000
BLOCK_EVIDENCE_MAX = 100
VALIDATORS_MAX = 1_000
# Node ids in a permissioned network's member list (genesis `members`, changed by
# the application's set_member transactions): one per member organisation's node.
MEMBERS_MAX = 1_000
VOTING_POWER_MAX = 2**60 // VALIDATORS_MAX  # so a set's total fits in 2**60
APP_HASH_BYTES_MAX = 64
ROUND_MAX = 2**31 - 1
HEIGHT_MAX = 2**62
TIME_MS_MAX = 2**53  # about year 287,000: far enough, and exact in a JSON number
NONCE_MAX = 2**64 - 1
# The longest bin or str in the small types (votes, proposals, commits,
# evidence, headers, validator sets): a signature, or an app hash.
SMALL_FIELD_BYTES_MAX = max(SIGNATURE_BYTES, APP_HASH_BYTES_MAX, CHAIN_ID_BYTES_MAX)

# Domain tags: the first element of every signed array.
TAG_TX = "archipelago/tx/v1"
TAG_VOTE = "archipelago/vote/v1"
TAG_PROPOSAL = "archipelago/proposal/v1"


def _hash_or_empty(r: Reader, what: str) -> bytes:
    """A 32-byte hash, or b"" where the protocol allows "none" (nil vote, first block)."""
    value = r.binary(what, length_max=HASH_BYTES)
    if len(value) not in (0, HASH_BYTES):
        raise DecodeError(f"{what}: expected {HASH_BYTES} bytes, got {len(value)}")
    return value


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


# ---------------------------------------------------------------- sign bytes


def tx_sign_bytes(chain_id: str, sender: bytes, nonce: int, payload: bytes) -> bytes:
    return encode([TAG_TX, chain_id, sender, nonce, payload])


def vote_sign_bytes(
    chain_id: str, vote_type: VoteType, height: int, round: int, block_hash: bytes
) -> bytes:
    """What a validator signs for a prevote or precommit (block_hash b"" is nil)."""
    return encode([TAG_VOTE, chain_id, int(vote_type), height, round, block_hash])


def precommit_sign_bytes(chain_id: str, height: int, round: int, block_hash: bytes) -> bytes:
    return vote_sign_bytes(chain_id, VoteType.PRECOMMIT, height, round, block_hash)


def proposal_sign_bytes(
    chain_id: str, height: int, round: int, pol_round: int, block_hash: bytes
) -> bytes:
    return encode([TAG_PROPOSAL, chain_id, height, round, pol_round, block_hash])


# ---------------------------------------------------------------- the common part


class Canonical:
    """Encoding, strict decoding and hashing shared by the types below.

    A subclass provides `to_obj` (its fields as a msgpack array), `read` (the
    same fields read in order from a Reader, each checked as it is read),
    `BYTES_MAX`, the largest encoding `decode` will even parse, and
    `FIELD_BYTES_MAX`, its longest bin or str.
    """

    __slots__ = ()
    BYTES_MAX: ClassVar[int]
    FIELD_BYTES_MAX: ClassVar[int] = SMALL_FIELD_BYTES_MAX

    def to_obj(self) -> Any:
        raise NotImplementedError

    @classmethod
    def read(cls, r: Reader) -> Self:
        raise NotImplementedError

    def encode(self) -> bytes:
        return encode(self.to_obj())

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """The value whose canonical encoding is `data`; DecodeError for anything else."""
        return decode_with(
            data,
            cls.read,
            cls.encode,
            bytes_max=cls.BYTES_MAX,
            field_bytes_max=cls.FIELD_BYTES_MAX,
        )

    @property
    def hash(self) -> bytes:
        """The suite's hash of the canonical encoding."""
        return digest(self.encode())


# ---------------------------------------------------------------- transaction


@dataclass(frozen=True, slots=True)
class Transaction(Canonical):
    """A client's signed request; the application gives `payload` its meaning.

    `sender` is the signer's public key (of the chain's suite), `nonce` orders
    one sender's transactions. The transaction's id is the suite's hash of its
    encoding.
    """

    BYTES_MAX: ClassVar[int] = TX_BYTES_MAX
    FIELD_BYTES_MAX: ClassVar[int] = TX_PAYLOAD_BYTES_MAX

    sender: bytes
    nonce: int
    payload: bytes
    signature: bytes

    @classmethod
    def create(cls, key: PrivateKey, chain_id: str, nonce: int, payload: bytes) -> Transaction:
        sig = key.sign(tx_sign_bytes(chain_id, key.public_key, nonce, payload))
        return cls(key.public_key, nonce, payload, sig)

    def sign_bytes(self, chain_id: str) -> bytes:
        return tx_sign_bytes(chain_id, self.sender, self.nonce, self.payload)

    @property
    def sender_address(self) -> bytes:
        return address_of(self.sender)

    def to_obj(self) -> list[Any]:
        return [self.sender, self.nonce, self.payload, self.signature]

    @classmethod
    def read(cls, r: Reader) -> Transaction:
        r.array("tx", length=4)
        return cls(
            r.binary("tx.sender", length=active().public_key_bytes),
            r.integer("tx.nonce", 0, NONCE_MAX),
            r.binary("tx.payload", length_max=TX_PAYLOAD_BYTES_MAX),
            r.binary("tx.signature", length=SIGNATURE_BYTES),
        )


# ---------------------------------------------------------------- validators


@dataclass(frozen=True, slots=True)
class Validator:
    public_key: bytes
    power: int

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    def to_obj(self) -> list[Any]:
        return [self.public_key, self.power]

    @classmethod
    def read(cls, r: Reader) -> Validator:
        r.array("validator", length=2)
        return cls(
            r.binary("validator.public_key", length=active().public_key_bytes),
            r.integer("validator.power", 1, VOTING_POWER_MAX),
        )


@dataclass(frozen=True, slots=True)
class ValidatorSet(Canonical):
    """Validators sorted by address (ascending, unique); index = position in that order."""

    BYTES_MAX: ClassVar[int] = VALIDATORS_MAX * 64 + 16

    validators: tuple[Validator, ...]
    _index: dict[bytes, int] = field(init=False, repr=False, compare=False, hash=False)
    total_power: int = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        addresses = [v.address for v in self.validators]
        if not 1 <= len(addresses) <= VALIDATORS_MAX:
            raise DecodeError(f"validator set: expected 1..{VALIDATORS_MAX} validators")
        if any(a >= b for a, b in itertools.pairwise(addresses)):
            raise DecodeError("validator set: addresses not strictly ascending")
        object.__setattr__(self, "_index", {a: i for i, a in enumerate(addresses)})
        object.__setattr__(self, "total_power", sum(v.power for v in self.validators))

    @classmethod
    def of(cls, validators: Iterable[Validator]) -> ValidatorSet:
        """A set from validators in any order (sorted here)."""
        return cls(tuple(sorted(validators, key=lambda v: v.address)))

    def __len__(self) -> int:
        return len(self.validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self.validators)

    def __getitem__(self, index: int) -> Validator:
        return self.validators[index]

    def index_of(self, address: bytes) -> int | None:
        return self._index.get(address)

    def has_quorum(self, power: int) -> bool:
        """More than two thirds of the total voting power (Algorithm 1's 2f + 1)."""
        return 3 * power > 2 * self.total_power

    def has_one_honest(self, power: int) -> bool:
        """More than one third (Algorithm 1's f + 1): at least one honest validator."""
        return 3 * power > self.total_power

    def to_obj(self) -> list[Any]:
        return [v.to_obj() for v in self.validators]

    @classmethod
    def read(cls, r: Reader) -> ValidatorSet:
        n = r.array("validator set", count_max=VALIDATORS_MAX)
        return cls(tuple(Validator.read(r) for _ in range(n)))


# ---------------------------------------------------------------- votes and proposals


@dataclass(frozen=True, slots=True)
class Vote(Canonical):
    """A prevote or precommit; `block_hash` b"" is a vote for nil."""

    BYTES_MAX: ClassVar[int] = 256

    type: VoteType
    height: int
    round: int
    block_hash: bytes
    validator_address: bytes
    validator_index: int
    signature: bytes

    @classmethod
    def create(
        cls,
        key: PrivateKey,
        chain_id: str,
        vote_type: VoteType,
        height: int,
        round: int,
        block_hash: bytes,
        validator_index: int,
    ) -> Vote:
        sig = key.sign(vote_sign_bytes(chain_id, vote_type, height, round, block_hash))
        return cls(vote_type, height, round, block_hash, key.address, validator_index, sig)

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(chain_id, self.type, self.height, self.round, self.block_hash)

    @property
    def is_nil(self) -> bool:
        return not self.block_hash

    def to_obj(self) -> list[Any]:
        return [
            int(self.type),
            self.height,
            self.round,
            self.block_hash,
            self.validator_address,
            self.validator_index,
            self.signature,
        ]

    @classmethod
    def read(cls, r: Reader) -> Vote:
        r.array("vote", length=7)
        return cls(
            VoteType(r.integer("vote.type", 1, 2)),
            r.integer("vote.height", 1, HEIGHT_MAX),
            r.integer("vote.round", 0, ROUND_MAX),
            _hash_or_empty(r, "vote.block_hash"),
            r.binary("vote.validator_address", length=ADDRESS_BYTES),
            r.integer("vote.validator_index", 0, VALIDATORS_MAX - 1),
            r.binary("vote.signature", length=SIGNATURE_BYTES),
        )


@dataclass(frozen=True, slots=True)
class Proposal(Canonical):
    """A proposer's signed claim that `block_hash` is its value for (height, round).

    `pol_round` is Algorithm 1's validRound: -1, or the round of a polka for
    this block that the proposer saw (lines 16 and 28).
    """

    BYTES_MAX: ClassVar[int] = 256

    height: int
    round: int
    pol_round: int
    block_hash: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        key: PrivateKey,
        chain_id: str,
        height: int,
        round: int,
        pol_round: int,
        block_hash: bytes,
    ) -> Proposal:
        sig = key.sign(proposal_sign_bytes(chain_id, height, round, pol_round, block_hash))
        return cls(height, round, pol_round, block_hash, sig)

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id, self.height, self.round, self.pol_round, self.block_hash
        )

    def to_obj(self) -> list[Any]:
        return [self.height, self.round, self.pol_round, self.block_hash, self.signature]

    @classmethod
    def read(cls, r: Reader) -> Proposal:
        r.array("proposal", length=5)
        height = r.integer("proposal.height", 1, HEIGHT_MAX)
        round_ = r.integer("proposal.round", 0, ROUND_MAX)
        pol_round = r.integer("proposal.pol_round", -1, ROUND_MAX)
        if pol_round >= round_:
            raise DecodeError("proposal.pol_round: must be below round")
        return cls(
            height,
            round_,
            pol_round,
            r.binary("proposal.block_hash", length=HASH_BYTES),
            r.binary("proposal.signature", length=SIGNATURE_BYTES),
        )


# ---------------------------------------------------------------- commit certificate


@dataclass(frozen=True, slots=True)
class CommitSig:
    validator_index: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Commit(Canonical):
    """The commit certificate of block `height`: precommits for `block_hash` in `round`.

    Signatures are sorted by validator index, at most one per validator; each
    is over `precommit_sign_bytes(chain_id, height, round, block_hash)` by the
    validator at that index of the set that was active at `height`.
    """

    BYTES_MAX: ClassVar[int] = VALIDATORS_MAX * 80 + 128

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[CommitSig, ...]

    def to_obj(self) -> list[Any]:
        return [
            self.height,
            self.round,
            self.block_hash,
            [[s.validator_index, s.signature] for s in self.signatures],
        ]

    @classmethod
    def read(cls, r: Reader) -> Commit:
        r.array("commit", length=4)
        height = r.integer("commit.height", 1, HEIGHT_MAX)
        round_ = r.integer("commit.round", 0, ROUND_MAX)
        block_hash = r.binary("commit.block_hash", length=HASH_BYTES)
        n = r.array("commit.signatures", count_max=VALIDATORS_MAX)
        if n == 0:
            raise DecodeError("commit.signatures: empty")
        sigs: list[CommitSig] = []
        for _ in range(n):
            r.array("commit.signature", length=2)
            index = r.integer("commit.signature.validator_index", 0, VALIDATORS_MAX - 1)
            if sigs and index <= sigs[-1].validator_index:
                raise DecodeError("commit.signatures: indexes not strictly ascending")
            sig = r.binary("commit.signature.signature", length=SIGNATURE_BYTES)
            sigs.append(CommitSig(index, sig))
        return cls(height, round_, block_hash, tuple(sigs))

    def sign_items(
        self, chain_id: str, validators: ValidatorSet
    ) -> list[tuple[bytes, bytes, bytes]] | str:
        """(public key, message, signature) per signature, or why the certificate is malformed.

        Checks everything except the signatures themselves: known signers and a
        quorum of voting power. The caller verifies the items (in parallel).
        """
        message = precommit_sign_bytes(chain_id, self.height, self.round, self.block_hash)
        items: list[tuple[bytes, bytes, bytes]] = []
        power = 0
        for s in self.signatures:
            if s.validator_index >= len(validators):
                return f"signature by unknown validator index {s.validator_index}"
            v = validators[s.validator_index]
            power += v.power
            items.append((v.public_key, message, s.signature))
        if not validators.has_quorum(power):
            return f"signers hold {power} of {validators.total_power} voting power, need > 2/3"
        return items

    def verify(self, chain_id: str, validators: ValidatorSet) -> str | None:
        """None if this is a valid certificate for `validators`, else the reason it is not."""
        items = self.sign_items(chain_id, validators)
        if isinstance(items, str):
            return items
        for (pk, msg, sig), s in zip(items, self.signatures, strict=True):
            if not verify(pk, msg, sig):
                return f"invalid signature by validator index {s.validator_index}"
        return None


# ---------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class DuplicateVoteEvidence(Canonical):
    """Two votes by one validator for different blocks at one (height, round, type).

    Canonical order: vote_a.block_hash < vote_b.block_hash (nil, b"", sorts first).
    """

    BYTES_MAX: ClassVar[int] = 512

    vote_a: Vote
    vote_b: Vote

    def to_obj(self) -> list[Any]:
        return [self.vote_a.to_obj(), self.vote_b.to_obj()]

    FIELDS: ClassVar[int] = 2

    @classmethod
    def read(cls, r: Reader) -> DuplicateVoteEvidence:
        r.array("evidence", length=cls.FIELDS)
        return cls.read_fields(r)

    @classmethod
    def read_fields(cls, r: Reader) -> DuplicateVoteEvidence:
        """The fields after the array header (read_evidence reads it to tell the kind)."""
        ev = cls(Vote.read(r), Vote.read(r))
        reason = ev.structural_error()
        if reason:
            raise DecodeError(f"evidence: {reason}")
        return ev

    def structural_error(self) -> str | None:
        a, b = self.vote_a, self.vote_b
        if (a.type, a.height, a.round, a.validator_address, a.validator_index) != (
            b.type,
            b.height,
            b.round,
            b.validator_address,
            b.validator_index,
        ):
            return "votes are not by one validator for one height, round and type"
        if not a.block_hash < b.block_hash:
            return "votes not for different blocks in canonical order"
        return None

    def verify(self, chain_id: str, validators: ValidatorSet) -> str | None:
        """None if both votes are validly signed by the validator they name."""
        reason = self.structural_error()
        if reason:
            return reason
        index = validators.index_of(self.vote_a.validator_address)
        if index is None or index != self.vote_a.validator_index:
            return "validator not in the set at that height"
        pk = validators[index].public_key
        for v in (self.vote_a, self.vote_b):
            if not verify(pk, v.sign_bytes(chain_id), v.signature):
                return "invalid vote signature"
        return None

    @property
    def height(self) -> int:
        return self.vote_a.height

    @property
    def age_height(self) -> int:
        """The height its age is counted from."""
        return self.vote_a.height

    @property
    def validator_address(self) -> bytes:
        return self.vote_a.validator_address


# ---------------------------------------------------------------- header and block


@dataclass(frozen=True, slots=True)
class Header(Canonical):
    """Block header; the block hash is the suite's hash of the header's encoding.

    `app_hash` and `last_results_hash` describe the state after executing the
    previous block (execution lags one block, as in Tendermint), so a client
    holding header h+1 and the commit for it can check a query against state h.
    """

    BYTES_MAX: ClassVar[int] = 1024

    chain_id: str
    height: int
    time_ms: int
    last_block_hash: bytes  # b"" at height 1
    last_commit_hash: bytes  # b"" at height 1
    data_hash: bytes  # Merkle root of the transactions
    validators_hash: bytes  # set that signs this block's commit
    next_validators_hash: bytes  # set for height + 1
    app_hash: bytes  # application state root after block height - 1
    last_results_hash: bytes  # Merkle root of block height - 1's transaction results
    evidence_hash: bytes  # Merkle root of the encoded evidence
    proposer_address: bytes

    def to_obj(self) -> list[Any]:
        return [
            self.chain_id,
            self.height,
            self.time_ms,
            self.last_block_hash,
            self.last_commit_hash,
            self.data_hash,
            self.validators_hash,
            self.next_validators_hash,
            self.app_hash,
            self.last_results_hash,
            self.evidence_hash,
            self.proposer_address,
        ]

    @classmethod
    def read(cls, r: Reader) -> Header:
        r.array("header", length=12)
        return cls(
            r.text("header.chain_id", CHAIN_ID_BYTES_MAX),
            r.integer("header.height", 1, HEIGHT_MAX),
            r.integer("header.time_ms", 0, TIME_MS_MAX),
            _hash_or_empty(r, "header.last_block_hash"),
            _hash_or_empty(r, "header.last_commit_hash"),
            r.binary("header.data_hash", length=HASH_BYTES),
            r.binary("header.validators_hash", length=HASH_BYTES),
            r.binary("header.next_validators_hash", length=HASH_BYTES),
            r.binary("header.app_hash", length_max=APP_HASH_BYTES_MAX),
            r.binary("header.last_results_hash", length=HASH_BYTES),
            r.binary("header.evidence_hash", length=HASH_BYTES),
            r.binary("header.proposer_address", length=ADDRESS_BYTES),
        )


# ---------------------------------------------------------------- light-client attack evidence


@dataclass(frozen=True, slots=True)
class LightClientAttackEvidence(Canonical):
    """A signed header that conflicts with the chain at its height: a light client was attacked.

    A light client that finds two verified headers for one height
    (consensus/light.py, `conflict`) sends full nodes the one that is not
    theirs, with its certificate and validator set, and `common_height`: the
    last height both chains agree on, whose validator set the full nodes know.
    What it proves, and how a full node checks it against its own chain
    alone, is consensus/attack.py (docs/PROTOCOL.md sections 3 and 9.7):

    - equivocation: the conflicting header names our validator set at its
      height (`common_height` = its height); those who precommitted both
      blocks in one round double-signed (none is named when the rounds differ:
      amnesia, which no single signature proves);
    - lunatic: another validator set, signed by validators of the common
      height's set holding more than a third of its power (enough for a light
      client to skip to it); each of them signed a block that is not the chain's.

    `byzantine_validators` (addresses, ascending) names them; a full node
    accepts the evidence only if it is exactly the set it derives itself, so
    the application can act on the list without reading the chain.
    """

    FIELDS: ClassVar[int] = 5
    # A full set's certificate and set, a header, the list of addresses, and framing.
    BYTES_MAX: ClassVar[int] = (
        Header.BYTES_MAX
        + Commit.BYTES_MAX
        + ValidatorSet.BYTES_MAX
        + VALIDATORS_MAX * (ADDRESS_BYTES + 2)
        + 64
    )

    conflicting_header: Header
    conflicting_commit: Commit
    conflicting_validators: ValidatorSet  # hashes to conflicting_header.validators_hash
    common_height: int
    byzantine_validators: tuple[bytes, ...]

    def to_obj(self) -> list[Any]:
        return [
            self.conflicting_header.to_obj(),
            self.conflicting_commit.to_obj(),
            self.conflicting_validators.to_obj(),
            self.common_height,
            list(self.byzantine_validators),
        ]

    @classmethod
    def read(cls, r: Reader) -> LightClientAttackEvidence:
        r.array("light_attack", length=cls.FIELDS)
        return cls.read_fields(r)

    @classmethod
    def read_fields(cls, r: Reader) -> LightClientAttackEvidence:
        """The fields after the array header (read_evidence reads it to tell the kind)."""
        header = Header.read(r)
        commit = Commit.read(r)
        validators = ValidatorSet.read(r)
        common_height = r.integer("light_attack.common_height", 1, HEIGHT_MAX)
        byzantine = r.binaries(
            "light_attack.byzantine_validators", count_max=VALIDATORS_MAX, length_max=ADDRESS_BYTES
        )
        if any(len(a) != ADDRESS_BYTES for a in byzantine):
            raise DecodeError(f"light_attack.byzantine_validators: expected {ADDRESS_BYTES} bytes")
        if any(a >= b for a, b in itertools.pairwise(byzantine)):
            raise DecodeError("light_attack.byzantine_validators: not strictly ascending")
        return cls(header, commit, validators, common_height, byzantine)

    @property
    def height(self) -> int:
        """The height of the conflicting header."""
        return self.conflicting_header.height

    @property
    def age_height(self) -> int:
        """The height its age is counted from: the common height, whose set it accuses."""
        return self.common_height

    def signatures_in_check_order(self) -> tuple[CommitSig, ...]:
        """The certificate's signatures, the accused validators' first, else in index order.

        The accused are the signatures the verdict rests on, and the only ones
        a forger cannot make: their keys are in the set the node knows (an
        address is its key's hash). Anyone can add a thousand valid signatures
        by keys of its own to a made-up set; checked first they would cost a
        thousand verifications before the forged accused one fails. Checked
        in this order, forged evidence fails at its first accused signature.
        """
        validators = self.conflicting_validators
        # By index: a lookup per accused address, no hashing of the set's keys.
        accused = {validators.index_of(a) for a in self.byzantine_validators}
        first: list[CommitSig] = []
        rest: list[CommitSig] = []
        for s in self.conflicting_commit.signatures:
            (first if s.validator_index in accused else rest).append(s)
        return (*first, *rest)

    def signature_error(self, chain_id: str) -> str | None:
        """None if every signature of the certificate verifies against the conflicting set.

        Only the signatures, by index into `conflicting_validators` (what
        consensus/attack.py screens first: sizes, heights, sets, power), the
        accused validators' first (`signatures_in_check_order`), stopping at the
        first that fails. The answer is remembered, so a node can compute it
        off its event loop and use it on it.
        """
        cached = self._signatures
        if cached is not None and cached[0] == chain_id:
            return cached[1]
        commit, validators = self.conflicting_commit, self.conflicting_validators
        message = precommit_sign_bytes(chain_id, commit.height, commit.round, commit.block_hash)
        error = None
        for s in self.signatures_in_check_order():
            if s.validator_index >= len(validators):
                error = f"signature by unknown validator index {s.validator_index}"
                break
            if not verify(validators[s.validator_index].public_key, message, s.signature):
                error = f"invalid signature by validator index {s.validator_index}"
                break
        object.__setattr__(self, "_signatures", (chain_id, error))
        return error

    _signatures: tuple[str, str | None] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )


Evidence = DuplicateVoteEvidence | LightClientAttackEvidence


def read_evidence(r: Reader) -> Evidence:
    """One evidence item of either kind: the length of its array tells which."""
    n = r.array("evidence", count_max=LightClientAttackEvidence.FIELDS)
    if n == DuplicateVoteEvidence.FIELDS:
        return DuplicateVoteEvidence.read_fields(r)
    if n == LightClientAttackEvidence.FIELDS:
        return LightClientAttackEvidence.read_fields(r)
    raise DecodeError(
        "evidence: expected an array of 2 fields (duplicate vote) or 5 (light-client attack)"
    )


def decode_evidence(data: bytes) -> Evidence:
    """The evidence item (either kind) whose canonical encoding is `data`."""
    return decode_with(
        data,
        read_evidence,
        _encode_evidence,
        bytes_max=LightClientAttackEvidence.BYTES_MAX,
        field_bytes_max=SMALL_FIELD_BYTES_MAX,
    )


def _encode_evidence(evidence: Evidence) -> bytes:
    return evidence.encode()


@dataclass(frozen=True, slots=True)
class Block:
    """A header, the encoded transactions, the previous block's commit and evidence.

    Transactions are carried as their encoded bytes (each the canonical
    encoding of a `Transaction`): the Merkle root and tx ids hash those bytes
    directly, and the validation core decodes each once.
    """

    header: Header
    txs: tuple[bytes, ...]
    last_commit: Commit | None  # None exactly at height 1
    evidence: tuple[Evidence, ...] = ()
    # body_error's answer, once computed (a block's fields never change).
    _body: tuple[str | None] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )
    # The canonical encoding, once made or received: every message, WAL record
    # and store entry that carries the block splices these bytes in.
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False, hash=False)

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def hash(self) -> bytes:
        return self.header.hash

    def to_obj(self) -> list[Any]:
        return [
            self.header.to_obj(),
            list(self.txs),
            None if self.last_commit is None else self.last_commit.to_obj(),
            [e.to_obj() for e in self.evidence],
        ]

    @classmethod
    def read(cls, r: Reader) -> Block:
        r.array("block", length=4)
        header = Header.read(r)
        txs = r.binaries("block.txs", count_max=BLOCK_TXS_MAX, length_max=TX_BYTES_MAX)
        last_commit = None
        if header.height == 1:
            r.nil("block.last_commit")
        else:
            last_commit = Commit.read(r)
        n = r.array("block.evidence", count_max=BLOCK_EVIDENCE_MAX)
        evidence = tuple(read_evidence(r) for _ in range(n))
        return cls(header, txs, last_commit, evidence)

    def encode(self) -> bytes:
        """The canonical encoding, made at most once per block object."""
        if self._encoded is None:
            object.__setattr__(self, "_encoded", encode(self.to_obj()))
        assert self._encoded is not None
        return self._encoded

    def release_encoding(self) -> None:
        """Let go of the kept encoding (once it is stored); `encode` would make it again."""
        object.__setattr__(self, "_encoded", None)

    def body_error(self) -> str | None:
        """Why the body (txs, last commit, evidence) is not the one the header names, or None.

        The block hash covers only the header, so a relayer could pair a
        validly proposed header with another body; this check, cheap next to
        validation, tells such a copy apart before anything is stored or
        relayed, and makes it the sender's fault. The answer is remembered,
        so a node can compute it off its event loop and use it on it.
        """
        if self._body is None:
            object.__setattr__(self, "_body", (self._body_error(),))
        assert self._body is not None
        return self._body[0]

    def _body_error(self) -> str | None:
        h = self.header
        if h.data_hash != data_hash(self.txs):
            return "transactions do not match header.data_hash"
        last_commit_hash = b"" if self.last_commit is None else self.last_commit.hash
        if h.last_commit_hash != last_commit_hash:
            return "last commit does not match header.last_commit_hash"
        if h.evidence_hash != evidence_hash(self.evidence):
            return "evidence does not match header.evidence_hash"
        return None

    @classmethod
    def decode(cls, data: bytes, *, bytes_max: int = BLOCK_BYTES_MAX) -> Block:
        """The block whose canonical encoding is `data`; DecodeError for anything else.

        The block keeps `data` itself as its encoding (the canonical check
        proved them equal), so what is stored or relayed is what arrived.
        """
        block = decode_with(
            data, cls.read, cls.encode, bytes_max=bytes_max, field_bytes_max=TX_BYTES_MAX
        )
        object.__setattr__(block, "_encoded", bytes(data))
        return block


def data_hash(txs: Iterable[bytes]) -> bytes:
    return merkle.root(list(txs))


def evidence_hash(evidence: Iterable[Evidence]) -> bytes:
    return merkle.root([e.encode() for e in evidence])


def tx_id(tx_bytes: bytes) -> bytes:
    """A transaction's id: the suite's hash of its encoded bytes."""
    return digest(tx_bytes)
