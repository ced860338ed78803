"""The body of a streamed HTTP answer (``StreamedResponse``), written after its head:
each piece as one chunk (HTTP/1.1 ``Transfer-Encoding: chunked``, which every HTTP/1.1
client reads), the next one only once the previous one has left the server's buffer.

What the answer holds in the server is one piece at a time: its bytes are charged to
the account of answers not yet taken by their peers (``UnreadAnswers``, a quarter of
``--memory-budget``) from when they are written until they have left the transport's
buffer for the kernel's, whose buffer is kept small (``hold_answer``). A piece that
would not fit in that account waits for room, as one that is not taken waits for the
peer, each for at most ``--answer-page-timeout``: past it the connection is dropped.
A peer that stops reading holds one piece of the server for that long, then nothing;
one that reads more slowly than a page per timeout is dropped too, so an answer ends
within its page count times the timeout.

An answer that cannot be finished (a page read that fails, its session deleted or
replaced, a peer too slow) is ended by dropping the connection without the last chunk:
every HTTP client then reports an incomplete body, never a shorter document.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Final

import structlog

from bamboo_session.persistence.base import StorageError

if TYPE_CHECKING:
    from .http_wire import BambooConnection
    from .responses import UnreadAnswers

log = structlog.get_logger("bamboo_session.server")

LAST_CHUNK: Final = b"0\r\n\r\n"
# How often a piece that waits for room in the answers' account looks again: room is
# made by other peers reading, which nothing here is told of.
ROOM_POLL_SECONDS: Final = 0.05


class AnswerStream:
    """Writes ``pieces`` to ``connection`` once its head is sent (BambooConnection's
    handshake calls :meth:`run`), then ends the answer as websockets ends any other:
    its end of stream, and up to ``close_timeout`` for the peer to hang up."""

    __slots__ = ("answers", "close_timeout", "connection", "page_timeout", "pieces")

    def __init__(
        self,
        connection: BambooConnection,
        answers: UnreadAnswers,
        pieces: AsyncIterator[bytes],
        page_timeout: float,
        close_timeout: float | None,
    ) -> None:
        self.connection = connection
        self.answers = answers
        self.pieces = pieces
        self.page_timeout = page_timeout
        self.close_timeout = close_timeout

    async def run(self) -> None:
        connection = self.connection
        reason = None
        try:
            async for piece in self.pieces:
                if piece and not await self._send((b"%x\r\n" % len(piece), piece, b"\r\n")):
                    reason = "peer too slow to read"
                    break
            else:
                if await self._send((LAST_CHUNK,)):
                    await self._finish()
                    return
                reason = "peer too slow to read"
        except StorageError as exc:
            # A page that cannot be read, or a session deleted or replaced: the rest
            # of this answer would not be the document its head began.
            reason = f"{type(exc).__name__}: {exc}"
        except Exception:
            # A bug: websockets would drop the connection without a word.
            log.exception("streamed answer failed")
            reason = "internal error"
        finally:
            if isinstance(self.pieces, AsyncGenerator):
                await self.pieces.aclose()
        if not connection.transport.is_closing():
            log.info("streamed answer aborted", reason=reason)
        connection.transport.abort()

    async def _send(self, parts: tuple[bytes, ...]) -> bool:
        """Writes ``parts`` once they fit in the answers' account, and waits until they
        have left the transport's buffer: False if either takes longer than the page
        timeout, or the connection is gone."""
        connection = self.connection
        transport = connection.transport
        size = sum(map(len, parts))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.page_timeout
        connection.release_sent()  # the previous piece's charge, gone with its bytes
        while not self.answers.take(size):
            if transport.is_closing() or loop.time() >= deadline:
                return False
            await asyncio.sleep(ROOM_POLL_SECONDS)
        if transport.is_closing():
            self.answers.release(size)
            return False
        connection.hold_answer(self.answers, size)  # released as the buffer drains
        transport.writelines(parts)
        if transport.get_write_buffer_size() == 0:
            return True
        drained = asyncio.ensure_future(connection.drain())
        drained.add_done_callback(_retrieve)
        lost = connection.connection_lost_waiter
        remaining = max(0.0, deadline - loop.time())
        try:
            await asyncio.wait((drained, lost), timeout=remaining, return_when="FIRST_COMPLETED")
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


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a drain that failed with the connection: nobody awaits it
