"""config.toml: the operator's settings, loaded strictly into a frozen dataclass tree.

A typo in a config file must stop the node with a message that says exactly
what is wrong, not be ignored until the setting matters in production. So
loading rejects unknown sections and keys, wrong types, out-of-range numbers,
unparsable `host:port` addresses and malformed peer strings, each as a
`ConfigError(file, key, expected)` whose message is one line. Every key has a
default, so a config file only needs the keys an operator changes.

Each setting is declared once, as a dataclass field whose metadata carries
its documentation and its parser (the consensus timeouts, declared in
consensus/config.py, carry their range); the loader, the commented writer
(`render_config`) and the reference in docs/OPERATIONS.md all follow from
those declarations.

It is longer than the house's 600 lines on purpose: each setting is one
field carrying its default, range and description, and OPERATIONS.md's
reference table is checked against them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from consensus import config as consensus_config
from consensus.types import TX_BYTES_MAX
from node.storage import MAP_BYTES_DEFAULT

CONFIG_FILE_NAME = "config.toml"
NODE_ID_HEX_CHARS = 40
MONIKER_CHARS_MAX = 64
# The longest a DNS name may be (RFC 1035); anything longer cannot resolve.
HOSTNAME_CHARS_MAX = 253
PERSISTENT_PEERS_MAX = 1_000
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_NODE_ID = re.compile(r"^[0-9a-fA-F]{40}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
STORAGE_BACKENDS = ("lmdb",)
MAP_BYTES_MIN = 16 * 1024 * 1024
MAP_BYTES_MAX = 1 << 44  # 16 TiB: far beyond any disk this node is meant for


class ConfigError(Exception):
    """A config file is missing, unparsable, or holds a wrong value.

    `str(error)` is one line naming the file, the key and what was expected.
    """

    def __init__(self, file: Path | str, key: str, expected: str) -> None:
        self.file = Path(file)
        self.key = key
        self.expected = expected
        where = f"{file}: key {key!r}" if key else f"{file}"
        super().__init__(f"{where}: expected {expected}")


# ---------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint written `host:port` (IPv6 as `[::1]:port`)."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, port_zero_ok: bool = False) -> Address:
        """Parse `host:port`; raise ValueError on anything else.

        Port 0 ("any free port") only makes sense for a listener, so only a
        caller parsing a listen address allows it.
        """
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError("no host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError("bad IPv6 address") from None
        elif ":" in host:
            raise ValueError("IPv6 hosts must be written in brackets")
        elif not _valid_host(host):
            raise ValueError("bad host")
        if not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("bad port")
        port = int(port_text)
        if port > 65535 or (port == 0 and not port_zero_ok):
            raise ValueError("port out of range")
        return cls(host, port)


def _valid_host(host: str) -> bool:
    if len(host) > HOSTNAME_CHARS_MAX:
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    if labels[-1].isdigit():
        return False  # looks like a broken IPv4 address, e.g. 127.0.0.300
    return all(_LABEL.match(label) for label in labels)


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer to dial: `<node id, 40 hex>@host:port`."""

    node_id: str
    address: Address

    def __str__(self) -> str:
        return f"{self.node_id}@{self.address}"

    @classmethod
    def parse(cls, text: str) -> Peer:
        node, sep, addr = text.partition("@")
        if not sep or not _NODE_ID.match(node):
            raise ValueError("bad node id")
        return cls(node.lower(), Address.parse(addr))


# ---------------------------------------------------------------- kinds of values


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one setting is parsed from TOML, described, and written back."""

    expected: str
    parse: Callable[[Any], Any]  # raises ValueError when the value is wrong
    render: Callable[[Any], str]


def _integer(lo: int, hi: int) -> _Kind:
    def parse(v: Any) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError
        return v

    return _Kind(f"an integer in {lo}..{hi}", parse, lambda v: str(v))


def _boolean() -> _Kind:
    def parse(v: Any) -> bool:
        if type(v) is not bool:
            raise ValueError
        return v

    return _Kind("true or false", parse, lambda v: "true" if v else "false")


def _choice(options: tuple[str, ...]) -> _Kind:
    def parse(v: Any) -> str:
        if v not in options or not isinstance(v, str):
            raise ValueError
        return v

    return _Kind(f"one of {', '.join(repr(o) for o in options)}", parse, _toml_str)


def _moniker() -> _Kind:
    def parse(v: Any) -> str:
        if not isinstance(v, str) or not 1 <= len(v) <= MONIKER_CHARS_MAX or not v.isprintable():
            raise ValueError
        return v

    return _Kind(f"a printable string of 1..{MONIKER_CHARS_MAX} characters", parse, _toml_str)


def _address(*, listen: bool, optional: bool = False) -> _Kind:
    def parse(v: Any) -> Address | None:
        if optional and v == "":
            return None
        if not isinstance(v, str):
            raise ValueError
        return Address.parse(v, port_zero_ok=listen)

    expected = "a string host:port (IPv6 as [addr]:port)"
    if optional:
        expected += ' or ""'
    return _Kind(expected, parse, lambda v: _toml_str("" if v is None else str(v)))


def _peers() -> _Kind:
    def parse(v: Any) -> tuple[Peer, ...]:
        if not isinstance(v, list) or len(v) > PERSISTENT_PEERS_MAX:
            raise ValueError
        peers = tuple(Peer.parse(p) if isinstance(p, str) else _raise() for p in v)
        if len({p.node_id for p in peers}) != len(peers):
            raise ValueError
        return peers

    def render(v: tuple[Peer, ...]) -> str:
        if not v:
            return "[]"
        return "[\n" + "".join(f"    {_toml_str(str(p))},\n" for p in v) + "]"

    return _Kind(
        f'a list of up to {PERSISTENT_PEERS_MAX} distinct "<node id, 40 hex>@host:port" strings',
        parse,
        render,
    )


def _node_ids() -> _Kind:
    def parse(v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or len(v) > PERSISTENT_PEERS_MAX:
            raise ValueError
        ids = tuple(
            p
            if isinstance(p, str) and len(p) == 40 and all(c in "0123456789abcdef" for c in p)
            else _raise()
            for p in v
        )
        if len(set(ids)) != len(ids):
            raise ValueError
        return ids

    def render(v: tuple[str, ...]) -> str:
        if not v:
            return "[]"
        return "[\n" + "".join(f"    {_toml_str(p)},\n" for p in v) + "]"

    return _Kind(
        f"a list of up to {PERSISTENT_PEERS_MAX} distinct node ids (40 lowercase hex characters)",
        parse,
        render,
    )


def _raise() -> Any:
    raise ValueError


def _toml_str(v: str) -> str:
    # A JSON string with non-ASCII escaped is also a valid TOML basic string.
    return json.dumps(v)


def _meta(kind: _Kind, doc: str) -> dict[str, Any]:
    return {"kind": kind, "doc": doc}


# ---------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class P2PConfig:
    doc: ClassVar[str] = "Peer-to-peer network: the authenticated TCP transport and gossip."

    listen: Address = field(
        default=Address("0.0.0.0", 26656),
        metadata=_meta(_address(listen=True), "Where the node accepts peer connections."),
    )
    external_address: Address | None = field(
        default=None,
        metadata=_meta(
            _address(listen=False, optional=True),
            'The address peers should dial to reach this node, if not `listen` ("" = use listen).',
        ),
    )
    persistent_peers: tuple[Peer, ...] = field(
        default=(),
        metadata=_meta(
            _peers(), "Peers this node always keeps a connection to, redialled with backoff."
        ),
    )
    allowed_peers: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            _node_ids(),
            "Node ids this node accepts besides the chain's members (genesis `members`, "
            "changed by set_member transactions). When this list or the chain's member list "
            "is not empty, any other node id is refused right after the handshake.",
        ),
    )
    inbound_peers_max: int = field(
        default=40,
        metadata=_meta(
            _integer(0, 10_000),
            "Inbound connections accepted at most; further ones are closed after the handshake.",
        ),
    )
    outbound_peers_max: int = field(
        default=10,
        metadata=_meta(
            _integer(0, 10_000),
            "Outbound connections dialled at most (persistent peers are always dialled).",
        ),
    )
    frame_bytes_max: int = field(
        default=16 * 1024 * 1024,
        metadata=_meta(
            _integer(64 * 1024, 64 * 1024 * 1024),
            "Largest frame accepted from a peer, checked before allocation; a peer that "
            "announces more is disconnected. Must exceed the genesis block_bytes_max.",
        ),
    )
    ban_duration_s: int = field(
        default=3600,
        metadata=_meta(
            _integer(0, 30 * 24 * 3600),
            "How long a peer that sent invalid data stays banned (0 = disconnect only).",
        ),
    )
    pex: bool = field(
        default=True,
        metadata=_meta(
            _boolean(),
            "Exchange peer addresses with peers. Loopback and private addresses are learnt "
            "only from peers on such addresses (never from one on a public address): list "
            "nodes of your LAN that only a public peer knows as `persistent_peers`.",
        ),
    )
    # Limits against hostile peers (network.NetworkConfig has the reasons for
    # each default; docs/PROTOCOL.md section 8.9 lists all of them).
    handshake_timeout_s: int = field(
        default=10,
        metadata=_meta(
            _integer(1, 600),
            "A connection that has not finished the Noise handshake in this time is closed.",
        ),
    )
    handshakes_pending_max: int = field(
        default=64,
        metadata=_meta(
            _integer(1, 10_000),
            "Handshakes in progress at once; further connections are closed unread.",
        ),
    )
    handshakes_per_ip_per_s_max: int = field(
        default=10,
        metadata=_meta(
            _integer(1, 100_000),
            "New inbound connections per second from one IP (burst of as many); more are "
            "closed unread. Hosts of persistent peers are exempt.",
        ),
    )
    handshake_failures_ip_ban: int = field(
        default=20,
        metadata=_meta(
            _integer(0, 1_000_000),
            "Failed handshakes from one IP within ban_duration_s that ban the IP (its bytes "
            "failed the Noise or identity checks; closes and timeouts do not count). A banned "
            "IP may still start one handshake per second; persistent peers' hosts are never "
            "banned; 0 disables.",
        ),
    )
    idle_timeout_s: int = field(
        default=30,
        metadata=_meta(
            _integer(11, 3600),
            "A peer from which nothing arrived for this long is closed (peers PING every 10 s).",
        ),
    )
    retransmit_timeout_s: int = field(
        default=4,
        metadata=_meta(
            _integer(0, 3600),
            "A connection whose data has gone unacknowledged by the peer's TCP for this long "
            "(the link is dead: cut, interface down) is closed, and persistent peers are "
            "redialled after at most 2 s, so a node is back within seconds of its link. A peer "
            "that acknowledges but does not read is left to send_timeout_s. Linux only; "
            "0 disables.",
        ),
    )
    frame_timeout_s: int = field(
        default=20,
        metadata=_meta(
            _integer(1, 3600),
            "Once a frame's first bytes arrived, the time its sender has to deliver the rest; "
            "a stalled frame closes the connection.",
        ),
    )
    send_timeout_s: int = field(
        default=20,
        metadata=_meta(
            _integer(1, 3600),
            "A peer must take each 256 KiB we write within this time, or it is closed as "
            "stalled and its send queue freed.",
        ),
    )
    rate_bytes_per_s_max: int = field(
        default=64 * 1024 * 1024,
        metadata=_meta(
            _integer(64 * 1024, 1 << 40),
            "Bytes per second read from one peer; a faster sender is paused (TCP backpressure).",
        ),
    )
    rate_messages_per_s_max: int = field(
        default=100_000,
        metadata=_meta(
            _integer(1, 1_000_000_000),
            "Messages per second read from one peer; a faster sender is paused.",
        ),
    )
    large_frames_bytes_max: int = field(
        default=64 * 1024 * 1024,
        metadata=_meta(
            _integer(64 * 1024 * 1024, 16 * 1024 * 1024 * 1024),
            "Memory reserved, across all peers, for frames over 256 KiB (blocks) while they "
            "arrive; when it is full, readers wait (TCP backpressure).",
        ),
    )
    inbox_bytes_max: int = field(
        default=64 * 1024 * 1024,
        metadata=_meta(
            _integer(64 * 1024 * 1024, 16 * 1024 * 1024 * 1024),
            "Payload bytes received from peers and not yet taken by the node; when full, "
            "readers wait.",
        ),
    )
    send_queues_bytes_max: int = field(
        default=256 * 1024 * 1024,
        metadata=_meta(
            _integer(64 * 1024 * 1024, 16 * 1024 * 1024 * 1024),
            "Payload bytes queued for all peers together (a gossiped payload counts once); "
            "beyond it a message is dropped for that peer.",
        ),
    )


@dataclass(frozen=True, slots=True)
class RPCConfig:
    doc: ClassVar[str] = "HTTP JSON API and websocket stream."

    listen: Address = field(
        default=Address("127.0.0.1", 26657),
        metadata=_meta(
            _address(listen=True),
            "Where the HTTP API listens. Keep it on loopback unless a proxy guards it.",
        ),
    )
    request_body_bytes_max: int = field(
        default=1024 * 1024,
        metadata=_meta(
            _integer(1024, 64 * 1024 * 1024),
            "Largest request body accepted; larger requests get HTTP 413.",
        ),
    )
    tx_wait_timeout_ms: int = field(
        default=10_000,
        metadata=_meta(
            _integer(1, 600_000),
            "How long a submit waiting for commit waits before answering with a timeout.",
        ),
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    doc: ClassVar[str] = "Prometheus metrics, on their own listener."

    enabled: bool = field(default=True, metadata=_meta(_boolean(), "Serve /metrics."))
    listen: Address = field(
        default=Address("127.0.0.1", 26660),
        metadata=_meta(_address(listen=True), "Where the Prometheus endpoint listens."),
    )


@dataclass(frozen=True, slots=True)
class ConsensusConfig(consensus_config.ConsensusConfig):
    """The machine's timeouts (declared, with their ranges, in consensus/config.py) and the
    node's own consensus settings; the daemon hands it to the machine as it is."""

    doc: ClassVar[str] = (
        "Consensus timeouts. A round r waits timeout_X_ms + r * timeout_X_delta_ms, "
        "so timeouts grow until the network is fast enough to decide."
    )

    create_empty_blocks: bool = field(
        default=True,
        metadata=_meta(
            _boolean(),
            "Make blocks even when no transactions wait. With false, after an empty block "
            "the next height waits for transactions (one block follows each block with "
            "transactions, to carry the app hash they made).",
        ),
    )
    create_empty_blocks_interval_ms: int = field(
        default=0,
        metadata=_meta(
            _integer(0, 86_400_000),
            "With create_empty_blocks = false: make a block anyway after this long "
            "without one (a heartbeat); 0: never.",
        ),
    )
    doppelganger_heights: int = field(
        default=2,
        metadata=_meta(
            _integer(0, 1000),
            "At start, watch this many heights for votes signed with our own validator key "
            "before signing (another instance running with the same key); 0 disables.",
        ),
    )
    doppelganger_halt_ms: int = field(
        default=20_000,
        metadata=_meta(
            _integer(1, 3_600_000),
            "End the doppelganger watch early when no block has committed for this long: a "
            "halted chain cannot show another instance, and may be waiting for our vote.",
        ),
    )
    health_stall_intervals: int = field(
        default=10,
        metadata=_meta(
            _integer(0, 1_000_000),
            "GET /health fails when no block has committed for this many block intervals "
            "(timeout_commit_ms plus one round's timeouts); 0 disables the check.",
        ),
    )

    def block_interval_ms(self) -> int:
        """The time a height takes when its first round fails only by timeouts."""
        return (
            self.timeout_commit_ms
            + self.timeout_propose_ms
            + self.timeout_prevote_ms
            + self.timeout_precommit_ms
        )


@dataclass(frozen=True, slots=True)
class MempoolConfig:
    doc: ClassVar[str] = "Pending transactions. When full, new transactions are rejected."

    txs_max: int = field(
        default=20_000,
        metadata=_meta(_integer(1, 10_000_000), "Transactions held at most; more are rejected."),
    )
    bytes_max: int = field(
        default=64 * 1024 * 1024,
        metadata=_meta(
            _integer(1024, 16 * 1024 * 1024 * 1024),
            "Total transaction bytes held at most; more are rejected.",
        ),
    )
    tx_bytes_max: int = field(
        default=TX_BYTES_MAX,
        metadata=_meta(
            _integer(1, TX_BYTES_MAX),
            f"Largest single transaction accepted (the protocol allows at most {TX_BYTES_MAX}).",
        ),
    )
    recheck: bool = field(
        default=True,
        metadata=_meta(
            _boolean(), "Re-check pending transactions against the state after each block."
        ),
    )
    broadcast_batch_txs_max: int = field(
        default=1000,
        metadata=_meta(
            _integer(1, 100_000), "Transactions sent to a peer in one gossip message at most."
        ),
    )
    broadcast_batch_bytes_max: int = field(
        default=256 * 1024,
        metadata=_meta(
            _integer(1024, 16 * 1024 * 1024),
            "Bytes of transactions sent to a peer in one gossip message at most.",
        ),
    )


@dataclass(frozen=True, slots=True)
class BlockSyncConfig:
    doc: ClassVar[str] = "Catching up from peers by downloading committed blocks."

    enabled: bool = field(
        default=True, metadata=_meta(_boolean(), "Sync blocks from peers when behind.")
    )
    fallback_lag_heights: int = field(
        default=10,
        metadata=_meta(
            _integer(1, 1_000_000),
            "Switch from consensus back to block sync when peers are this many heights ahead.",
        ),
    )


@dataclass(frozen=True, slots=True)
class StorageConfig:
    doc: ClassVar[str] = (
        "The embedded store under data/. Every block commit is fsync'd; durability is "
        "not configurable."
    )

    backend: str = field(
        default=STORAGE_BACKENDS[0],
        metadata=_meta(_choice(STORAGE_BACKENDS), "Store engine (only one is built in)."),
    )
    map_bytes: int = field(
        default=MAP_BYTES_DEFAULT,
        metadata=_meta(
            _integer(MAP_BYTES_MIN, MAP_BYTES_MAX),
            "Size of the LMDB memory map: the most the store can hold. The file is sparse, "
            "so a large value costs no disk; when full, writes fail with StorageFullError.",
        ),
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    doc: ClassVar[str] = "Logs go to stderr."

    level: str = field(
        default="info", metadata=_meta(_choice(_LOG_LEVELS), "Lowest level written.")
    )
    format: str = field(
        default="auto",
        metadata=_meta(
            _choice(_LOG_FORMATS),
            "json: one JSON object per line; console: readable lines; "
            "auto: console on a terminal, json otherwise.",
        ),
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config.toml. Build from defaults with `Config()`, or `load_config(path)`."""

    doc: ClassVar[str] = "Archipelago node configuration."

    moniker: str = field(
        default="node", metadata=_meta(_moniker(), "A human-readable name for this node.")
    )
    p2p: P2PConfig = P2PConfig()
    rpc: RPCConfig = RPCConfig()
    metrics: MetricsConfig = MetricsConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    mempool: MempoolConfig = MempoolConfig()
    blocksync: BlockSyncConfig = BlockSyncConfig()
    storage: StorageConfig = StorageConfig()
    log: LogConfig = LogConfig()


# ---------------------------------------------------------------- loading


def _settings(cls: type) -> Iterator[dataclasses.Field[Any]]:
    """The fields read from config.toml: those with a kind, or a range (consensus/config.py)."""
    return (f for f in dataclasses.fields(cls) if _is_setting(f))


def _sections(cls: type) -> Iterator[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(cls) if not _is_setting(f))


def _is_setting(f: dataclasses.Field[Any]) -> bool:
    return "kind" in f.metadata or "range" in f.metadata


def _kind(f: dataclasses.Field[Any]) -> _Kind:
    kind: _Kind = f.metadata["kind"] if "kind" in f.metadata else _integer(*f.metadata["range"])
    return kind


def _section_type(f: dataclasses.Field[Any]) -> type:
    default = f.default
    assert dataclasses.is_dataclass(default) and not isinstance(default, type)
    return type(default)


def _build(cls: type, table: dict[str, Any], file: Path, prefix: str) -> Any:
    settings = {f.name: f for f in _settings(cls)}
    sections = {f.name: f for f in _sections(cls)} if cls is Config else {}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        name = f"{prefix}{key}"
        if key in settings:
            kind = _kind(settings[key])
            try:
                values[key] = kind.parse(raw)
            except ValueError:
                raise ConfigError(file, name, f"{kind.expected}, got {_show(raw)}") from None
        elif key in sections:
            if not isinstance(raw, dict):
                raise ConfigError(file, name, f"a [{key}] table")
            values[key] = _build(_section_type(sections[key]), raw, file, f"{key}.")
        else:
            known = sorted(settings) + [f"[{s}]" for s in sorted(sections)]
            raise ConfigError(
                file, name, f"a known key (this one is unknown; known here: {', '.join(known)})"
            )
    return cls(**values)


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_config(text: str, file: Path | str = CONFIG_FILE_NAME) -> Config:
    """Parse config.toml text; `file` is only used in error messages."""
    file = Path(file)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(file, "", "valid TOML (nested too deeply)") from None
    config: Config = _build(Config, table, file, "")
    _check_consistency(config, file)
    return config


def load_config(path: Path | str) -> Config:
    """Load and check config.toml; raise ConfigError (one line) on any problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "a config file (none found; run `archipelago init`)") from None
    except IsADirectoryError:
        raise ConfigError(path, "", "a file, found a directory") from None
    except OSError as e:
        raise ConfigError(path, "", f"a readable file ({e.strerror})") from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(path, "", "UTF-8 text") from None
    return parse_config(text, path)


def _check_consistency(config: Config, file: Path) -> None:
    listeners = [("p2p.listen", config.p2p.listen), ("rpc.listen", config.rpc.listen)]
    if config.metrics.enabled:
        listeners.append(("metrics.listen", config.metrics.listen))
    seen: dict[tuple[str, int], str] = {}
    for key, addr in listeners:
        if addr.port == 0:
            continue
        other = seen.setdefault((addr.host, addr.port), key)
        if other != key:
            raise ConfigError(file, key, f"a port different from {other} ({addr})")


# ---------------------------------------------------------------- writing


def render_config(config: Config) -> str:
    """config.toml text for `config`, every key present and commented."""
    lines = [
        f"# {Config.doc}",
        "# Every key is optional; a missing key takes the default shown.",
        "",
    ]
    lines += _render_settings(config)
    for section in _sections(Config):
        value = getattr(config, section.name)
        lines += ["", *_comment(type(value).doc), f"[{section.name}]", ""]
        lines += _render_settings(value)
    return "\n".join(lines).rstrip() + "\n"


def save_config(path: Path | str, config: Config) -> None:
    Path(path).write_text(render_config(config))


def _render_settings(obj: Any) -> list[str]:
    lines: list[str] = []
    for f in _settings(type(obj)):
        kind = _kind(f)
        lines += _comment(f.metadata["doc"])
        lines.append(f"# Expected: {kind.expected}. Default: {_default_text(f, kind)}.")
        lines.append(f"{f.name} = {kind.render(getattr(obj, f.name))}")
        lines.append("")
    return lines


def _default_text(f: dataclasses.Field[Any], kind: _Kind) -> str:
    return kind.render(f.default).replace("\n", " ").replace("    ", "")


def _comment(text: str) -> list[str]:
    words = text.split()
    lines: list[str] = []
    line = "#"
    for word in words:
        if len(line) + 1 + len(word) > 88 and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def reference_rows() -> list[tuple[str, str, str, str]]:
    """(key, default, expected, doc) for every setting, for the operations manual."""
    rows: list[tuple[str, str, str, str]] = []
    for f in _settings(Config):
        kind = _kind(f)
        rows.append((f.name, _default_text(f, kind), kind.expected, f.metadata["doc"]))
    for section in _sections(Config):
        for f in _settings(_section_type(section)):
            kind = _kind(f)
            key = f"{section.name}.{f.name}"
            rows.append((key, _default_text(f, kind), kind.expected, f.metadata["doc"]))
    return rows
