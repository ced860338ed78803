"""What :class:`~.presence.SharedPresence` does with its connections' presence leaves
that the store failed (an outage): remembered, as many as fit (server/failed_leaves.py,
``failed_leaves``; past that, told once an outage), and left again before a call for
their session whose count they would swell; else the store counts them until their
heartbeat deadline. A base of ``SharedPresence``, which sets what it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from bamboo_session.persistence.base import SessionNotFound, StorageError
from bamboo_session.persistence.presence import PresenceStore

from .failed_leaves import FailedLeaves
from .outage_log import OutageLog


class LingeringLeaves:
    """Failed leaves remembered, and left again, through the presence's store."""

    store: PresenceStore
    outages: OutageLog
    failed_leaves: FailedLeaves

    async def leave_lingering(self, session_id: str) -> None:
        """Leave again the session's connections whose leave failed (the store away),
        before a call whose count they would swell (the owed states' parks leave them
        in their own step: server/owed_parks.py): else they count until their
        heartbeat deadline. StorageError if it fails again (they
        are remembered again, as when it is cancelled)."""
        self.failed_leaves.forget_lapsed()
        lingering = self.failed_leaves.pop(session_id)
        if lingering is None:
            return
        failed_at, connections = lingering
        by_epoch: dict[str | None, list[tuple[str, str]]] = {}
        for connection_id, role, epoch in connections:
            by_epoch.setdefault(epoch, []).append((connection_id, role))
        try:
            for epoch, leaving in by_epoch.items():
                with contextlib.suppress(SessionNotFound):
                    await self.store.leave_all(session_id, leaving, epoch=epoch)
        except (StorageError, asyncio.CancelledError):
            # Cancelled too (a stop cancels the owed states' round): else the leave
            # that may not have reached the store was forgotten, and the stop's last
            # round took the connections for another process's, dropping the write.
            self.failed_leaves.put_back(session_id, failed_at, connections)
            raise

    async def _lingering_left(self, session_id: str) -> None:
        """The session's connections whose leave failed, left again before a call
        whose count they would swell (quietly: that call fails alike)."""
        if session_id in self.failed_leaves:
            with contextlib.suppress(StorageError):
                await self.leave_lingering(session_id)

    def _linger(
        self, session_id: str, connections: Sequence[tuple[str, str]], epoch: str | None
    ) -> None:
        """Remembers connections whose leave failed, as many as fit (FailedLeaves);
        those that do not are told once an outage."""
        left_out = self.failed_leaves.add(session_id, connections, epoch)
        if left_out:
            held = f"{self.failed_leaves.count} remembered, {left_out} more not"
            message = "failed presence leaves not remembered: they count until the heartbeat"
            self.outages.failed("remember", message, held)
        else:
            self.outages.worked("remember")

    def unremembered_lately(self) -> bool:
        """Whether the store may still count a connection of this process whose leave
        failed and was not remembered (server/failed_leaves.py)."""
        return self.failed_leaves.unremembered_lately()
