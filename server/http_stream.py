"""The body of a streamed HTTP answer (``StreamedResponse``), written after its head:
each piece as one chunk (HTTP/1.1 ``Transfer-Encoding: chunked``, which every HTTP/1.1
client reads), the next one only once the previous one has left the server's buffer.

What the answer holds in the server is one piece at a time: its bytes are charged to
the account of answers not yet taken by their peers (``UnreadAnswers``, a quarter of
``--memory-budget``), through its peer's share of it (``AnswerShare``), from when they
are read until they have left the transport's buffer for the kernel's, whose buffer is
kept small (``hold_answer``). Room for a piece is taken before it is read (the first,
read with the request, is charged then, or refused with 503, or 429 past the peer's
share), in turn with the other answers' pieces; a piece waits for room,
as one that is not taken waits for the peer, each for at most
``--answer-page-timeout``: past it the connection is dropped.
Before a later piece takes room, it waits for what the answer says it must
(``ready``: the peer's read allowance in debt, http_pages.py), so that an answer
waiting for its peer's debt holds nothing of the account meanwhile; that wait may end
the answer too (its peer gone, or a debt longer than the page timeout).
A peer that stops reading holds one piece of the server for that long, then nothing;
one that reads more slowly than a page per timeout is dropped too, so an answer ends
within its page count times the timeout.

An answer that cannot be finished (a page read that fails, its session deleted or
replaced, a peer too slow) is ended by dropping the connection without the last chunk:
every HTTP client then reports an incomplete body, never a shorter document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

import structlog

from bamboo_session.persistence.base import StorageError

from .unread_answers import SMALL_ANSWER_BYTES

if TYPE_CHECKING:
    from .http_answer import AnsweringConnection
    from .unread_answers import AnswerShare

log = structlog.get_logger("bamboo_session.server")

LAST_CHUNK: Final = b"0\r\n\r\n"


class AnswerStream:
    """Writes ``pieces`` to ``connection`` once its head is sent (BambooConnection's
    handshake calls :meth:`run`, or :meth:`abandon` when it is not sent), then ends the
    answer as websockets ends any other: its end of stream, and up to ``close_timeout``
    for the peer to hang up.

    ``reserved`` bytes are charged to ``answers`` (the share of the answer's peer) for
    the piece in hand or about to be read: ``held`` (the first piece, read with the
    request) to begin with, then room for ``piece_bytes()`` taken before each later
    piece is read. A piece that waited for room once read held a page outside the
    account: 400 peers that did not read took a server of 256 MiB of memory budget to
    750 MB."""

    __slots__ = (
        "answers",
        "chunked",
        "close_timeout",
        "connection",
        "page_timeout",
        "piece_bytes",
        "pieces",
        "ready",
        "reserved",
    )

    def __init__(
        self,
        connection: AnsweringConnection,
        answers: AnswerShare,
        pieces: AsyncIterator[bytes],
        timeouts: tuple[float, float | None],
        held: int,
        piece_bytes: Callable[[], int],
    ) -> None:
        self.connection = connection
        self.answers = answers
        self.pieces = pieces
        self.page_timeout, self.close_timeout = timeouts
        self.reserved = held
        self.piece_bytes = piece_bytes
        self.chunked = True  # else (HTTP/1.0) the pieces as they are, ended by the close
        # Awaited before room is taken for each later piece (StreamedResponse.ready).
        self.ready: Callable[[], Awaitable[str | None]] | None = None

    def abandon(self) -> None:
        """The head was not sent (the peer gone, the handshake failed): what was
        charged for the answer goes."""
        self.answers.release(self.reserved)
        self.reserved = 0

    async def discard(self) -> None:
        """The head was not sent: what was charged for the answer goes, and its pieces
        are let go, the first one read already (an unclosed generator holds it until
        the collector finds it)."""
        self.abandon()
        if isinstance(self.pieces, AsyncGenerator):
            await self.pieces.aclose()

    async def run(self) -> None:
        connection = self.connection
        reason = None
        try:
            reason = await self._write_pieces()
            if reason is None:
                await self._finish()
                return
        except StorageError as exc:
            # A page that cannot be read, or a session deleted or replaced: the rest
            # of this answer would not be the document its head began.
            reason = f"{type(exc).__name__}: {exc}"
        except Exception:
            # A bug: websockets would drop the connection without a word.
            log.exception("streamed answer failed")
            reason = "internal error"
        finally:
            self.abandon()
            if isinstance(self.pieces, AsyncGenerator):
                await self.pieces.aclose()
        if not connection.transport.is_closing():
            log.info("streamed answer aborted", reason=reason)
        connection.transport.abort()

    async def _write_pieces(self) -> str | None:
        """Every piece, then the last chunk: None once written, else why not."""
        while True:
            if not self.reserved:
                ended = await self._ready()
                if ended is not None:
                    return ended
                if not await self._reserve():
                    return "peer too slow to read"
            try:
                piece = await anext(self.pieces)
            except StopAsyncIteration:
                break
            if not piece:
                continue
            framed = (b"%x\r\n" % len(piece), piece, b"\r\n") if self.chunked else (piece,)
            written = self._write(framed)
            del framed
            del piece  # the transport holds its bytes now: not held twice while it drains
            if not written or not await self._drained():
                return "peer too slow to read"
        if not self.chunked:  # the end of stream ends the body
            self.answers.release(self.reserved)
            self.reserved = 0
            return None
        if not self._write((LAST_CHUNK,)) or not await self._drained():
            return "peer too slow to read"
        return None

    async def _ready(self) -> str | None:
        """Waits until the next piece may be read (its peer's read allowance repaid),
        before any room is taken for it, and with the previous piece's charge given
        back as its bytes left: so an answer that waits holds nothing of the account
        (it took a page's room for as long as its peer's debt lasted). None to go
        on, else why the answer ends there instead."""
        if self.ready is None:
            return None
        self.connection.release_sent()
        return await self.ready()

    async def _reserve(self) -> bool:
        """Room for the next piece, taken before it is read, in turn with the other
        answers' pieces: False if there is none within the page timeout, or the
        connection is gone."""
        connection = self.connection
        connection.release_sent()  # the previous piece's charge, gone with its bytes
        size = self.piece_bytes()
        if size <= SMALL_ANSWER_BYTES:
            # As any small answer, always sent (the end, ``]}``): a page's room, asked
            # for it, kept a short answer waiting behind every other one's pages.
            self.answers.charge(size)
            self.reserved = size
            return True
        room = self.answers.room(size)
        if not room.done():
            lost = connection.connection_lost_waiter
            try:
                await asyncio.wait(
                    (room, lost), timeout=self.page_timeout, return_when="FIRST_COMPLETED"
                )
            except BaseException:  # cancelled: room made later would be charged to nobody
                self.answers.give_up_room(size, room)
                raise
        if not room.done() or room.cancelled() or connection.transport.is_closing():
            self.answers.give_up_room(size, room)
            return False
        self.reserved = size
        return True

    def _write(self, parts: tuple[bytes, ...]) -> bool:
        """Writes ``parts``, their charge handed from the reservation to the
        connection, which releases it as its buffer drains: False if it is gone."""
        connection = self.connection
        if connection.transport.is_closing():
            return False
        size = sum(map(len, parts))
        if size > self.reserved:
            self.answers.charge(size - self.reserved)  # a page of one large message
        else:
            self.answers.release(self.reserved - size)
        self.reserved = 0
        connection.hold_answer(self.answers, size)  # released as the buffer drains
        connection.transport.writelines(parts)
        return True

    async def _drained(self) -> bool:
        """Waits until what was written has left the transport's buffer: False if that
        takes longer than the page timeout, or the connection is gone."""
        connection = self.connection
        transport = connection.transport
        if transport.get_write_buffer_size() == 0:
            return not transport.is_closing()
        drained = asyncio.ensure_future(connection.drain())
        drained.add_done_callback(_retrieve)
        lost = connection.connection_lost_waiter
        try:
            await asyncio.wait(
                (drained, lost), timeout=self.page_timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            drained.cancel()
        return not transport.is_closing() and transport.get_write_buffer_size() == 0

    async def _finish(self) -> None:
        """The end of the answer, as websockets' send_response ends an answer it sends
        whole: the end of stream, what the peer sends from now on discarded."""
        connection = self.connection
        protocol = connection.protocol
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        connection.send_data()
        await asyncio.wait((connection.connection_lost_waiter,), timeout=self.close_timeout)


def chunk_bytes(size: int) -> int:
    """What a piece of ``size`` bytes weighs once framed as a chunk."""
    return size + len(b"%x\r\n\r\n" % size)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a drain that failed with the connection: nobody awaits it
