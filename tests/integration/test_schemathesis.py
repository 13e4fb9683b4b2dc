"""Schemathesis against a live node's own /openapi.json finds nothing (issue 15, hostile clients).

A one-validator testnet runs as a real process; the `schemathesis` CLI loads
the description the node serves and runs all its phases (examples, coverage,
fuzzing, and stateful sequences that follow the description's links, e.g.
/status -> /block/{latest} -> /commit/{height}) with all its default checks:
no 5xx, every status and body as described, schema-valid requests accepted and
invalid ones refused, 405 with Allow for other methods, no request left
unanswered past REQUEST_TIMEOUT_S. What this proves: the description states
every constraint the handlers enforce and every answer they give, so a client
generated from it talks to the API that actually runs; and the node survives
the run committing blocks, having logged no contained handler failure.

Two documented answers fall outside schemathesis's default "schema-valid
requests are accepted" statuses, and CONFIG adds them where they apply:

- 422, on POST /tx, POST /txs, POST /evidence and GET /query: the request follows the
  description but its content is refused by the protocol or the application
  (a transaction must decode and carry a valid signature and nonce, which no
  JSON Schema can state; a query path the application does not answer);
- 426, on GET /stream: a websocket, and schemathesis speaks only plain HTTP.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from apps.ledger import transfer_tx
from consensus.crypto import PrivateKey
from tests.integration import nodes

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
TIMEOUT_S = 60  # node start and commits on a loaded 2-core machine
# The run's bounds: test cases per operation and phase, and a fixed seed so that a failure
# is reproduced by running the same command (printed with the output).
MAX_EXAMPLES = 25
SEED = 20261202
REQUEST_TIMEOUT_S = 10.0  # an answer slower than this is a failure: no request may hang
RUN_DEADLINE_S = 300  # the whole run; about a minute on a quiet 2-core machine
OPERATIONS = 14  # every (path, method) of node/openapi.py

_ACCEPTED = '"2xx", "3xx", "401", "403", "404", "409", "429", "5xx"'  # schemathesis's default
CONFIG = f"""
[[operations]]
include-operation-id = ["submitTx", "submitTxs", "submitEvidence", "query"]
checks.positive_data_acceptance.expected-statuses = [{_ACCEPTED}, "422"]

[[operations]]
include-operation-id = "stream"
checks.positive_data_acceptance.expected-statuses = [{_ACCEPTED}, "426"]
"""


async def test_schemathesis_reports_no_failure_against_a_live_node(
    tmp_path: Path, crypto: str
) -> None:
    """All phases and default checks of schemathesis against a running validator: exit code 0
    (no failure, no error), every operation tested, the stateful phase run; afterwards the
    node still commits and logged no handler failure."""
    net = nodes.create_testnet(tmp_path / "net", validators=1, accounts=2, crypto=crypto)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    async with nodes.running(net), nodes.open_api() as api:
        node = net.nodes[0]
        await api.wait_height([node], 2, TIMEOUT_S)
        # A committed transfer, so that blocks, proofs and accounts the run reaches have one.
        to = PrivateKey(b"\x0c" * 32).address
        r = await api.submit(node, transfer_tx(net.accounts[0], net.chain_id, 0, to, 7).encode())
        assert r.status_code == 202, r.text
        command = [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "run",
            node.rpc + "/openapi.json",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--request-timeout",
            str(REQUEST_TIMEOUT_S),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ]
        with trio.fail_after(RUN_DEADLINE_S):
            run = await trio.run_process(
                command,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=nodes.env(),
            )
        output = run.stdout.decode(errors="replace") + run.stderr.decode(errors="replace")
        assert run.returncode == 0, f"{' '.join(command)}\n{output}"
        assert f"Tested: {OPERATIONS}" in output, output
        assert "Stateful" in output and "Stateful (not applicable)" not in output, output
        before = await api.height(node)
        await api.wait_height([node], before + 2, TIMEOUT_S)
    events = [e.get("event") for e in node.log_events()]
    assert "rpc handler failed" not in events
    assert "rpc connection failed" not in events
