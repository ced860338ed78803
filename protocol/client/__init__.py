"""BambooClient: the reference async client, with resume and exactly-once publish built in.

The one part of ``protocol/`` that does I/O. A client keeps one session attached across
drops: when the connection ends for a reason docs/protocol.md says to resume from (1001,
1011, 1012, 1013, 4408, 4429, or a network failure), it reconnects with exponential
backoff and full jitter, sends ``hello`` with ``last_seq`` and ``epoch``, and resends
every unanswered request in its original order before any new one. Publishes always
carry an idempotency key, so a resent publish is stored once; publishes that queue up
together go as one ``batch`` frame when the server offers it. Every ``event`` frame is
checked for gaps and duplicates (:class:`SequenceError`); a reconnect that the server
cannot resume is yielded by :meth:`BambooClient.events` as a :class:`Reset`.

The modules, each on its own:

- :mod:`.api`: :class:`BambooClient`, the public calls: connect, close, state, events;
- :mod:`.requests`: its requests (publishes, reads, state, ping), its base class;
- :mod:`.link`: the connection loop: read, send and resend, reconnect with backoff;
- :mod:`.reconnect`: the backoff's waits, and which connections start them again (a
  connection that brought an event or an ack, or held 10 s) (no I/O);
- :mod:`.endings`: the error a client ends with when its session ended;
- :mod:`.outgoing`: publishes encoded once, framed alone or in batches (no I/O);
- :mod:`.handshake`: one connection: the stream URL, upgrade, ``hello``, ``welcome``;
- :mod:`.state`: what the client knows of the session, fed every server frame (no I/O);
- :mod:`.sequence`: the gap and duplicate check (no I/O);
- :mod:`.pending`: unanswered requests, what to resend after a reconnect (no I/O);
- :mod:`.log_pages`: the log read page by page, every page of one epoch;
- :mod:`.errors`: the errors raised, and what each close code means;
- :mod:`.results`: pages and the :class:`Reset` marker.

Usage::

    async with await BambooClient.connect("ws://127.0.0.1:8765", "chat-1", create=True) as c:
        seq = await c.publish(AgentEvent.token("Hi"))
        async for item in c.events():
            ...
"""

from ..models import StoredEvent
from .api import BambooClient
from .errors import (
    ClientError,
    ConnectionLost,
    EpochChanged,
    Refused,
    RequestError,
    SequenceError,
    SessionEnded,
)
from .handshake import STREAM_PATH, TokenSource, stream_url
from .results import EventPage, HistoryPage, Reset
from .sequence import SequenceChecker

_Sequence = SequenceChecker  # its name before the split, which tests/test_client_resume.py uses

__all__ = [
    "STREAM_PATH",
    "BambooClient",
    "ClientError",
    "ConnectionLost",
    "EpochChanged",
    "EventPage",
    "HistoryPage",
    "Refused",
    "RequestError",
    "Reset",
    "SequenceError",
    "SessionEnded",
    "StoredEvent",
    "TokenSource",
    "stream_url",
]
