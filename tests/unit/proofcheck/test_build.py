"""The builder's hops: light-client bisection keeps a file short across a turning validator set.

The builder's source of light blocks is filled from a real signed chain
(no HTTP); the hops it picks must verify offline, be far fewer than the
heights crossed, and each skip must keep more than a third of trusted power.
"""

from __future__ import annotations

from consensus.crypto import ED25519_SHA256, using
from consensus.light import LightBlock
from node.proofs import LightSource, select_hops
from proofcheck.verify import verify_proof
from tests.unit.proofcheck.chain import make_chain

HEIGHTS = 200


def test_bisection_picks_few_hops_that_verify() -> None:
    chain = make_chain(ED25519_SHA256, HEIGHTS, shift_every=5)
    source = LightSource("unused", ED25519_SHA256, {})
    for h in range(1, HEIGHTS + 1):
        block = LightBlock(chain.headers[h], chain.commits[h], chain.sets[h], chain.sets[h + 1])
        source.cache[h] = (block, chain.hop(h))
    with using(ED25519_SHA256):
        hops = select_hops(source, HEIGHTS, chain.chain_id, None)
        data = chain.file("tx", hops, chain.tx_target(HEIGHTS - 1, 2))
    heights = [chain.headers[h].height for h in range(1, HEIGHTS + 1) if chain.hop(h) in hops]
    # The set turns over every 20 heights: a skip can cross at most about 13 of them.
    assert heights[0] == 1 and heights[-1] == HEIGHTS
    assert 200 // 15 <= len(hops) <= 200 // 4, heights
    assert "result code 0" in verify_proof(data, chain.genesis_text)
