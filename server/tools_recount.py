"""``recount``: count again what each session of a store holds, and each user's sum
(``--max-session-bytes``, ``--max-user-bytes``), for sessions stored before the counts
existed or whose counts drifted. The work is persistence/recount.py's; this is the
command around it.

On Redis it runs beside the servers that share the store (each count is set atomically
with the read of the log's end: persistence/redis/recount.py). A JSONL or SQLite store
is held by one process, so it is refused while a server holds it. SQLite's counts are
set in its writer's transactions; JSONL (and memory) count when they open, so there the
command only reports what the store counts, and writes nothing.

stdout gets one line per session whose count moved and per user whose sum moved, then
the totals; progress goes to stderr at most once a second. ``--dry-run`` prints the
same lines (the totals saying what would be fixed) and writes nothing: the store is
opened read-only.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from bamboo_session.persistence import parse_store_url
from bamboo_session.persistence.base import SessionFilter, SortOrder, Storage
from bamboo_session.protocol.models import SessionMetadata

from .terminal_text import shown
from .tools import ToolError, runner, session_id_argument
from .tools_cleanup import SCAN_PAGE, Progress
from .tools_store import add_store_options, offline_store, store_url

if TYPE_CHECKING:
    from bamboo_session.persistence.recount import Recount

    from .tools import SubParsers

# The stores that count at open (opened read-only, and refused while a server holds
# them), and why they have nothing to fix.
COUNTED_AT_OPEN = {
    "jsonl": "the JSONL store counts each session's bytes (its log file's size) and each "
    "user's sum whenever it opens: nothing stored to fix",
    "memory": "a memory:// store holds nothing outside the process that opened it: nothing to fix",
}
STOP_FIRST = "stop it first: a JSONL or SQLite store is recounted offline"


def add_command(commands: SubParsers) -> None:
    parser = commands.add_parser(
        "recount",
        help="count again the bytes each session and each user stores",
        description="Count again what each session's log holds (its stored_bytes, bounded "
        "by --max-session-bytes), by the store's own measure, and rebuild each user's sum "
        "(bounded by --max-user-bytes) from the sessions: for sessions stored by a version "
        "before the counts, or whose counts drifted. Prints each session and user whose "
        "count moved, then the totals. On Redis it may run while servers use the store; "
        "a JSONL or SQLite store must not be held by a server (refused). JSONL counts "
        "whenever it opens: nothing there to fix.",
    )
    add_store_options(parser, with_url=False)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be fixed, and write nothing (the store is opened read-only)",
    )
    parser.add_argument(
        "ids",
        nargs="*",
        type=session_id_argument,
        metavar="ID",
        help="only these sessions (and their users' sums); default: every session and user",
    )
    parser.set_defaults(run=runner(_recount))


async def _recount(args: argparse.Namespace) -> int:
    # Here, not at the top: every start of bamboo-session registers this command.
    from bamboo_session.persistence.recount import StoredBytesRecount, recount

    ids: list[str] | None = list(args.ids) or None
    try:
        parsed = parse_store_url(store_url(args))
    except ValueError as exc:
        raise ToolError(str(exc)) from None
    dry_run: bool = args.dry_run
    read_only = dry_run or parsed.scheme in COUNTED_AT_OPEN
    async with offline_store(
        args, read_only=read_only, offline=True, when_locked=STOP_FIRST
    ) as storage:
        if not isinstance(storage, StoredBytesRecount):
            report = await _as_counted(storage, ids)
            why = COUNTED_AT_OPEN.get(parsed.scheme, "the store counts when it opens")
            print(f"bamboo-session: recount: {why}", file=sys.stderr)
        else:
            progress = Progress("sessions counted:", command="recount")
            report = await recount(
                storage,
                ids,
                on_progress=lambda r: progress.step(r.sessions - progress.done),
                dry_run=dry_run,
            )
            progress.show()
    _print(report, dry_run=dry_run)
    for session_id in report.missing:
        print(f"bamboo-session: recount: no session {session_id}", file=sys.stderr)
    return 1 if report.missing else 0


async def _as_counted(storage: Storage, ids: list[str] | None) -> Recount:
    """What a store that counts at open counts: its sessions' counts and users' sums."""
    from bamboo_session.persistence.recount import Recount

    report = Recount()
    if ids is None:
        offset = 0
        while True:
            query = SessionFilter(limit=SCAN_PAGE, offset=offset, sort_order=SortOrder.ASC)
            page = (await storage.list_sessions(query)).sessions
            _add(report, page)
            offset += len(page)
            if len(page) < SCAN_PAGE:
                break
    else:
        for session_id in dict.fromkeys(ids):
            meta = await storage.get_metadata(session_id)
            if meta is None:
                report.missing.append(session_id)
            else:
                _add(report, [meta])
    report.users = len(report.user_sums)
    return report


def _add(report: Recount, sessions: list[SessionMetadata]) -> None:
    for meta in sessions:
        report.sessions += 1
        report.bytes_counted += meta.stored_bytes
        if meta.user_id is not None:
            held = report.user_sums.get(meta.user_id, 0)
            report.user_sums[meta.user_id] = held + meta.stored_bytes


def _print(report: Recount, *, dry_run: bool = False) -> None:
    """The lines of a run; a dry run's are the same but for its totals, which say what
    would be fixed (and that nothing was)."""
    for fixed in report.fixed:
        before = "no count" if fixed.before is None else f"{fixed.before:,}"
        user = "" if fixed.user_id is None else f" (user {shown(fixed.user_id)})"
        print(f"session {fixed.session_id}{user}: {before} -> {fixed.after:,} bytes")
    for user_id, moved in report.user_moves.items():
        now = report.user_sums.get(user_id)
        tail = "" if now is None else f", now {now:,}"
        print(f"user {shown(user_id)}: sum {moved:+,} bytes{tail}")
    done = "to fix" if dry_run else "fixed"
    tail = " (dry run: nothing written)" if dry_run else ""
    print(
        f"recount: {report.sessions:,} sessions holding {report.bytes_counted:,} bytes, "
        f"{len(report.fixed):,} {done}; {report.users:,} users, "
        f"{len(report.user_moves):,} sums {done}{tail}",
        flush=True,
    )
