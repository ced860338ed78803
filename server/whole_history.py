"""The whole history of ``GET /api/v1/sessions/{id}`` (no ``limit``, no ``before``),
as PROTOCOL.md has it, whatever its length: ``{"metadata": …, "messages": […]}``
streamed page by page (server/http_stream.py writes it, chunked).

Never held whole: the answer used to be built in memory, and a history longer than one
page was refused with 413 for that, which a client written from PROTOCOL.md does not
expect. Each page (about ``--max-page-bytes`` of messages, at least one) is read in
one of the page-read slots within ``--store-read-timeout``, like any other page (but
in at most half of the slots, all whole histories together), and only when the
previous one has left the server's buffer.

Consistent: the messages the metadata counted when the answer began (indexes
``0 .. message_count``), read from the log of that metadata's epoch only, so that no
page of a session deleted or replaced meanwhile is spliced in: its page reads
fail (SessionNotFound), and so does the check of the epoch before the body's end,
which aborts the answer (the client sees a truncated body, never a wrong document).
"""

from __future__ import annotations

import http
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from websockets.datastructures import Headers

from bamboo_session.persistence.base import SessionNotFound, SessionStorage, StorageError
from bamboo_session.protocol.models import SessionMetadata

from .http_stream import chunk_bytes
from .pages import MAX_CHUNK, PageReads
from .responses import StreamedResponse

_json = msgspec.json.Encoder()
# A page's messages are encoded one by one as they are read: what a page holds is
# known before it is kept, and each is encoded once.
_COMMA: Final = b","
_END: Final = b"]}"


async def forward_page(
    storage: SessionStorage,
    session_id: str,
    start: int,
    end: int,
    max_bytes: int,
    epoch: str,
) -> list[bytes]:
    """The encoded messages from index ``start`` on, below ``end``: no more than
    ``max_bytes`` of them, but at least one. Read oldest first with the budget left
    (``get_history_from(max_bytes=…)``: the store stops at the first message past
    it), at most MAX_CHUNK a read, each from the log of ``epoch`` only. Raises
    StorageError (SessionNotFound: deleted or replaced)."""
    encoded: list[bytes] = []
    used = 0
    position = start
    while position < end and (used < max_bytes or not encoded):
        count = min(MAX_CHUNK, end - position)
        budget = max_bytes - used
        page = await storage.get_history_from(
            session_id, position, count, epoch=epoch, max_bytes=budget
        )
        if page.start != position or not 0 < len(page.messages) <= count:
            # Fewer messages than the metadata counted: not the history it described.
            raise StorageError(f"history of {session_id} shorter than its metadata counts")
        for message in page.messages:
            data = _json.encode(message)
            if encoded and used + len(data) > max_bytes:
                # The store's at-least-one, past what is left: the next page's first.
                return encoded
            encoded.append(data)
            used += len(data)
        position += len(page.messages)
        if len(page.messages) < count:
            break  # the budget stopped the store's read: the page is full
    return encoded


class WholeHistory:
    """The body of one whole-history answer: its opening and first page, read before
    the head is sent (a store that fails then gets a status, 404 or 503), then
    :meth:`pieces`, each read when the previous one is taken."""

    __slots__ = ("_epoch", "_reads", "_storage", "count", "max_bytes", "position", "session_id")

    def __init__(
        self,
        reads: PageReads,
        storage: SessionStorage,
        metadata: SessionMetadata,
        max_bytes: int,
    ) -> None:
        self._reads = reads
        self._storage = storage
        self._epoch = metadata.epoch  # the log this metadata describes
        self.session_id = metadata.id
        self.count = metadata.message_count  # the snapshot: messages 0 .. count
        self.position = 0  # the index of the next message to read
        self.max_bytes = max_bytes

    async def page(self, deadline: float | None = None) -> bytes:
        """The next page's messages, comma-separated, in a slot by ``deadline``: one of
        those streamed answers may hold (half of them), so that however many whole
        histories are read at once, other pages find a slot."""
        start = self.position
        encoded = await self._reads.stream_read(
            lambda: forward_page(
                self._storage, self.session_id, start, self.count, self.max_bytes, self._epoch
            ),
            deadline,
        )
        self.position = start + len(encoded)
        return _COMMA.join(encoded)

    def next_piece_bytes(self) -> int:
        """The most the next piece holds, framed: a page, or the end (``]}``)."""
        if self.position < self.count:
            return chunk_bytes(len(_COMMA) + self.max_bytes)
        return chunk_bytes(len(_END))

    async def pieces(self, first: bytes) -> AsyncIterator[bytes]:
        """``first``, then every other page, then the end, once the epoch is checked:
        pages read before a delete or a replace that came after the last of them would
        otherwise end as a whole answer of a session that is gone. No page is kept here
        once yielded: its writer drops it as soon as the transport has its bytes."""
        held = [first]
        del first
        yield held.pop()
        while self.position < self.count:
            yield _COMMA + await self.page()
        epoch = await self._reads.lookup(lambda: self._storage.epoch(self.session_id))
        if epoch != self._epoch:
            raise SessionNotFound(f"session {self.session_id} was replaced")
        yield _END


async def whole_history_response(
    reads: PageReads,
    storage: SessionStorage,
    metadata: SessionMetadata,
    max_bytes: int,
    deadline: float,
) -> StreamedResponse:
    """The 200 of a whole history, its first page read by ``deadline`` (the request's:
    a failure then is answered with its status, never a 200 cut short)."""
    history = WholeHistory(reads, storage, metadata, max_bytes)
    # Keys before ``messages``, the one that grows: sent as soon as they are known.
    opening = b'{"metadata":%s,"has_more":false,"start":0,"messages":[' % _json.encode(metadata)
    first = opening + (await history.page(deadline) if history.count else b"")
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
            ("Cache-Control", "no-store"),
        ]
    )
    status = http.HTTPStatus.OK
    return StreamedResponse(
        status.value,
        status.phrase,
        headers,
        pieces=history.pieces(first),
        held=chunk_bytes(len(first)),
        piece_bytes=history.next_piece_bytes,
    )
