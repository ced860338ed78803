"""The storage contract and its backends: sessions, message histories and event logs.

``open_storage(url)`` opens a store by URL (``persistence/url.py``). The contract is in
``base.py``; each backend lives in a module of its own and is imported only when it is
used, so ``from bamboo_session.persistence import JsonlStorage`` (the seed's name) costs
the JSONL backend's import, and ``open_storage("memory://")`` does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import (
    KEY_WINDOW,
    Appended,
    AppendItem,
    AppendsSuspended,
    DeletedNotDurably,
    EventStorage,
    HistoryPage,
    InvalidSessionId,
    InvalidTransition,
    ListingChangedTooLarge,
    ListingTooLarge,
    ListPosition,
    OutcomeUnknown,
    OwnerAtCap,
    OwnerCaps,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionFull,
    SessionListResult,
    SessionLogFailed,
    SessionNotFound,
    SessionRefused,
    SessionStorage,
    SortBy,
    SortOrder,
    Storage,
    StorageError,
    StorageFull,
    StorageLocked,
    StoreMisconfigured,
    StoreTooNew,
    Subscription,
    UserFull,
)
from .url import StoreOptions, open_storage, parse_store_url

if TYPE_CHECKING:
    from .jsonl import JsonlStorage, JsonlStorageConfig
    from .memory import MemoryStorage

_LAZY = {
    "JsonlStorage": "bamboo_session.persistence.jsonl",
    "JsonlStorageConfig": "bamboo_session.persistence.jsonl",
    "MemoryStorage": "bamboo_session.persistence.memory",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "KEY_WINDOW",
    "AppendItem",
    "Appended",
    "AppendsSuspended",
    "DeletedNotDurably",
    "EventStorage",
    "HistoryPage",
    "InvalidSessionId",
    "InvalidTransition",
    "JsonlStorage",
    "JsonlStorageConfig",
    "ListPosition",
    "ListingChangedTooLarge",
    "ListingTooLarge",
    "MemoryStorage",
    "OutcomeUnknown",
    "OwnerAtCap",
    "OwnerCaps",
    "SessionClosed",
    "SessionExists",
    "SessionExpired",
    "SessionFilter",
    "SessionFull",
    "SessionListResult",
    "SessionLogFailed",
    "SessionNotFound",
    "SessionRefused",
    "SessionStorage",
    "SortBy",
    "SortOrder",
    "Storage",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "StoreMisconfigured",
    "StoreOptions",
    "StoreTooNew",
    "Subscription",
    "UserFull",
    "open_storage",
    "parse_store_url",
]
