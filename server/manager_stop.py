"""A SessionManager's close in its two steps, which a server's stop runs apart (app.py):
the sessions (every connection closed, each actor flushed and retired within the
grace), then what follows them (the park of the states the closes left, the end of
shared presence, the outages still on told). Between the two the server closes the
connections attached to no session: every peer has its 1012 before the park, which may
wait on its store up to its bound (server/restart_park.py; 3 s on an SQLite file another
process keeps locked), as the park needs only every actor retired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bamboo_session.protocol.errors import CloseCode

if TYPE_CHECKING:
    from .manager import SessionManager


async def close_sessions(
    manager: SessionManager, code: CloseCode, reason: str, grace: float
) -> None:
    """Closes every connection with ``code`` after a ``closed`` frame, lets each actor
    flush and checkpoint, and cancels what is still running after ``grace``."""
    await manager.restart_park.stop()
    try:
        await manager.actors.close(code, reason, grace)
    finally:  # an outage under way is told, not lost, however the close ends
        manager.append_health.failures.flush()
        manager.append_health.command_failures.flush()
    await manager.owed_states.close()  # a last round; what is left, the store's to park


async def after_sessions(manager: SessionManager) -> None:
    """Once every actor retired: the park of the states the closes left, then the rest."""
    await manager.restart_park.park_at_stop()
    presence = manager.shared_presence
    if presence is not None:
        await presence.stop()
    # Outages still on are told with their counts, which a call that works would have.
    manager.append_health.parked_looks.at_stop()
    manager.owed_states.outages.at_stop()
    if presence is not None:
        presence.outages.at_stop()
