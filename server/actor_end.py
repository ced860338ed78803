"""A session actor's end, once it takes no more commands (closed, stopped, parked too
long, or failed): its retirement (its timer stopped, the state it still owes a failing
store handed on, the manager told, which spawns a new actor from then on), the commands
posted before it answered, never dropped, and those that arrive after refused on
arrival. Off the hot path: server/actor.py calls ``finish`` once, as its task ends."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import SessionState

from .commands import Command, answer_late

if TYPE_CHECKING:
    from .actor import SessionActor


async def finish(actor: SessionActor) -> None:
    """Retires the actor, then answers what was posted before. From the moment the
    inbox is found empty, new commands are rejected on arrival. It follows the log
    meanwhile: a stop among them delivers what is stored first."""
    retire(actor)
    try:
        while actor.stepping is not None:  # cancelled mid-step: the step ends first
            await actor.wakeup.wait()
        while len(actor.inbox):
            await actor.handle_taken()
        await actor.presence.leave_session(actor.session_id, actor.room.epoch)
    except asyncio.CancelledError:
        # Past a stop's grace (ActorRegistry.close), as in the main loop: the stop
        # that would have closed the connections may be among those not handled.
        actor.cancel_step()
        actor.room.close_all(CloseCode.SERVICE_RESTART, "server restarting")
        raise
    finally:
        actor.finished = True
        actor.unfollow()
        actor.room.drop_ring()
        for command in actor.inbox.take_all():
            reject_late(actor, command)


def retire(actor: SessionActor) -> None:
    """Stop taking commands; from here on the manager spawns a new actor if needed."""
    actor.accepting = False
    actor.timer.cancel()
    actor.health.owe(actor.status)  # a state still owed: written once the store answers
    actor.on_retired(actor)


def reject_late(actor: SessionActor, command: Command) -> None:
    """Answer a command that arrived after the actor finished its work."""
    code = answer_late(command, actor.state == SessionState.CLOSED, actor.session_id)
    if code is not None:
        actor.metrics.errors.labels(code=code).inc()
