"""The ``bamboo-session`` command: ``serve`` runs the server.

Every setting of :class:`ServerConfig` is a flag of ``serve``, a ``BAMBOO_*``
environment variable and a key of a TOML file (``--config``); flags win over the
environment, which wins over the file, which wins over defaults (server/settings.py).
Errors end with a one-line reason and a non-zero status, never a traceback.

What only a running server needs (structlog, which pulls in rich where it is installed
unless the log is JSON; the app; the store's errors) is imported where ``serve`` runs,
not at the top: a tool, a ``--help`` or a refused flag starts without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .config import ServerConfig, choices
from .migrate_cli import add_migrate_command
from .process_setup import (
    fill_closed_standard_streams,
    leave_rich_out,
    logs_as_json,
    raise_open_file_limit,
    settle_garbage_collector,
)
from .serve_help import SERVE_HELP
from .settings import CONFIG_VARIABLE, flag_name, load_config
from .tools import add_tool_commands, ended_by_its_reader, output_failed, stdout_gone

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

Command = Callable[[argparse.Namespace], int]


class ShowVersion(argparse.Action):
    """``--version``: the version and the commit it was built from (build_info.py),
    read only when asked: building the parser, at every start, reads nothing."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        from bamboo_session.build_info import described

        print(f"{parser.prog} {described()}")  # on stdout, as argparse's own version
        parser.exit()


class Parser(argparse.ArgumentParser):
    """argparse's parser (and, as its class, every subcommand's), but for what it prints
    on stdout (``--help``), whose write's error is raised: argparse drops it, and an
    unbuffered ``--help >/dev/full`` exited 0, nothing written."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message and file is not None and file is sys.stdout:
            file.write(message)
            return
        super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(
        prog="bamboo-session", description="Bamboo session server for AI agents."
    )
    parser.add_argument(
        "--version", action=ShowVersion, help="show the version and the commit, and exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve_command(commands)
    add_tool_commands(commands)  # ls, show, tail, cleanup, delete, recount, publish (tools.py)
    add_migrate_command(commands)  # migrate (migrate_cli.py)
    return parser


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. Every flag can also be set as BAMBOO_<NAME> "
        "(e.g. BAMBOO_PORT=9000), or as a key of a TOML file (port = 9000) given with "
        "--config; flags win over the environment, which wins over the file.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help=f"a TOML file of settings, keys named as these flags (default: ${CONFIG_VARIABLE})",
    )
    defaults = ServerConfig()
    for field in dataclasses.fields(ServerConfig):
        default = getattr(defaults, field.name)
        fixed = choices(field.name)
        serve.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            choices=fixed,
            metavar=None if fixed else field.name.upper(),
            # A boolean flag alone means true: `--insecure` as well as `--insecure true`.
            nargs="?" if isinstance(default, bool) else None,
            const="true" if isinstance(default, bool) else None,
            help=f"{SERVE_HELP[field.name]} (default: {_shown(default)})",
        )
    serve.set_defaults(run=run_serve)


def _shown(default: object) -> str:
    if isinstance(default, tuple):
        return ",".join(default) or "none"
    return "none" if default is None else str(default)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Defaults, then the TOML file, then BAMBOO_* variables, then flags."""
    flags = {
        field.name: getattr(args, field.name, None) for field in dataclasses.fields(ServerConfig)
    }
    return load_config(flags, os.environ, getattr(args, "config", None))


def run_serve(args: argparse.Namespace) -> int:
    raise_open_file_limit()  # before the store sizes its open logs from it
    config = config_from_args(args)  # a bad setting: one plain line, status 2 (main)
    if logs_as_json(config.log_format):
        leave_rich_out()  # and the workers forked below with it
    import structlog  # only now: a refused setting needs no logging

    from bamboo_session.persistence.base import StoreMisconfigured

    from .logs import configure_logging

    configure_logging(config.log_format, config.log_level)
    # From here on, everything said goes through the log, as JSON in JSON mode.
    log = structlog.get_logger("bamboo_session.server")
    try:
        warn_of_ignored_durability(config, log)
        if config.workers == 1:
            leave_process(run_event_loop(serve_until_signalled(config)))
        from .supervisor import Supervisor

        supervisor = Supervisor(config, run_worker)  # refuses a store workers cannot share
        preload_worker_modules(config.store)
        check_store_credentials(config.store_url())
        return supervisor.run()
    except (ValueError, StoreMisconfigured) as exc:  # refused (InsecureConfig, a password)
        log.error(f"cannot start: {exc}")
        return 2
    except OSError as exc:
        log.error(f"cannot start: {exc}")
        return 1
    except Exception:
        log.exception("server failed")
        return 1


def warn_of_ignored_durability(config: ServerConfig, log: Any) -> None:
    """One warning, from ``serve`` (the supervisor, not each worker), where a durability
    is given beside a store that ignores it (server/store_options.py). Before the store
    URL's options are checked, so the URL is not in it: a refused option may hold a
    secret (the refusal names the URL without its query)."""
    from .store_options import ignored_durability

    ignored = ignored_durability(config.store_url(), config.durability)
    if ignored is not None:
        log.warning(ignored)


def leave_process(status: int) -> NoReturn:
    """Exits at once once the server has stopped, as a forked worker does (supervisor.py):
    everything is written, synced and closed by then, and what the interpreter's own
    teardown would add is freeing every object one by one (0.3 s after 6,000
    connections; longer with a big session index), which a restart waits for."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def preload_worker_modules(store: str | None) -> None:
    """What every worker imports (the app, uvloop, the store's backend), imported once
    by the supervisor before it forks them: each worker, and each restart of one,
    inherits it rather than importing it again (most of a start's CPU; a restart comes
    sooner, and workers dying in a loop cost less). uvloop or the store's backend failing
    to import is left for the worker to say, as it would have; the app failing to import
    (a broken install) stops the supervisor at once, "server failed" and status 1, as
    every worker would fail alike."""
    from bamboo_session.persistence.url import backend_module

    from . import app  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    if store is not None:
        with contextlib.suppress(ImportError, ValueError):
            importlib.import_module(backend_module(store))


def check_store_credentials(url: str) -> None:
    """A Redis store's credentials, checked once by the supervisor before it forks the
    workers: refused (StoreMisconfigured), they stop it in one line, where each worker
    would have refused them alike. Other stores have none."""
    from bamboo_session.persistence.url import parse_store_url

    if parse_store_url(url).scheme == "redis":
        from bamboo_session.persistence.redis.credentials import check_credentials

        check_credentials(url)


def run_worker(config: ServerConfig, number: int) -> int:
    """One of ``serve --workers N``'s processes (server/supervisor.py)."""
    import structlog

    from .logs import configure_logging
    from .supervisor import CONFIG_ERROR

    configure_logging(config.log_format, config.log_level, {"worker": number})
    try:
        return run_event_loop(serve_until_signalled(config, worker=number))
    except ValueError as exc:  # a configuration the server refuses: every restart would
        structlog.get_logger("bamboo_session.server").error(f"cannot start: {exc}")
        return CONFIG_ERROR  # the supervisor stops, as a lone `serve` exits 2


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


async def serve_until_signalled(config: ServerConfig, worker: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then stop and end the process at once (the
    sockets of the connections still open close with it); ``worker``: one of several
    on one port. Returns only when the server cannot start."""
    import structlog

    from bamboo_session.persistence.base import StorageError, StoreMisconfigured

    from .app import BambooServer
    from .stop_bounds import exit_status_of_stop
    from .supervisor import CONFIG_ERROR, NOT_STARTED

    log = structlog.get_logger("bamboo_session.server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = BambooServer(
        config, reuse_port=worker is not None, before_listening=settle_garbage_collector
    )
    try:
        await server.start()  # logs "listening on HOST:PORT"
    except StoreMisconfigured as exc:
        # Every restart would be refused alike until the store's settings change: the
        # status of a bad configuration, which `serve --workers` does not restart.
        await server.stop()
        log.error(f"cannot start: {exc}")
        return CONFIG_ERROR
    except (StorageError, OSError) as exc:
        await server.stop()
        log.error(f"cannot start: {exc}")
        # A worker's own status, for its supervisor to tell from a stop that failed.
        return 1 if worker is None else NOT_STARTED
    await stop.wait()
    log.info("shutting down")
    status = await exit_status_of_stop(server, config, second_signal_ends=worker is None)
    leave_process(status)  # (server/stop_bounds.py)


def ended_by_argparse(exit: SystemExit) -> int:
    """The status of ``--help``, ``--version`` or a refused flag, which argparse printed
    and exits on inside ``parse_args``: what it printed is flushed here, so that a reader
    gone (``--version | head -c 0``) ends it as it ends every other command, 141 and not
    a word (flushed at the interpreter's exit, the broken pipe made it 120 and a
    message). A refusal keeps its status 2 whoever reads its stdout."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return ended_by_its_reader()
    except OSError as exc:  # a full disk; a stdout closed
        return output_failed(exc)
    printed = exit.code in (0, None)  # (argparse swallows a write's OSError, unbuffered)
    if printed and stdout_gone():
        return ended_by_its_reader()
    raise exit


def fail(reason: str) -> None:
    print(f"bamboo-session: {reason}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    fill_closed_standard_streams()  # before any file or socket is opened
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return ended_by_argparse(exit)
    except BrokenPipeError:  # --version's line, written at once (PYTHONUNBUFFERED)
        return ended_by_its_reader()
    except OSError as exc:  # and refused otherwise (a full disk, a stdout closed)
        return output_failed(exc)
    run: Command = args.run
    try:
        return run(args)
    except ValueError as exc:
        fail(str(exc))
        return 2
    except OSError as exc:  # what migrate wrote on stdout, refused at its flush
        return output_failed(exc)
    except KeyboardInterrupt:
        return 130
