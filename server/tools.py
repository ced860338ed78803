"""Operator subcommands of ``bamboo-session`` beside ``serve``, and what they share.

Offline, on a store (``--store URL`` or ``--data-dir``, else ``BAMBOO_STORE`` or
``BAMBOO_DATA_DIR`` as ``serve`` reads them): ``ls``, ``show``, ``cleanup``, ``delete``
and ``recount`` (tools_store.py opens it; ``ls`` and ``show`` read only, and write
nothing). ``ls`` and ``show`` can ask a running server instead, over its HTTP API
(``--url``): tools_reads.py. ``cleanup`` and ``delete`` are tools_cleanup.py,
``recount`` tools_recount.py. Online, over the WebSocket API with
:class:`~bamboo_session.protocol.client.BambooClient`: ``tail`` and ``publish``
(tools_live.py). Every error ends with a one-line reason and a non-zero status.

The WebSocket client, the HTTP client and what only ``serve`` uses are imported by the
commands that use them: an offline tool's start is mostly its imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.errors import InvalidSessionId
from bamboo_session.protocol.ids import check_session_id

from .terminal_text import shown

if TYPE_CHECKING:  # argparse's class is generic to type checkers only
    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

AsyncCommand = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class ToolError(Exception):
    """A failure to report as one line (and exit status 1)."""


def add_tool_commands(commands: SubParsers) -> None:
    """Register ``ls``, ``show``, ``tail``, ``cleanup``, ``delete``, ``recount`` and
    ``publish``."""
    from . import tools_cleanup, tools_live, tools_reads, tools_recount

    tools_reads.add_commands(commands)
    tools_live.add_tail(commands)
    tools_cleanup.add_command(commands)
    tools_recount.add_command(commands)
    tools_live.add_publish(commands)


# -- argument types -----------------------------------------------------------------------


def path_argument(value: str) -> Path:
    return Path(value).expanduser()


def session_id_argument(value: str) -> str:
    try:
        return check_session_id(value)
    except InvalidSessionId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_argument(value: str) -> datetime:
    """RFC 3339 or ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00Z``); naive is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or RFC 3339 time: {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return number


def positive(value: str) -> int:
    number = non_negative(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return number


# -- running ---------------------------------------------------------------------------------


def runner(command: AsyncCommand) -> Callable[[argparse.Namespace], int]:
    """``command`` as an argparse ``run``: every expected failure becomes one line."""

    def run(args: argparse.Namespace) -> int:
        try:
            status = asyncio.run(command(args))
            sys.stdout.flush()  # what a pipe's buffer holds fails here, not at the exit
            return status
        except ToolError as exc:
            fail(str(exc))
        except StorageError as exc:
            fail(f"storage: {exc}")
        except BrokenPipeError as exc:
            if not stdout_gone():
                fail(f"{exc.strerror or exc}")
                return 1
            return ended_by_its_reader()
        except OSError as exc:
            fail(f"{exc.strerror or exc}" if not isinstance(exc, TimeoutError) else "timed out")
            try:
                sys.stdout.flush()
            except OSError:  # stdout's own failure (a full disk): nothing more goes there
                drop_unwritten_output()
        except KeyboardInterrupt:
            return 130
        return 1

    return run


def stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader left (``| head`` read its fill)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), or no stdout to ask
        return False


def ended_by_its_reader() -> int:
    """A command whose output's reader left ends as the shell's own tools do, killed by
    SIGPIPE: status 141 and not a word (the reader asked for no more). What is still
    buffered goes to /dev/null, or the interpreter's exit would report it unwritten."""
    drop_unwritten_output()
    return 128 + signal.SIGPIPE


def output_failed(exc: OSError) -> int:
    """A write to stdout refused otherwise than by its reader leaving (a full disk, a
    stdout closed): said in one line, status 1, and what is still buffered dropped."""
    fail(f"cannot write the output: {exc.strerror or exc}")
    drop_unwritten_output()
    return 1


def drop_unwritten_output() -> None:
    """Points stdout at /dev/null, where what it still buffers goes: the interpreter's
    exit would write it again, fail again and end the process with status 120 and a
    message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def fail(reason: str) -> None:
    print(f"bamboo-session: {shown(reason)}", file=sys.stderr, flush=True)


def short_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
