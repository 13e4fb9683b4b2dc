"""Light-client-attack evidence: built from a conflict, judged by a full node's chain alone.

The chain is test_light.py's: real headers, real certificates, validator sets
that change every three heights. A full node's view of it (`VIEW`) gives the
set and the canonical certificate of each height. Equivocations (a fork
signed by the height's own set, in the same round or another) and lunatic
attacks (another set, signed by enough of the common height's set) are built
with `attack_evidence` and must verify, naming the validators they accuse;
each tampering must fail the check that names it. Then the validation core:
a block carrying such evidence is valid, one carrying a forged or weak one is
not, and the ledger records what it acted on under key `e`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from apps.ledger import KEY_CONVICTED
from consensus.attack import (
    AttackCheck,
    AttackInvalid,
    ChainView,
    includable,
    screen_light_attack,
    verify_light_attack,
)
from consensus.codec import DecodeError
from consensus.crypto import PrivateKey
from consensus.light import LightBlock, attack_evidence, conflict
from consensus.types import (
    Block,
    Commit,
    CommitSig,
    Header,
    LightClientAttackEvidence,
    ValidatorSet,
    decode_evidence,
    evidence_hash,
    precommit_sign_bytes,
)
from consensus.validation import Reason, build_block
from tests.unit.consensus.test_light import CHAIN, keys_at, make_chain, sign, vset
from tests.unit.consensus.test_validation import Chain, reject

HEIGHTS = 20
BLOCKS = make_chain(HEIGHTS)
AGE_MAX = 100
ATTACKERS = [PrivateKey(hashlib.sha256(b"attacker %d" % i).digest()) for i in range(4)]


def at(height: int) -> LightBlock:
    return BLOCKS[height - 1]


def view(next_height: int = HEIGHTS + 1, age_max: int = AGE_MAX) -> ChainView:
    """A full node at `next_height - 1`: the sets and canonical certificates of BLOCKS."""
    return ChainView(
        chain_id=CHAIN,
        next_height=next_height,
        evidence_age_blocks_max=age_max,
        validators_at=lambda h: at(h).validators if 1 <= h <= HEIGHTS else None,
        commit_at=lambda h: at(h).commit if 1 <= h <= HEIGHTS else None,
    )


def forked(height: int, round_: int = 0, keys: list[PrivateKey] | None = None) -> LightBlock:
    """Another block at `height` signed by its own set (or by `keys`), same sets named."""
    ours = at(height)
    header = dataclasses.replace(ours.header, app_hash=hashlib.sha256(b"fork").digest())
    signers = keys_at(height, 3) if keys is None else keys
    commit = sign(header, signers, ours.validators, round_)
    return LightBlock(header, commit, ours.validators, ours.next_validators)


def lunatic(height: int, common: int, honest_signers: int) -> LightBlock:
    """A header at `height` naming a made-up set: `honest_signers` keys of the common
    height's set plus attackers' keys, all signing."""
    keys = keys_at(common, 3)[:honest_signers] + ATTACKERS[: 4 - honest_signers]
    validators = vset(keys)
    header = dataclasses.replace(
        at(height).header,
        validators_hash=validators.hash,
        next_validators_hash=validators.hash,
        app_hash=hashlib.sha256(b"lunatic").digest(),
    )
    return LightBlock(header, sign(header, keys, validators), validators, validators)


def refused(
    check: AttackCheck, ev: LightClientAttackEvidence, chain: ChainView | None = None
) -> str:
    with pytest.raises(AttackInvalid) as info:
        verify_light_attack(ev, chain or view())
    assert info.value.check is check, info.value
    return str(info.value)


def equivocation(height: int = 10, round_: int = 0) -> LightClientAttackEvidence:
    return attack_evidence(at(height), forked(height, round_), at(height))


# ---------------------------------------------------------------- what it proves


def test_an_equivocation_in_the_same_round_names_every_double_signer() -> None:
    """A fork at height 10 signed by the whole set in round 0, as the chain's block was:
    `conflict` finds it, `attack_evidence` makes evidence a full node verifies, naming
    the four validators that signed both."""
    found = conflict(at(10), forked(10), CHAIN)
    assert found is not None
    ev = equivocation()
    assert ev.common_height == 10
    screened = verify_light_attack(ev, view())
    assert not screened.lunatic
    assert set(screened.byzantine) == {k.address for k in keys_at(10, 3)}
    assert set(ev.byzantine_validators) == set(found.double_signers)


def test_an_equivocation_in_another_round_names_nobody() -> None:
    """Amnesia: the fork's certificate is of round 1, the chain's of round 0; it is an
    attack, but no validator's own signatures prove it broke its lock."""
    ev = equivocation(round_=1)
    assert ev.byzantine_validators == ()
    assert verify_light_attack(ev, view()).byzantine == ()


def test_a_lunatic_header_names_the_common_sets_signers() -> None:
    """A header at 12 naming a made-up set, signed by two of the four validators of
    height 7 (half its power: more than a third) and two attackers: the two are accused."""
    ev = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    assert ev.common_height == 7
    screened = verify_light_attack(ev, view())
    assert screened.lunatic
    assert set(screened.byzantine) == {k.address for k in keys_at(7, 3)[:2]}


def test_evidence_encodes_canonically_and_decodes_as_either_kind() -> None:
    """Round trip through the canonical bytes; the block's evidence hash covers it; a
    duplicate vote still decodes as one (the array's length tells the kind)."""
    ev = equivocation()
    assert decode_evidence(ev.encode()) == ev
    assert len(ev.encode()) <= LightClientAttackEvidence.BYTES_MAX
    other = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    assert evidence_hash([ev]) != evidence_hash([other])
    chain = Chain()
    chain.advance()
    dup = chain.evidence(1)
    assert decode_evidence(dup.encode()) == dup
    chain.verifier.close()


def test_decoding_refuses_a_malformed_accused_list_and_oversize_input() -> None:
    """Addresses not ascending, or of the wrong length, and inputs over BYTES_MAX."""
    ev = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    backwards = dataclasses.replace(ev, byzantine_validators=ev.byzantine_validators[::-1])
    with pytest.raises(DecodeError, match="ascending"):
        decode_evidence(backwards.encode())
    short = dataclasses.replace(ev, byzantine_validators=(b"\x01" * 19,))
    with pytest.raises(DecodeError):
        decode_evidence(short.encode())
    with pytest.raises(DecodeError, match="limit"):
        decode_evidence(b"\x95" + bytes(LightClientAttackEvidence.BYTES_MAX))


# ---------------------------------------------------------------- each check


def test_certificate_of_another_height() -> None:
    ev = equivocation()
    commit = dataclasses.replace(ev.conflicting_commit, height=9)
    refused(AttackCheck.COMMIT_HEIGHT, dataclasses.replace(ev, conflicting_commit=commit))


def test_certificate_of_another_block() -> None:
    ev = equivocation()
    commit = dataclasses.replace(ev.conflicting_commit, block_hash=at(10).header.hash)
    refused(AttackCheck.COMMIT_BLOCK, dataclasses.replace(ev, conflicting_commit=commit))


def test_a_set_that_is_not_the_headers() -> None:
    ev = equivocation()
    refused(
        AttackCheck.VALIDATORS_HASH,
        dataclasses.replace(ev, conflicting_validators=at(1).validators),
    )


def test_a_header_of_another_chain() -> None:
    ours = at(10)
    header = dataclasses.replace(ours.header, chain_id="other-chain")
    block = LightBlock(
        header, sign(header, keys_at(10, 3), ours.validators), ours.validators, ours.next_validators
    )
    ev = LightClientAttackEvidence(header, block.commit, ours.validators, 10, ())
    refused(AttackCheck.CHAIN_ID, ev)


def test_a_height_whose_certificate_is_not_final_yet() -> None:
    """At height 10 the chain's certificate is only final in block 11: a node at 10 (next
    block 11) cannot judge it; one at 11 can."""
    ev = equivocation()
    refused(AttackCheck.HEIGHT, ev, view(next_height=11))
    verify_light_attack(ev, view(next_height=12))
    assert not includable(ev, 11, AGE_MAX) and includable(ev, 12, AGE_MAX)


def test_a_height_the_node_does_not_have() -> None:
    ev = equivocation()
    chain = dataclasses.replace(view(), commit_at=lambda h: None)
    refused(AttackCheck.HEIGHT, ev, chain)


def test_evidence_older_than_the_age_limit_counted_from_the_common_height() -> None:
    """A lunatic header at 12 from common height 7: 14 blocks before block 21."""
    ev = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    verify_light_attack(ev, view(age_max=14))
    refused(AttackCheck.TOO_OLD, ev, view(age_max=13))
    assert not includable(ev, 21, 13)


def test_a_common_height_above_the_header() -> None:
    ev = dataclasses.replace(equivocation(), common_height=11)
    refused(AttackCheck.COMMON_HEIGHT, ev)


def test_an_equivocation_must_name_its_own_height_as_common() -> None:
    ev = dataclasses.replace(equivocation(), common_height=9)
    refused(AttackCheck.COMMON_HEIGHT, ev)


def test_a_lunatic_header_needs_a_known_common_height_below_it() -> None:
    ev = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    refused(AttackCheck.COMMON_HEIGHT, dataclasses.replace(ev, common_height=12))
    chain = dataclasses.replace(
        view(), validators_at=lambda h: at(h).validators if h != 7 else None
    )
    refused(AttackCheck.COMMON_HEIGHT, ev, chain)


def test_the_chains_own_block_is_no_conflict() -> None:
    ours = at(10)
    ev = LightClientAttackEvidence(ours.header, ours.commit, ours.validators, 10, ())
    refused(AttackCheck.NOT_CONFLICTING, ev)


def test_a_signer_outside_the_set() -> None:
    ev = equivocation()
    sigs = (*ev.conflicting_commit.signatures, CommitSig(7, bytes(64)))
    commit = dataclasses.replace(ev.conflicting_commit, signatures=sigs)
    refused(AttackCheck.SIGNERS, dataclasses.replace(ev, conflicting_commit=commit))


def test_a_certificate_without_two_thirds_of_the_conflicting_set() -> None:
    """Two of four equal validators signed the fork: 20 of 40 is not more than 2/3."""
    fork = forked(10, keys=keys_at(10, 3)[:2])
    ev = LightClientAttackEvidence(fork.header, fork.commit, fork.validators, 10, ())
    message = refused(AttackCheck.QUORUM, ev)
    assert "20 of 40" in message


def test_a_lunatic_header_signed_by_less_than_a_third_of_the_common_set() -> None:
    """One of the four validators of height 7 (a quarter) and three attackers: a light
    client trusting height 7 would not have skipped to it; not evidence."""
    ev = attack_evidence(at(7), lunatic(12, 7, 1), at(12))
    message = refused(AttackCheck.TRUST_LEVEL, ev)
    assert "10 of 40" in message


def test_exactly_a_third_of_the_common_set_is_not_more_than_a_third() -> None:
    """Powers 10, 10, 10 and 30 at the common height: the 10 alone is a sixth, with another
    a third exactly; neither is trusted."""
    keys = keys_at(7, 3)
    heavy = ValidatorSet.of(
        [
            dataclasses.replace(v, power=30) if v.address == keys[3].address else v
            for v in vset(keys)
        ]
    )
    chain = dataclasses.replace(
        view(), validators_at=lambda h: heavy if h == 7 else at(h).validators
    )
    ev = attack_evidence(at(7), lunatic(12, 7, 2), at(12))
    refused(AttackCheck.TRUST_LEVEL, ev, chain)


def test_an_accused_list_that_is_not_the_chains() -> None:
    """Dropping one accused validator, or accusing one more, fails; the message names
    the ones the chain shows."""
    ev = equivocation()
    fewer = dataclasses.replace(ev, byzantine_validators=ev.byzantine_validators[1:])
    message = refused(AttackCheck.BYZANTINE, fewer)
    assert ev.byzantine_validators[0].hex() in message
    amnesia = equivocation(round_=1)
    more = dataclasses.replace(amnesia, byzantine_validators=ev.byzantine_validators[:1])
    refused(AttackCheck.BYZANTINE, more)


def test_a_forged_signature_is_found_last() -> None:
    """Everything else holds, so the cheap screen passes; the signature check fails."""
    ev = equivocation()
    s = list(ev.conflicting_commit.signatures)
    s[2] = CommitSig(s[2].validator_index, s[2].signature[:-1] + bytes([s[2].signature[-1] ^ 1]))
    forged = dataclasses.replace(
        ev, conflicting_commit=dataclasses.replace(ev.conflicting_commit, signatures=tuple(s))
    )
    screen_light_attack(forged, view())
    refused(AttackCheck.SIGNATURE, forged)
    assert forged.signature_error(CHAIN) is not None
    assert ev.signature_error(CHAIN) is None


def test_no_signature_is_verified_before_the_cheap_checks_pass(verified: list[bytes]) -> None:
    """A weak certificate (QUORUM) costs no signature verification at all."""
    fork = forked(10, keys=keys_at(10, 3)[:2])
    ev = LightClientAttackEvidence(fork.header, fork.commit, fork.validators, 10, ())
    refused(AttackCheck.QUORUM, ev)
    assert verified == []


def test_forged_lunatic_evidence_fails_at_its_first_accused_signature(
    verified: list[bytes],
) -> None:
    """A made-up set of the two accused validators of height 7 and 60 keys of the
    attacker's own, all of whose signatures are valid: the accused validators' keys are
    the node's, the forger cannot sign with them, and a garbage one fails after at most
    two verifications (the accused first), not after the attacker's sixty."""
    attackers = [PrivateKey(hashlib.sha256(b"grinder %d" % i).digest()) for i in range(60)]
    honest = keys_at(7, 3)[:2]
    validators = vset(honest + attackers)
    header = dataclasses.replace(
        at(12).header,
        validators_hash=validators.hash,
        next_validators_hash=validators.hash,
        app_hash=hashlib.sha256(b"ground lunatic").digest(),
    )
    commit = sign(header, honest + attackers, validators)
    accused = {k.address for k in honest}
    # Garbage for the accused signer indexed last: in index order, the attacker's
    # signatures before it would all be verified first.
    last = max(
        i
        for i, s in enumerate(commit.signatures)
        if validators[s.validator_index].address in accused
    )
    assert last > 30
    sigs = list(commit.signatures)
    sigs[last] = CommitSig(sigs[last].validator_index, bytes(64))
    forged = attack_evidence(at(7), LightBlock(header, commit, validators, validators), at(12))
    forged = dataclasses.replace(
        forged, conflicting_commit=dataclasses.replace(commit, signatures=tuple(sigs))
    )
    refused(AttackCheck.SIGNATURE, forged)
    assert len(verified) <= 2
    verified.clear()
    assert forged.signature_error(CHAIN) is not None
    assert len(verified) <= 2


# ---------------------------------------------------------------- in blocks


class AttackedChain:
    """test_validation's 4-validator ledger chain at height 3, with its canonical
    certificates, and an equivocation at height 1 signed by all four validators."""

    def __init__(self) -> None:
        self.chain = Chain()
        self.commits: dict[int, Commit] = {}
        self.headers: dict[int, Header] = {}
        for _ in range(3):
            vb = self.chain.advance()
            assert self.chain.commit is not None
            self.commits[vb.block.height] = self.chain.commit
            self.headers[vb.block.height] = vb.block.header
        self.validators = self.chain.state.validators

    def evidence(self, signers: int = 4) -> LightClientAttackEvidence:
        ours = self.headers[1]
        header = dataclasses.replace(ours, app_hash=hashlib.sha256(b"fork").digest())
        keys = self.chain.vkeys[:signers]
        fork = LightBlock(
            header, sign_for(header, keys, self.validators), self.validators, self.validators
        )
        mine = LightBlock(ours, self.commits[1], self.validators, self.validators)
        return attack_evidence(mine, fork, mine)

    def block(self, *evidence: Any) -> Block:
        c = self.chain
        return build_block(
            c.state,
            [],
            time_ms=c.time_ms + 1_000,
            proposer_address=c.proposer,
            last_commit=c.commit,
            evidence=evidence,
        )

    def kw(self) -> dict[str, Any]:
        return {
            "validators_at": lambda h: self.validators,
            "commit_at": self.commits.get,
        }


def sign_for(header: Header, keys: list[PrivateKey], validators: ValidatorSet) -> Commit:
    message = precommit_sign_bytes("val-test", header.height, 0, header.hash)
    by_address = {k.address: k for k in keys}
    sigs = [
        CommitSig(i, by_address[v.address].sign(message))
        for i, v in enumerate(validators)
        if v.address in by_address
    ]
    return Commit(header.height, 0, header.hash, tuple(sigs))


@pytest.fixture
def attacked() -> Iterator[AttackedChain]:
    a = AttackedChain()
    yield a
    a.chain.verifier.close()


def test_a_block_with_valid_attack_evidence_is_valid_and_the_ledger_records_it(
    attacked: AttackedChain,
) -> None:
    """Block 4 carries the equivocation at height 1: valid; the ledger writes `e` + its
    hash and removes the accused (all but the last validator)."""
    ev = attacked.evidence()
    assert len(ev.byzantine_validators) == 4
    vb = attacked.chain.validate(attacked.block(ev), **attacked.kw())
    writes = dict(vb.execution.writes)
    assert writes[KEY_CONVICTED + ev.hash] == b""
    assert len(vb.execution.validator_updates) == 3
    assert all(u.power == 0 for u in vb.execution.validator_updates)


def test_a_block_with_a_forged_attack_signature_is_invalid(attacked: AttackedChain) -> None:
    ev = attacked.evidence()
    s = list(ev.conflicting_commit.signatures)
    s[3] = CommitSig(s[3].validator_index, bytes(64))
    forged = dataclasses.replace(
        ev, conflicting_commit=dataclasses.replace(ev.conflicting_commit, signatures=tuple(s))
    )
    dup = attacked.chain.evidence(1)
    err = reject(
        attacked.chain, attacked.block(dup, forged), Reason.EVIDENCE_BAD_SIGNATURE, **attacked.kw()
    )
    assert err.field == "evidence[1]"


def test_a_block_with_weak_attack_evidence_is_invalid_naming_the_check(
    attacked: AttackedChain,
) -> None:
    """Two of four signers: the block is invalid at evidence[0], naming the quorum check."""
    weak = attacked.evidence(signers=2)
    err = reject(attacked.chain, attacked.block(weak), Reason.EVIDENCE_INVALID, **attacked.kw())
    assert err.field == "evidence[0]" and AttackCheck.QUORUM.value in str(err)


def test_a_block_with_attack_evidence_at_its_previous_height_is_invalid(
    attacked: AttackedChain,
) -> None:
    """Evidence at height 3 in block 4: the chain's certificate of 3 is in block 4 itself,
    not final when the evidence was judged; refused as not judgeable (HEIGHT)."""
    ours = attacked.headers[3]
    header = dataclasses.replace(ours, app_hash=hashlib.sha256(b"fork").digest())
    commit = sign_for(header, attacked.chain.vkeys, attacked.validators)
    ev = LightClientAttackEvidence(header, commit, attacked.validators, 3, ())
    err = reject(attacked.chain, attacked.block(ev), Reason.EVIDENCE_INVALID, **attacked.kw())
    assert AttackCheck.HEIGHT.value in str(err)


def test_without_the_chains_certificates_attack_evidence_is_invalid(
    attacked: AttackedChain,
) -> None:
    ev = attacked.evidence()
    reject(
        attacked.chain,
        attacked.block(ev),
        Reason.EVIDENCE_INVALID,
        validators_at=lambda h: attacked.validators,
    )


def test_a_block_with_two_items_of_one_conflicting_header_is_invalid(
    attacked: AttackedChain,
) -> None:
    """All four signatures, or three of them (still more than 2/3): two valid items of one
    attack. A block takes one; with both it is invalid, so the ledger acts once."""
    whole, part = attacked.evidence(), attacked.evidence(signers=3)
    assert whole.hash != part.hash
    attacked.chain.validate(attacked.block(part), **attacked.kw())
    err = reject(
        attacked.chain, attacked.block(whole, part), Reason.EVIDENCE_DUPLICATE, **attacked.kw()
    )
    assert err.field == "evidence[1]"
