"""How a client ends when its session ended: with the server's reason
(:class:`.SessionEnded`), or, when events due to it were not delivered, with a
:class:`.ConnectionLost` naming the seq to read on from over HTTP (so that events()
does not end as if it had them all). Used by :mod:`.link`; no state of its own."""

from __future__ import annotations

import asyncio
import logging

from .errors import ClientError, ConnectionLost, SessionEnded
from .handshake import Dialer
from .state import ClientState

log = logging.getLogger("bamboo_session.client")


def unless_behind(state: ClientState, error: ClientError) -> ClientError:
    """``error``, unless the session ended (closed, or a resume refused with 4409)
    while events still due to this client were not delivered
    (:attr:`.ClientState.owes_events`): events it skipped past its full queue, or
    held back while it did not read, or a replay the close cut short. No resume can
    bring those now, so events() must not end as if it had them all."""
    if not isinstance(error, SessionEnded) or not state.owes_events:
        return error
    return lost_after(state, error)


async def ended_while_away(state: ClientState, dialer: Dialer, error: SessionEnded) -> ClientError:
    """The end of a client whose session ended while it was disconnected (a resume
    refused with 4409): it saw no ``closed`` on a connection it read, so events may
    have been appended while it was away (a publisher that resumed first after a
    restart, then closed the session). A client that takes events asks the HTTP API
    once whether the log holds one after the last it delivered: if so, or if the
    answer cannot be had, the end is a :class:`.ConnectionLost` naming that seq;
    if not, ``error`` itself. Should the answer be of another epoch's log (the
    session was replaced meanwhile: deleted and created again under its id), the
    events after that seq went with the log they were of, and none of the new one
    follows it: events() yields a :class:`.Reset` saying so, then ends with
    ``error``, as for a resume refused because of another epoch."""
    if not state.receive_events or state.owes_events or state.session_id is None:
        return unless_behind(state, error)
    after = state.sequence.resume_point
    try:
        found = await dialer.events_after(state.session_id, after)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a token function's failure too: the answer is unknown
        log.info("could not ask whether events follow seq %d: %s", after, exc)
        return lost_after(state, error, unchecked=str(exc))
    if found.epoch is not None and found.epoch != state.epoch and state.failure is None:
        state.replaced(found.epoch, found.last_seq)
        return error
    return lost_after(state, error) if found.added else error


def lost_after(
    state: ClientState, error: SessionEnded, unchecked: str | None = None
) -> ConnectionLost:
    after = state.sequence.resume_point
    return ConnectionLost.events_after(error.reason, state.session_id, after, unchecked)
