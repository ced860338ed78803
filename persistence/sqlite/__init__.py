"""The SQLite backend: every session, history and event log in one database file.

``open_storage("sqlite:///var/lib/bamboo/sessions.db")`` (three slashes, then an
absolute path; SQLAlchemy's ``sqlite:////abs/path`` works too), with
``?durability=fsync`` (the default: acknowledged after the WAL is synced,
``synchronous=FULL``) or ``?durability=os`` (``synchronous=NORMAL``: after the write to
the OS; survives a crash of the process, not of the machine).

Modules: ``schema`` (the file's tables, indexes, migrations and row conversions),
``writes`` and ``writer`` (the group commit), ``reads`` (the read connections and
queries), ``listing`` (``list_sessions``'s), ``lock`` (one process per file),
``opening`` (the store's parts opened in order, closed in reverse), ``storage``
(:class:`SqliteStorage`).
docs/storage-sqlite.md describes the file for operators.
"""

from __future__ import annotations

from ..url import StoreOptions, StoreURL
from .config import SqliteStorageConfig, config_from_url
from .storage import SqliteStorage

__all__ = ["SqliteStorage", "SqliteStorageConfig", "open_from_url"]


async def open_from_url(url: StoreURL, options: StoreOptions) -> SqliteStorage:
    """``sqlite:///path/to/file.db?durability=fsync|os``."""
    url.check_params({"durability"})
    try:
        config = config_from_url(
            url.location,
            url.take("durability"),
            default_ttl=options.default_ttl,
            max_sessions=options.max_sessions,
            cleanup_interval=options.cleanup_interval,
            read_only=options.read_only,
            max_session_bytes=options.max_session_bytes,
            max_user_bytes=options.max_user_bytes,
        )
    except ValueError as exc:
        raise ValueError(f"store URL {url.text!r}: {exc}") from None
    return await SqliteStorage.open(config)
