"""What a session's connections get before it closes them: the events stored before
the close, delivered first (a close must not overtake an event acknowledged before it),
and no further (a log another process keeps appending to must not hold it open). Used
by server/control.py's state change, attach, close elsewhere and stop, and at a stop
the close of a connection that cannot take that delivery."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bamboo_session.protocol.errors import CloseCode

from .following import BATCH_MAX

if TYPE_CHECKING:
    from .actor import SessionActor


async def catch_up(actor: SessionActor, up_to: int) -> None:
    """Deliver the events stored up to ``up_to`` (the session's last seq, as the
    caller read it): a close must not overtake events acknowledged before it. Not
    further: while another process appends faster than this one reads, "whatever
    is ready" never runs out. (An end of the feed is left to the caller.)"""
    room, following = actor.room, actor.following
    while actor.accepting and room.published_seq < up_to and following.ready():
        taken = await following.take(BATCH_MAX)
        if not isinstance(taken, list):
            return
        actor.give(taken)


async def deliver_known(actor: SessionActor) -> None:
    """Deliver the events the feed knows are stored, and no further: what a stop gives
    the connections before it closes them. A backlog the feed reads from the store
    comes in several reads (a megabyte each), which the close must not overtake; a log
    another process keeps appending to must not hold the stop. Nor a room already
    closed: an actor cancelled past the grace closed it, and a read of the store that
    stalled then would keep the actor, its subscription with it, past the stop."""
    subscription = actor.following.subscription
    if subscription is None:
        return
    room, through = actor.room, subscription.known_last
    while room.outboxes and subscription.position < through and actor.following.ready():
        taken = await actor.following.take(BATCH_MAX)
        if not isinstance(taken, list):
            return  # the feed ended, or had nothing yet: the close says the rest
        actor.give(taken)


def overflows_close_with(actor: SessionActor, code: CloseCode, reason: str) -> None:
    """A stop is coming (``code``, ``reason``): a connection whose queue cannot take
    what is delivered until then (a backlog the feed was reading, deliver_known's) is
    closed as the stop closes the others, not 4429. A client told it is too slow backs
    off or gives up; told 1012, it resumes at once, from the last seq it got."""
    for outbox in actor.room.outboxes.values():
        outbox.overflow_close = (code, reason)
