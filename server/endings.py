"""SessionEndings: a session ended through the in-process API, by its close (``state:
closed``, code 1000 to its connections) or its delete (4404, once the store has
deleted it), whether its actor is live in this process or not.

A live session's actor does the ending itself, in its turn among its commands, so
that appends queued before it are answered first; a session with no live actor is
ended in the store directly.
"""

from __future__ import annotations

import asyncio
import contextlib

from bamboo_session.persistence.base import (
    DeletedNotDurably,
    SessionExpired,
    SessionNotFound,
    Storage,
)
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import SessionState

from .actors import ActorRegistry
from .commands import SetState
from .pages import PageReads
from .room import HeldConnections


class SessionEndings:
    def __init__(self, actors: ActorRegistry, storage: Storage, reads: PageReads) -> None:
        self.actors = actors
        self.storage = storage
        self.reads = reads  # a delete's deadline: the store's delete may not answer

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
        """Removes the session; its connections are closed with 4404 once it is gone,
        not durably too (the store's DeletedNotDurably, logged by the store, is not
        raised: the delete is done). When the store fails the delete, the session
        stays, and its connections are closed with 1011 (``session not deleted``): they
        resume. All of it within the
        read deadline from the call, else StoreTimeout (a Redis that stopped, a disk
        that stalls): its connections are then closed with 1011 too, while the store's
        delete goes on, and the session stays held off until it ends. A caller
        cancelled meanwhile leaves its connections the outcome the store gives by
        that deadline."""
        check_session_id(session_id)
        deadline = self.reads.deadline()
        # The connections stay open until the store answers: 4404 tells a client to
        # stop, which is a lie if the store brings the session back (the JSONL store
        # undoes a delete whose directory sync fails). No actor is spawned until the
        # store's delete has ended, whoever waits for it, so an attach, read or append
        # racing the delete waits for its outcome (bounded by its own deadline): it
        # neither finds the session missing while it may come back, nor brings it back.
        async with self.actors.held_off(session_id, deadline) as hold:
            deleting = hold.lasts_for(self._deleted(session_id, hold.connections))
            await self.reads.within(deadline, asyncio.shield(deleting))

    async def _deleted(self, session_id: str, connections: HeldConnections) -> None:
        """The store's delete; ``connections`` told 4404 once the session is gone (a
        failure leaves them to the hold's end: 1011). A delete done but not durably
        (DeletedNotDurably, which the store logged) is a delete: the session is gone
        for every reader, so its peers resuming would only find it missing."""
        try:
            await self.storage.delete_session(session_id)
        except SessionNotFound:
            connections.tell(CloseCode.NOT_FOUND, "session deleted")
            raise
        except DeletedNotDurably:
            pass
        connections.tell(CloseCode.NOT_FOUND, "session deleted")
