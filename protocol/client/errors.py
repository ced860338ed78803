"""The errors a BambooClient raises, and what each way a connection can end means.

:func:`close_outcome` is the one place that maps a close code to what the client does
next: reconnect and resume (:class:`Retry`), or stop with a typed :class:`ClientError`.
The table it follows is docs/protocol.md's "Close codes".
"""

from __future__ import annotations

from ..errors import CloseCode


class ClientError(Exception):
    """Base of every error the client raises."""


class Refused(ClientError):
    """The server closed the connection (or refused the upgrade) for a reason that a
    reconnect would not fix: 1008, 1009, 4401, 4403, 4404, 4409, or an HTTP status.
    ``code`` is the close code, or the HTTP status when the upgrade was refused."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused by the server ({code}): {reason}" if reason else f"{code}")
        self.code = code
        self.reason = reason


class SessionEnded(ClientError):
    """The session was closed (``closed`` frame, close 1000 or 4409), or this client was
    closed: nothing more will come on this client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(ClientError):
    """The connection dropped and reconnecting gave up (``max_retries`` reached, or
    ``reconnect`` off); or the session ended while events due to this client were not
    delivered (skipped past its full queue, held back, a replay the close cut short, or
    appended while it was away): then ``after_seq`` (None otherwise) is the seq after
    which they are, to read over HTTP, and the message says so."""

    def __init__(self, message: str, after_seq: int | None = None) -> None:
        super().__init__(message)
        self.after_seq = after_seq

    @classmethod
    def events_after(
        cls, reason: str, session_id: str | None, after: int, unchecked: str | None = None
    ) -> ConnectionLost:
        """The end of a client whose session ended (``reason``) before it had every
        event: those after ``after`` are to be read over HTTP. ``unchecked``: why the
        server could not be asked whether there are any (then they *may* be missing)."""
        read = f"read them over HTTP: GET /api/v1/sessions/{session_id}/events?after_seq={after}"
        if unchecked is not None:
            return cls(
                f"{reason} while this client was away, and the events after seq {after}"
                f" may not have been delivered to it: asking the server failed"
                f" ({unchecked}; {read})",
                after,
            )
        return cls(
            f"{reason}, with the events after seq {after} not delivered to this client ({read})",
            after,
        )


class SequenceError(ClientError):
    """The server sent an impossible sequence: a duplicate ``seq`` or a gap."""

    def __init__(self, message: str, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class EpochChanged(ClientError):
    """A read of the log page by page (:meth:`~BambooClient.read_all_events`,
    :meth:`~BambooClient.event_pages`) found a page of another log than the one it was
    asked of: the session was replaced (deleted and created again under its id, or
    expired and replaced) and the client reconnected onto the new one before that page
    (the first one included). The new log's seqs start from 1 again, so its pages are
    not the rest of the old one, and the read stops rather than join them.
    ``previous_epoch`` is the epoch the read was pinned to (the caller's, or the
    client's when the read was called), ``epoch`` the new page's, and ``after_seq`` the
    seq after which that page was asked. Nothing restarts the read: call it again to
    read the new log from its start (``client.epoch`` is then the new one's, and
    :meth:`~BambooClient.events` has yielded a :class:`Reset`)."""

    def __init__(self, previous_epoch: str, epoch: str, after_seq: int) -> None:
        super().__init__(
            f"the session's log changed from epoch {previous_epoch} to {epoch} while it was"
            f" read page by page (a page asked after seq {after_seq}): the session was"
            f" replaced, and the new log's events are not the rest of the old one's"
        )
        self.previous_epoch = previous_epoch
        self.epoch = epoch
        self.after_seq = after_seq


class RequestError(ClientError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Retry(Exception):
    """Internal: a connection, or an attempt to open one, failed in a way that a
    reconnect with resume may fix."""


class Resync(Retry):
    """Internal: the client closed a connection that skipped events past its full
    events queue, now read down: a new one resumes from the last event queued."""


def close_outcome(code: int | None, reason: str, closed_reason: str | None) -> ClientError | Retry:
    """What a connection that ended with close ``code`` means: :class:`Retry` (resume),
    or the error that ends the client. ``code`` is ``None`` when no close frame came (a
    network failure); ``closed_reason`` is the reason of a ``closed`` frame received just
    before, which says better than the close why a session ended."""
    if code is None:
        return Retry(f"connection dropped: {reason}" if reason else "connection dropped")
    try:
        close_code = CloseCode(code)
    except ValueError:
        return Refused(code, reason)  # a code the contract does not list: stop
    if close_code.should_resume:
        return Retry(f"closed {code} {reason}".strip())
    if close_code in (CloseCode.NORMAL, CloseCode.SESSION_CLOSED):
        return SessionEnded(closed_reason or reason or "session closed")
    return Refused(code, reason)
