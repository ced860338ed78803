"""Whose connections count against ``--max-connections-per-user``, and where they are
counted: in this process (:class:`LocalUserConnections`, the counter of limits.py), or,
on a store several instances share (one with a ``UserConnectionStore``,
persistence/user_connections.py: Redis), in the store, so that the cap is the user's
wherever they connect (:class:`SharedUserConnections`).

The shared count is asked once per counted attach, within the attach's read deadline:
a store that fails or does not answer in time fails the attach as any store read of
it does (1011). A release never waits: the connection is forgotten here at once (the
heartbeat no longer refreshes it, so it stops counting after the heartbeat at the
latest) and unregistered in the store in the background. An acquire the store refuses
while this process had releases of that user under way as it asked (or has since)
waits for them (within its deadline) and asks once more: a user who reconnects here
on seeing a close is not refused for a count on its way out (another instance's are a
race). One heartbeat task refreshes every connection this process holds, one script
call per user, in one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.user_connections import UserConnectionStore
from bamboo_session.tasks import cancel_and_wait

from .limits import ConnectionCounter, TooManyConnections
from .pages import PageReads

log = structlog.get_logger("bamboo_session.user_connections")


class LocalUserConnections:
    """Each user's connections to this process (the store is this process's alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counter = ConnectionCounter(limit)

    def start(self) -> None:
        return None

    async def stop(self, grace: float) -> None:
        return None

    async def acquire(
        self, user: str, connection_id: str, reads: PageReads, deadline: float
    ) -> None:
        """Count the connection against ``user``; TooManyConnections past the cap."""
        self._counter.acquire(user)

    def release(self, user: str, connection_id: str) -> None:
        self._counter.release(user)

    def count(self, user: str) -> int:
        """The user's connections counted by this process."""
        return self._counter.count(user)


class SharedUserConnections(LocalUserConnections):
    """Each user's connections on every instance sharing the store (module docstring)."""

    def __init__(self, store: UserConnectionStore, limit: int) -> None:
        super().__init__(limit)
        self._counter = ConnectionCounter(0)  # only mirrors the store's word here: count()
        self.store = store
        # user -> this process's connections registered in the store under that user
        self._held: dict[str, set[str]] = {}
        self._refreshing: asyncio.Event | None = None  # set once a refresh under way ends
        self._task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._user_releases: dict[str, set[asyncio.Task[None]]] = {}  # the same, by user
        self.refreshes = 0
        # A failure was logged and no call has worked since: a store that is down fails
        # every release and heartbeat, and one line says so, not one per connection.
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._heartbeat(), name="bamboo-user-connections")

    async def stop(self, grace: float) -> None:
        """Ends the heartbeat, and unregisters what is still held, within ``grace``
        seconds: what is left registered then stops counting after the heartbeat."""
        task, self._task = self._task, None
        await cancel_and_wait(task)  # its refresh may be in redis-py's send
        held, self._held = self._held, {}
        for user, connection_ids in held.items():
            self._release_later(user, list(connection_ids))
        if self._releases:
            _, late = await asyncio.wait(list(self._releases), timeout=grace)
            for release in late:  # the store is closed next: they would fail anyway
                release.cancel()

    async def acquire(
        self, user: str, connection_id: str, reads: PageReads, deadline: float
    ) -> None:
        """Registers the connection under ``user`` in the store, by ``deadline``;
        TooManyConnections past the cap, StorageError (StoreTimeout) if the store
        fails (or does not answer in time)."""
        # Taken before the call: a release under way now may end before its refusal is
        # read, and the refusal is still that release's doing.
        under_way = set(self._user_releases.get(user, ()))
        admitted = await self._acquire_once(user, connection_id, reads, deadline)
        if not admitted and await self._released(user, under_way, deadline):
            # Refused while this process still had the user's closed connections on
            # their way out of the store: the peer saw those closes, and reconnecting
            # at once is no reason to refuse it. Another instance's are a race.
            admitted = await self._acquire_once(user, connection_id, reads, deadline)
        if not admitted:
            raise TooManyConnections(f"more than {self.limit} connections for this user")
        self._held.setdefault(user, set()).add(connection_id)
        self._counter.acquire(user)

    async def _acquire_once(
        self, user: str, connection_id: str, reads: PageReads, deadline: float
    ) -> bool:
        calls: list[asyncio.Future[bool]] = []  # none if the reads refuse before it

        def call() -> Awaitable[bool]:
            calls.append(asyncio.ensure_future(self.store.acquire(user, connection_id, self.limit)))
            return _outliving(calls[0])

        try:
            return await reads.lookup(call, deadline)
        except BaseException:
            for started in calls:
                started.add_done_callback(
                    lambda done: self._settle_abandoned(done, user, connection_id)
                )
            raise

    async def _released(self, user: str, before: set[asyncio.Task[None]], deadline: float) -> bool:
        """Whether this process had releases of ``user``'s under way (``before`` the
        acquire, or since), and all of them ended by ``deadline`` (a store too slow for
        that leaves the refusal standing)."""
        under_way = before | self._user_releases.get(user, set())
        if not under_way:
            return False
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _, late = await asyncio.wait(under_way, timeout=timeout)
        return not late

    def release(self, user: str, connection_id: str) -> None:
        held = self._held.get(user)
        if held is None or connection_id not in held:
            return
        held.discard(connection_id)
        if not held:
            del self._held[user]
        self._counter.release(user)
        self._release_later(user, [connection_id])

    @property
    def releasing(self) -> int:
        """Releases sent to the store that have not ended yet."""
        return len(self._releases)

    def _settle_abandoned(self, call: asyncio.Future[bool], user: str, connection_id: str) -> None:
        """An acquire its attach gave up on (deadline, cancelled, a failure that may
        have come after Redis took the call): unregistered unless refused, so that it
        does not count until the heartbeat passes."""
        refused = not call.cancelled() and call.exception() is None and not call.result()
        if not refused:
            self._release_later(user, [connection_id])

    def _release_later(self, user: str, connection_ids: list[str]) -> None:
        task = asyncio.ensure_future(self._release(user, connection_ids))
        self._releases.add(task)
        self._user_releases.setdefault(user, set()).add(task)
        task.add_done_callback(lambda done: self._release_ended(user, done))

    def _release_ended(self, user: str, task: asyncio.Task[None]) -> None:
        self._releases.discard(task)
        under_way = self._user_releases.get(user)
        if under_way is not None:
            under_way.discard(task)
            if not under_way:
                del self._user_releases[user]

    async def _release(self, user: str, connection_ids: list[str]) -> None:
        await self._refreshed()  # else a refresh under way could register them again
        await self._quietly("release", lambda: self.store.release(user, connection_ids))

    # -- the heartbeat ----------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.store.heartbeat / 3
        while True:
            await asyncio.sleep(interval)
            if self._held:
                await self.refresh()

    async def refresh(self) -> None:
        """Refresh every connection this process holds, in one round trip."""
        done = self._refreshing = asyncio.Event()
        snapshot = {user: sorted(ids) for user, ids in self._held.items()}
        try:
            if await self._quietly("heartbeat", lambda: self.store.refresh(snapshot)):
                self.refreshes += 1
        finally:
            self._refreshing = None
            done.set()

    async def _refreshed(self) -> None:
        refreshing = self._refreshing
        if refreshing is not None:
            await refreshing.wait()

    async def _quietly(self, what: str, call: Callable[[], Awaitable[None]]) -> bool:
        """``call()`` within the heartbeat; a failure logged (the first of a run of
        them), not raised: what it leaves registered stops counting after the heartbeat."""
        try:
            async with asyncio.timeout(self.store.heartbeat):
                await call()
        except (StorageError, TimeoutError) as exc:
            if not self._failing:
                self._failing = True
                error = str(exc) or "no answer in time"
                log.warning(
                    "per-user connection count failed",
                    step=what,
                    error=error,
                    further="not logged until a call works again",
                )
            return False
        if self._failing:
            self._failing = False
            log.info("per-user connection count works again", step=what)
        return True


async def _outliving(call: asyncio.Future[bool]) -> bool:
    """``call``'s answer. Given up on (cancelled), ``call`` still ends in the store, and
    what it registered is released then (_settle_abandoned); and this ends only with
    it, so that the page reads count it as abandoned while the store holds it (a bare
    shield would end at once, and calls to a store that answers none would pile up)."""
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        await asyncio.wait((call,))
        raise


def user_connections_for(storage: object, limit: int) -> LocalUserConnections:
    """The server's per-user count for ``storage``: shared if the store offers it (and
    there is a cap to keep), else this process's."""
    store = getattr(storage, "user_connections", None)
    if limit > 0 and isinstance(store, UserConnectionStore):
        return SharedUserConnections(store, limit)
    return LocalUserConnections(limit)
