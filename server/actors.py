"""ActorRegistry: the session actors live in this process, in least-recently-used order.

It spawns an actor from the store on demand (one spawn per session at a time), keeps at
most ``max_sessions`` of them by evicting the least recently used parked ones (idle
before busy), refuses one more (:class:`ServerBusy`, close 1013) when none can be
evicted, and tracks actors that retired but are still finishing, so that a session
never has two at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import structlog

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Welcome
from bamboo_session.protocol.ids import check_session_id

from .actor import SessionActor
from .catching_up import overflows_close_with
from .commands import AccessRefusal, ActorRetired, Attach, Detach, Stop
from .failures import ServerBusy, ServerStopping, is_expected
from .holds import DeleteHolds, Hold
from .outbox import Outbox
from .pages import PageReads
from .room import HeldConnections

log = structlog.get_logger("bamboo_session.manager")

# (session id, on_retired) -> the session's actor, loaded from the store, which reports
# its retirement to on_retired
ActorLoader = Callable[[str, Callable[[SessionActor], None]], Awaitable[SessionActor]]


class ActorRegistry:
    def __init__(self, max_sessions: int, load: ActorLoader, reads: PageReads) -> None:
        self.max_sessions = max_sessions
        self._load = load
        self._reads = reads  # a load is a store read a hello waits for: its deadline
        self._actors: collections.OrderedDict[str, SessionActor] = collections.OrderedDict()
        # Each spawn's task is the registry's: it takes every outcome (_spawned), as
        # every waiter may have given up on it (a hello past its deadline).
        self._spawning: dict[str, asyncio.Task[SessionActor]] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        # Hellos under way per session, from before their spawn until their welcome:
        # such a session is not parked, though no connection is in its room yet.
        self._attaching: collections.Counter[str] = collections.Counter()
        # Sessions being deleted: no actor is spawned for them until the delete's
        # outcome is known (held_off), so none reads a session the store may yet bring back.
        self.holds = DeleteHolds(reads)
        self.closed = False

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[SessionActor]:
        return iter(list(self._actors.values()))

    def get(self, session_id: str) -> SessionActor | None:
        """The session's actor in this process, if any (accepting or not)."""
        return self._actors.get(session_id)

    def connections(self, session_id: str) -> int:
        """The session's connections in this process."""
        actor = self._actors.get(session_id)
        return len(actor.room.outboxes) if actor is not None else 0

    def parked_count(self) -> int:
        return sum(1 for actor in self._actors.values() if not actor.room.outboxes)

    async def actor(self, session_id: str, deadline: float | None = None) -> SessionActor:
        """The session's accepting actor, spawned from the store if need be, once no
        delete holds the session off and no old actor of it is finishing: all waited
        for by ``deadline`` at most (default: the read deadline from now), else
        StoreTimeout."""
        check_session_id(session_id)
        if deadline is None:
            deadline = self._reads.deadline()
        while True:
            if self.closed:
                raise ServerStopping("server is shutting down")
            if self.holds.holds(session_id):
                await self.holds.unheld(session_id, deadline)  # then spawned from the store
                continue
            actor = self._actors.get(session_id)
            if actor is not None and actor.accepting:
                self._actors.move_to_end(session_id)
                return actor
            if actor is not None and actor.task is not None and not actor.task.done():
                # It stopped taking commands in the middle of a batch (its parking ran
                # out) and reports its retirement once that batch is stored: it
                # finishes first, as a retiring one does.
                await self._finished(actor.task, deadline)
                continue
            # Each wait has a timer of its own, by ``deadline``; an actor at hand, none.
            spawning = self._spawning.get(session_id)
            if spawning is not None:
                # The spawn in progress is this caller's too, and so is its failure (a
                # store that does not answer): waiters do not each try again in turn.
                return await self._reads.within(deadline, self._join(spawning))
            retiring = self._unfinished_retiring(session_id)
            if retiring is None:
                spawn = self._start_spawn(session_id)
                return await self._reads.within(deadline, self._join(spawn))
            await self._finished(retiring, deadline)  # the old actor finishes flushing first

    async def _finished(self, task: asyncio.Task[None], deadline: float) -> None:
        """Returns once an old actor's ``task`` ends; StoreTimeout past ``deadline``: what
        it stores on the way out (its queued appends, the state its store is owed) may
        wait on a store that does not answer, and its caller no longer than a read."""
        await self._reads.within(deadline, asyncio.wait([task]))

    async def attach(
        self,
        session_id: str,
        outbox: Outbox,
        last_seq: int | None,
        epoch: str | None,
        deadline: float | None = None,
        access: AccessRefusal | None = None,
    ) -> tuple[SessionActor, Welcome]:
        """``outbox`` attached to the session by its actor (server/control.py
        ``attach``), within one read deadline for all of it: waiting for an old actor
        to finish, the spawn, room in its inbox, and the actor's own reads and writes
        for the welcome (a live session reads itself at every attach). Past it (a
        hello's, from its arrival: server/handshake.py), StoreTimeout; the actor skips
        or undoes the attach it finds given up on. ``access`` may refuse the peer the
        session the actor finds (server/commands.py Attach)."""
        if deadline is None:
            deadline = self._reads.deadline()
        with self._attaching_to(session_id):
            return await self._attach(session_id, outbox, last_seq, epoch, deadline, access)

    async def unheld_for_hello(self, session_id: str, deadline: float | None) -> None:
        """:meth:`unheld`, for a hello, which is under way to the session meanwhile."""
        if self.holds.holds(session_id):  # else nothing to wait for, nor a timer to set
            with self._attaching_to(session_id):
                await self.unheld(session_id, deadline)

    @contextlib.contextmanager
    def _attaching_to(self, session_id: str) -> Iterator[None]:
        self._attaching[session_id] += 1
        try:
            yield
        finally:
            self._attaching[session_id] -= 1
            if not self._attaching[session_id]:
                del self._attaching[session_id]

    async def _attach(
        self,
        session_id: str,
        outbox: Outbox,
        last_seq: int | None,
        epoch: str | None,
        deadline: float,
        access: AccessRefusal | None,
    ) -> tuple[SessionActor, Welcome]:
        while True:
            actor = await self.actor(session_id, deadline)  # by the deadline
            # In line for the inbox as a peer's frames are: an actor stuck on its store
            # then holds at most ``inbox_limit`` attaches, not one per retry of a hello.
            if not actor.inbox.may_post() and not await self._reads.within(
                deadline, actor.room_for(1)
            ):
                continue  # it retired meanwhile: the next one takes the attach
            welcomed: asyncio.Future[Welcome] = asyncio.get_running_loop().create_future()
            actor.post(Attach(outbox, last_seq, epoch, welcomed, access))
            expiry = self._reads.expire(welcomed, deadline)
            try:
                return actor, await welcomed
            except ActorRetired:
                continue
            except asyncio.CancelledError:
                if welcomed.done() and not welcomed.cancelled() and not welcomed.exception():
                    # Welcomed in the turn its caller was cancelled: nobody else would
                    # ever take it out of the session.
                    outbox.abandon("attach cancelled")
                    actor.post(Detach(outbox.connection_id))
                raise
            finally:
                expiry.cancel()

    async def live_or_none(self, session_id: str) -> SessionActor | None:
        """The session's accepting actor if it is live, without spawning one; once no
        delete holds the session off (the store may bring back what it is deleting),
        within the read deadline (StoreTimeout)."""
        await self.unheld(check_session_id(session_id))
        await self._await_spawning(session_id)
        actor = self._actors.get(check_session_id(session_id))
        return actor if actor is not None and actor.accepting else None

    async def unheld(self, session_id: str, deadline: float | None = None) -> None:
        """Returns once no delete holds the session off (held_off); StoreTimeout past
        ``deadline`` (default: the read deadline from now); ServerStopping once the
        registry closes (a hello waiting for a delete gets 1012 at once)."""
        await self.holds.unheld(session_id, deadline)

    async def await_retired(self, session_id: str, deadline: float) -> None:
        """Returns once no actor of the session is spawning or finishing; StoreTimeout
        past ``deadline``: a finishing actor stores what it holds first, on a store
        that may not answer."""
        await self._reads.within(deadline, self._retired(session_id))

    async def _retired(self, session_id: str) -> None:
        await self._await_spawning(session_id)
        retiring = self._unfinished_retiring(session_id)
        if retiring is not None:
            await asyncio.wait([retiring])

    def check_room(self) -> None:
        """ServerBusy unless one more live session fits, evicting a parked one if need
        be (spawns in progress count as live)."""
        if len(self._actors) + len(self._spawning) < self.max_sessions:
            return
        if any(self._evictable(actor) for actor in self._actors.values()):
            return
        raise ServerBusy(f"{len(self._actors)} sessions live, none can be evicted")

    def retire(self, actor: SessionActor, stop: Stop) -> None:
        """Stop taking commands for ``actor``, which finishes in its own task."""
        actor.accepting = False
        if stop.hand_over is None:
            overflows_close_with(actor, stop.code, stop.reason)
        actor.post(stop)  # wakes the actor's task, which retires it
        self.retired(actor)

    @contextlib.asynccontextmanager
    async def held_off(self, session_id: str, deadline: float) -> AsyncIterator[Hold]:
        """No actor of the session in this process while the block runs, nor after it
        until the store call it runs in the hold (:meth:`Hold.lasts_for`) has ended:
        the live one (and any being spawned) retires, its queued appends stored and
        answered first; attaches and appends wait for the hold's end, then go to an
        actor spawned from what the store holds then. Yields the hold, whose
        connections, the retired actors', stay open for the caller to tell once it
        knows what to; a server stop meanwhile tells them 1012, and 1011 ``session not
        deleted`` by ``deadline`` or the hold's end if no one told them: they resume,
        and find what is there. An earlier hold of the session, then the retirement,
        within ``deadline``: past it, StoreTimeout before the block (the actor stores
        what it holds first, on a store that may not answer); connections it hands
        over later are told 1011 then."""
        check_session_id(session_id)
        async with self.holds.hold(session_id, deadline) as hold:
            await self._retire_all_of(session_id, hold.connections, deadline)
            yield hold

    async def _retire_all_of(self, session_id: str, held: HeldConnections, deadline: float) -> None:
        """Retires the session's actors, handing their connections to ``held``."""
        within = self._reads.within
        while True:
            # One spawned before the hold retires too.
            await within(deadline, self._await_spawning(session_id))
            actor = self._actors.get(session_id)
            if actor is None:
                break
            handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.retire(actor, Stop(CloseCode.NORMAL, "", handed, hand_over=held))
            await within(deadline, asyncio.wait([handed]))
        await self.await_retired(session_id, deadline)

    def retired(self, actor: SessionActor) -> None:
        """Called once an actor takes no more commands (it may still be flushing)."""
        session_id = actor.session_id
        if self._actors.get(session_id) is actor:
            del self._actors[session_id]
        task = actor.task
        if task is not None and not task.done():
            self._retiring[session_id] = task
            task.add_done_callback(lambda _t: self._forget_retiring(session_id, task))

    async def close(self, code: CloseCode, reason: str, grace: float) -> None:
        """Retire every actor; cancel those still finishing after ``grace`` seconds.
        Spawns under way end now (their waiters get ServerStopping): their loads are
        abandoned, and no spawn outlives the registry, nor the store it reads."""
        self.closed = True
        self.holds.close(code, reason)
        spawns = list(self._spawning.values())
        for spawn in spawns:
            spawn.cancel()
        for actor in list(self._actors.values()):
            self.retire(actor, Stop(code, reason))
        if spawns:
            await asyncio.wait(spawns)  # a cancelled load is abandoned at once (pages.py)
        pending = [task for task in self._retiring.values() if not task.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    # -- internals ----------------------------------------------------------------

    def _start_spawn(self, session_id: str) -> asyncio.Task[SessionActor]:
        spawn = asyncio.create_task(self._spawn(session_id), name=f"session-spawn:{session_id}")
        self._spawning[session_id] = spawn
        spawn.add_done_callback(functools.partial(self._spawned, session_id))
        return spawn

    def _spawned(self, session_id: str, spawn: asyncio.Task[SessionActor]) -> None:
        """A spawn's outcome, taken whether or not anyone still waits for it: a hello
        gives up on its attach at its deadline, which may come before the spawn's own
        (the spawn started later), and the server may stop meanwhile. Its waiters, if
        any, got the same outcome; one nobody took would be logged by asyncio, with a
        traceback, as "Task exception was never retrieved"."""
        if self._spawning.get(session_id) is spawn:
            del self._spawning[session_id]  # cancelled before it ran: no finally did
        if spawn.cancelled():
            return  # by close(): its waiters heard ServerStopping (_join)
        failure = spawn.exception()
        if failure is not None and not is_expected(failure):
            log.error("loading a session failed", session_id=session_id, exc_info=failure)

    async def _join(self, spawn: asyncio.Task[SessionActor]) -> SessionActor:
        """The actor ``spawn`` loads, or its failure; a caller that gives up leaves it
        to the others (and to _spawned)."""
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if spawn.cancelled() and caller is not None and not caller.cancelling():
                # close() ended the spawn; this caller was not cancelled itself.
                raise ServerStopping("server is shutting down") from None
            raise

    async def _spawn(self, session_id: str) -> SessionActor:
        try:
            self._make_room()
            # Abandoned at the deadline (StoreTimeout), which every attach waiting for
            # this spawn gets; an actor loaded later is dropped, never started.
            load = functools.partial(self._load, session_id, self.retired)
            actor = await self._reads.lookup(load)
            if self.closed:  # loaded after close() retired the others: never started
                raise ServerStopping("server is shutting down")
            self._make_room()
            self._actors[session_id] = actor
            actor.start()
            return actor
        finally:
            self._spawning.pop(session_id, None)

    def _evictable(self, actor: SessionActor) -> bool:
        """Parked: no connection, and no hello on its way to one. Evicting a session
        a hello attaches to sent that hello back to spawn it again, which evicted the
        session of another hello doing the same: at the limit, two such hellos went
        on evicting each other until both ran out of time (1011)."""
        return not actor.room.outboxes and not self._attaching[actor.session_id]

    def _make_room(self) -> None:
        """Evicts least recently used parked actors until one more fits: idle ones
        first, then busy ones (an in-process append gets a retry on the next actor)."""
        while len(self._actors) >= self.max_sessions:
            parked = [a for a in self._actors.values() if self._evictable(a)]
            victim = next((a for a in parked if a.task is None), parked[0] if parked else None)
            if victim is None:
                raise ServerBusy(f"{len(self._actors)} sessions live, none can be evicted")
            log.info("evicting parked session", session_id=victim.session_id)
            self.retire(victim, Stop(CloseCode.TRY_AGAIN_LATER, "session evicted"))

    async def _await_spawning(self, session_id: str) -> None:
        spawning = self._spawning.get(session_id)
        if spawning is not None:
            await asyncio.wait([spawning])

    def _unfinished_retiring(self, session_id: str) -> asyncio.Task[None] | None:
        task = self._retiring.get(session_id)
        if task is not None and task.done():
            del self._retiring[session_id]
            return None
        return task

    def _forget_retiring(self, session_id: str, task: asyncio.Task[None]) -> None:
        if self._retiring.get(session_id) is task:
            del self._retiring[session_id]
