"""A resume's replay written at once, in the same write as the frames queued ahead of
it (its ``welcome``): no writer task, no await, when nothing of it needs one.

After a restart, thousands of viewers resume at once, each a few events behind, and
the session's ring holds those events. Left to the writer task (server/replay.py
``send_replay``), each resume cost a task (made, its context copied, scheduled,
ended), its coroutines, and a second write for the replay's page behind the flusher's
write of the ``welcome``. :func:`replay_now` does the same page's work in the flusher's
turn (server/writer_life.py), with the same checks and charges, in the same order, and
only where ``send_replay`` would have awaited nothing: the whole replay one page of
the ring, its seqs following what the connection was sent, the peer's read allowance
not in debt, its replay share with room for the page at once, the socket open and
taking the page without passing its high-water mark. Anything else (a replay read
from the store, a page too big, a peer in debt, a full socket, a close asked for) is
left to the writer, untouched: nothing is charged, counted or written then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flush import can_write_now
from .outbound import BYTES_HEADER
from .room import REPLAY_PAGE_BYTES

if TYPE_CHECKING:
    from .connection import Connection
    from .read_back import Replay


def replay_now(conn: Connection, replay: Replay, ahead: list[bytes]) -> bool:
    """Writes ``ahead`` (framed frames ``conn``'s outbox queued before ``replay``,
    already taken and checked) and then the whole of ``replay``, in one ``writelines``;
    whether it did. When it cannot be done at once, nothing is written, charged nor
    changed: the writer sends the replay, and ``ahead`` is the caller's to write. The
    outbox's ``sent_seq`` is to say where ``ahead`` ends."""
    outbox, actor = conn.outbox, conn.actor
    if outbox is None or actor is None:
        return False
    ws, allowance, share = conn.ws, conn.read_allowance, conn.replay_share
    after, through = replay.after, replay.through
    if outbox.closing is not None or outbox.sent_seq != after or after >= through:
        return False
    page = actor.replay_reads.room.ring_page(after, through)
    # The whole replay in one page of the ring, following what was sent: to_socket
    # would let it all through, and send_replay would send it as one page.
    if page is None or len(page) != through - after or page[-1].seq != through:
        return False
    if allowance is not None and allowance.debt() > 0:
        return False  # send_replay waits for the debt to be repaid
    transport = ws.transport
    if not can_write_now(ws) or transport.is_closing() or ws.protocol.writes:
        return False
    codec = conn.codec
    frames = [out.framed(codec) for out in page]
    size = sum(map(len, frames))
    # Below the high-water mark once written, the page is taken (send_replay's
    # _send_page): past it, the writer would wait for it to drain, under the page's
    # stall timeout and its charge to the memory budget.
    written = size + sum(map(len, ahead))
    if transport.get_write_buffer_size() + written > transport.get_write_buffer_limits()[1]:
        return False
    held = kept = 0
    if share is not None:
        # send_replay's order: a page's worth of the peer's share, then its own size.
        if not share.take_now(REPLAY_PAGE_BYTES):
            return False
        held, kept = REPLAY_PAGE_BYTES, size + len(frames) * BYTES_HEADER
        if not share.may_grow(held, kept):
            share.give_back(held)
            return False
    reserved = allowance.reserve(REPLAY_PAGE_BYTES) if allowance is not None else 0
    outbox.sent_seq = through
    ahead.extend(frames)
    transport.writelines(ahead)
    if allowance is not None:
        allowance.settle(reserved, size)
    if share is not None:
        share.settle(held, kept)
        share.give_back(kept)
    outbox.replay_page_sent(len(frames), sum(out.event_size for out in page))
    conn.frames_out += len(ahead)  # the frames ahead, and the replay's
    return True
