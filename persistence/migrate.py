"""Moving sessions from one store to another, whatever their backends: the logic of
``bamboo-session migrate``, storage to storage, with no terminal and no argument parsing.

A session is copied as the source holds it: created in the destination with its id,
epoch, owner, title, ttl and creation time; its events imported in pages with their own
seq, ts and key; then its final metadata (state, activity times, expiry, ttl, extra).
The source needs only the storage contract; the destination also
:class:`~.importing.SessionImport`. A client that saw events up to ``last_seq`` of the old
store resumes against the new one with the same epoch and no gap.

Resuming: a session whose copy is whole (same epoch, same last seq, same final
metadata) is skipped; one cut short (by an interruption or a SIGKILL) goes on from the
destination's last seq, after checking that the destination's last event is the
source's; a session of the same id but another epoch is a conflict, left alone and
reported, as is one the destination closed or expired since (a state it cannot leave
for the source's). So a rerun finishes the job.

The source is not to change while it is copied (a JSONL or SQLite source is locked
meanwhile; a Redis store has no lock its servers would hold). At the end of a run the
source is listed again and compared with what was copied: a session created, deleted
or changed since (its epoch, last seq or final metadata) is a :class:`SourceChange`,
in :attr:`Progress.changed`, so a copy missing what servers wrote during the run is
never taken for whole.

An event a server of the destination could not send whole (``event_problem``: over
its frame limit) is copied all the same, as the source holds it, and reported: the
source's servers served it, and the operator may serve the copy with a limit that
carries it; refusing it would leave the store unmovable, as would dropping it.

Verifying a copy is :mod:`.migrate_verify`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Final

import msgspec

from bamboo_session.protocol.models import Session, SessionMetadata, SessionState, StoredEvent

from .base import SessionFilter, SortBy, SortOrder, Storage, StorageError
from .importing import SessionImport

PAGE_SESSIONS: Final = 1000  # metadata listed at a time
PAGE_EVENTS: Final = 2000  # events read and imported at a time
PAGE_BYTES: Final = 4 * 1024 * 1024
OVERSIZED_LISTED: Final = 100  # events over the destination's frame limit named, at most
CONCURRENCY: Final = 16  # sessions copied at once (their imports share group commits)

_encoder = msgspec.json.Encoder()


class Action(enum.StrEnum):
    COPY = "copy"  # absent from the destination
    RESUME = "resume"  # partly copied: goes on from the destination's last seq
    SKIP = "skip"  # copied whole already
    CONFLICT = "conflict"  # the destination has another session of that id


@dataclasses.dataclass(frozen=True, slots=True)
class Planned:
    session_id: str
    action: Action
    events: int  # events still to copy
    reason: str = ""


@dataclasses.dataclass(slots=True)
class Progress:
    """Counters of a run, updated as it goes (for a progress display)."""

    sessions_total: int = 0
    events_total: int = 0
    sessions_done: int = 0  # copied, resumed, skipped or in conflict
    events_done: int = 0
    copied: int = 0
    resumed: int = 0
    skipped: int = 0
    conflicts: list[Planned] = dataclasses.field(default_factory=list)
    changed: list[SourceChange] = dataclasses.field(default_factory=list)
    # Events copied that ``event_problem`` found fault with: how many, the first named.
    oversized: int = 0
    oversized_listed: list[Oversized] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True, slots=True)
class Oversized:
    """An event copied that ``event_problem`` found fault with, and ``what`` it said."""

    session_id: str
    seq: int
    what: str


@dataclasses.dataclass(frozen=True, slots=True)
class SourceChange:
    """A session the source changed while it was copied: the copy lacks the change."""

    session_id: str
    what: str


ProgressCallback = Callable[[Progress], None]
# What is wrong with an event for the destination's servers, or None (migrate_cli.py:
# one over --max-frame-bytes less the envelope of a frame of it).
EventProblem = Callable[[StoredEvent], str | None]


class MigrationError(StorageError):
    """The migration cannot run (a destination that cannot import, a source that
    changed under it)."""


async def source_sessions(source: Storage) -> AsyncIterator[SessionMetadata]:
    """Every session of ``source``, oldest first, a page at a time (the source is not
    to be written meanwhile: :func:`source_changes` tells when it was)."""
    offset = 0
    while True:
        query = SessionFilter(
            limit=PAGE_SESSIONS,
            offset=offset,
            sort_by=SortBy.CREATED_AT,
            sort_order=SortOrder.ASC,
        )
        page = (await source.list_sessions(query)).sessions
        for meta in page:
            yield meta
        if len(page) < PAGE_SESSIONS:
            return
        offset += len(page)


async def plan_session(source: Storage, target: Storage, meta: SessionMetadata) -> Planned:
    """What a run would do with this source session."""
    found = await target.get_metadata(meta.id)
    if found is None:
        return Planned(meta.id, Action.COPY, meta.last_seq)
    if found.epoch != meta.epoch:
        reason = f"the destination holds another session {meta.id!r} (epoch {found.epoch})"
        return Planned(meta.id, Action.CONFLICT, 0, reason)
    if found.last_seq > meta.last_seq:
        reason = f"the destination is ahead of the source (seq {found.last_seq} > {meta.last_seq})"
        return Planned(meta.id, Action.CONFLICT, 0, reason)
    if found.last_seq:
        mine = await source.read_events(meta.id, found.last_seq - 1, limit=1)
        theirs = await target.read_events(meta.id, found.last_seq - 1, limit=1)
        if [fingerprint(e) for e in mine] != [fingerprint(e) for e in theirs]:
            reason = f"event {found.last_seq} differs between source and destination"
            return Planned(meta.id, Action.CONFLICT, 0, reason)
    if not found.state.can_become(meta.state):
        # Closed or expired there since the last run (a server serves the destination):
        # final, as the state table has it; the source's older state would reopen it.
        reason = (
            f"the destination's session is {found.state.value}, the source's {meta.state.value}"
        )
        return Planned(meta.id, Action.CONFLICT, 0, reason)
    if found.last_seq == meta.last_seq and final_fields(found) == final_fields(meta):
        return Planned(meta.id, Action.SKIP, 0)
    return Planned(meta.id, Action.RESUME, meta.last_seq - found.last_seq)


async def migrate(
    source: Storage,
    target: Storage,
    *,
    dry_run: bool = False,
    on_progress: ProgressCallback | None = None,
    concurrency: int = CONCURRENCY,
    event_problem: EventProblem | None = None,
) -> Progress:
    """Copy every session of ``source`` into ``target`` (see the module docstring).
    With ``dry_run`` only plan: the returned counters say what a run would do. An
    event ``event_problem`` finds fault with is copied all the same, and counted in
    :attr:`Progress.oversized` (see the module docstring)."""
    if not dry_run and not isinstance(target, SessionImport):
        raise MigrationError(
            f"the destination ({type(target).__name__}) cannot import sessions "
            "(it does not implement SessionImport)"
        )
    progress = Progress()
    plans: list[tuple[SessionMetadata, Planned]] = []
    async for meta in source_sessions(source):
        planned = await plan_session(source, target, meta)
        plans.append((meta, planned))
        progress.sessions_total += 1
        progress.events_total += planned.events
    if on_progress is not None:
        on_progress(progress)
    if dry_run:
        for _meta, planned in plans:
            _count(progress, planned)
        return progress
    assert isinstance(target, SessionImport)
    run = _Run(source, target, target, progress, on_progress, event_problem)
    queue = iter(plans)
    await asyncio.gather(*(run.worker(queue) for _ in range(max(concurrency, 1))))
    if run.failure is not None:
        raise run.failure
    progress.changed = await source_changes(source, {meta.id: meta for meta, _ in plans})
    return progress


async def source_changes(source: Storage, copied: dict[str, SessionMetadata]) -> list[SourceChange]:
    """What ``source`` holds now that differs from ``copied``, its sessions as listed
    when the run began (and copied as they were then)."""
    changes: list[SourceChange] = []
    seen: set[str] = set()
    async for meta in source_sessions(source):
        seen.add(meta.id)
        before = copied.get(meta.id)
        if before is None:
            changes.append(SourceChange(meta.id, "created during the run: not copied"))
        elif what := _change(before, meta):
            changes.append(SourceChange(meta.id, what))
    gone = "deleted from the source during the run (the destination keeps its copy)"
    changes.extend(SourceChange(id_, gone) for id_ in copied if id_ not in seen)
    return changes


def _change(before: SessionMetadata, now: SessionMetadata) -> str:
    if before.epoch != now.epoch:
        return f"replaced during the run (epoch {before.epoch} -> {now.epoch})"
    if before.last_seq != now.last_seq:
        return (
            f"last seq {before.last_seq} -> {now.last_seq} during the run: "
            f"events after seq {before.last_seq} not copied"
        )
    if final_fields(before) != final_fields(now):
        return "its state or times changed during the run: copied as they were before"
    return ""


def _count(progress: Progress, planned: Planned) -> None:
    progress.sessions_done += 1
    if planned.action == Action.COPY:
        progress.copied += 1
    elif planned.action == Action.RESUME:
        progress.resumed += 1
    elif planned.action == Action.SKIP:
        progress.skipped += 1
    else:
        progress.conflicts.append(planned)


@dataclasses.dataclass(slots=True)
class _Run:
    """One copying run, shared by its workers. When one fails, the others stop at their
    next page, so that nothing is still being written when :func:`migrate` raises."""

    source: Storage
    target: Storage
    importer: SessionImport
    progress: Progress
    on_progress: ProgressCallback | None
    event_problem: EventProblem | None
    failure: Exception | None = None

    async def worker(self, queue: Iterator[tuple[SessionMetadata, Planned]]) -> None:
        for meta, planned in queue:
            if self.failure is not None:
                return
            try:
                if planned.action in (Action.COPY, Action.RESUME):
                    await self._copy(meta, planned)
                _count(self.progress, planned)
                self._report()
            except Exception as exc:
                if self.failure is None:
                    self.failure = exc
                return

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    async def _copy(self, meta: SessionMetadata, planned: Planned) -> None:
        if planned.action == Action.COPY:
            # Created live and empty: the events come next, the final state last (a
            # closed or expired session would refuse them otherwise, on some backends).
            live = msgspec.structs.replace(meta, state=SessionState.ACTIVE, extra=dict(meta.extra))
            await self.target.create_session(Session(live, []))
            position = 0
        else:
            position = await self.target.last_seq(meta.id)
        while position < meta.last_seq:
            if self.failure is not None:
                return
            limit = min(PAGE_EVENTS, meta.last_seq - position)
            page = await self.source.read_events(
                meta.id, position, limit=limit, max_bytes=PAGE_BYTES
            )
            if not page:
                raise MigrationError(
                    f"session {meta.id!r}: the source ends at seq {position}, "
                    f"not {meta.last_seq}; is a server writing to it?"
                )
            if self.event_problem is not None:
                self._check(meta.id, page, self.event_problem)
            await self.importer.import_events(meta.id, page)
            position = page[-1].seq
            self.progress.events_done += len(page)
            self._report()
        await self.importer.import_metadata(meta)

    def _check(self, session_id: str, page: list[StoredEvent], problem: EventProblem) -> None:
        progress = self.progress
        for event in page:
            if (what := problem(event)) is not None:
                progress.oversized += 1
                if len(progress.oversized_listed) < OVERSIZED_LISTED:
                    progress.oversized_listed.append(Oversized(session_id, event.seq, what))


def final_fields(meta: SessionMetadata) -> tuple[object, ...]:
    """What ``import_metadata`` sets, in comparable form."""
    return (
        meta.state.value,
        plain(meta.updated_at),
        plain(meta.last_activity_at),
        plain(meta.expires_at),
        meta.ttl,
        meta.extra,
    )


def plain(value: object) -> object:
    """Times as UTC text with microseconds, so equal instants compare equal."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def fingerprint(event: StoredEvent) -> bytes:
    """The event as two backends must agree on it, whatever their spelling of it."""
    return _encoder.encode((event.seq, plain(event.ts), event.key, event.event)) + b"\n"
