"""The JSONL store's side of ``SessionImport`` (``persistence/importing.py``, for
``migrate.py``): events appended with their own seq, ts and key, and metadata set as
given, durably. A base of :class:`~.storage.JsonlStorage`, which sets what it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from bamboo_session.protocol.models import SessionMetadata, SessionState, StoredEvent

from ..feed import CLOSED
from ..importing import check_importable
from .appends import Appender
from .checkpointer import Checkpointer
from .queries import JsonlQueries
from .record import check_settled


class JsonlImports(JsonlQueries):
    """Imports through the storage's appender (as durable as appends) and checkpointer."""

    _appends: Appender
    _checkpoints: Checkpointer

    def _require_writable(self) -> None:
        raise NotImplementedError  # the storage's: open, and not read-only

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        """Appends ``events`` with their own seq, ts and key, through the writer (as
        durable as appends); the first must follow the session's last seq."""
        self._require_writable()
        self._record(session_id)
        if not events:
            return
        check_importable(session_id, events)
        self._clock.saw(events[-1].ts)  # the store's clock never goes back behind them
        window = None
        if any(event.key is not None for event in events):
            window = await self._appends.key_window(session_id)
        await self._appends.import_events(self._record(session_id), events, window)

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        """Sets the session's state, times, ttl and extra as given, durably."""
        self._require_writable()
        record = self._record(metadata.id)
        check_settled(record)
        self._index.set_state(metadata.id, metadata.state)
        record.take_metadata(metadata)
        self._clock.saw(metadata.updated_at, metadata.last_activity_at)
        self._checkpoints.changed(record)
        await self._checkpoints.write(metadata.id, durable=True)
        if metadata.state == SessionState.CLOSED:
            self._feed.end(metadata.id, CLOSED)
