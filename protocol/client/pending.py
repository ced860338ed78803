"""PendingRequests: the requests a client sent, or will send, and that await a reply.

The book-keeping behind exactly-once publishing, with no I/O: request ids are handed out
here in increasing order, each request stays in the book until its reply arrives, and
after a reconnect :meth:`PendingRequests.unsent` lists, oldest first, what the new
connection must resend before anything new goes out. A publish whose caller stopped
waiting (cancelled, timed out) stays until answered: it may already be stored, and its
seq must be accounted for by the sequence check.

Publishes sent together in one ``batch`` frame stay separate requests here, each with
its own id; the book also knows which went in which batch (by the batch frame's id) for
as long as that connection lasts, so that the batch's one reply answers each of them.
A reconnect forgets the batches: their publishes are resent, perhaps grouped otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ..frames import RequestId


class PendingRequest:
    """A request waiting for its reply; resent after a reconnect until answered."""

    __slots__ = ("frame", "future", "is_publish", "sent_on", "settled")

    def __init__(self, frame: Any, future: asyncio.Future[Any], is_publish: bool) -> None:
        self.frame = frame
        self.future = future
        self.is_publish = is_publish
        self.sent_on = -1  # the connection generation it was last sent on; -1: never
        self.settled = False  # out of the book: answered, or nobody waits any more

    def mark_sent(self, generation: int) -> bool:
        """It goes out on connection ``generation``; whether it went out before."""
        resend = self.sent_on >= 0
        self.sent_on = generation
        return resend


class PendingRequests:
    """Unanswered requests by id, oldest first."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        # Ids increase and are added as they are handed out, so insertion order is
        # id order, which is the order requests must be (re)sent in.
        self._requests: dict[int, PendingRequest] = {}
        self._publishes = 0
        self._batches: dict[int, list[int]] = {}  # a batch frame's id: its publishes' ids

    def __len__(self) -> int:
        return len(self._requests)

    def next_id(self) -> int:
        return next(self._ids)

    def add(
        self, request_id: int, frame: Any, future: asyncio.Future[Any], is_publish: bool
    ) -> PendingRequest:
        pending = PendingRequest(frame, future, is_publish)
        self._requests[request_id] = pending
        self._publishes += is_publish
        return pending

    def get(self, request_id: RequestId) -> PendingRequest | None:
        """The pending request with ``request_id`` (an id from a reply frame)."""
        return self._requests.get(request_id) if isinstance(request_id, int) else None

    def _pop(self, request_id: RequestId) -> PendingRequest | None:
        if not isinstance(request_id, int):
            return None
        pending = self._requests.pop(request_id, None)
        if pending is not None:
            self._publishes -= pending.is_publish
            pending.settled = True
        return pending

    # -- batches --------------------------------------------------------------------------

    def add_batch(self, batch_id: int, request_ids: list[int]) -> None:
        """Publishes ``request_ids`` went out together, as batch frame ``batch_id``."""
        self._batches[batch_id] = request_ids

    def take_batch(self, batch_id: RequestId) -> list[int] | None:
        """The ids of the publishes in batch ``batch_id`` (whose reply came), or None
        when no such batch is out on this connection."""
        return self._batches.pop(batch_id, None) if isinstance(batch_id, int) else None

    def forget_batches(self) -> None:
        """A new connection: no reply to an earlier connection's batch will come."""
        self._batches.clear()

    def answer(
        self, request_id: RequestId, result: Any = None, error: BaseException | None = None
    ) -> PendingRequest | None:
        """Settle the request with ``request_id``; it, or ``None`` when no such request
        waits (a late reply, or a reply to a request the caller gave up on)."""
        pending = self._pop(request_id)
        if pending is not None and not pending.future.done():
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result)
        return pending

    def release(self, request_id: int) -> None:
        """The caller stopped waiting (answered, cancelled or timed out): forget the
        request, unless it is an unanswered publish, which may already be stored."""
        pending = self._requests.get(request_id)
        if pending is not None and (not pending.is_publish or pending.future.done()):
            self._pop(request_id)

    @property
    def unanswered_publishes(self) -> int:
        return self._publishes

    def unsent(self, generation: int) -> list[PendingRequest]:
        """Requests not yet sent on connection ``generation``, oldest first."""
        return [p for p in self._requests.values() if p.sent_on != generation]

    def sent_on(self, generation: int) -> bool:
        """Whether a request sent on connection ``generation`` still awaits its reply."""
        return any(p.sent_on == generation for p in self._requests.values())

    def fail_all(self, error: BaseException) -> None:
        """Fail every request still waiting with ``error``, and forget them all."""
        for pending in self._requests.values():
            pending.settled = True
            if not pending.future.done():
                pending.future.set_exception(error)
                pending.future.exception()  # retrieved: no warning if nobody awaits it
        self._requests.clear()
        self._batches.clear()
        self._publishes = 0
