"""Structured logging for every module of the node, through structlog.

Machines read the node's logs (journald, Loki, jq) and people read them on a
terminal, so there are two renderings of the same events: one JSON object per
line with the fields `ts` (ISO 8601, UTC), `level`, `event`, `logger` and the
event's context, or a readable console line. `format="auto"` picks console
when stderr is a terminal and JSON otherwise.

Any module gets its logger with `get_logger(__name__)` at import time; the
logger is resolved lazily, so `configure_logging` may run later (the CLI calls
it once the config is read). Messages from the standard `logging` module
(hypercorn, trio-websocket) are rendered the same way.

Secrets never reach the output: a processor replaces the value of any key
whose name says it holds one (private_key, seed, secret, password, token)
before rendering, and bytes are rendered as hex.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "console")
REDACTED = "[redacted]"
_SECRET_WORDS = ("private", "seed", "secret", "password", "token", "passphrase")


def get_logger(name: str) -> Any:
    """A structlog logger that adds `logger=name` to each event.

    Call as `log.info("event name", key=value, ...)`; bind context with
    `log.bind(height=h)`.
    """
    # `logger` is a parameter name of structlog's own factory, so the name
    # travels as `logger_name` and `_name_field` renames it; passing it as an
    # initial value (not through bind) keeps the proxy lazy.
    return structlog.get_logger(logger_name=name)


def resolve_format(fmt: str, stream: TextIO) -> str:
    """'json' or 'console' for a configured format and the stream logs go to."""
    if fmt not in FORMATS:
        raise ValueError(f"log format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty is not None and isatty() else "json"


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route all logs to `stream` (stderr by default) at `level` and above."""
    if level not in LEVELS:
        raise ValueError(f"log level: expected one of {', '.join(LEVELS)}, got {level!r}")
    out = stream if stream is not None else sys.stderr
    rendering = resolve_format(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _name_field,
        _redact_secrets,
        _bytes_to_hex,
    ]
    renderer: Processor
    if rendering == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_colors(out), timestamp_key="ts")
    structlog.configure(
        processors=[*shared, _order_fields, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(level, out, shared, renderer)


def _route_stdlib(level: str, out: TextIO, shared: list[Processor], renderer: Processor) -> None:
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _order_fields,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])


def _colors(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return isatty is not None and bool(isatty())


def _name_field(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if "logger_name" in event:
        event["logger"] = event.pop("logger_name")
    return event


def _redact_secrets(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in event:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS):
            event[key] = REDACTED
    return event


def _bytes_to_hex(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if isinstance(value, bytes | bytearray | memoryview):
            event[key] = bytes(value).hex()
    return event


def _order_fields(_: WrappedLogger, __: str, event: EventDict) -> MutableMapping[str, Any]:
    # ts, level, event, logger first, so a line reads the same way every time.
    ordered: dict[str, Any] = {}
    for key in ("ts", "level", "event", "logger"):
        if key in event:
            ordered[key] = event.pop(key)
    ordered.update(event)
    return ordered
