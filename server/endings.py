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

from bamboo_session.persistence.base import SessionExpired, SessionNotFound, Storage
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
        self.reads = reads  # the bound on a delete's outcome once its caller has left

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
        """Removes the session; its connections are closed with 4404 once it is gone.
        When the store fails the delete, the session stays, and its connections are
        closed with 1011 (``session not deleted``): they resume. A caller cancelled
        meanwhile leaves the store's delete its read deadline to end: its connections
        are told its outcome all the same (:meth:`_told_after_cancel`)."""
        check_session_id(session_id)
        # The connections stay open until the store answers: 4404 tells a client to
        # stop, which is a lie if the store brings the session back (the JSONL store
        # undoes a delete whose directory sync fails). No actor is spawned meanwhile,
        # so an attach or append racing the delete waits for its outcome: it neither
        # finds the session missing while it may come back, nor brings it back.
        async with self.actors.held_off(session_id) as connections:
            deleting = asyncio.ensure_future(self.storage.delete_session(session_id))
            try:
                await asyncio.shield(deleting)
            except asyncio.CancelledError:
                await self._told_after_cancel(deleting, connections)
                raise
            except SessionNotFound:
                connections.tell(CloseCode.NOT_FOUND, "session deleted")
                raise
            # Failed: the block's end tells them 1011, "session not deleted".
            connections.tell(CloseCode.NOT_FOUND, "session deleted")

    async def _told_after_cancel(
        self, deleting: asyncio.Future[None], connections: HeldConnections
    ) -> None:
        """The delete's caller left while the store deleted. A JSONL delete runs to its
        end in its thread whatever its caller does: telling its connections 1011 then
        sent them to resume a session that was gone (4404). So they get the outcome, if
        the store gives it within the read deadline; past it the store call is
        cancelled, and the hold's end tells them 1011: they resume, and find what is
        there."""
        try:
            await asyncio.wait([deleting], timeout=self.reads.timeout)
        finally:
            if not deleting.done():
                deleting.cancel()  # ends at its next step, not now: done() stays False
            deleting.add_done_callback(_retrieve)  # nobody awaits it any more
        if not deleting.done() or deleting.cancelled():
            return  # no outcome in time: the hold's end tells them 1011
        failure = deleting.exception()
        if failure is None or isinstance(failure, SessionNotFound):
            connections.tell(CloseCode.NOT_FOUND, "session deleted")


def _retrieve(call: asyncio.Future[None]) -> None:
    if not call.cancelled():
        call.exception()
