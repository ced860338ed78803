"""How a :class:`~.storage.SqliteStorage` is configured: its file, its options, and
their reading from a ``sqlite://`` URL."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final, Literal

Durability = Literal["fsync", "os"]
SYNCHRONOUS: Final[dict[str, str]] = {"fsync": "FULL", "os": "NORMAL"}


@dataclasses.dataclass(frozen=True, slots=True)
class SqliteStorageConfig:
    """Where and how :class:`SqliteStorage` keeps data: ``path`` (the database file),
    ``default_ttl``, ``max_sessions``, ``cleanup_interval`` (as every backend),
    ``durability`` (``fsync``: ``synchronous=FULL``; ``os``: ``synchronous=NORMAL``),
    ``read_only`` (open an existing file without writing), ``readers`` (read
    connections, each on its own thread), ``max_session_bytes`` (what one session's
    events and keys may take, in bytes; None: no cap), ``max_user_bytes`` (what the
    sessions of one user may take together, in the same measure; None: no cap)."""

    path: Path
    default_ttl: int | None = None
    max_sessions: int | None = None
    cleanup_interval: float | None = 3600
    durability: Durability = "fsync"
    read_only: bool = False
    readers: int = 2
    max_session_bytes: int | None = None
    max_user_bytes: int | None = None


def config_from_url(location: str, durability: str | None, **options: Any) -> SqliteStorageConfig:
    return SqliteStorageConfig(Path(location), durability=_durability(durability), **options)


def _durability(given: str | None) -> Durability:
    for mode in ("fsync", "os"):
        if (given or "fsync") == mode:
            return mode
    raise ValueError(f"durability must be one of {', '.join(SYNCHRONOUS)}, not {given!r}")
