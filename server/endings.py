"""SessionEndings: a session ended through the in-process API, by its close (``state:
closed``, code 1000 to its connections) or its delete (4404), whether its actor is
live in this process or not.

A live session's actor does the ending itself, in its turn among its commands, so
that appends queued before it are answered first; a session with no live actor is
ended in the store directly.
"""

from __future__ import annotations

import asyncio
import contextlib

from bamboo_session.persistence.base import SessionExpired, SessionNotFound, Storage
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import SessionState

from .actors import ActorRegistry
from .commands import SetState


class SessionEndings:
    def __init__(self, actors: ActorRegistry, storage: Storage) -> None:
        self.actors = actors
        self.storage = storage

    async def close(self, session_id: str) -> None:
        """Closes the session: its connections get ``closed`` and code 1000. The close
        is its last activity: a closed session expires one TTL after it, and nothing
        (a touch included) puts that off."""
        actor = await self.actors.live_or_none(session_id)
        if actor is None:
            # Activity first, as a live actor's close does (control.set_state): after
            # the close, the store would ignore it. When it cannot be recorded, the
            # move says why (the same errors as before: not found, expired, refused).
            with contextlib.suppress(SessionExpired, SessionNotFound):
                await self.storage.touch(session_id)
            await self.storage.update_session_state(session_id, SessionState.CLOSED)
            return
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        actor.post(SetState(SessionState.CLOSED, future=done))
        await done

    async def delete(self, session_id: str) -> None:
        """Removes the session; its connections are closed with 4404."""
        check_session_id(session_id)
        actor = self.actors.get(session_id)
        if actor is not None:
            await self.actors.stop(actor, CloseCode.NOT_FOUND, "session deleted")
        await self.actors.await_retired(session_id)
        await self.storage.delete_session(session_id)
