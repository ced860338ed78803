"""Storage interfaces and backends for sessions, messages and event logs."""

from .base import (
    DURABILITY_MODES,
    Durability,
    EventStorage,
    InvalidSessionId,
    InvalidTransition,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    SessionStorage,
    SortBy,
    SortOrder,
    Storage,
    StorageError,
    StorageFull,
    StorageLocked,
)
from .config import JsonlStorageConfig
from .jsonl import JsonlStorage

__all__ = [
    "DURABILITY_MODES",
    "Durability",
    "EventStorage",
    "InvalidSessionId",
    "InvalidTransition",
    "JsonlStorage",
    "JsonlStorageConfig",
    "SessionClosed",
    "SessionExists",
    "SessionExpired",
    "SessionFilter",
    "SessionListResult",
    "SessionNotFound",
    "SessionStorage",
    "SortBy",
    "SortOrder",
    "Storage",
    "StorageError",
    "StorageFull",
    "StorageLocked",
]
