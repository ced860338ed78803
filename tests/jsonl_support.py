"""Helpers for the JSONL backend's tests: its files, read the way the backend reads them."""

from __future__ import annotations

from pathlib import Path

from bamboo_session.persistence.jsonl import JsonlStorageConfig, checkpoint
from bamboo_session.persistence.jsonl.checkpoint import Checkpoint


def saved(config: JsonlStorageConfig, session_id: str) -> Checkpoint:
    """The session's checkpoint as it is on disk now."""
    found = checkpoint.read(config.layout.checkpoint(session_id))
    assert isinstance(found, checkpoint.Found), f"no checkpoint of the new format: {found!r}"
    return found.checkpoint


def log_path(config: JsonlStorageConfig, session_id: str = "s") -> Path:
    return config.layout.log(session_id)


def crash_state(config: JsonlStorageConfig) -> None:
    """Forget the snapshot, as after a crash (a clean close is the only writer of one)."""
    config.layout.snapshot.unlink(missing_ok=True)
