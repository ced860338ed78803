"""A session actor's control commands: everything it is asked but appends.

Attach (check the stored session, follow it, join presence and the room, welcome),
detach (leave; the last connection out parks the session, even while the store fails),
a peer's state change, stop, the timer's tick (idleness, expiry, the end of parking) and
another process's presence notice; what a failing store does to each of them; the
answer to an in-process request whose actor was stopped (what an append's failure
does is server/append_outcomes.py's); the timer's next look. (What is stored is
delivered before a close by server/catching_up.py; what the actor takes from the store
after a state change in doubt, or a close elsewhere, by server/stored_state.py.)
Appends and the delivery of events are the actor's hot path and stay in
server/actor.py; these run far less often, between its batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from bamboo_session.persistence.base import (
    OutcomeUnknown,
    SessionNotFound,
    StorageError,
)
from bamboo_session.persistence.feed import CLOSED, DELETED
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import SessionState

from .append_outcomes import refuse
from .catching_up import catch_up, deliver_known
from .commands import (
    ActorRetired,
    Announce,
    Append,
    Attach,
    Command,
    Detach,
    RegisteredAgain,
    SetState,
    Settle,
    Stop,
    Tick,
    answer_late,
    attach_refusal,
    behind_doubt,
)
from .failures import subscription_end
from .limits import TooManySessionConnections
from .status import EXPIRED, attach_is_activity
from .stored_state import closed_elsewhere, state_in_doubt

if TYPE_CHECKING:
    from .actor import SessionActor

log = structlog.get_logger("bamboo_session.actor")

PARKED_RING_SIZE = 64


async def handle(actor: SessionActor, command: Command) -> None:
    """Carries out one command other than an append."""
    match command:
        case Attach():
            await attach(actor, command)
        case Detach():
            await detach(actor, command.connection_id)
        case SetState():
            await set_state(actor, command)
        case Stop():
            if command.hand_over is not None:
                # Into the holder, not through the future: a stopper cancelled
                # meanwhile would leave them open, in no room, told nothing.
                command.hand_over.take(actor.room.hand_over())
            else:
                await deliver_known(actor)  # events acknowledged before the close
                actor.room.close_all(command.code, command.reason)
            actor.accepting = False
            if command.future is not None and not command.future.done():
                command.future.set_result(None)
        case Tick():
            await tick(actor, command.generation)
        case Announce(connection_id, role, joined, connections):
            actor.room.announce(connection_id, role, joined, connections)
        case RegisteredAgain():
            await registered_again(actor)
        case Settle(future):
            if not future.done():  # (its waiter may have given up)
                future.set_result(None)
        case _:  # pragma: no cover - Append is batched by the caller
            raise AssertionError(command)


def store_failed(actor: SessionActor, command: Command, exc: StorageError) -> None:
    """The store failed under a command (Redis away, a full disk): it fails, the session
    goes on; the log tells the first of an outage, then counts (not a line per hello)."""
    actor.health.command_failures.store_failed(type(command).__name__, exc)
    if isinstance(command, Attach):
        if not actor.room.outboxes:
            actor.unfollow()
        if not command.future.done():
            command.future.set_exception(exc)
    elif isinstance(command, Tick):
        arm_timer(actor)  # look again later


async def attach(actor: SessionActor, command: Attach) -> None:
    if not actor.accepting:
        if not command.future.done():
            command.future.set_exception(ActorRetired(actor.session_id))
        return
    if command.future.done():  # its caller gave up waiting (the read deadline)
        return
    # Each await below is a step its caller may give up during: the attach stops at
    # the first one after which it finds it given up (``given_up``).
    was = actor.state
    metadata = await actor.storage.get_metadata(actor.session_id)
    if command.future.done():
        return
    limit, now = actor.config.max_frame_bytes, actor.storage.now()
    refusal = attach_refusal(metadata, actor.session_id, now, command.access, limit)
    if refusal is not None or metadata is None:
        command.future.set_exception(refusal or SessionNotFound(actor.session_id))
        return
    stored = metadata.state  # what the store held, and gets back should it be given up
    cap = actor.config.max_session_connections
    if 0 < cap <= len(actor.room.outboxes):
        # Each attach and leave is presence to all the others: a crowd costs the loop
        # the square of its size.
        command.future.set_exception(
            TooManySessionConnections(f"more than {cap} connections for this session")
        )
        return
    if metadata.epoch != actor.room.epoch:
        # It missed the end of its session: removed (expired, or deleted by another
        # process) and created again under the same id, or its log reset. Parked, it
        # followed nothing; following, the store's notice is still on its way (another
        # process's pub/sub message, late or lost with the listener's connection). Its
        # epoch and ring are another log's: a client of the new one would be welcomed
        # into the old one (its epoch, its seqs), and a client of the old one resume
        # into the new one. Its viewers, of the old log, are told what the notice would
        # tell them; it retires, and the attach goes to an actor spawned from what is
        # stored now.
        if actor.following.active:
            actor.end(*subscription_end(actor.following.ended(DELETED)))
        actor.accepting = False
        command.future.set_exception(ActorRetired(actor.session_id))
        return
    if not actor.following.active:
        actor.room.restart_at(metadata.last_seq)
        await actor.following.start(actor.room.published_seq)
        if command.future.done():
            # Its caller gave up while the store subscribed (a Redis store's listener,
            # disconnected, may take past the hello's deadline to connect): nothing of
            # it goes into the session, as if the subscription had failed.
            return await given_up(actor, was, stored)
    elif metadata.last_seq > actor.room.published_seq:
        # The store holds events the room has not delivered yet: another instance's
        # appends whose pub/sub message is still on its way, or was lost with the
        # listener's connection. They go out first, so that a client resuming here
        # from one of them (seen on that instance) resumes, rather than is told its
        # seq is beyond the log's end and sent it again.
        actor.following.stored_up_to(metadata.last_seq)
        await catch_up(actor, metadata.last_seq)
        if command.future.done():  # its caller gave up waiting meanwhile
            return await given_up(actor, was, stored)
    if attach_is_activity(actor.state, actor.presence.shared, bool(actor.room.outboxes)):
        # A session nobody was attached to becomes active: that is activity too. The
        # activity first: should it fail, nothing has changed (the attach fails, the
        # session stays as it was); should the move fail after it, the session was only
        # touched. The other way round, a failed touch left it active, in the store
        # too, with nobody attached, and nothing would have written it back. The
        # welcome shows the session as the store holds it after both, as a GET would.
        await actor.status.touch()
        if command.future.done():  # given up while the store was slow to write it
            return await given_up(actor, was, stored)
        metadata = await actor.status.become(SessionState.ACTIVE) or metadata
        if command.future.done():
            return await given_up(actor, was, stored)
    metadata.state = actor.state
    outbox = command.outbox
    connections = await actor.presence.join(
        actor.session_id, outbox.connection_id, outbox.role, actor.room.epoch
    )
    if command.future.done():
        # Given up while the store registered it. On a store several processes share,
        # the session's peers on the others have seen it join (the store told them):
        # they now see it leave, as a connection that dropped right after its welcome.
        # Its peers here, whom only the room tells, see nothing of it.
        await actor.presence.leave(actor.session_id, outbox.connection_id, outbox.role)
        return await given_up(actor, was, stored)
    # No await from here to the welcome: its caller cannot give up in between.
    welcome = actor.room.join(outbox, command.last_seq, command.epoch, metadata, connections)
    if welcome.replay:
        actor.metrics.events_replayed.inc(welcome.replay)
    actor.timer.note_traffic()
    if len(actor.room.outboxes) == 1:
        arm_timer(actor)  # parked until now: from here on, watch for idleness
    command.future.set_result(welcome)


async def given_up(actor: SessionActor, was: SessionState, stored: SessionState) -> None:
    """The caller of an attach gave up on it (its hello, closed 1011 at its deadline)
    while the store was slow to answer one of its steps: the attach stops there, before
    the connection reaches the room, and what it did is undone, as a failed one's is
    (store_failed). A session nobody here is attached to stops following its log. One
    it moved to ``active`` goes back to ``was``, the state it had: ``idle`` while others
    are attached here; else parked, as at a detach (``disconnected``, written unless
    another process's connections are attached), and a session the store held
    ``idle`` (``stored``: others' elsewhere, quiet) is written idle again first. Only
    the activity it wrote stays: the session's TTL started again, as at any hello. Not
    over a write since its own (another process's attach or append meanwhile)."""
    moved, since = actor.state != was, actor.status.written_at
    if actor.room.outboxes:
        if moved:  # idle again: its peers are as quiet as before
            await actor.status.become(was, unless_updated_since=since)
        return
    actor.unfollow()
    if not moved:
        return
    if stored == SessionState.IDLE:
        # Their processes hold it idle: written back now rather than at their next look.
        try:
            await actor.status.become(SessionState.IDLE, unless_updated_since=since)
        except StorageError as exc:  # parked all the same; the state stays as written
            log.warning("restoring the session's idle state failed", error=str(exc))
    await actor.status.park(elsewhere=True)  # owed: written unless others are attached
    await save_owed(actor, "Attach")
    arm_timer(actor)


async def detach(actor: SessionActor, connection_id: str) -> None:
    """A connection left (or its attach was given up on). Neither its presence's leave
    nor the last one's move to ``disconnected`` fails on a failing store (presence.py,
    status.py): the room always lets it go, and the session always parks."""
    outbox = actor.room.outboxes.get(connection_id)
    if outbox is None:
        return
    connections = await actor.presence.leave(actor.session_id, connection_id, outbox.role)
    actor.room.leave(connection_id, connections)
    if not actor.room.outboxes and actor.state != SessionState.CLOSED:
        actor.unfollow()
        if failed := await actor.status.park(elsewhere=bool(connections)):
            actor.health.command_failures.failed("Detach", str(failed))  # told once an outage
        actor.room.shrink_ring(PARKED_RING_SIZE)
        arm_timer(actor)  # retires it after the retention; saves its state before


async def tick(actor: SessionActor, generation: int) -> None:
    """The timer fired: check an attached session for idleness and expiry. A parked
    one retires once the store no longer holds it alive (expired, deleted, replaced or
    closed: its ring and timer leave memory then, not at the end of its retention), or
    at the end of its retention; until then, the state its store missed is saved."""
    timer = actor.timer
    if not timer.is_current(generation):
        return
    if not actor.room.outboxes:
        if await actor.status.gone_from_store(actor.health.parked_looks):
            actor.accepting = False  # an attach reads the store, and is told so from there
            return
        await save_owed(actor, "Tick")
        if timer.retires:
            actor.accepting = False  # parked for the whole retention: retire
        else:
            arm_timer(actor)
        return
    ended = await actor.status.check(
        timer.quiet_for(), actor.config.idle_timeout, traffic=timer.traffic_since_armed()
    )
    if ended == EXPIRED:
        # Its peers were silent for its whole TTL: tell them, as a delete would.
        actor.end(CloseCode.NOT_FOUND, "session expired", replays_go_on=True)
        return
    if ended == CLOSED:
        await closed_elsewhere(actor)
        return
    if ended is not None:
        # Deleted, or replaced by a session of another epoch, and the store's notice
        # is not here yet (another process's, late or lost): its peers are told what
        # the notice would tell them.
        actor.end(*subscription_end(actor.following.ended(ended)))
        return
    arm_timer(actor)


async def save_owed(actor: SessionActor, command: str) -> None:
    """A parked session's state that its store was not given is written, unless
    another process's connections are attached (the last of them to leave writes it).
    A failure is the outage's, told under ``command`` (once, then counted: every parked
    session's look fails); the next look tries again, unless that one retires the actor."""
    try:
        if not (actor.status.owed and await actor.presence.count(actor.session_id)):
            await actor.status.save()
    except StorageError as exc:
        actor.health.command_failures.failed(command, str(exc))


async def registered_again(actor: SessionActor) -> None:
    """The store had lost some of this process's connections (taken for dead: this
    process stalled, or lost the store, past the heartbeat), and the heartbeat
    registered them again. Meanwhile another process may have parked the session as
    if its last connection had gone: the state this actor holds is written again, not
    left wrong until the next look (up to ``idle_timeout``)."""
    if not actor.accepting or not actor.room.outboxes:
        return
    try:
        await actor.status.reclaim()
    except (StorageError, ValueError) as exc:  # the next look sets it right
        log.warning("restoring the session's state failed", error=str(exc))


async def set_state(actor: SessionActor, command: SetState) -> None:
    if behind_doubt(command):
        return
    try:
        last_seq = await change_state(actor, command.state)
    except (StorageError, ValueError) as exc:
        refuse(actor, command, exc)
        if isinstance(exc, OutcomeUnknown):
            await state_in_doubt(actor, command.state)
        return
    # The events stored before the change, on any instance (one appended on another
    # moments ago may not have reached this one's feed yet), reach the viewers first: a
    # close's get every acknowledged event, and the ack's seq, the session's last at the
    # change, is never below the acks sent before it (the requester's own appends just
    # stored, their events not yet taken from the feed). Those stored after the change
    # come after the ack, as the feed brings them.
    actor.following.stored_up_to(last_seq)
    await catch_up(actor, last_seq)
    # That seq, whatever the room reached: past it, a batch of the feed's that went on
    # beyond the change; short of it, a store that failed to give the events (the
    # state is stored all the same: they follow, or their read's failure ends the room
    # with 1011, and a resume brings them; a close's viewers, closed now, miss them).
    command.answer(last_seq)
    if command.state == SessionState.CLOSED:
        # A replay under way is sent whole first: no resume can bring its rest now.
        actor.room.close_all(CloseCode.NORMAL, "session closed", replays_go_on=True)
        actor.accepting = False


async def change_state(actor: SessionActor, state: SessionState) -> int:
    """A peer's state change, in the store too; the session's last seq as the store
    held it at the change (read after it where nothing was written: a move to the
    state the session has). An expired session's is refused (SessionExpired) and
    changes nothing here either: kept in memory, a close ended its connections while
    the peer was told ``not_found``, or ``internal`` when the read of the last seq
    failed (the session removed meanwhile); a move to the state it has, which writes
    nothing, was acknowledged as if it lived."""
    if state != actor.state:
        actor.state.check_transition(state)  # a refused move is no activity
    # A state a peer asks for is activity, written first, as at an attach: a failed
    # touch changes nothing, where after the move it left the session moved (closed,
    # even) while the peer was told the request had failed.
    await actor.status.touch(refused_if_expired=True)
    stored = await actor.status.become(state, refused_if_expired=True)
    if stored is not None:
        return stored.last_seq
    return await actor.storage.last_seq(actor.session_id, epoch=actor.room.epoch)


def answer_stopped(command: Command, session_id: str) -> None:
    """A request of the in-process API whose actor was stopped while handling it (the
    server's close, past its grace): its caller must not wait for ever. A peer's is
    not answered: its connection closes with 1012, and it sends the request again. A
    stop's or an attach's waiter is told the actor is gone (a delete would wait for
    ever)."""
    if not isinstance(command, Append | SetState):
        answer_late(command, False, session_id)
        return
    reply = command.batch if isinstance(command, Append) and command.batch else command
    if reply.future is not None:
        reason = "the server stopped before the store answered (it may have been stored)"
        command.refuse(StorageError(f"{reason}; retry with the same key"))


def arm_timer(actor: SessionActor) -> None:
    """Look again after a while: for idleness while connections are attached; when
    none is, for the session's end in the store (its expiry, or a delete no notice
    told this process of), the state its store is owed, and the end of parking."""
    config, ttl = actor.config, actor.status.ttl
    # Often enough that peers who keep sending frames keep a short-lived session
    # alive: their traffic is recorded as activity at every look.
    look = config.idle_timeout if ttl is None else min(config.idle_timeout, ttl / 3)
    if actor.room.outboxes:
        actor.status.expires_at = None  # their activity moves it: read again once parked
        actor.timer.arm(look)
    else:
        actor.timer.park(config.disconnect_retention, actor.status.parked_look(look))
