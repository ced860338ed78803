"""Logging: one ``configure_logging()`` for structlog and the standard library.

JSON lines (encoded by msgspec) when stderr is not a terminal, coloured console output
when it is (console output into a pipe or a file has no colour codes); ``session_id``
and ``connection_id`` come from bound loggers and contextvars. The standard library's
records (websockets, asyncio) and warnings go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog

from .process_setup import logs_as_json
from .terminal_text import controls_shown, json_shown

_encoder = msgspec.json.Encoder(enc_hook=str)
# Tracebacks as JSON, without the frames' local variables: a request's locals hold its
# headers, and a bearer token must never reach a log.
_TRACEBACKS = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def _json_bytes(event: Any, **_: Any) -> bytes:
    return json_shown(_encoder.encode(event)).encode()


def _json_text(event: Any, **_: Any) -> str:
    # DEL, C1 and bidi controls (a peer's close reason) escaped for a terminal's sake.
    return json_shown(_encoder.encode(event))


# Set by configure_logging: writes one record whatever the level (see announce()), and
# the fields every line of this process carries (a worker's number).
_announcer: Callable[[dict[str, Any]], None] | None = None
_process_fields: dict[str, Any] = {}


def announce(event: str, **fields: Any) -> None:
    """Logs ``event`` at info level even when the log level is higher: the lines scripts
    wait for ("listening on HOST:PORT") must come out whatever level an operator sets,
    in the log's own format, with this process's fields."""
    if _announcer is None:
        structlog.get_logger("bamboo_session.server").info(event, **fields)
        return
    record = {"event": event, **_process_fields, **fields, "level": "info"}
    _announcer(dict(structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", record)))


def configure_logging(
    log_format: str = "auto", level: str = "info", fields: Mapping[str, Any] | None = None
) -> None:
    """Sets up structlog and the standard library's root logger; call once at start
    (and again in a worker process: ``fields``, such as its number, go on every line)."""
    global _announcer, _process_fields
    _process_fields = dict(fields or {})
    use_json = logs_as_json(log_format)
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.insert(0, _adder(dict(fields)))
    if use_json:
        shared.append(_TRACEBACKS)
        renderer: Any = structlog.processors.JSONRenderer(serializer=_json_bytes)
        text_renderer: Any = structlog.processors.JSONRenderer(serializer=_json_text)
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        renderer = text_renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=_console_tracebacks()
        )
        # One write per record, its newline in it: `serve --workers N` shares stderr,
        # and a record written in two (print's text, then its end) let another
        # worker's record in between. A pipe keeps writes of up to 4 KiB whole.
        factory = structlog.WriteLoggerFactory(sys.stderr)
    # A console's fields are written as they are: what peers chose in them (a close
    # frame's reason) is shown, not acted on by the terminal (terminal_text.py).
    shown = [] if use_json else [controls_shown]
    structlog.configure(
        processors=[*shared, *shown, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *shown,
                text_renderer,
            ],
        )
    )
    if use_json:
        _announcer = lambda record: _write_line(_encoder.encode(record).decode())  # noqa: E731
    else:
        console = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        _announcer = lambda record: _write_line(str(console(None, "info", record)))  # noqa: E731
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    logging.captureWarnings(True)  # warnings too are log lines, in the same format
    # websockets logs every connection at INFO; ours says the same once, with context.
    logging.getLogger("websockets").setLevel(max(numeric_level, logging.WARNING))


def _console_tracebacks() -> Any:
    """How the console log draws a traceback: with rich where it is installed, as
    structlog would, but without the frames' locals (structlog's default shows them,
    and they hold a request's headers and tokens, which the JSON log leaves out too);
    else as Python prints one."""
    try:
        import rich  # noqa: F401  (structlog has imported it, if it is installed)
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(
        show_locals=False, color_system="truecolor" if sys.stderr.isatty() else None
    )


def _write_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _adder(fields: dict[str, Any]) -> Any:
    def add_fields(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        for name, value in fields.items():
            event.setdefault(name, value)
        return event

    return add_fields
