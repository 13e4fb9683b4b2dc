"""The relay's plan through changing validator sets, against a real ledger as chain B.

Chain A here is the light client tests' chain (tests/unit/consensus/test_light.py:
a validator set that moves one key every 3 heights, so after a dozen heights none
of the first set is left), served through the API paths the relay reads; chain B
is a real `Ledger` with a client of A that executes each transaction the relay
submits. What this proves: the relay moves B's client across heights whose
signers hold too little of the trusted set by bisecting (every step it submits
is one B accepts), and goes no further than the height it needs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from apps.interchain import QUERY_CLIENT, client_create_payload, client_update_payload
from consensus.codec import decode
from consensus.crypto import PrivateKey
from consensus.types import Transaction
from node.relay import RESPONSE_BYTES_MAX, Api, Client, Relay, TryLater
from node.relay import main as relay_main
from tests.unit.apps.test_interchain import ADMIN, HOUR_MS, ChainB
from tests.unit.consensus import test_light

RELAYER = PrivateKey(b"\x41" * 32)


class FakeA(Api):
    """The light-test chain, as `/commit/{h}` and `/validators?height=` serve it."""

    def __init__(self) -> None:
        super().__init__("http://a.invalid", httpx.Client())
        self.fetched: list[int] = []

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        if path.startswith("/commit/"):
            height = int(path.removeprefix("/commit/"))
            self.fetched.append(height)
            block = test_light.at(height)
            return 200, {
                "header_encoded": block.header.encode().hex(),
                "commit": {"encoded": block.commit.encode().hex()},
                "validators_encoded": block.validators.encode().hex(),
            }
        if path.startswith("/validators?height="):
            height = int(path.removeprefix("/validators?height="))
            return 200, {"encoded": test_light.at(height - 1).next_validators.encode().hex()}
        raise AssertionError(f"unexpected {method} {path}")


class FakeB(Api):
    """A real ledger: each submitted transaction is executed in a block of its own."""

    def __init__(self, chain: ChainB) -> None:
        super().__init__("http://b.invalid", httpx.Client())
        self.chain = chain
        self.codes: list[int] = []

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        if path.startswith("/account/"):
            nonce = decode(self.chain.app.query("account", RELAYER.address).value)[1]
            return 200, {"nonce": nonce}
        if path == "/tx?wait=commit":
            tx = Transaction.decode(bytes.fromhex(kwargs["json"]["tx"]))
            (result,) = self.chain.run([tx], test_light.NOW)
            self.codes.append(result.code)
            return 200, {"result": {"code": result.code, "log": result.log}}
        raise AssertionError(f"unexpected {method} {path}")


def test_the_relay_bisects_to_a_height_a_skip_cannot_reach_and_b_accepts_every_step() -> None:
    """From height 1 to 40 (no key of height 1's set signs 40), the relay submits a chain
    of updates, each accepted by B, ending at 40 exactly, with fewer than 39 steps."""
    b = ChainB()
    create = b.tx(ADMIN, client_create_payload(test_light.at(1), HOUR_MS))
    assert b.run([create], test_light.NOW)[0].ok
    a, fake_b = FakeA(), FakeB(b)
    relay = Relay(a, fake_b, RELAYER, now_ms=lambda: test_light.NOW)
    relay.chain_a, relay.chain_b = test_light.CHAIN, "chain-b"
    start = Client(HOUR_MS, 1, test_light.at(1).header.time_ms)
    after = relay.update_client(start, 40)
    assert after.height == 40
    assert fake_b.codes and set(fake_b.codes) == {0}
    assert 1 < len(fake_b.codes) < 39, fake_b.codes
    client = decode(b.app.query(QUERY_CLIENT, test_light.CHAIN.encode()).value)
    assert client[2] == 40


def test_the_relay_updates_the_client_below_its_latest_when_a_third_party_moved_it_past() -> None:
    """The relay saw B's client at 1; a third party moved it to 5. The relay still has
    height 3 verified (from 1, below the client's latest), and the client stays at 5."""
    b = ChainB()
    create = b.tx(ADMIN, client_create_payload(test_light.at(1), HOUR_MS))
    push = b.tx(ADMIN, client_update_payload(test_light.CHAIN, test_light.at(5)))
    assert [r.code for r in b.run([create, push], test_light.NOW)] == [0, 0]
    a, fake_b = FakeA(), FakeB(b)
    relay = Relay(a, fake_b, RELAYER, now_ms=lambda: test_light.NOW)
    relay.chain_a, relay.chain_b = test_light.CHAIN, "chain-b"
    relay.verified.add(1)
    pushed = Client(HOUR_MS, 5, test_light.at(5).header.time_ms)
    after = relay.update_client(pushed, 3)
    assert after == pushed
    assert fake_b.codes == [0]
    assert b.app.query(QUERY_CLIENT, test_light.CHAIN.encode()).ok
    assert decode(b.app.query(QUERY_CLIENT, test_light.CHAIN.encode()).value)[2] == 5
    # Asked again (another relay got there first, say), the refusal "verified already"
    # is what the step needed: no error.
    relay.verified.discard(3)
    assert relay.update_client(pushed, 3) == pushed
    assert fake_b.codes == [0, 8]


# ---------------------------------------------------------------- hostile answers


class _Hostile(BaseHTTPRequestHandler):
    """Answers every path by `ANSWERS`: a JSON text, or None for a body that never ends."""

    ANSWERS: ClassVar[dict[str, str | None]] = {
        "/status": "{}",
        "/list": "[1, 2, 3]",
        "/deep": "[" * 100_000 + "]" * 100_000,
        "/endless": None,
    }

    def do_GET(self) -> None:
        answer = self.ANSWERS.get(self.path.split("?")[0], "[]")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if answer is not None:
            self.wfile.write(answer.encode())
            return
        chunk = b" " * 65_536
        try:
            for _ in range(RESPONSE_BYTES_MAX // len(chunk) * 4):
                self.wfile.write(chunk)
        except OSError:
            return  # the client stopped reading: what the cap is for

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_answers_that_are_not_a_json_object_are_an_outage(hostile: str) -> None:
    with httpx.Client(timeout=10.0) as http:
        api = Api(hostile, http)
        for path, why in (
            ("/list", "not a JSON object"),
            ("/deep", "without JSON"),
            ("/endless", f"answer over {RESPONSE_BYTES_MAX} bytes"),
        ):
            with pytest.raises(TryLater) as info:
                api.get(path)
            assert why in str(info.value), path


def test_a_status_without_fields_fails_the_relay_in_one_line(
    hostile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`/status` answers {}: connect() reads no chain id; the relay fails with one line."""
    code = relay_main(
        hostile,
        hostile,
        RELAYER,
        once=True,
        create_client=False,
        trusting_period_ms=None,
        from_height=None,
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "malformed answer: KeyError" in err, err
    assert "Traceback" not in err
