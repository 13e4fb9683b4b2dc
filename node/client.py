"""The client side of the command line: talk to a running node over its HTTP API.

`tx transfer`, `tx member`, `tx set-validator`, `status`, `block` and `doctor`
are what an operator or a script uses against a node (`--node URL`, default
the local node's API).
Errors (node unreachable, a refused transaction, a bad flag) are one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from apps.ledger import member_tx, transfer_tx, validator_tx
from consensus.crypto import PrivateKey
from consensus.types import Transaction
from node.config import load_config
from node.keys import KeyFileError, load_key

DEFAULT_NODE = "http://127.0.0.1:26657"
REQUEST_TIMEOUT_S = 30.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class ClientError(Exception):
    """The node could not be reached or refused the request; the message says which."""


def _url(node: str, path: str) -> str:
    base = node if "://" in node else f"http://{node}"
    return base.rstrip("/") + path


def request(node: str, method: str, path: str, **kwargs: Any) -> Any:
    """One API call; returns the JSON body, raises ClientError with the node's error text."""
    try:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            r = http.request(method, _url(node, path), **kwargs)
    except httpx.HTTPError as e:
        raise ClientError(f"cannot reach the node at {node}: {e}") from None
    try:
        body = r.json()
    except ValueError:
        raise ClientError(f"{node} answered HTTP {r.status_code} without JSON") from None
    if r.status_code >= 400 and not (r.status_code == 504 and "hash" in body):
        message = body.get("error", r.reason_phrase) if isinstance(body, dict) else body
        raise ClientError(f"the node refused: {message} (HTTP {r.status_code})")
    return body


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _add_signing(p: argparse.ArgumentParser, key_help: str) -> None:
    """The options of every `tx` command: who signs, at which nonce, where to, whether to wait."""
    p.add_argument("--key", required=True, type=Path, help=key_help)
    p.add_argument("--nonce", type=int, help="nonce (default: the account's next nonce)")
    p.add_argument("--node", default=DEFAULT_NODE, help=f"node API URL ({DEFAULT_NODE})")
    p.add_argument("--no-wait", action="store_true", help="return once admitted")


def add_commands(sub: Any, add_parser_kwargs: dict[str, Any] | None = None) -> None:
    """Register the client commands on the main parser's subcommands."""
    tx = sub.add_parser(
        "tx",
        help="build, sign and submit transactions",
        description="Build, sign and submit transactions.",
    )
    tx_sub = tx.add_subparsers(title="tx commands", metavar="COMMAND")
    transfer = tx_sub.add_parser(
        "transfer",
        help="send a ledger transfer signed with a key file",
        description="Sign a ledger transfer with --key and submit it to --node; waits for "
        "the commit unless --no-wait.",
    )
    transfer.add_argument("--to", required=True, help="recipient address (40 hex characters)")
    transfer.add_argument("--amount", required=True, type=int, help="amount, a positive integer")
    _add_signing(transfer, "the sender's key file")
    transfer.set_defaults(handler=_cmd_transfer)

    member = tx_sub.add_parser(
        "member",
        help="admit a node id to the network, or remove it (set_member)",
        description="Sign a set_member transaction with --key (on a ledger chain, the genesis "
        "admin's key: node0's validator_key.json in a testnet) and submit it to --node. The "
        "change is in force once its block commits: a removed node is disconnected and "
        "refused from then on.",
    )
    member.add_argument("node_id", help="the node id (40 hex characters; `keys show`)")
    member.add_argument("--remove", action="store_true", help="remove it instead of admitting it")
    _add_signing(member, "the signer's key file")
    member.set_defaults(handler=_cmd_member)

    validator = tx_sub.add_parser(
        "set-validator",
        help="add a validator, change its power, or remove it (set_validator)",
        description="Sign a set_validator transaction with --key (the ledger chain's genesis "
        "admin: node0's validator_key.json in a testnet) and submit it to --node. The new "
        "power takes effect two heights after the block that commits it; power 0 removes "
        "the validator.",
    )
    validator.add_argument(
        "public_key", help="the validator's public key in hex (`keys show --home ITS_HOME`)"
    )
    validator.add_argument("--power", required=True, type=int, help="voting power, 0 to remove it")
    _add_signing(validator, "the admin's key file")
    validator.set_defaults(handler=_cmd_set_validator)

    status = sub.add_parser(
        "status",
        help="show a running node's status",
        description="Show a running node's status (GET /status).",
    )
    status.add_argument("--node", default=DEFAULT_NODE, help=f"node API URL ({DEFAULT_NODE})")
    status.set_defaults(handler=_cmd_status)

    block = sub.add_parser(
        "block",
        help="show a committed block",
        description="Show a committed block (GET /block/HEIGHT).",
    )
    block.add_argument("height", help="a height, or 'latest'")
    block.add_argument("--node", default=DEFAULT_NODE, help=f"node API URL ({DEFAULT_NODE})")
    block.set_defaults(handler=_cmd_block)

    doctor = sub.add_parser(
        "doctor",
        help="explain why a node or the chain is not progressing",
        description="Ask the node in --home (through its API) what stops it or the chain, "
        "and what to do about each finding.",
    )
    doctor.add_argument("--home", type=Path, required=True, help="the node's home folder")
    doctor.set_defaults(handler=_cmd_doctor)


def _cmd_transfer(ns: argparse.Namespace) -> int:
    try:
        to = bytes.fromhex(ns.to)
    except ValueError:
        to = b""
    if len(to) != 20:
        return _fail("--to must be a 40-character hex address", EXIT_USAGE)
    if ns.amount < 1:
        return _fail("--amount must be a positive integer", EXIT_USAGE)
    return _sign_and_submit(
        ns, lambda key, chain_id, nonce: transfer_tx(key, chain_id, nonce, to, ns.amount)
    )


def _cmd_member(ns: argparse.Namespace) -> int:
    try:
        node_id = bytes.fromhex(ns.node_id)
    except ValueError:
        node_id = b""
    if len(node_id) != 20:
        return _fail("node_id must be 40 hex characters", EXIT_USAGE)
    return _sign_and_submit(
        ns, lambda key, chain_id, nonce: member_tx(key, chain_id, nonce, node_id, not ns.remove)
    )


def _cmd_set_validator(ns: argparse.Namespace) -> int:
    try:
        public_key = bytes.fromhex(ns.public_key)
    except ValueError:
        public_key = b""
    if not public_key:
        return _fail("public_key must be the validator's public key in hex", EXIT_USAGE)
    if ns.power < 0:
        return _fail("--power must be 0 (remove) or a positive integer", EXIT_USAGE)
    return _sign_and_submit(
        ns, lambda key, chain_id, nonce: validator_tx(key, chain_id, nonce, public_key, ns.power)
    )


def _sign_and_submit(
    ns: argparse.Namespace, build: Callable[[PrivateKey, str, int], Transaction]
) -> int:
    """Sign with --key at its account's next nonce (or --nonce), submit, print the answer."""
    try:
        key = load_key(ns.key)
        status = request(ns.node, "GET", "/status")
        nonce = ns.nonce
        if nonce is None:
            nonce = request(ns.node, "GET", f"/account/{key.address.hex()}")["nonce"]
        tx = build(key, status["chain_id"], nonce)
        wait = "check" if ns.no_wait else "commit"
        body = request(ns.node, "POST", f"/tx?wait={wait}", json={"tx": tx.encode().hex()})
    except (ClientError, KeyFileError) as e:
        return _fail(str(e), EXIT_FAILURE)
    _print(body)
    result = body.get("result") or body.get("check") or {}
    return EXIT_OK if result.get("code", 0) == 0 and "error" not in body else EXIT_FAILURE


def _cmd_status(ns: argparse.Namespace) -> int:
    try:
        _print(request(ns.node, "GET", "/status"))
    except ClientError as e:
        return _fail(str(e), EXIT_FAILURE)
    return EXIT_OK


def _cmd_block(ns: argparse.Namespace) -> int:
    if ns.height != "latest" and not ns.height.isdigit():
        return _fail("HEIGHT must be a positive integer or 'latest'", EXIT_USAGE)
    try:
        _print(request(ns.node, "GET", f"/block/{ns.height}"))
    except ClientError as e:
        return _fail(str(e), EXIT_FAILURE)
    return EXIT_OK


def _cmd_doctor(ns: argparse.Namespace) -> int:
    config = load_config(ns.home / "config.toml")
    listen = config.rpc.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::", "") else listen.host
    node = f"http://{host}:{listen.port}"
    try:
        status = request(node, "GET", "/status")
    except ClientError as e:
        print(f"The node is not answering at {node}: {e}")
        print(
            "  -> start it (`archipelago start --home ...` or `systemctl start archipelago`)"
            " and read its log for the reason it stopped."
        )
        return EXIT_FAILURE
    c = status.get("consensus") or {}
    print(f"node {status['moniker']} ({status['node_id'][:12]}), chain {status['chain_id']}")
    print(
        f"  height {status['latest_height']}, mode {status['sync']['mode']} "
        f"({status['sync']['reason']}), peers {status['peers']}, "
        f"consensus round {c.get('round', '-')} step {c.get('step', '-')}"
    )
    findings = status.get("diagnosis", [])
    if not findings:
        print("No problems found: the node is connected and the chain is progressing.")
        return EXIT_OK
    for f in findings:
        print(f"[{f['severity']}] {f['problem']}")
        print(f"  -> {f['advice']}")
    return EXIT_FAILURE if any(f["severity"] == "critical" for f in findings) else EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"archipelago: error: {message}", file=sys.stderr)
    return code
