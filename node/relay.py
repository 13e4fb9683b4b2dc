"""`archipelago relay`: carry chain A's headers and send_out proofs to chain B.

Chain B's ledger holds a light client of chain A (apps/interchain.py) and
credits a transfer only on proof; nobody needs to trust the relay, it only
saves others the work. It follows A's committed blocks in order, finds the
`send_out` transactions addressed to B's chain id, moves B's light client
to height h + 1 of each, from the highest height below it the client is known
to have verified, even below the client's latest (by skipping where a third of
the trusted set still signs, bisecting otherwise: consensus.light.verify_to plans the steps, B
checks each again), and submits `receive` with the transaction's Merkle path,
the headers h and h + 1 and the result's Merkle path. When no transfer is
pending it refreshes the client before a third of the trusting period has
passed, so trust never expires while the relay runs.

A chain that stops answering (restarting, upgrading) is waited for with a
backoff; the relay keeps its place and goes on when the chain is back. What
it cannot fix (different crypto suites, no client of A on B, an expired
client) ends it with one line and exit code 1. Ctrl-C or SIGTERM ends it
cleanly (exit 0). It logs one structured event per step (node/logging.py).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx

from apps.interchain import (
    QUERY_CLIENT,
    ReceiveProof,
    client_create_payload,
    client_update_payload,
    receive_payload,
)
from consensus.codec import DecodeError, decode
from consensus.crypto import SUITES, PrivateKey, Suite, activate
from consensus.light import LightBlock, LightError, TrustOptions, verify_to
from consensus.types import Commit, Header, Transaction, ValidatorSet
from node.logging import get_logger

log = get_logger(__name__)

REQUEST_TIMEOUT_S = 10.0
# The largest answer read from a chain: a block of the largest size in JSON is well
# under it. Policy when over: the answer is dropped unread and waited out like an outage.
RESPONSE_BYTES_MAX = 16 * 1024 * 1024
# What an untrusted answer that does not have the expected shape raises where it is read
# (DecodeError and JSON errors are ValueErrors; nesting too deep is a RecursionError).
MALFORMED_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError)
POLL_INTERVAL_S = 0.5  # between looks at A's height when there is nothing to do
RETRY_BACKOFF_S_MAX = 5.0  # the longest wait between tries while a chain is down
# On start, send_outs this many heights below B's client height are offered again
# (B refuses a replay, so offering twice costs one refused transaction).
RESCAN_HEIGHTS = 1_000
SCAN_HEIGHTS_PER_STEP_MAX = 100  # so a relay far behind still refreshes and logs as it goes
# The client is refreshed once its header is older than this share of the trusting period.
REFRESH_SHARE = 3
TRUSTING_PERIOD_MS_DEFAULT = 14 * 24 * 3600 * 1000


class RelayError(Exception):
    """Something the relay cannot fix by waiting; the message is the one line it prints."""


class TryLater(Exception):
    """A chain did not answer (or answered 5xx), or refused a step that may pass later
    (a client update racing another relay's): the relay waits and tries again."""


class Api:
    """One chain's HTTP API, as the relay uses it."""

    def __init__(self, url: str, http: httpx.Client) -> None:
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.http = http

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """(status, body) where body is a JSON object: anything else is TryLater (a node's
        answer is untrusted; one read at most RESPONSE_BYTES_MAX bytes)."""
        try:
            with self.http.stream(method, self.url + path, **kwargs) as r:
                status = r.status_code
                if status >= 500 and status != 504:
                    raise TryLater(f"{self.url}{path}: HTTP {status}")
                raw = bytearray()
                for chunk in r.iter_bytes():
                    raw += chunk
                    if len(raw) > RESPONSE_BYTES_MAX:
                        raise TryLater(f"{self.url}{path}: answer over {RESPONSE_BYTES_MAX} bytes")
        except httpx.HTTPError as e:
            raise TryLater(f"{self.url}: {type(e).__name__}") from None
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise TryLater(f"{self.url}{path}: HTTP {status} without JSON") from None
        if not isinstance(body, dict):
            raise TryLater(f"{self.url}{path}: HTTP {status}: not a JSON object")
        return status, body

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise TryLater(f"{self.url}{path}: HTTP {status}: {body.get('error', '')}")
        return body

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/status")
        return body

    def suite(self) -> Suite:
        """The chain's crypto suite: the one whose hash gives its validator set's hash."""
        served = self.get("/validators")
        encoded = bytes.fromhex(served["encoded"])
        for suite in SUITES.values():
            if suite.hash(encoded) == bytes.fromhex(served["hash"]):
                return suite
        raise RelayError(f"{self.url}: the validator set hashes with no known suite")


@dataclass(frozen=True, slots=True)
class Client:
    """B's light client of A, as B's `interchain/client` query answers."""

    trusting_period_ms: int
    height: int
    time_ms: int


class Relay:
    """Moves A's headers and send_out proofs to B; `step` does one pass."""

    def __init__(
        self,
        a: Api,
        b: Api,
        key: PrivateKey,
        *,
        now_ms: Callable[[], int],
        from_height: int | None = None,
    ) -> None:
        self.a, self.b, self.key = a, b, key
        self.now_ms = now_ms
        self.from_height = from_height
        self.chain_a = ""
        self.chain_b = ""
        self.scan = 0  # the next height of A to look at for send_outs
        # Heights of A that B's client is known to have verified: an update starts from
        # the highest one below its target (`client_update_from`), so a client a third
        # party moved past a transfer's h + 1 is still updated to h + 1. Pruned in `step`
        # to the highest one below `scan` and those above.
        self.verified: set[int] = set()

    # ------------------------------------------------------------ setup

    def connect(self) -> None:
        """Chain ids, one suite for both, and where to start; RelayError if they cannot work."""
        self.chain_a = self.a.status()["chain_id"]
        self.chain_b = self.b.status()["chain_id"]
        suite_a, suite_b = self.a.suite(), self.b.suite()
        if suite_a is not suite_b:
            raise RelayError(
                f"chain {self.chain_a!r} uses {suite_a.name} and chain {self.chain_b!r} uses "
                f"{suite_b.name}: a chain's light client verifies its own suite only"
            )
        if self.key.suite is not suite_b:
            raise RelayError(f"the relay key is {self.key.suite.name}, chain B {suite_b.name}")
        activate(suite_a)
        if self.scan == 0:
            client = self.client()
            start = max(1, client.height - RESCAN_HEIGHTS) if client is not None else 1
            self.scan = start if self.from_height is None else self.from_height
        log.info("relay connected", source=self.chain_a, destination=self.chain_b, scan=self.scan)

    def client(self) -> Client | None:
        status, body = self.b.call(
            "GET", f"/query?path={QUERY_CLIENT}&data={self.chain_a.encode().hex()}"
        )
        if status != 200:
            return None
        _, period, height, time_ms = decode(bytes.fromhex(body["value"]))
        return Client(period, height, time_ms)

    def create_client(self, trusting_period_ms: int) -> None:
        """client_create on B (the relay's key must be B's admin) from A's latest header."""
        height = self.a.status()["latest_height"]
        payload = client_create_payload(self.light_block(height), trusting_period_ms)
        code, text = self.submit(payload)
        if code != 0:
            raise RelayError(f"client_create refused: {text}")
        log.info("client created", source=self.chain_a, height=height)

    # ------------------------------------------------------------ one pass

    def step(self) -> bool:
        """Scan A's new blocks, deliver their send_outs, refresh the client; True if it worked."""
        client = self.client()
        if client is None:
            raise RelayError(
                f"chain {self.chain_b!r} has no client of {self.chain_a!r}: its admin creates "
                "one with `archipelago relay --create-client`"
            )
        self.verified.add(client.height)
        latest = self.a.status()["latest_height"]
        last = min(latest - 1, self.scan + SCAN_HEIGHTS_PER_STEP_MAX - 1)
        worked = False
        while self.scan <= last:
            for index, raw in self.send_outs(self.scan):
                client = self.deliver(self.scan, index, raw, client)
                worked = True
            self.scan += 1
        floor = max((h for h in self.verified if h < self.scan), default=0)
        self.verified = {h for h in self.verified if h >= floor}
        # Every send_out below `scan` is delivered; one at `scan` needs scan + 1 later,
        # so moving the client up to `scan` never strands a transfer.
        target = min(latest, self.scan)
        if target > client.height:
            age_ms = self.a.status()["latest_block_time_ms"] - client.time_ms
            if age_ms * REFRESH_SHARE >= client.trusting_period_ms:
                self.update_client(client, target)
                worked = True
        return worked

    def send_outs(self, height: int) -> list[tuple[int, bytes]]:
        """(index, tx bytes) of the send_outs to B in block `height` of A."""
        block = self.a.get(f"/block/{height}")
        found = []
        for index, item in enumerate(block["txs"]):
            raw = bytes.fromhex(item["encoded"])
            try:
                op = decode(Transaction.decode(raw).payload)
            except DecodeError:
                continue
            if isinstance(op, tuple) and len(op) == 3 and op[:2] == ("send_out", self.chain_b):
                found.append((index, raw))
        return found

    def deliver(self, height: int, index: int, raw: bytes, client: Client) -> Client:
        """Prove send_out `raw` (tx `index` of block `height`) to B; the client after."""
        txid = Transaction.decode(raw).hash.hex()
        record = self.a.get(f"/tx/{txid}")
        if record["result"]["code"] != 0:
            log.info("send_out failed on the source chain, not relayed", tx=txid, height=height)
            return client
        if height + 1 not in self.verified:
            client = self.update_client(client, height + 1)
        proof = self.receive_proof(height, index, raw, record)
        code, text = self.submit(receive_payload(self.chain_a, proof))
        if code == 0:
            log.info("transfer credited", tx=txid, height=height)
        elif text.startswith("replay:"):
            log.info("transfer credited already", tx=txid, height=height)
        else:
            log.warning("receive refused", tx=txid, height=height, why=text)
        return client

    def receive_proof(
        self, height: int, index: int, raw: bytes, record: dict[str, Any]
    ) -> ReceiveProof:
        served = record["result_proof"]
        if served is None:
            raise TryLater(f"no result proof for {height} yet")
        header = Header.decode(bytes.fromhex(self.a.get(f"/commit/{height}")["header_encoded"]))
        following = self.a.get(f"/commit/{height + 1}")["header_encoded"]
        return ReceiveProof(
            raw,
            header,
            Header.decode(bytes.fromhex(following)),
            index,
            record["proof"]["total"],
            tuple(bytes.fromhex(a) for a in record["proof"]["aunts"]),
            bytes.fromhex(served["result_encoded"]),
            tuple(bytes.fromhex(a) for a in served["aunts"]),
        )

    def light_block(self, height: int) -> LightBlock:
        served = self.a.get(f"/commit/{height}")
        if served["validators_encoded"] is None:
            raise RelayError(f"{self.a.url} no longer has the validator set of {height}")
        following = self.a.get(f"/validators?height={height + 1}")
        return LightBlock(
            Header.decode(bytes.fromhex(served["header_encoded"])),
            Commit.decode(bytes.fromhex(served["commit"]["encoded"])),
            ValidatorSet.decode(bytes.fromhex(served["validators_encoded"])),
            ValidatorSet.decode(bytes.fromhex(following["encoded"])),
        )

    def update_client(self, client: Client, target: int) -> Client:
        """Have B's client verify `target` through the fewest headers A's sets allow, from
        the highest height below it known verified (below the client's latest when a third
        party moved the client past `target`); the client after."""
        self.verified.add(client.height)
        start = max((h for h in self.verified if h < target), default=None)
        if start is None:
            log.warning("no verified height below, not updated", source=self.chain_a, height=target)
            return client
        trusted = self.light_block(start)
        options = TrustOptions(trusting_period_ms=client.trusting_period_ms)
        try:
            trace = verify_to(
                trusted, target, self.light_block, self.chain_a, self.now_ms(), options
            )
        except LightError as e:
            raise RelayError(f"cannot move the client of {self.chain_a!r} to {target}: {e}") from e
        for block in trace:
            code, text = self.submit(client_update_payload(self.chain_a, block, start))
            # Another relay may have verified the height first: what the step needed.
            if code != 0 and not (text.startswith("height: ") and "verified already" in text):
                # Going on would submit a receive B cannot check: try the step again.
                raise TryLater(f"client update to {block.height} refused: {text}")
            self.verified.add(block.height)
            start = block.height
            if block.height > client.height:
                client = Client(client.trusting_period_ms, block.height, block.header.time_ms)
            log.info("client updated", source=self.chain_a, height=block.height)
        return client

    def submit(self, payload: bytes) -> tuple[int, str]:
        """Sign `payload` for B at the key's next nonce; (code, log) once committed or refused."""
        nonce = self.b.get(f"/account/{self.key.address.hex()}")["nonce"]
        tx = Transaction.create(self.key, self.chain_b, nonce, payload)
        status, body = self.b.call("POST", "/tx?wait=commit", json={"tx": tx.encode().hex()})
        if status == 200:
            return body["result"]["code"], body["result"]["log"]
        if status == 504:
            raise TryLater(f"{self.b.url}: not committed in time")
        check = body.get("check") or {}
        return check.get("code", -1), body.get("error", "")

    # ------------------------------------------------------------ the loop

    def run(self, *, once: bool, sleep: Callable[[float], None]) -> None:
        """Relay until interrupted (or one pass with `once`); RelayError ends it."""
        backoff = POLL_INTERVAL_S
        connected = False
        while True:
            try:
                with _malformed_is_an_outage():
                    if not connected:
                        self.connect()
                        connected = True
                    worked = self.step()
                backoff = POLL_INTERVAL_S
                if once:
                    return
                if not worked:
                    sleep(POLL_INTERVAL_S)
            except TryLater as e:
                log.warning("retrying", why=str(e), retry_s=backoff)
                if once:
                    raise RelayError(str(e)) from None
                sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_S_MAX)


@contextmanager
def _malformed_is_an_outage() -> Iterator[None]:
    """A node's answer is untrusted: one that does not have the expected shape is waited
    out like an outage (B checks every proof anyway)."""
    try:
        yield
    except MALFORMED_ERRORS as e:
        raise TryLater(f"malformed answer: {type(e).__name__}: {e}") from None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(
    source: str,
    destination: str,
    key: PrivateKey,
    *,
    once: bool,
    create_client: bool,
    trusting_period_ms: int | None,
    from_height: int | None,
) -> int:
    """The `relay` command; returns the exit code (0, or 1 with one line on stderr)."""
    # Both stop it cleanly. SIGINT explicitly too: a process started in the
    # background of a script inherits SIGINT ignored, and Python then leaves it so.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    # httpx logs every request at info: the relay's own events say what happened.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
        relay = Relay(
            Api(source, http),
            Api(destination, http),
            key,
            now_ms=lambda: int(time.time() * 1000),
            from_height=from_height,
        )
        try:
            if create_client:
                with _malformed_is_an_outage():
                    relay.connect()
                    relay.create_client(trusting_period_ms or TRUSTING_PERIOD_MS_DEFAULT)
                if once:
                    return 0
            relay.run(once=once, sleep=time.sleep)
        except KeyboardInterrupt:
            log.info("relay stopped", scan=relay.scan)
            return 0
        except (RelayError, TryLater) as e:
            log.error("relay failed", why=str(e))
            print(f"archipelago relay: error: {e}", file=sys.stderr)
            return 1
    return 0
