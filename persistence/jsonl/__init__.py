"""The embedded storage backend: JSONL event logs, small checkpoints, an in-memory index.

``jsonl:///path`` (or a bare path) opens it through ``open_storage``; or build a
:class:`JsonlStorageConfig` and ``await JsonlStorage.open(config)``.

The modules, one concern each:

- ``layout``: every path and file name of a store;
- ``config``: :class:`JsonlStorageConfig`;
- ``files``: blocking file primitives (atomic replace, syncs, the lock file);
- ``scan``: the one reader of log lines (decoding no more than asked, bisection);
- ``checkpoint``: checkpoint files (two slots, written in place) and the old format;
- ``message_index``: where each message of a log is (derived, checked on use);
- ``snapshot``: the index snapshot a clean close leaves, for a fast open;
- ``writer``: the group-commit writer; ``wal``: fsync mode's shared write-ahead log;
- ``recovery``: what open repairs, converts and finds; ``repair``: cutting a log's
  tail, and telling an ordinary crash from damage; ``removal``: deleting files;
- ``record``, ``caches``, ``reads``, ``checkpointer``: the storage's per-session state,
  its memory caches, its reads and its checkpoint scheduling;
- ``storage``: :class:`JsonlStorage`, the contract itself.
"""

from __future__ import annotations

from ..url import StoreOptions, StoreURL
from .config import DURABILITY_MODES, Durability, JsonlStorageConfig
from .storage import JsonlStorage

__all__ = ["DURABILITY_MODES", "Durability", "JsonlStorage", "JsonlStorageConfig", "open_from_url"]


async def open_from_url(url: StoreURL, options: StoreOptions) -> JsonlStorage:
    """``jsonl:///path?durability=os``: the store in that directory."""
    url.check_params({"durability"})
    config = JsonlStorageConfig(
        url.location,
        default_ttl=options.default_ttl,
        max_sessions=options.max_sessions,
        cleanup_interval=options.cleanup_interval,
        durability=_durability(url),
        read_only=options.read_only,
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
