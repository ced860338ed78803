"""One process holds an SQLite store: the store's reader/writer lock (``..flock``) on
``<file>.lock`` beside the database file, the real one when its path is a symlink
(``real_file``): SQLite follows the link, so two paths to one file are one store.

A store opened for writing (a server, ``cleanup``, the destination of a migrate) takes
the lock exclusively; a store opened read-only (``ls``, ``show``, the source of a
migrate) takes it shared, so several readers may look at a file no server holds.
(SQLite's own locks could not say who holds a store: they are per connection, and WAL
mode lets any number of processes write in turn.)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..flock import LockWording, StoreFlock


def real_file(database: Path) -> Path:
    """The file SQLite opens for ``database`` (its journal and WAL beside it): symlinks
    followed. Never raises (a loop stays unresolved: the open says what is wrong)."""
    return Path(os.path.realpath(database))


def lock_path(database: Path) -> Path:
    real = real_file(database)
    return real.with_name(real.name + ".lock")


def store_lock(database: Path) -> StoreFlock:
    """The (not yet taken) lock of the database file at ``database``."""
    path = lock_path(database)
    store = f"SQLite store {database}"
    return StoreFlock(
        path,
        LockWording(
            store=store,
            refusal=lambda holder: (
                f"{store} is in use: {holder} holds {path}; stop it before opening the store here"
            ),
            readers="a reader (an offline tool or a migrate)",
            writer="another process",
        ),
    )
