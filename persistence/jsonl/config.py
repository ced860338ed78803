"""Configuration of the embedded JSONL storage backend.

``JsonlStorageConfig`` is immutable: each builder method (the seed's
``with_default_ttl``, ``with_max_sessions``, ``with_cleanup_interval``,
``disable_index``, plus ``with_durability`` and the others below) returns a new config,
so one base config can be shared and varied safely.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path
from typing import Literal, Self

from .layout import Layout

Durability = Literal["fsync", "os"]
DURABILITY_MODES: tuple[Durability, ...] = ("fsync", "os")
# A longer wait would only add latency: past a few milliseconds a batch is already as
# big as the arrivals make it.
MAX_COMMIT_WINDOW = 0.05
# What a commit queued behind another's sync waits for at most (``busy_window``): the
# p50 of appends a sync keeps up with does not move, and at a few thousand events/s
# about half the syncs go (bench/RESULTS.md, fifty-fifth round).
BUSY_WINDOW = 0.002
OPEN_LOGS_MIN, OPEN_LOGS_MAX = 32, 4096


# The WAL kept whole after a failed sync, past which appends are refused: 16 full
# segments, the bound of the segments kept aside as damaged.
WAL_KEPT_MAX_BYTES = 1024 * 1024 * 1024


def open_logs_default() -> int:
    """A twelfth of the descriptors this process may open (its soft RLIMIT_NOFILE),
    from 32 to 4,096: at their peak the logs take up to three times the bound, and
    the rest is for connections and everything else."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return OPEN_LOGS_MAX
    return max(OPEN_LOGS_MIN, min(OPEN_LOGS_MAX, soft // 12))


@dataclasses.dataclass(frozen=True, slots=True)
class JsonlStorageConfig:
    """Where and how :class:`~bamboo_session.persistence.jsonl.JsonlStorage` keeps data.

    - ``base_path``: the data directory (``~`` expands).
    - ``default_ttl``: seconds of inactivity before a session without its own TTL expires;
      ``None`` for no expiry.
    - ``max_sessions``: refuse ``create_session`` beyond this many (``StorageFull``).
    - ``cleanup_interval``: seconds between background removals of expired sessions
      (None: only when asked).
    - ``enable_index``: keep secondary indexes (by user, by state) for ``list_sessions``.
    - ``durability``: ``fsync`` (ack after fsync) or ``os`` (ack after write, fsync in
      the background every ``fsync_interval`` seconds). For a store that keeps nothing,
      use ``MemoryStorage`` (``memory://``).
    - ``commit_window``: in ``fsync`` mode, the least time in seconds between the starts
      of two group commits (0: none). An append that comes sooner than that after the
      last commit started waits for the rest of the window, with whatever else comes
      meanwhile; a lone append (the last commit is older) never waits, and a commit
      that took longer than the window is followed at once. At a few thousand events/s
      over many sessions, one ``fdatasync`` and one round trip to the sync helper then
      serve several events.
    - ``busy_window``: in ``fsync`` mode, the least time in seconds from the start of a
      group commit to that of the next, when the next one's appends came while the
      first one's sync was in flight (the appends come faster than syncs complete);
      0: none. What comes meanwhile shares its sync. A lone append, nothing in
      flight, never waits.
    - ``checkpoint_every`` / ``checkpoint_interval``: a dirty session's checkpoint
      (metadata and log position, written in place without a sync) is rewritten after
      that many appends, or after that many seconds.
    - ``message_cache_bytes``: bytes of recent messages kept decoded in memory, over all
      sessions (each session's newest, up to a 32nd of the budget per session).
    - ``key_cache_bytes``: bytes of idempotency keys kept in memory, over all sessions
      (a session whose keys were dropped reads them again from its log when needed).
    - ``max_open_logs``: event-log file descriptors kept open by the writer between
      batches (by default a twelfth of the process's open-file limit, from 32 to
      4,096). A batch opens the logs it needs before the least recently used are
      closed, so a batch holds up to twice as many; the background syncs (``os``
      mode's rounds, the retirement of old WAL segments) hold up to as many again, on
      their threads: at most three times the bound at once. A commit to a log that is not open is
      written on the writer's thread (opening a file can block), which costs a
      hand-off: about 4% more CPU per event in a closed loop over 1,000 sessions with
      256 open.
    - ``wal``: in ``fsync`` mode, sync one shared write-ahead log per group commit instead
      of every session log it touched (see ``wal.py``); ``False`` syncs each touched
      log. ``wal_segment_bytes`` / ``wal_segment_age``: a WAL segment is retired (its
      logs synced, then it is deleted) past that size or age.
    - ``wal_damaged_max_count`` / ``wal_damaged_max_bytes``: the WAL segments an open's
      replay kept aside as damaged (``<n>.wal.damaged-...``, for an operator, until
      ``clear_damaged``) are bounded: after each replay that keeps some aside, the
      oldest are removed (each logged) until at most this many remain, of at most
      this many bytes together (defaults 16 and 1 GiB: 16 full segments). A disk that
      keeps damaging segments, or a loop of crashes, cannot fill the disk with them.
    - ``wal_kept_max_bytes``: after a failed sync no WAL segment is deleted until the
      next open; once the segments so kept hold more than this many bytes (default
      1 GiB: 16 full segments), every append and every delete (a small WAL record
      each) is refused (``AppendsSuspended``) until then, the session left as it was,
      instead of the WAL growing until the disk is full.
    - ``sync_helper``: with the WAL, a small child process runs each group commit's
      ``fdatasync`` (``syncer.py``: no GIL hand-off per commit); ``False``, or where it
      cannot start, the writer's I/O thread does.
    - ``read_only``: open an existing store to read it (offline tools): no lock, no
      repair, no file created or changed, and every write refused (see ``storage.py``).
      ``offline``: and refuse it (StorageLocked) while a process holds its lock, and
      hold ``LOCK`` shared until closed, so that no server starts on it meanwhile.
    - ``max_session_bytes``: what one session's log file may hold, in bytes (its lines:
      seq, time, key and event JSON); an append that would take it past this is
      ``SessionFull``, nothing of it written. None: no cap.
    - ``max_user_bytes``: what the log files of one user's sessions may hold together
      (closed and expired ones until they go); past it an append is ``UserFull``,
      nothing of it written. None: no cap.
    - ``old_names``: not a setting; set by the open, for a store of format 1 whose
      files it did not rename (read-only, or a format record it could not write): its
      files are named by the ids themselves (``layout.py``).
    """

    base_path: Path
    default_ttl: int | None = None
    max_sessions: int | None = None
    cleanup_interval: float | None = 3600
    enable_index: bool = True
    durability: Durability = "fsync"
    checkpoint_every: int = 256
    checkpoint_interval: float = 5.0
    message_cache_bytes: int = 32 * 1024 * 1024
    key_cache_bytes: int = 64 * 1024 * 1024
    max_open_logs: int = 256  # replaced in __init__: open_logs_default()
    fsync_interval: float = 1.0
    commit_window: float = 0.0
    busy_window: float = BUSY_WINDOW
    wal: bool = True
    wal_segment_bytes: int = 64 * 1024 * 1024
    wal_segment_age: float = 30.0
    wal_damaged_max_count: int = 16
    wal_damaged_max_bytes: int = 1024 * 1024 * 1024
    wal_kept_max_bytes: int = WAL_KEPT_MAX_BYTES
    sync_helper: bool = True
    read_only: bool = False
    offline: bool = False
    max_session_bytes: int | None = None
    max_user_bytes: int | None = None
    old_names: bool = False

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        default_ttl: int | None = None,
        max_sessions: int | None = None,
        cleanup_interval: float | None = 3600,
        enable_index: bool = True,
        durability: Durability = "fsync",
        checkpoint_every: int = 256,
        checkpoint_interval: float = 5.0,
        message_cache_bytes: int = 32 * 1024 * 1024,
        key_cache_bytes: int = 64 * 1024 * 1024,
        max_open_logs: int | None = None,
        fsync_interval: float = 1.0,
        commit_window: float = 0.0,
        busy_window: float = BUSY_WINDOW,
        wal: bool = True,
        wal_segment_bytes: int = 64 * 1024 * 1024,
        wal_segment_age: float = 30.0,
        wal_damaged_max_count: int = 16,
        wal_damaged_max_bytes: int = 1024 * 1024 * 1024,
        wal_kept_max_bytes: int = WAL_KEPT_MAX_BYTES,
        sync_helper: bool = True,
        read_only: bool = False,
        offline: bool = False,
        max_session_bytes: int | None = None,
        max_user_bytes: int | None = None,
        old_names: bool = False,
    ) -> None:
        # A hand-written __init__ so that base_path accepts str and "~" expands once,
        # here, rather than at every use.
        set_field = object.__setattr__
        set_field(self, "base_path", Path(base_path).expanduser())
        set_field(self, "default_ttl", default_ttl)
        set_field(self, "max_sessions", max_sessions)
        set_field(self, "cleanup_interval", cleanup_interval)
        set_field(self, "enable_index", enable_index)
        set_field(self, "durability", durability)
        set_field(self, "checkpoint_every", checkpoint_every)
        set_field(self, "checkpoint_interval", checkpoint_interval)
        set_field(self, "message_cache_bytes", message_cache_bytes)
        set_field(self, "key_cache_bytes", key_cache_bytes)
        open_logs = open_logs_default() if max_open_logs is None else max_open_logs
        set_field(self, "max_open_logs", open_logs)
        set_field(self, "fsync_interval", fsync_interval)
        set_field(self, "commit_window", commit_window)
        set_field(self, "busy_window", busy_window)
        set_field(self, "wal", wal)
        set_field(self, "wal_segment_bytes", wal_segment_bytes)
        set_field(self, "wal_segment_age", wal_segment_age)
        set_field(self, "wal_damaged_max_count", wal_damaged_max_count)
        set_field(self, "wal_damaged_max_bytes", wal_damaged_max_bytes)
        set_field(self, "wal_kept_max_bytes", wal_kept_max_bytes)
        set_field(self, "sync_helper", sync_helper)
        set_field(self, "read_only", read_only)
        set_field(self, "offline", offline)
        set_field(self, "max_session_bytes", max_session_bytes)
        set_field(self, "max_user_bytes", max_user_bytes)
        set_field(self, "old_names", old_names)
        self._validate()

    @classmethod
    def new(cls, base_path: str | os.PathLike[str]) -> Self:
        """The seed's ``JsonlStorageConfig::new(path)``."""
        return cls(base_path)

    def _validate(self) -> None:
        if self.durability not in DURABILITY_MODES:
            raise ValueError(
                f"durability must be one of {', '.join(DURABILITY_MODES)}, not {self.durability!r}"
            )
        if self.default_ttl is not None and self.default_ttl <= 0:
            raise ValueError("default_ttl must be positive (or None for no expiry)")
        if self.max_sessions is not None and self.max_sessions < 0:
            raise ValueError("max_sessions must not be negative")
        if self.max_session_bytes is not None and self.max_session_bytes < 1:
            raise ValueError("max_session_bytes must be at least 1 (None: no cap)")
        if self.max_user_bytes is not None and self.max_user_bytes < 1:
            raise ValueError("max_user_bytes must be at least 1 (None: no cap)")
        if self.cleanup_interval is not None and self.cleanup_interval <= 0:
            raise ValueError("cleanup_interval must be positive (or None: on demand only)")
        for name in ("checkpoint_interval", "fsync_interval", "wal_segment_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("checkpoint_every", "max_open_logs", "wal_segment_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("commit_window", "busy_window"):
            if not 0 <= getattr(self, name) <= MAX_COMMIT_WINDOW:  # (refuses nan too)
                raise ValueError(f"{name} must be from 0 to {MAX_COMMIT_WINDOW} seconds")
        for name in (
            "message_cache_bytes",
            "key_cache_bytes",
            "wal_damaged_max_count",
            "wal_damaged_max_bytes",
            "wal_kept_max_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def _replace(self, **changes: object) -> Self:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(changes)
        return type(self)(**fields)

    def with_default_ttl(self, seconds: int | None) -> Self:
        return self._replace(default_ttl=seconds)

    def with_max_sessions(self, max_sessions: int | None) -> Self:
        return self._replace(max_sessions=max_sessions)

    def with_cleanup_interval(self, seconds: float | None) -> Self:
        return self._replace(cleanup_interval=seconds)

    def disable_index(self) -> Self:
        return self._replace(enable_index=False)

    def with_durability(self, durability: Durability) -> Self:
        return self._replace(durability=durability)

    def with_wal(
        self,
        enabled: bool = True,
        segment_bytes: int | None = None,
        segment_age: float | None = None,
    ) -> Self:
        return self._replace(
            wal=enabled,
            wal_segment_bytes=self.wal_segment_bytes if segment_bytes is None else segment_bytes,
            wal_segment_age=self.wal_segment_age if segment_age is None else segment_age,
        )

    def with_checkpointing(self, every: int | None = None, interval: float | None = None) -> Self:
        return self._replace(
            checkpoint_every=self.checkpoint_every if every is None else every,
            checkpoint_interval=self.checkpoint_interval if interval is None else interval,
        )

    def with_caches(self, message_bytes: int | None = None, key_bytes: int | None = None) -> Self:
        if message_bytes is None:
            message_bytes = self.message_cache_bytes
        if key_bytes is None:
            key_bytes = self.key_cache_bytes
        return self._replace(message_cache_bytes=message_bytes, key_cache_bytes=key_bytes)

    def with_read_only(self, read_only: bool = True) -> Self:
        return self._replace(read_only=read_only)

    def with_old_names(self, old_names: bool) -> Self:
        return self._replace(old_names=old_names)

    @property
    def uses_wal(self) -> bool:
        """Whether appends go through the shared WAL (``fsync`` mode only: ``os`` mode
        never syncs on the acknowledgement path, so a WAL would only cost)."""
        return self.wal and self.durability == "fsync" and not self.read_only

    @property
    def append_directories(self) -> tuple[Path, ...]:
        """The directories appends write in: the logs' (and their message indexes'),
        the checkpoints' (written after them), and the WAL's when it is used; none
        when read-only."""
        if self.read_only:
            return ()
        layout = self.layout
        written = (layout.events, layout.sessions)
        return (*written, layout.wal) if self.uses_wal else written

    @property
    def sync_decides_delete(self) -> bool:
        """Whether a delete is durable by its rename's directory sync alone, and so
        fails when that sync fails (``fsync`` mode without the WAL, which would record
        it): ``lifecycle.py``."""
        return self.durability == "fsync" and not self.uses_wal and not self.read_only

    @property
    def layout(self) -> Layout:
        """The store's paths (``layout.py``)."""
        return Layout(self.base_path, case_folded=not self.old_names)
