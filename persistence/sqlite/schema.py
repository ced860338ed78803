"""The SQLite store's file: its schema, versioned with ``PRAGMA user_version`` and moved
forward by migrations at open; the connection settings of the writer and the readers;
and how a session's row and a log row turn into ``SessionMetadata`` and ``StoredEvent``.

Times are stored as ISO 8601 text in UTC with microseconds (``2026-11-24T10:00:00.000000
+00:00``): readable in the ``sqlite3`` shell, understood by SQLite's date functions, and
ordered as text exactly as in time, so the time indexes serve range queries and sorting.
Events are stored as their JSON (the bytes sent on the wire), so ``json_extract`` works
on them. docs/storage-sqlite.md documents all of it for operators.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from bamboo_session.protocol.models import SessionMetadata, SessionState, StoredEvent

from ..base import StorageError, StoreTooNew

# 'Bamb': PRAGMA application_id, so that a file of another program is never taken over.
APPLICATION_ID: Final = 0x42616D62
SCHEMA_VERSION: Final = 3
# The WAL's bound, in bytes: past it the writer checkpoints at its next commit (should
# the checkpointer beside it have fallen behind), and a WAL restarted from its start is
# cut back to it. Every page in the WAL may need a page of the database file when it is
# folded in: on a disk that fills, this is about what must be freed for the store to
# take writes again, however long it ran full (SQLite's default is 1,000 pages). Read at
# each open: bench/sqlite_wal_bound.py sets it to compare bounds (not a user option).
WAL_MAX_BYTES: int = 4 << 20

_V1: Final = (
    """
    CREATE TABLE sessions (
        id               TEXT PRIMARY KEY,
        user_id          TEXT,
        title            TEXT,
        state            TEXT NOT NULL,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        last_activity_at TEXT NOT NULL,
        expires_at       TEXT,
        ttl              INTEGER,
        message_count    INTEGER NOT NULL DEFAULT 0,
        last_seq         INTEGER NOT NULL DEFAULT 0,
        epoch            TEXT NOT NULL,
        extra            TEXT NOT NULL DEFAULT '{}'
    ) WITHOUT ROWID
    """,
    "CREATE INDEX sessions_by_user ON sessions (user_id, created_at)",
    "CREATE INDEX sessions_by_state ON sessions (state, created_at)",
    "CREATE INDEX sessions_by_created ON sessions (created_at)",
    "CREATE INDEX sessions_by_activity ON sessions (last_activity_at)",
    "CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL",
    """
    CREATE TABLE events (
        session_id    TEXT NOT NULL,
        seq           INTEGER NOT NULL,
        ts            TEXT NOT NULL,
        key           TEXT,
        message_index INTEGER,
        event         TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)
    ) WITHOUT ROWID
    """,
    # The idempotency window: the newest seq of a key is one probe of this index.
    "CREATE INDEX events_by_key ON events (session_id, key) WHERE key IS NOT NULL",
    # The history: message i of a session is one probe; a page is one range.
    """CREATE INDEX events_by_message ON events (session_id, message_index)
       WHERE message_index IS NOT NULL""",
)

# What each session's log holds (its events' JSON and keys, in bytes): the count that
# max_session_bytes bounds, moved by every append. A file of version 1 gets it counted
# from its logs once, in the migration.
_V2: Final = (
    "ALTER TABLE sessions ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0",
    """UPDATE sessions SET stored_bytes = (
           SELECT coalesce(sum(length(CAST(event AS BLOB))
                               + coalesce(length(CAST(key AS BLOB)), 0)), 0)
           FROM events WHERE events.session_id = sessions.id)""",
)

# The listings by update time and by message count, as those by creation time: all,
# one user's, one state's, each an index that a page (and a cursor's page) seeks in
# rather than a scan and a sort of every match. Every append moves updated_at, and
# every message message_count, so those appends rewrite these entries too
# (docs/storage-sqlite.md has the cost). IF NOT EXISTS: a file rolled back by its
# user_version alone (an older server writes to it with the indexes kept) migrates again.
LISTING_INDEXES_V3: Final = {
    "sessions_by_updated": "updated_at",
    "sessions_by_user_updated": "user_id, updated_at",
    "sessions_by_state_updated": "state, updated_at",
    "sessions_by_message_count": "message_count",
    "sessions_by_user_message_count": "user_id, message_count",
    "sessions_by_state_message_count": "state, message_count",
}
_V3: Final = tuple(
    f"CREATE INDEX IF NOT EXISTS {name} ON sessions ({columns})"
    for name, columns in LISTING_INDEXES_V3.items()
)

# MIGRATIONS[n] takes a file from user_version n to n + 1, inside one transaction.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1, _V2, _V3)
assert len(MIGRATIONS) == SCHEMA_VERSION

SESSION_COLUMNS: Final = (
    "id, user_id, title, state, created_at, updated_at, last_activity_at, expires_at, "
    "ttl, message_count, last_seq, epoch, extra, stored_bytes"
)
EVENT_COLUMNS: Final = "seq, ts, key, CAST(event AS BLOB)"

SessionRow = tuple[
    str, str | None, str | None, str, str, str, str, str | None, int | None, int, int, str, str, int
]
EventRow = tuple[int, str, str | None, bytes]

_extra_encoder = msgspec.json.Encoder()
_extra_decoder = msgspec.json.Decoder(dict[str, Any])


# -- connections ----------------------------------------------------------------------


def connect_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """The one connection that writes, with the schema brought up to date."""
    connection = _connect(f"file:{_quote(path)}?mode=rwc")
    try:
        # Before WAL mode, which is written in the file's header: a file refused (of
        # another program, or a newer version) is left as it was.
        _version(connection, path)
        if connection.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StorageError(f"{path}: SQLite refused WAL mode (is it on a network share?)")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
        connection.execute(f"PRAGMA journal_size_limit = {WAL_MAX_BYTES}")
        connection.execute("PRAGMA cache_size = -32768")  # KiB: the hot pages of a big store
        # Checkpoints run beside the writer (checkpoint.py); this is the safety net.
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.execute(f"PRAGMA wal_autocheckpoint = {WAL_MAX_BYTES // page_size}")
        _migrate(connection, path)
        # From here on the writer waits for another process's write lock itself, in a
        # wait the store's close ends (lock_wait.py); SQLite's would hold a stop.
        connection.execute("PRAGMA busy_timeout = 0")
    except BaseException:
        connection.close()
        raise
    return connection


def connect_checkpointer(path: Path) -> sqlite3.Connection:
    """A connection that only folds the WAL into the database file."""
    connection = _connect(f"file:{_quote(path)}?mode=rw")
    connection.execute("PRAGMA wal_autocheckpoint = 0")
    return connection


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection: in WAL mode it never waits for the writer. In a directory
    we may not write to (a mounted backup), SQLite could not make the WAL's shared-memory
    file; no writer can work there either, so the file is read as immutable."""
    immutable = "" if os.access(path.parent, os.W_OK) else "&immutable=1"
    connection = _connect(f"file:{_quote(path)}?mode=ro{immutable}")
    connection.execute("PRAGMA query_only = ON")
    connection.execute("PRAGMA cache_size = -16384")  # KiB
    return connection


def prepare_path(path: Path, read_only: bool) -> None:
    """Before an open takes the store's lock: ``path`` names a file, not a directory;
    read-only, one that exists (no lock file is made beside a store that is not
    there); else its directory made if missing."""
    if path.is_dir():
        raise StorageError(
            f"{path} is a directory; an SQLite store is a file: name one in it, "
            f"e.g. sqlite://{path / 'bamboo.db'}"
        )
    try:
        if read_only:
            if not path.is_file():
                raise StorageError(f"no SQLite store at {path}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot open SQLite store {path}: {exc}") from exc


def check_readable(path: Path) -> None:
    """For a read-only open, its shared lock held (so that a file a writer is migrating
    is refused as in use, not as of an older version): the file is ours, and of a
    version we read."""
    try:
        connection = connect_reader(path)
        try:
            version = _version(connection, path)
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read SQLite store {path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        raise StorageError(
            f"{path} has schema version {version}; open it once for writing to migrate "
            f"it to version {SCHEMA_VERSION}"
        )


def _connect(uri: str) -> sqlite3.Connection:
    # Autocommit (isolation_level None): transactions are explicit, BEGIN to COMMIT.
    connection = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, cached_statements=64
    )
    connection.execute("PRAGMA busy_timeout = 10000")
    return connection


def _quote(path: Path) -> str:
    return str(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _version(connection: sqlite3.Connection, path: Path) -> int:
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    tables = connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if application_id != APPLICATION_ID and (application_id or tables):
        raise StorageError(f"{path} is an SQLite file of another program, not a Bamboo store")
    if version > SCHEMA_VERSION:  # a rollback onto a file a later version migrated
        raise StoreTooNew(str(path), version, SCHEMA_VERSION, "schema version")
    return version


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Apply every migration the file has not had yet, each in its own transaction."""
    while (version := _version(connection, path)) < SCHEMA_VERSION:
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


# -- values ---------------------------------------------------------------------------


def time_text(moment: datetime) -> str:
    """A time as stored: UTC, microseconds, ``+00:00`` (a naive time is taken as UTC)."""
    if moment.tzinfo is not UTC:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def encode_extra(extra: dict[str, Any]) -> str:
    return _extra_encoder.encode(extra).decode()


def metadata_of(row: SessionRow) -> SessionMetadata:
    (
        session_id,
        user_id,
        title,
        state,
        created_at,
        updated_at,
        last_activity_at,
        expires_at,
        ttl,
        message_count,
        last_seq,
        epoch,
        extra,
        stored_bytes,
    ) = row
    parse = datetime.fromisoformat
    return SessionMetadata(
        id=session_id,
        user_id=user_id,
        title=title,
        state=SessionState(state),
        created_at=parse(created_at),
        updated_at=parse(updated_at),
        last_activity_at=parse(last_activity_at),
        expires_at=None if expires_at is None else parse(expires_at),
        message_count=message_count,
        extra=_extra_decoder.decode(extra),
        last_seq=last_seq,
        epoch=epoch,
        ttl=ttl,
        stored_bytes=stored_bytes,
    )


def row_of(meta: SessionMetadata) -> SessionRow:
    return (
        meta.id,
        meta.user_id,
        meta.title,
        meta.state.value,
        time_text(meta.created_at),
        time_text(meta.updated_at),
        time_text(meta.last_activity_at),
        None if meta.expires_at is None else time_text(meta.expires_at),
        meta.ttl,
        meta.message_count,
        meta.last_seq,
        meta.epoch,
        encode_extra(meta.extra),
        meta.stored_bytes,
    )


def event_of(row: EventRow) -> StoredEvent:
    seq, ts, key, data = row
    return StoredEvent.from_json(seq, datetime.fromisoformat(ts), msgspec.Raw(data), key)
