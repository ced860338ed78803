"""ClientState: what a BambooClient knows of its session and what it still owes, kept
across connections, with no I/O.

The connection layer (:mod:`.link`) feeds it every frame the server sends and asks it
for the ``hello`` of each new connection. In return it answers waiting requests (by
``id``, through :class:`.PendingRequests`), checks seqs (:class:`.SequenceChecker`),
queues events and :class:`.Reset` markers for :meth:`BambooClient.events`, and keeps the
session's metadata, epoch and presence count. :meth:`ClientState.finish` ends it all
once: every waiting request fails, and the events feed ends.

The events feed is bounded (:class:`.EventFeed`). The link does not read while it is
full, unless a request waits for its reply: then it reads on to reach that reply, and
an event that finds the feed full is *skipped*: not checked, not queued, as if it had
not arrived yet. From then on every event of that connection is skipped
(:attr:`ClientState.overflowed`), so the sequence check stays where the last queued
event left it, and the next connection resumes from there and gets them again.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ..frames import (
    Ack,
    Acks,
    Closed,
    Error,
    EventFrame,
    Events,
    Hello,
    History,
    Pong,
    Presence,
    ServerFrame,
    Welcome,
)
from ..models import SessionMetadata, StoredEvent
from .errors import ClientError, RequestError
from .feed import EventFeed
from .pending import PendingRequests
from .results import Reset
from .sequence import SequenceChecker

log = logging.getLogger("bamboo_session.client")


class ClientState:
    """One client's session knowledge and obligations; see the module docstring."""

    def __init__(
        self,
        first_hello: Hello,
        session_id: str | None,
        receive_events: bool,
        feed: EventFeed | None = None,
    ) -> None:
        self._first_hello = first_hello  # the hello of the first connection
        self.receive_events = receive_events
        self.session_id = session_id  # None until the server picks one for a new session
        self.epoch = first_hello.epoch
        self.sequence = SequenceChecker(first_hello.last_seq or 0)
        self.pending = PendingRequests()
        self.feed = feed if feed is not None else EventFeed()  # events and Resets, unread
        # This connection skipped an event because the feed was full: it skips the rest,
        # and is replaced by one that resumes once the application has read the feed down.
        self.overflowed = False
        self.skipped = 0  # events skipped so far (all connections), fetched again since
        # Events taken that were new to this client, and publishes acknowledged, so far
        # (all connections): a connection that added to it did useful work, and is no
        # failed attempt for the reconnect's backoff (:func:`.reconnect.recovered`).
        self.progress = 0
        # A connection ended with events due to us undelivered (skipped, held back by
        # the server while we did not read, or dropped by it as too slow): until a
        # welcome resumes, the session's end is no clean end of events().
        self.behind = False
        # The last seq the session is known to have reached, as of the last welcome
        # (its last_seq: a resume's replay goes up to it); the acks and events since
        # may say more (:attr:`owes_events`).
        self.reached = first_hello.last_seq or 0
        self.welcomed_once = False
        self.connection_id: str | None = None
        self.session: SessionMetadata | None = None  # as of the last welcome
        self.connections = 0  # connections attached to the session (from presence)
        self.closed_reason: str | None = None  # from the server's closed frame
        self.failure: ClientError | None = None  # why this client is finished
        self.max_batch_items = 0  # publishes one batch frame may hold here; 0: no batches
        self.max_batch_bytes = 0  # and the bytes it may be (0: not said)

    # -- attaching ------------------------------------------------------------------------

    def next_hello(self) -> Hello:
        """The ``hello`` of the next connection attempt (ask once per attempt): the first
        one as given; a reconnect resumes where this client is and never creates a
        session."""
        if not self.welcomed_once:
            return self._first_hello
        return msgspec.structs.replace(
            self._first_hello,
            create=False,
            last_seq=self.sequence.resume(),
            epoch=self.epoch,
        )

    def welcomed(self, welcome: Welcome, asked_after: int | None) -> None:
        """The server's ``welcome`` to a hello that asked to resume after
        ``asked_after`` (``None``: it did not ask)."""
        previous_epoch = self.epoch
        self.welcomed_once = True
        self.session_id = welcome.session.id
        self.session = welcome.session
        self.connection_id = welcome.connection_id
        self.connections = welcome.session.connections
        self.closed_reason = None
        self.overflowed = False
        self.behind = False  # resumed, or reset (a Reset tells the application)
        self.reached = welcome.last_seq
        self.epoch = welcome.epoch
        batches = "batch" in welcome.extensions
        self.max_batch_items = welcome.max_batch_items if batches else 0
        self.max_batch_bytes = welcome.max_batch_bytes if batches else 0
        if asked_after is None:
            self.sequence.reset(welcome.last_seq)  # live events only, from here
        elif not welcome.resumed:
            self.sequence.reset(welcome.last_seq)
            reset = Reset(welcome.epoch, welcome.last_seq, previous_epoch, asked_after)
            if self.receive_events:
                self.feed.put(reset, 0)  # a marker: it never waits for room
            log.info("could not resume from seq %d: %r", asked_after, reset)

    def replaced(self, epoch: str, last_seq: int) -> None:
        """The session was found replaced while this client was away (its log is of
        another ``epoch``, at ``last_seq``): a :class:`Reset`, as for a resume refused
        because of another epoch, and this client follows that log from there."""
        reset = Reset(epoch, last_seq, self.epoch, self.sequence.resume_point)
        self.epoch = epoch
        self.sequence.reset(last_seq)
        if self.receive_events:
            self.feed.put(reset, 0)
        log.info("the session was replaced while away: %r", reset)

    # -- frames of an attached connection ---------------------------------------------------

    @property
    def backlogged(self) -> bool:
        """Events that arrive now would be skipped: the feed is full, or this connection
        has skipped one already."""
        return self.receive_events and (self.overflowed or self.feed.full)

    @property
    def owes_events(self) -> bool:
        """Events due to this client were not delivered, and only a resume brings them:
        skipped past the full feed or held back (:attr:`behind`, :attr:`overflowed`), or
        not received at all: the feed stops below the last seq the session is known to
        have reached (a welcome's ``last_seq``, which a resume's replay goes up to, or a
        higher seq from an event or an ack of ours), as when the session is closed while
        the replay is being sent and the client does not take it within the server's
        close timeout (the server cuts it there). A
        publish-only client (``receive_events`` off) is owed none, whatever dropped its
        connections (a 4429 for its own frame rate included)."""
        if not self.receive_events:
            return False
        if self.behind or self.overflowed:
            return True
        sequence = self.sequence
        return sequence.resume_point < max(self.reached, sequence.highest)

    def receive(self, frame: ServerFrame, size: int = 0) -> None:
        """Route one frame of ``size`` bytes; raises :class:`SequenceError` when the seqs
        went wrong."""
        pending = self.pending
        match frame:
            case EventFrame(seq=seq, ts=ts, event=event):
                if self.backlogged:
                    # Read only to reach a reply: the next connection resumes before it.
                    self.overflowed = True
                    self.skipped += 1
                    return
                deliver = self.sequence.event(seq, pending.unanswered_publishes)
                if deliver:
                    self.progress += 1
                    if self.receive_events:
                        self.feed.put(StoredEvent(seq, ts, event), size)  # type: ignore[arg-type]
            case Ack(id=request_id, seq=seq, duplicate=duplicate):
                request = pending.get(request_id)
                if request is not None and request.is_publish:
                    self.sequence.ack(seq, duplicate)
                    self.progress += 1
                self._answer(request_id, frame)
            case Acks(id=batch_id, seqs=seqs, duplicates=duplicates):
                self._answer_batch(batch_id, seqs, duplicates)
            case History() | Events() | Pong():
                self._answer(frame.id, frame)
            case Error(id=request_id, code=code, message=message):
                if request_id is None:
                    log.warning("error from the server: %s: %s", code, message)
                    return
                # A batch's error is each of its publishes' (none of them was stored).
                batch: list[Any] | None = pending.take_batch(request_id)
                for each in batch or [request_id]:
                    self._answer(each, error=RequestError(code, message))
            case Presence(connections=connections):
                self.connections = connections
            case Closed(reason=reason):
                self.closed_reason = reason
            case Welcome():
                log.warning("unexpected second welcome ignored")

    def _answer_batch(self, batch_id: Any, seqs: list[int], duplicates: list[int]) -> None:
        """A batch's ``acks``: each of its publishes answered as by its own ``ack``."""
        request_ids = self.pending.take_batch(batch_id)
        if request_ids is None:
            log.debug("acks of no batch out: %r", batch_id)
            return
        if len(seqs) != len(request_ids):
            raise ClientError(f"acks with {len(seqs)} seqs for a batch of {len(request_ids)}")
        duplicated = set(duplicates)
        for index, (request_id, seq) in enumerate(zip(request_ids, seqs, strict=True)):
            duplicate = index in duplicated
            if self.pending.get(request_id) is not None:
                self.sequence.ack(seq, duplicate)
                self.progress += 1
            self._answer(request_id, Ack(seq, id=request_id, duplicate=duplicate))

    def _answer(self, request_id: Any, result: Any = None, error: Exception | None = None) -> None:
        request = self.pending.answer(request_id, result, error)
        if request is None:
            log.debug("reply to no waiting request: %r", request_id)
        elif request.is_publish:
            # One publish fewer that could fill a hole.
            self.sequence.check(self.pending.unanswered_publishes)

    # -- the end --------------------------------------------------------------------------

    def finish(self, failure: ClientError) -> bool:
        """End this client with ``failure``: waiting requests fail with it, the events
        feed ends. False when it had already ended."""
        if self.failure is not None:
            return False
        self.failure = failure
        self.pending.fail_all(failure)
        self.feed.end()
        return True
