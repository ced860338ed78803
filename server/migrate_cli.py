"""``bamboo-session migrate --from URL --to URL``: move every session between stores.

The copying is ``persistence/migrate.py``'s; this module is the command around it:
opening both stores (the source read-only and offline: a JSONL or SQLite store a
running server holds is refused with the reason, and locked for the run so that no
server starts on it; the same store as both is refused: one path, symlinks followed,
or for Redis one server, database and prefix, compared once both are open), showing
progress on stderr (a live display with rich when stderr is a terminal and rich is
installed, ``pip install 'bamboo-session[progress]'``; plain lines otherwise),
``--dry-run``,
``--verify``, and the exit status: 0 when everything was copied (and verified), 1 when
a session is in conflict or differs, the source changed during the run (a Redis store
its servers kept writing to), a store fails, or a store cannot be opened.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from bamboo_session.persistence import (
    Storage,
    StorageError,
    StorageLocked,
    open_storage,
    parse_store_url,
)
from bamboo_session.persistence.url import without_password

from .config import MIN_FRAME_BYTES
from .manager_config import MIB
from .tools import ended_by_its_reader, stdout_gone

if TYPE_CHECKING:  # argparse's class is generic to type checkers only
    # The copying is imported when migrate runs: every command line builds this parser.
    from bamboo_session.persistence.migrate import Progress
    from bamboo_session.protocol.events import StoredEvent

    SubParsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

PLAIN_EVERY = 2.0  # seconds between plain progress lines


def add_migrate_command(commands: SubParsers) -> None:
    """Register ``migrate`` as a subcommand of ``bamboo-session``."""
    parser = commands.add_parser(
        "migrate", help="copy every session from one store to another", description=DESCRIPTION
    )
    add_arguments(parser)
    parser.set_defaults(run=run_migrate)


DESCRIPTION = (
    "Copy every session (metadata, state, TTL, messages, events with their seq, ts and "
    "keys, and epoch) from one store to another, e.g. --from jsonl:///var/lib/bamboo "
    "--to sqlite:///var/lib/bamboo/sessions.db. Rerun it after an interruption: sessions "
    "already copied whole are skipped. Neither store may be held by a running server: "
    "a JSONL or SQLite store a server holds is refused, and the source is locked for the "
    "run, so no server starts on it. A Redis store has no such lock: stop its servers "
    "first; at its end the run lists the source again, and exits 1 naming each session "
    "created, deleted or changed since it began (rerun once the servers are stopped). "
    "The same store as source and destination is refused."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="URL", help="source")
    parser.add_argument("--to", dest="target", required=True, metavar="URL", help="destination")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="then compare every session of both stores (counts, last_seq, epoch, state, "
        "a checksum of the events); exit 1 if anything differs",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be copied, change nothing"
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=_frame_limit,
        default=MIB,
        metavar="N",
        help="the --max-frame-bytes the destination is served with (default 1 MiB): an event "
        "a frame of N bytes cannot carry is copied and named in a warning; 0: no check",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="progress on stderr: auto (rich on a terminal when installed, else plain lines)",
    )


def run_migrate(args: argparse.Namespace) -> int:
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        from asyncio import run  # type: ignore[assignment]
    try:
        status: int = run(_migrate(args))
        sys.stdout.flush()  # what a pipe's buffer holds fails here, not at the exit
        return status
    except BrokenPipeError:
        if not stdout_gone():
            raise
        return ended_by_its_reader()


async def _migrate(args: argparse.Namespace) -> int:
    source_shown, target_shown = without_password(args.source), without_password(args.target)
    if same_store(args.source, args.target):
        return _fail(f"the source and the destination are the same store: {target_shown}")
    try:
        source = await open_storage(
            args.source, read_only=True, offline=True, cleanup_interval=None
        )
    except (StorageError, OSError) as exc:
        return _fail(f"cannot read the source {source_shown}: {exc}")
    try:
        target = await _open_target(args)
    except (StorageError, OSError) as exc:
        await source.close()
        return _fail(f"cannot open the destination {target_shown}: {exc}")
    try:
        if await same_redis_store(source, target):
            return _fail(f"the source and the destination are the same store: {target_shown}")
        return await _run(args, source, target)
    except StorageError as exc:
        return _fail(f"migrate failed: {exc}; rerun to finish")
    finally:
        await target.close()
        await source.close()


def same_store(source: str, target: str) -> bool:
    """Whether two store URLs name one store, before either is opened: one JSONL
    directory or SQLite file (symlinks followed), or one Redis URL and prefix as
    written (:func:`same_redis_store` knows any spelling, once both are open).
    Malformed URLs are not the same: opening them says what is wrong."""
    try:
        a, b = parse_store_url(source), parse_store_url(target)
    except ValueError:
        return False
    if a.scheme != b.scheme or a.scheme == "memory":
        return False
    if a.scheme in ("jsonl", "sqlite"):
        return os.path.realpath(a.location) == os.path.realpath(b.location)
    return (a.location.rstrip("/"), a.params.get("prefix")) == (
        b.location.rstrip("/"),
        b.params.get("prefix"),
    )


async def same_redis_store(source: Storage, target: Storage) -> bool:
    """Whether two opened stores are one Redis store: one server (its run), database
    and prefix, however their URLs spell them (persistence/redis/identity.py)."""
    try:
        from bamboo_session.persistence.redis import RedisStorage
        from bamboo_session.persistence.redis.identity import store_identity
    except ImportError:  # no redis-py: neither is a Redis store
        return False
    if not (isinstance(source, RedisStorage) and isinstance(target, RedisStorage)):
        return False
    return (await store_identity(source)).same_as(await store_identity(target))


async def _open_target(args: argparse.Namespace) -> Storage:
    if not args.dry_run:
        return await open_storage(args.target, cleanup_interval=None)
    try:
        return await open_storage(args.target, read_only=True, cleanup_interval=None)
    except StorageLocked:
        raise
    except StorageError as exc:
        # Nothing there yet, most likely: a dry run compares against an empty store.
        print(f"destination: {exc}; planning against an empty store", file=sys.stderr)
        from bamboo_session.persistence.memory import MemoryStorage

        return await MemoryStorage.open()


async def _run(args: argparse.Namespace, source: Storage, target: Storage) -> int:
    from bamboo_session.persistence.migrate import migrate
    from bamboo_session.persistence.migrate_verify import verify

    display = _display(args.progress)
    try:
        progress = await migrate(
            source,
            target,
            dry_run=args.dry_run,
            on_progress=display.update,
            event_problem=_event_problem(args.max_frame_bytes),
        )
    finally:
        display.close()
    _summary(progress, args.dry_run)
    _oversized(progress, args.max_frame_bytes)
    status = 1 if progress.conflicts else 0
    if progress.changed:
        _changed(progress)
        status = 1
    if args.verify and not args.dry_run:
        compared, differences = await verify(source, target)
        for difference in differences:
            print(f"differs: {difference.session_id}: {difference.what}", flush=True)
        if differences:
            sessions = len({d.session_id for d in differences})
            print(f"verify: {sessions} of {compared} sessions differ", flush=True)
            status = 1
        else:
            print(f"verify: all {compared} sessions match", flush=True)
    return status


def _summary(progress: Progress, dry_run: bool) -> None:
    would = "would copy" if dry_run else "copied"
    print(
        f"{would} {progress.copied:,} sessions, resumed {progress.resumed:,}, "
        f"skipped {progress.skipped:,} already copied; "
        f"{progress.events_total:,} events {'to copy' if dry_run else 'copied'}",
        flush=True,
    )
    for conflict in progress.conflicts:
        print(f"conflict: {conflict.session_id}: {conflict.reason}", flush=True)


def _frame_limit(text: str) -> int:
    """A destination's frame limit as serve takes it (0: no check)."""
    value = int(text)
    if value != 0 and value < MIN_FRAME_BYTES:
        raise argparse.ArgumentTypeError(f"0 or at least {MIN_FRAME_BYTES}, as serve takes it")
    return value


def _event_problem(max_frame_bytes: int) -> Callable[[StoredEvent], str | None] | None:
    """Over the frame limit less the envelope of a frame of it: as a publish is checked,
    but for any number of free-form values (a store may hold more than a frame can)."""
    if max_frame_bytes <= 0:
        return None
    from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES

    from .decode_charge import over_frame_limit

    limit = max(1, max_frame_bytes - EVENT_ENVELOPE_BYTES)
    return lambda event: over_frame_limit(event.event_json, limit, values_counted=False)


def _oversized(progress: Progress, max_frame_bytes: int) -> None:
    for found in progress.oversized_listed:
        where = f"session {found.session_id!r} seq {found.seq}"
        print(f"warning: {where}: the event {found.what}", file=sys.stderr, flush=True)
    if progress.oversized:
        print(
            f"warning: {progress.oversized:,} events copied (the first "
            f"{len(progress.oversized_listed)} named) are over what a frame of {max_frame_bytes} "
            "bytes carries: viewers reading frames of that size close 1009 at them; serve "
            "the destination with a larger --max-frame-bytes",
            file=sys.stderr,
            flush=True,
        )


def _changed(progress: Progress) -> None:
    for change in progress.changed:
        print(f"changed: {change.session_id}: {change.what}", flush=True)
    _fail(
        f"the source changed during the run ({len(progress.changed):,} sessions): a server "
        "is writing to it; stop every server using it, then rerun migrate to copy the rest"
    )


def _fail(reason: str) -> int:
    print(f"bamboo-session: {reason}", file=sys.stderr, flush=True)
    return 1


# -- progress ---------------------------------------------------------------------------


class _Display(Protocol):
    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


def _display(mode: str) -> _Display:
    if mode == "none":
        return _Silent()
    if mode == "plain" or (mode == "auto" and not sys.stderr.isatty()):
        return _PlainLines()
    try:
        return _RichDisplay()
    except ImportError:
        if mode == "rich":
            print("bamboo-session: rich is not installed; plain progress", file=sys.stderr)
        return _PlainLines()


class _Silent:
    def update(self, progress: Progress) -> None:
        pass

    def close(self) -> None:
        pass


class _PlainLines:
    """A line every few seconds: sessions and events done, rate and ETA."""

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._last = 0.0
        self._progress: Progress | None = None

    def update(self, progress: Progress) -> None:
        self._progress = progress
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY:
            self._last = now
            self._print(progress, now)

    def close(self) -> None:
        if self._progress is not None:
            self._print(self._progress, time.monotonic())

    def _print(self, p: Progress, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = p.events_done / elapsed
        left = p.events_total - p.events_done
        eta = f"{left / rate:,.0f} s" if rate > 0 else "-"
        print(
            f"migrate: {p.sessions_done:,}/{p.sessions_total:,} sessions, "
            f"{p.events_done:,}/{p.events_total:,} events, {rate:,.0f} events/s, ETA {eta}",
            file=sys.stderr,
            flush=True,
        )


class _RichDisplay:
    """Two live bars on the terminal: sessions and events, with rate and ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._sessions: Any = self._bars.add_task("sessions", total=None, rate="")
        self._events: Any = self._bars.add_task("events", total=None, rate="")
        self._start = time.monotonic()
        self._bars.start()

    def update(self, progress: Progress) -> None:
        rate = progress.events_done / max(time.monotonic() - self._start, 1e-6)
        bars = self._bars
        bars.update(self._sessions, total=progress.sessions_total, completed=progress.sessions_done)
        bars.update(
            self._events,
            total=progress.events_total,
            completed=progress.events_done,
            rate=f"{rate:,.0f}/s",
        )

    def close(self) -> None:
        self._bars.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m bamboo_session.server.migrate_cli --from URL --to URL``: the same
    command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="bamboo-session migrate", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_migrate(args)
    except ValueError as exc:
        return _fail(str(exc)) + 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
