"""The owed states' writes on a store processes share (Redis): a group of sessions this
process owes ``disconnected`` parked in one round trip (``PresenceStore.park_many``),
each in one step with its presence, with what each settled as
(server/owed_states.py's rounds, and its stop's last one).

A call per session, and one more before it for a session with connections whose
leave failed (``SharedPresence.leave_lingering``), wrote some 2,200 states a second at
load 10: a stop owing its queue's whole bound (65,536) wrote a tenth of it within its
3 s, and left the rest to a survivor's sweep a heartbeat later. Here those
connections are left in the park's own step, and a group is one pipeline.

The outcomes, which a stop's log adds up (``owed = written + already_parked +
dropped + left``):
- ``WRITTEN``: this write parked it;
- ``ALREADY_PARKED``: no connection is left, and it is ``disconnected`` already: a
  sweep of dead instances parked it first (this process's own, when an outage
  outlasted its presence, claims its own sessions), or another process;
- ``DROPPED``: nothing to write: deleted or replaced, closed or expired, or another
  process's connections attached (the last of them writes it as it leaves);
- ``None``: tried again at the next round: this process has an actor for the session
  again (the state is its own to write), or the connections still counted may be
  this process's own, whose failed leave it could not remember (they lapse soon);
- a StorageError: the store failed that park (tried last next round).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Final

from bamboo_session.persistence.base import SessionNotFound, StorageError
from bamboo_session.persistence.presence import Park, Parked
from bamboo_session.protocol.models import SessionState

from .failed_leaves import Leaving
from .presence import SharedPresence

WRITTEN: Final = "written"
ALREADY_PARKED: Final = "already_parked"
DROPPED: Final = "dropped"
OUTCOMES: Final = (WRITTEN, ALREADY_PARKED, DROPPED)

Outcome = str | None | StorageError
# Parks sent in one round trip: some 20 ms of Redis's time at most, a heartbeat and a
# listing wait no longer; the first of a round goes alone (a store still failing costs
# one call).
PARKED_AT_ONCE: Final = 512


async def park_owed(
    presence: SharedPresence,
    live: Callable[[str], object],
    group: Sequence[tuple[str, str | None]],
) -> list[Outcome]:
    """Parks each ``(session_id, epoch)`` of ``group`` in one round trip (module
    docstring); the outcomes in order. StorageError (or a cancel) if the store failed
    the whole call: the failed leaves taken are remembered again then."""
    failed_leaves = presence.failed_leaves
    failed_leaves.forget_lapsed()
    outcomes: list[Outcome] = [None] * len(group)
    parks: list[Park] = []
    sent: list[int] = []  # the index in group of each park
    taken: dict[str, tuple[float, list[Leaving]]] = {}  # failed leaves, put back if it fails
    try:
        for index, (session_id, epoch) in enumerate(group):
            if live(session_id) is not None:
                continue  # its actor now: the state is its own to write
            leaving: list[tuple[str, str]] = []
            if (lingering := failed_leaves.pop(session_id)) is not None:
                taken[session_id] = lingering
                others: dict[str | None, list[tuple[str, str]]] = {}
                for connection_id, role, of in lingering[1]:
                    kept = leaving if of == epoch else others.setdefault(of, [])
                    kept.append((connection_id, role))
                if others:  # of an earlier session under the id (rare): left on their own
                    await _leave_other_epochs(presence, session_id, others)
            parks.append(Park(session_id, epoch, leaving))
            sent.append(index)
        answers = await presence.store.park_many(parks) if parks else []
    except (StorageError, asyncio.CancelledError):
        # Cancelled too (a stop cancels the round): else a leave that may not have
        # reached the store was forgotten, and the last round took the connection for
        # another process's, dropping the write.
        for session_id, (failed_at, connections) in taken.items():
            failed_leaves.put_back(session_id, failed_at, connections)
        raise
    unremembered = presence.unremembered_lately()
    for index, answer in zip(sent, answers, strict=True):
        session_id = group[index][0]
        if isinstance(answer, StorageError) and not isinstance(answer, SessionNotFound):
            if (lingering := taken.get(session_id)) is not None:
                failed_leaves.put_back(session_id, *lingering)
            outcomes[index] = answer
        else:
            outcomes[index] = _settled(answer, unremembered)
    return outcomes


async def _leave_other_epochs(
    presence: SharedPresence,
    session_id: str,
    others: dict[str | None, list[tuple[str, str]]],
) -> None:
    """Failed leaves of another session than the one owed under the id (by epoch)."""
    for epoch, connections in others.items():
        with contextlib.suppress(SessionNotFound):
            await presence.store.leave_all(session_id, connections, epoch=epoch)


def _settled(answer: Parked | StorageError, unremembered: bool) -> str | None:
    if not isinstance(answer, Parked):  # SessionNotFound: deleted or replaced
        return DROPPED
    if answer.wrote:
        return WRITTEN
    if answer.connections == 0:
        parked = answer.state == SessionState.DISCONNECTED.value
        return ALREADY_PARKED if parked else DROPPED  # closed, expired
    # Maybe this process's own, whose failed leave it could not remember: they lapse
    # soon. Else another process's: theirs to write.
    return None if unremembered else DROPPED
