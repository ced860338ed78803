"""A connection's handshake: the ``hello`` that must come first (in time, and valid),
then attaching the connection to its session: who the peer is, the per-user and
session-creation quotas, which session (created where asked), the connection's outbox,
and a close when its token expires.

A refusal closes the connection as server/failures.py says; a frame that is not a
valid ``hello`` gets an ``error`` frame first, then close 1008. A ``hello`` given up
on at its read deadline (1011 ``storage unavailable``), or whose own reads the store
failed (1011 ``storage failed; retry later``), is told in the log as the store's failed
commands are (server/command_failures.py, command ``Hello``), unless the actor or the
creation told it already (``StorageError.told``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from bamboo_session.persistence.base import OwnerCaps, StorageError
from bamboo_session.protocol.errors import CloseCode, ErrorCode, ProtocolError
from bamboo_session.protocol.frames import Error, Hello, RequestId
from bamboo_session.protocol.models import SessionMetadata

from .auth import (
    Forbidden,
    Principal,
    Unauthorized,
    access_refusal,
    check_access,
    check_new_session,
    check_session_id_for,
)
from .closing import close_within
from .config import ServerConfig
from .connection_end import release_user_count
from .deadlines import Deadline
from .failures import HELLO_STORAGE_FAILED, ServerBusy, hello_failure
from .flush import WebSocketSink
from .http_wire import BambooConnection
from .limits import TooManyConnections, TooManySessionConnections
from .outbox import Outbox
from .pages import StoreTimeout
from .quotas import Admission, CreatingTooFast, TooManySessions, WelcomeTooLarge, creator_key
from .replay_now import replay_now
from .token_expiry import TokenExpiry

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import SessionManager

# What attaching may fail with; each closes the connection as server/failures.py says.
_ATTACH_FAILURES = (
    StorageError,
    ServerBusy,
    TooManyConnections,
    TooManySessionConnections,
    TooManySessions,
    CreatingTooFast,
    Unauthorized,
    Forbidden,
    WelcomeTooLarge,
)


async def read_hello(conn: Connection) -> Hello | None:
    """The connection's first frame if it is a valid ``hello`` in time; else the
    connection is closed (after an ``error`` frame if it sent something else)."""
    timeout = conn.services.config.hello_timeout
    try:
        # Text frames arrive as str, checked as UTF-8 (else websockets closes 1007).
        # Not wait_for: on Python 3.11 that makes a task per hello. Not asyncio.timeout:
        # its three look-ups of the running loop are three getpid syscalls on 3.11.
        loop = conn.ws.loop
        async with Deadline(loop, loop.time() + timeout):
            data = await conn.ws.recv()
    except TimeoutError:
        await close_within(
            conn.ws, CloseCode.HELLO_TIMEOUT, "no hello in time", conn.services.config.close_timeout
        )
        return None
    conn.frames_in += 1
    try:
        frame = conn.codec.decode_frame(data)
    except ProtocolError as exc:
        await _refuse_hello(conn, exc.message, exc.request_id)
        return None
    if not isinstance(frame, Hello):
        await _refuse_hello(conn, "the first frame must be hello", getattr(frame, "id", None))
        return None
    return frame


async def _refuse_hello(conn: Connection, message: str, request_id: RequestId) -> None:
    await _send_now(conn, Error(ErrorCode.BAD_REQUEST.value, message, id=request_id))
    reason, grace = "first frame was not a valid hello", conn.services.config.close_timeout
    await close_within(conn.ws, CloseCode.POLICY_VIOLATION, reason, grace)


async def _send_now(conn: Connection, frame: Error) -> None:
    with contextlib.suppress(ConnectionClosed):
        await conn.ws.send(conn.codec.encode(frame), text=conn.codec.text)
        conn.frames_out += 1


async def attach(conn: Connection, hello: Hello) -> bool:
    """Attaches the connection to the session its ``hello`` asks for, setting its
    session, actor and outbox; False if refused (the connection is closed then)."""
    services = conn.services
    manager = services.manager
    ws = conn.ws
    # One read deadline for the whole attach, from the hello's arrival: the reads of its
    # session (and of its user's count, for a new one) and the session taking it in.
    # Each had a deadline of its own: a hello could wait about twice the time.
    deadline = services.page_reads.deadline(ws.loop)  # the loop held: no getpid (3.11)
    try:
        request = ws.request
        authorization = request.headers.get("Authorization") if request else None
        if request is not None and (request.headers or ws.response is not None):
            # Nothing reads the handshake's headers past here, and websockets would
            # keep them, the request's and the response's, for as long as the
            # connection stays open: about 3.5 KiB of an idle connection. (A
            # request stays: websockets reads None as "no handshake yet".) Most come
            # here with nothing left to drop (http_wire.py kept only Authorization).
            ws.request = Request(request.path, Headers())
            ws.response = None
        principal = services.access.authenticate_hello(hello, authorization)
        # A user_id over its limit applies to nothing here, as a title does not: it is
        # refused only by a creation, which would make it the session's owner.
        max_user_id = services.config.max_user_id_length
        user = services.access.connection_user(principal, hello, max_user_id)
        if user is not None:
            # Against the user's count on every instance, on a shared store: within
            # the attach's deadline, as its other reads (server/user_connections.py).
            await services.user_connections.acquire(
                user, conn.connection_id, services.page_reads, deadline
            )
            conn.counted_user = user
            ws.on_close_sent = functools.partial(release_user_count, conn)
        # The address read as the connection opened (http_answer.py), as an HTTP
        # request's is: the transport may no longer know it.
        creator = creator_key(principal.sub if principal else None, ws.peer_host)
        # Before the attach, which queues the replay the writer sends with it.
        conn.read_allowance = services.read_allowances.of(creator)
        conn.replay_share = services.replay_shares.of(creator)
        created: list[float] = []  # when a creation of this hello's ended, if one did
        admission = _noting_creation(services.quotas.admission(creator, deadline), created)
        session_id = await resolve_session(
            manager, conn.session_id, hello, principal, admission, deadline
        )
        if created:
            # The write that created the session is not a read, and is not cut short:
            # what follows it (the session taking the connection in) has a deadline
            # from its end. Else a creation slower than the deadline ended the hello
            # with 1011 once the session existed, leaving on /api/v1/stream a session
            # whose id its client never learned.
            deadline = max(deadline, created[0] + services.page_reads.timeout)
        if session_id != conn.session_id:  # a new session's: run() bound the path's
            conn.session_id = session_id
            conn.bind_log_ids(session_id=session_id)
        outbox = Outbox(
            conn.connection_id,
            hello.role,
            manager.config.send_queue_frames,
            on_close=conn.on_outbox_closed,
            max_bytes=manager.config.send_queue_bytes,
            codec=conn.codec,
            budget=manager.budget,
            session_id=session_id,
            metrics=services.metrics,  # what its check of the frames it sends counts
        )
        if services.config.batch_frames:
            outbox.max_batch_items = batch_items(services.config)
            outbox.max_batch_bytes = services.config.max_frame_bytes
        outbox.sink = WebSocketSink(
            ws, conn.codec, conn, conn.start_writer, functools.partial(replay_now, conn)
        )
        outbox.flusher = services.flusher
        try:
            # Asked again of what the actor finds: resolve_session may have found no
            # session to check the token against that is there by now.
            access = access_refusal(principal) if principal is not None else None
            conn.actor, _ = await manager.attach(
                session_id, outbox, hello.last_seq, hello.epoch, deadline=deadline, access=access
            )
        except BaseException:
            outbox.abandon("attach failed")  # its Attach may wait in a stuck actor's inbox
            raise
        conn.outbox = outbox
        if isinstance(ws, BambooConnection):
            ws.closes_itself = True  # a stop leaves its close to the outbox
        if principal is not None and principal.valid_until is not None:
            conn.expiry = TokenExpiry(principal.valid_until, outbox)
    except _ATTACH_FAILURES as exc:
        services.stored_caps.note_refusal(exc)  # at a stored-session cap: counted, logged
        failure = hello_failure(exc)
        storage_failed = isinstance(exc, StoreTimeout) or failure.reason == HELLO_STORAGE_FAILED
        if storage_failed and isinstance(exc, StorageError) and not exc.told:
            # A timeout, or a failure of the hello's own reads (the session's metadata,
            # the user's count on Redis), is told nowhere else; one the actor or the
            # creation told is marked so: once an outage, then counted, as theirs.
            # Before, the log said only "connection closed".
            manager.append_health.command_failures.failed("Hello", str(exc))
        await close_within(ws, failure.close, failure.reason, conn.services.config.close_timeout)
        return False
    except ProtocolError as exc:  # a field of the session it would create over its limit
        await _refuse_hello(conn, exc.message, hello.id)
        return False
    return True


def _noting_creation(admit: Admission, created: list[float]) -> Admission:
    """``admit``, noting in ``created`` when the creation it wrapped ended, if it did."""
    return functools.partial(_noted_creation, admit, created)


@contextlib.asynccontextmanager
async def _noted_creation(
    admit: Admission,
    created: list[float],
    owner: str | None,
    replacing: SessionMetadata | None = None,
) -> AsyncIterator[OwnerCaps | None]:
    async with admit(owner, replacing) as owner_caps:
        yield owner_caps
    created.append(asyncio.get_running_loop().time())


def batch_items(config: ServerConfig) -> int:
    """The most items a batch frame may hold here: never more than the rate limit's
    burst, which a larger batch could never pass."""
    if config.rate_limit > 0:
        return min(config.max_batch_items, config.rate_limit_burst)
    return config.max_batch_items


async def resolve_session(
    manager: SessionManager,
    session_id: str | None,
    hello: Hello,
    principal: Principal | None,
    admit: Admission | None,
    deadline: float | None = None,
) -> str:
    """The session a ``hello`` attaches to, created first where it asks for that.

    Under auth, raises Forbidden before anything is created or sent when ``principal``
    may not have it; a session created here belongs to its ``sub``. Nothing is created
    when the attach that follows could not be served (ServerBusy), nor when ``admit``
    (the connection's quotas) refuses it. The reads end by ``deadline`` (default: the
    store's read deadline from each read's start), else StoreTimeout: 1011."""
    owner = hello.user_id if principal is None else principal.sub
    if session_id is None:
        if principal is not None:
            check_new_session(principal)
        session = await manager.creations.admitted(admit, owner, hello.title)
        return session.id
    if principal is not None:
        check_session_id_for(principal, session_id)
    # A delete of it under way here first: mid-delete the store may not list the
    # session it then brings back, which a token would not be checked against.
    await manager.actors.unheld_for_hello(session_id, deadline)
    metadata: SessionMetadata | None = None
    if hello.create:
        metadata = await manager.ensure_session(
            session_id, owner, hello.title, admit, deadline=deadline
        )
    if principal is not None:
        metadata = metadata or await manager.stored_metadata(session_id, deadline)
        if metadata is not None:  # a missing one is 4404 when attaching
            check_access(principal, metadata)
    return session_id
