"""`archipelago`: the operator's command line.

Every command is a small function registered on one argparse parser, so that
`--help` exists everywhere and adding a command is adding one `_add_<name>`
function to `COMMANDS`. Operator mistakes (bad config, genesis or key file,
a home that exists or is locked) print one line, `archipelago: error: ...`,
and exit with EXIT_USAGE (2), the same code argparse uses for bad flags;
they never print a traceback.

Exit codes: 0 success; 1 a command failed at run time; 2 usage or refused to
start (bad input, file problems); 130 interrupted before the daemon took over
signal handling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

import node
from apps import APPS
from consensus.crypto import DEFAULT_SUITE, SUITES, PrivateKey
from consensus.genesis import GenesisError
from node.config import ConfigError, load_config
from node.home import (
    DEFAULT_ACCOUNTS,
    DEFAULT_BASE_PORT,
    DEFAULT_CHAIN_ID,
    DEFAULT_TESTNET_CHAIN_ID,
    HomeError,
    HomePaths,
    create_testnet,
    init_home,
    unsafe_reset,
)
from node.keys import KeyFileError, load_key, node_id, save_key
from node.logging import FORMATS, LEVELS, configure_logging, get_logger
from node.signstate import SignStateError
from node.wal import WALError

PROG = "archipelago"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
HOME_ENV = "ARCHIPELAGO_HOME"
DEFAULT_HOME = Path("~/.archipelago")


def _localnet(argv: list[str]) -> int:
    from devnet import main  # the tools above node/ load only when their command runs

    return main(argv)


def _perturb(argv: list[str]) -> int:
    from devnet.perturb import main

    return main(argv)


def _simulate(argv: list[str]) -> int:
    from sim import main

    return main(argv)


# Commands whose whole argument list belongs to another package's own parser:
# name -> (help line, function taking argv and returning an exit code). These are
# the only imports of sim/ and devnet/ under node/ (tests/unit/test_layers.py).
DELEGATED: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "localnet": (
        "run a local network of validators with optional load and live progress",
        _localnet,
    ),
    "perturb": (
        "run a local network under load with kills, pauses, partitions, restarts, clock skew "
        "and a full disk, then check every node's chain (see `perturb --help`)",
        _perturb,
    ),
    "simulate": (
        "run the seeded whole-cluster consensus simulator (see `simulate --help`)",
        _simulate,
    ),
}

# The errors an operator can cause and fix; anything else is a bug and keeps its traceback.
OPERATOR_ERRORS = (ConfigError, GenesisError, KeyFileError, HomeError, SignStateError, WALError)

log = get_logger(__name__)

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, with the one-line error format used for every operator error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in DELEGATED:
        return DELEGATED[args[0]][1](args[1:])
    parser = build_parser()
    ns = parser.parse_args(args)
    handler: Handler | None = getattr(ns, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(ns)
    except OPERATOR_ERRORS as e:
        _error(str(e))
        return EXIT_USAGE
    except BaseExceptionGroup as group:
        # A service that refuses to start (e.g. a corrupt store) raises inside
        # the daemon's nursery; report it like any other operator error.
        operator, rest = group.split(OPERATOR_ERRORS)
        if operator is None or rest is not None:
            raise
        _error(str(_first_leaf(operator)))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Archipelago: a Tendermint-style BFT consensus node.",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    for name, (help_line, _) in DELEGATED.items():
        # Listed for --help only: main() hands these to their module before parsing.
        sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--home",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"node home folder (default: ${HOME_ENV} or {DEFAULT_HOME})",
    )


def _add_crypto(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--crypto",
        choices=tuple(SUITES),
        default=DEFAULT_SUITE.name,
        help=f"{what} (default: %(default)s)",
    )


def _add_genesis(p: argparse.ArgumentParser, force: str) -> None:
    """The options of the commands that write a genesis (`init`, `testnet`), and --force."""
    p.add_argument(
        "--app", choices=tuple(APPS), default="ledger", help="application (default: %(default)s)"
    )
    _add_crypto(p, "the chain's signatures and hashes, fixed in genesis")
    p.add_argument("--force", action="store_true", help=force)


def _home(ns: argparse.Namespace) -> Path:
    home: Path | None = ns.home
    return (home if home is not None else _default_home()).expanduser()


# ---------------------------------------------------------------- init


def _add_init(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "init",
        help="create a node home: config, genesis, keys, data/",
        description="Create a single-validator node home. Refuses to overwrite existing "
        "keys or config unless --force is given.",
    )
    _add_home(p)
    p.add_argument("--chain-id", default=DEFAULT_CHAIN_ID, help="chain id (default: %(default)s)")
    p.add_argument("--moniker", default=None, help="node name (default: the host name)")
    _add_genesis(p, "overwrite existing keys, genesis and config, and delete the old chain's data")
    p.set_defaults(handler=_cmd_init)


def _cmd_init(ns: argparse.Namespace) -> int:
    moniker = ns.moniker or platform.node() or "node"
    home = init_home(
        _home(ns),
        chain_id=ns.chain_id,
        moniker=moniker,
        app=ns.app,
        force=ns.force,
        crypto=ns.crypto,
    )
    print(f"initialised {home.paths.root}")
    print(f"  chain_id:          {ns.chain_id}")
    print(f"  crypto:            {ns.crypto}")
    print(f"  moniker:           {home.moniker}")
    print(f"  node_id:           {home.node_id}")
    print(f"  validator_address: {home.validator_address}")
    return EXIT_OK


# ---------------------------------------------------------------- testnet


def _add_testnet(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "testnet",
        help="create N validator homes sharing one genesis, wired to each other",
        description="Create homes OUTPUT/node0..node{N-1} sharing one genesis. Node i uses "
        "ports BASE+10*i (p2p), +1 (rpc), +2 (metrics); every node lists all others "
        "in persistent_peers. Funded client keys go to OUTPUT/accounts/.",
    )
    p.add_argument("--validators", type=int, required=True, metavar="N")
    p.add_argument("--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--chain-id", default=DEFAULT_TESTNET_CHAIN_ID, help="(default: %(default)s)")
    p.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        metavar="P",
        help="(default: %(default)s)",
    )
    p.add_argument(
        "--hosts",
        default=None,
        metavar="h1,h2,...",
        help="one host per node to listen on and to dial (default: 127.0.0.1 for all)",
    )
    p.add_argument(
        "--accounts",
        type=int,
        default=DEFAULT_ACCOUNTS,
        metavar="K",
        help="funded client accounts to create (default: %(default)s)",
    )
    _add_genesis(p, "overwrite existing homes and accounts, and delete the old chains' data")
    p.set_defaults(handler=_cmd_testnet)


def _cmd_testnet(ns: argparse.Namespace) -> int:
    hosts = [h.strip() for h in ns.hosts.split(",")] if ns.hosts else None
    homes = create_testnet(
        ns.output,
        validators=ns.validators,
        chain_id=ns.chain_id,
        base_port=ns.base_port,
        hosts=hosts,
        accounts=ns.accounts,
        app=ns.app,
        force=ns.force,
        crypto=ns.crypto,
    )
    for home in homes:
        c = home.config
        print(
            f"{home.paths.root}  node_id={home.node_id}  p2p={c.p2p.listen}  "
            f"rpc={c.rpc.listen}  metrics={c.metrics.listen}"
        )
    if ns.accounts:
        print(f"{ns.accounts} funded accounts in {ns.output / 'accounts'}")
    return EXIT_OK


# ---------------------------------------------------------------- start


def _add_start(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "start",
        help="run the node until SIGTERM or SIGINT",
        description="Run the node daemon. Stops cleanly on SIGTERM or SIGINT. Speaks the "
        "systemd notify protocol when $NOTIFY_SOCKET is set.",
    )
    _add_home(p)
    p.add_argument("--log-level", choices=tuple(LEVELS), default=None, help="override [log] level")
    p.add_argument("--log-format", choices=FORMATS, default=None, help="override [log] format")
    p.set_defaults(handler=_cmd_start)


def _cmd_start(ns: argparse.Namespace) -> int:
    from node.daemon import Node  # the daemon imports every service; only `start` needs it

    paths = HomePaths(_home(ns))
    # Log the loading itself with the flags' settings, then switch to the config's.
    configure_logging(ns.log_level or "info", ns.log_format or "auto")
    config = load_config(paths.config)
    configure_logging(ns.log_level or config.log.level, ns.log_format or config.log.format)
    daemon = Node.from_home(paths.root, config=config)
    trio.run(daemon.run)
    return EXIT_FAILURE if daemon.failure else EXIT_OK


# ---------------------------------------------------------------- keys


def _add_keys(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("keys", help="show or create key files", description="Key file commands.")
    keys = p.add_subparsers(title="key commands", metavar="COMMAND", parser_class=_Parser)
    show = keys.add_parser(
        "show",
        help="print the node id and the validator's address and public key",
        description="Print the node id (from node_key.json) and the validator address and "
        "public key (from validator_key.json). Never prints private keys.",
    )
    _add_home(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_cmd_keys_show)
    new = keys.add_parser(
        "new",
        help="write a new key file (mode 0600)",
        description="Generate a key of the chosen crypto suite (an ed25519 key by default, "
        "an sm2 key for sm2-sm3 chains) and write it to PATH with mode 0600; prints its "
        "address and public key. Refuses to overwrite unless --force.",
    )
    _add_crypto(new, "the suite of the chain the key is for")
    new.add_argument("--output", type=Path, required=True, metavar="PATH")
    new.add_argument("--force", action="store_true", help="overwrite an existing file")
    new.add_argument("--json", action="store_true", help="print one JSON object")
    new.set_defaults(handler=_cmd_keys_new)
    p.set_defaults(handler=lambda _: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return EXIT_USAGE


def _cmd_keys_show(ns: argparse.Namespace) -> int:
    paths = HomePaths(_home(ns))
    node_key = load_key(paths.node_key)
    validator_key = load_key(paths.validator_key)
    info = {
        "node_id": node_id(node_key),
        "validator_address": validator_key.address.hex(),
        "validator_public_key": validator_key.public_key.hex(),
    }
    _print_info(info, as_json=ns.json)
    return EXIT_OK


def _cmd_keys_new(ns: argparse.Namespace) -> int:
    path: Path = ns.output
    if path.parent and not path.parent.is_dir():
        raise KeyFileError(path, f"directory {path.parent} does not exist")
    key = PrivateKey.generate(SUITES[ns.crypto])
    save_key(path, key, overwrite=ns.force)
    info = {"path": str(path), "address": key.address.hex(), "public_key": key.public_key.hex()}
    _print_info(info, as_json=ns.json)
    return EXIT_OK


def _print_info(info: dict[str, str], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info))
        return
    width = max(len(k) for k in info) + 1
    for k, v in info.items():
        print(f"{k + ':':<{width}} {v}")


# ---------------------------------------------------------------- unsafe-reset


def _add_unsafe_reset(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "unsafe-reset",
        help="delete the chain data in data/, keep keys and config",
        description="Delete everything under HOME/data (blocks, state, WAL, sign state) and "
        "leave a fresh sign state. Keys, genesis and config are kept. Unsafe for a "
        "validator of a live chain: it forgets what it signed. Refused while the node runs.",
    )
    _add_home(p)
    p.set_defaults(handler=_cmd_unsafe_reset)


def _cmd_unsafe_reset(ns: argparse.Namespace) -> int:
    root = _home(ns)
    removed = unsafe_reset(root)
    print(f"reset {root / 'data'}: removed {len(removed)} entries; keys and config kept")
    return EXIT_OK


# ---------------------------------------------------------------- version


def _add_version(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("version", help="print the version", description="Print the version.")
    p.set_defaults(handler=_cmd_version)


def _cmd_version(ns: argparse.Namespace) -> int:
    print(
        f"{PROG} {node.__version__} (python {platform.python_version()}, trio {trio.__version__})"
    )
    return EXIT_OK


# ---------------------------------------------------------------- relay


def _add_relay(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "relay",
        help="carry chain A's headers and send_out proofs to chain B",
        description="Follow chain A (--from), keep chain B's light client of A up to date "
        "and prove each send_out to B's chain id to B (--to), signing B's transactions with "
        "--key. --create-client first creates B's client of A from A's latest header (--key "
        "must then be B's admin). Ctrl-C or SIGTERM stops it cleanly.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="chain A's API")
    p.add_argument("--to", dest="destination", required=True, metavar="URL", help="chain B's API")
    p.add_argument("--key", required=True, type=Path, help="key file that signs on chain B")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--create-client", action="store_true", help="create B's client of A first")
    p.add_argument(
        "--trusting-period-ms",
        type=int,
        default=None,
        help="with --create-client (default: 14 days)",
    )
    p.add_argument("--from-height", type=int, default=None, help="first height of A to scan")
    p.add_argument("--log-level", choices=tuple(LEVELS), default="info")
    p.add_argument("--log-format", choices=FORMATS, default="auto")
    p.set_defaults(handler=_cmd_relay)


def _cmd_relay(ns: argparse.Namespace) -> int:
    from node.relay import main as relay_main

    configure_logging(ns.log_level, ns.log_format)
    return relay_main(
        ns.source,
        ns.destination,
        load_key(ns.key),
        once=ns.once,
        create_client=ns.create_client,
        trusting_period_ms=ns.trusting_period_ms,
        from_height=ns.from_height,
    )


def _add_client(sub: argparse._SubParsersAction[_Parser]) -> None:
    from node.client import add_commands

    add_commands(sub)


def _add_proof(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "proof",
        help="write a self-contained proof of a transaction or a state key to a file",
        description="Fetch from --node what proves a committed transaction or a state key "
        "(headers from genesis or --trusted-height, certificates, validator sets, Merkle paths) "
        "and write it to --output as one file (docs/PROTOCOL.md section 13) that "
        "`verify-proof` checks offline. The node is not trusted.",
    )
    kinds = p.add_subparsers(title="proof commands", metavar="KIND", parser_class=_Parser)
    for kind, what in (("tx", "a transaction's hash (64 hex)"), ("state", "a state key in hex")):
        k = kinds.add_parser(kind, help=f"prove {what}", description=f"Prove {what}.")
        k.add_argument("target", metavar="HASH" if kind == "tx" else "KEY_HEX", help=what)
        k.add_argument("--node", default="http://127.0.0.1:26657", help="node API URL")
        k.add_argument("--output", required=True, type=Path, help="the proof file to write")
        k.add_argument("--trusted-height", type=int, help="start from this header, not genesis")
        k.add_argument("--trusted-hash", help="the trusted header's block hash (64 hex)")
        k.set_defaults(handler=_cmd_proof, kind=kind)
    p.set_defaults(handler=lambda ns: _usage(p))


def _cmd_proof(ns: argparse.Namespace) -> int:
    from node.proofs import ProofBuildError, build_state_proof, build_tx_proof

    if (ns.trusted_height is None) != (ns.trusted_hash is None):
        _error("give both --trusted-height and --trusted-hash, or neither")
        return EXIT_USAGE
    try:
        target = bytes.fromhex(ns.target)
        trusted = None
        if ns.trusted_height is not None:
            trusted = (ns.trusted_height, bytes.fromhex(ns.trusted_hash))
    except ValueError:
        _error("HASH, KEY_HEX and --trusted-hash are hex")
        return EXIT_USAGE
    if ns.kind == "tx" and len(target) != 32:
        _error("a transaction hash is 64 hex characters")
        return EXIT_USAGE
    build = build_tx_proof if ns.kind == "tx" else build_state_proof
    try:
        data, said = build(ns.node, target, trusted)
        ns.output.write_bytes(data)
    except (ProofBuildError, OSError) as e:
        _error(str(e))
        return EXIT_FAILURE
    print(f"wrote {ns.output} ({len(data)} bytes): {said}")
    return EXIT_OK


def _add_verify_proof(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "verify-proof",
        help="check a proof file offline against a genesis",
        description="Check a proof file written by `proof` against --genesis, offline "
        "(proofcheck/verify.py, which may be copied alone). Exit 0 when it holds; 1 with one "
        "line naming the failed check when it does not, or when the proven transaction "
        "failed (check `result code`, unless --allow-failed).",
    )
    p.add_argument("file", type=Path, help="the proof file")
    p.add_argument("--genesis", required=True, type=Path, help="the genesis.json you trust")
    p.add_argument("--trusted-height", type=int, help="the trusted header the file starts from")
    p.add_argument("--trusted-hash", help="its block hash (64 hex)")
    p.add_argument(
        "--trusting-period-ms",
        type=int,
        help="refuse to follow a header older than this (default: unlimited, an offline audit)",
    )
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help="accept a transaction whose result code is not 0 (by default: exit 1, `result code`)",
    )
    p.set_defaults(handler=_cmd_verify_proof)


def _cmd_verify_proof(ns: argparse.Namespace) -> int:
    from proofcheck.verify import run

    return run(
        str(ns.file),
        str(ns.genesis),
        ns.trusted_height,
        ns.trusted_hash,
        ns.trusting_period_ms,
        prog=f"{PROG}: error",
        allow_failed=ns.allow_failed,
    )


# Registration order is the order in `archipelago --help`.
COMMANDS: tuple[Callable[[argparse._SubParsersAction[_Parser]], None], ...] = (
    _add_init,
    _add_testnet,
    _add_start,
    _add_keys,
    _add_unsafe_reset,
    _add_client,
    _add_proof,
    _add_verify_proof,
    _add_relay,
    _add_version,
)
