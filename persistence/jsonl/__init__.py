"""The embedded storage backend: JSONL event logs, small checkpoints, an in-memory index.

``jsonl:///path`` (or a bare path) opens it through ``open_storage``; or build a
:class:`JsonlStorageConfig` and ``await JsonlStorage.open(config)``. A store::

    LOCK                    flock'ed while a storage has the store open for writing
                            (exclusive), or an offline reader (shared: migrate's source)
    FORMAT                  the store's format, {"format": 2}: a newer one is refused
    CLOCK                   the time of the newest change written lazily (clock_mark)
    sessions/<stem>.json    checkpoint: metadata and log position (two slots, in place)
    sessions/<stem>.preamble  history from the old format that has no log line (rare)
    events/<stem>.jsonl     the event log, one StoredEvent per line: the truth
    events/<stem>.idx       message index: where each message event is (derived)

``<stem>`` is the session's id, or for an id with capitals its lower case, ``~`` and a
mask of the capitals (``Chat`` -> ``chat~1``): every name is lower case, so ids that
differ only in case keep their own files on a case-insensitive file system (layout).
    wal/<n>.wal             fsync mode's shared write-ahead log (one sync per batch)
    index/snapshot.msgpack  the index snapshot a clean close leaves (fast open)

Its promises: an append is acknowledged once as durable as the mode says (``fsync``:
in a synced WAL segment; ``os``: written); seqs follow call order with no gap; a
session's history is its log's ``message`` events; creation and moves to closed or
expired are on disk when they return; a crash at any instant loses nothing
acknowledged (open repairs, and cuts what was never acknowledged, quietly); memory is
bounded in bytes; bytes written per byte appended stay a small constant.

The modules, one concern each:

- ``layout``: every path and file name of a store;
- ``config``: :class:`JsonlStorageConfig`;
- ``files``: blocking file primitives (atomic replace, syncs, the lock file);
- ``scan``: the one reader of log lines (decoding no more than asked, bisection);
- ``checkpoint``: checkpoint files (two slots, written in place) and the old format;
- ``message_index``: where each message of a log is (derived, checked on use);
- ``snapshot``: the index snapshot a clean close leaves, for a fast open;
- ``writer`` and ``logfiles``: the group-commit writer and its I/O thread; ``wal``:
  fsync mode's shared write-ahead log;
- ``opening``, ``store_format``, ``recovery``, ``session_recovery``: what open
  checks (the store's format), repairs, converts and finds; ``case_names``: format
  1's file names moved to format 2's at the first writable open; ``repair``: cutting a
  log's tail, telling an ordinary crash from damage;
  ``damaged_wal``: the bound on WAL segments replay kept aside as damaged;
- ``record``, ``caches``, ``reads``, ``appends`` and ``append_items``,
  ``checkpointer``, ``lifecycle``, ``tasks``: the storage's per-session state, its
  memory caches, its reads, its append path, its checkpoint scheduling, its sessions'
  files coming and going, and its work off the event loop;
- ``clock_mark``: the mark of the store's clock on disk, which its next open starts
  from (a state written lazily and lost at a crash was read at its time);
- ``storage``: :class:`JsonlStorage`, the contract itself (read-only opening too),
  on ``imports`` (its side of ``SessionImport``), on ``queries``: what it holds in
  memory and every read.
"""

from __future__ import annotations

from ..url import StoreOptions, StoreURL
from .config import (
    BUSY_WINDOW,
    DURABILITY_MODES,
    MAX_COMMIT_WINDOW,
    WAL_KEPT_MAX_BYTES,
    Durability,
    JsonlStorageConfig,
)
from .storage import JsonlStorage

__all__ = ["DURABILITY_MODES", "Durability", "JsonlStorage", "JsonlStorageConfig", "open_from_url"]


async def open_from_url(url: StoreURL, options: StoreOptions) -> JsonlStorage:
    """``jsonl:///path?durability=os``: the store in that directory. Options:
    ``durability`` (fsync or os), ``commit_window`` and ``busy_window`` (seconds, e.g.
    0.002), ``max_open_logs`` (descriptors, at least 1) and ``wal_kept_max_bytes`` (bytes
    of WAL kept after a failed sync before appends are refused, at least 1)."""
    url.check_params(
        {"durability", "commit_window", "busy_window", "max_open_logs", "wal_kept_max_bytes"}
    )
    config = JsonlStorageConfig(
        url.location,
        default_ttl=options.default_ttl,
        max_sessions=options.max_sessions,
        cleanup_interval=options.cleanup_interval,
        durability=_durability(url),
        commit_window=_window(url, "commit_window", 0.0),
        busy_window=_window(url, "busy_window", BUSY_WINDOW),
        max_open_logs=_max_open_logs(url),
        wal_kept_max_bytes=_wal_kept_max_bytes(url),
        read_only=options.read_only,
        offline=options.offline,
        max_session_bytes=options.max_session_bytes,
        max_user_bytes=options.max_user_bytes,
    )
    return await JsonlStorage.open(config)


def _durability(url: StoreURL) -> Durability:
    given = url.take("durability", "fsync")
    for mode in DURABILITY_MODES:
        if given == mode:
            return mode
    raise ValueError(
        f"store URL {url.text!r}: durability must be one of {', '.join(DURABILITY_MODES)}"
    )


def _window(url: StoreURL, name: str, default: float) -> float:
    given = url.take(name)
    if given is None:
        return default
    try:
        seconds = float(given)
    except ValueError:
        raise ValueError(f"store URL {url.text!r}: {name} must be a number of seconds") from None
    if not 0 <= seconds <= MAX_COMMIT_WINDOW:  # also refuses nan and inf
        raise ValueError(
            f"store URL {url.text!r}: {name} must be from 0 to {MAX_COMMIT_WINDOW} seconds"
        )
    return seconds


def _max_open_logs(url: StoreURL) -> int | None:
    given = url.take("max_open_logs")
    if given is None:
        return None  # the default: from the process's open-file limit
    if not given.isdigit() or int(given) < 1:
        raise ValueError(f"store URL {url.text!r}: max_open_logs must be a whole number >= 1")
    return int(given)


def _wal_kept_max_bytes(url: StoreURL) -> int:
    given = url.take("wal_kept_max_bytes")
    if given is None:
        return WAL_KEPT_MAX_BYTES
    if not given.isdigit() or int(given) < 1:
        raise ValueError(
            f"store URL {url.text!r}: wal_kept_max_bytes must be a whole number of bytes >= 1"
        )
    return int(given)
