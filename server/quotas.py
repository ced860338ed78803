"""Quotas on new sessions: what one may carry, how many one user may keep, how fast
one creator may make them.

- Field lengths (``check_fields``): a session's ``title``, ``user_id`` and ``extra`` stay
  in memory in the store's index for as long as it exists, so each has a cap. Over it:
  :class:`FieldTooLong`, a ``bad_request`` (a ``hello`` that would create such a session
  gets ``error`` and close 1008).
- Sessions per user (:class:`SessionQuotas`): a user (the token's ``sub``, else
  ``hello.user_id``) keeps at most ``max_sessions_per_user`` sessions that are not
  closed. A store several processes share (Redis: ``counts_owner_caps``) counts them
  in the step that creates the session (``OwnerCaps``), so two processes creating for
  one user at once never both take the last place; on a store one process holds, the
  count is read right before the creation, and creations of one user are serialized
  in this process from the count to their end. Over it: :class:`TooManySessions`,
  close 4403.
- Stored sessions per user (:class:`SessionQuotas` too): a user keeps at most
  ``max_stored_sessions_per_user`` sessions in the store, closed and expired ones
  included until they are deleted or cleaned up, so that one user cannot fill the
  store-wide cap (``--max-stored-sessions``) for everyone by creating and closing.
  Counted in the same step, or from the same listing under the same lock. Over it:
  :class:`TooManyStoredSessions`, close 4403 with its own reason (closing will not
  make room; deleting or the TTL will).
- Creation rate: a token bucket per creator: the token's ``sub`` under auth, the peer's
  address without (an IPv6 peer's /64, which one host usually holds whole). Over it:
  :class:`CreatingTooFast`, close 4429; the client backs off and retries. A creation
  that finds the session there after all (SessionExists) gives its token back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, NamedTuple, Protocol

import msgspec

from bamboo_session.persistence.base import (
    OwnerAtCap,
    OwnerCaps,
    SessionExists,
    SessionFilter,
    SessionStorage,
)
from bamboo_session.protocol.errors import ErrorCode, ProtocolError
from bamboo_session.protocol.event_envelope import welcome_bytes
from bamboo_session.protocol.models import SessionMetadata, SessionState

from .config import ServerConfig
from .limits import TokenBucket
from .manager_config import SessionManagerConfig
from .pages import PageReads

# A welcome's bytes beside its title and user id, at most (protocol/event_envelope.py):
WELCOME_ROOM: Final = welcome_bytes(None, None)  # null: longer than ""
MAX_CREATORS: Final = 10_000  # creators whose buckets are kept (least recently used go)


class FieldTooLong(ProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_REQUEST, message)


class TooManySessions(Exception):
    """The user already keeps the most sessions allowed."""


class TooManyStoredSessions(TooManySessions):
    """The user already keeps the most sessions allowed in the store, closed ones too."""

    def __init__(self, owner: str, message: str) -> None:
        super().__init__(message)
        self.owner = owner  # whom the operator's log line names (server/stored_caps.py)


class OwnerCount(NamedTuple):
    """An owner's sessions in the store: not closed (``live``), and all (``stored``)."""

    live: int
    stored: int


class CreatingTooFast(Exception):
    """This creator made too many sessions too quickly."""


def check_fields(
    config: SessionManagerConfig,
    user_id: str | None,
    title: str | None,
    extra: dict[str, Any] | None,
) -> None:
    """FieldTooLong unless a new session's fields are within their limits, the bytes of
    its ``welcome`` within ``max_frame_bytes`` (0: none) included."""
    if user_id is not None and len(user_id) > config.max_user_id_length:
        raise FieldTooLong(f"user_id is longer than {config.max_user_id_length} characters")
    if title is not None and len(title) > config.max_title_length:
        raise FieldTooLong(f"title is longer than {config.max_title_length} characters")
    if extra and len(msgspec.json.encode(extra)) > config.max_extra_bytes:
        raise FieldTooLong(f"extra is larger than {config.max_extra_bytes} bytes")
    limit = config.max_frame_bytes
    if (size := welcome_over(limit, title, user_id, extra)) is not None:
        fields = "title, user_id and extra" if extra else "title and user_id"
        raise FieldTooLong(
            f"{fields} make a welcome of {size} bytes: over the frame limit ({limit})"
        )


class WelcomeTooLarge(Exception):
    """A stored session whose ``welcome`` would be over the frame limit: made before
    its ``extra`` was held to it, by a manager without ``max_frame_bytes`` or of a
    larger one, or copied from another store. Its attach is refused (close 1009)
    rather than its ``welcome`` sent over the limit the server advertises."""


def welcome_over(
    limit: int, title: str | None, user_id: str | None, extra: dict[str, Any] | None
) -> int | None:
    """The most bytes a ``welcome`` of a session with these fields can be, if that is
    over ``limit`` (0: none); else None. Encoded only where it could be over: a
    character of ``title`` or ``user_id`` is up to 6 bytes in either codec (JSON's
    ``\\u0001``), and ``extra``, when not empty, is always measured."""
    if not limit:
        return None
    length = len(title or "") + len(user_id or "")
    if not extra and 6 * length + WELCOME_ROOM <= limit:
        return None
    size = welcome_bytes(title, user_id, extra)
    return size if size > limit else None


def creator_key(user: str | None, address: str | None) -> str | None:
    """Whose creation rate a new session counts against: the user under auth (``user``
    given), else the peer's address; None when neither is known."""
    if user is not None:
        return "user:" + user
    if address is None:
        return None
    return _address_key(address)


# Addresses whose key is kept: a connect asks for its peer's, and most peers connect
# many times (every viewer of one machine, a storm of resumes), so each is parsed once.
# An address is the socket's (http_answer.py ``peer_host``), at most 45 characters:
# the cache holds well under 1 MiB.
ADDRESS_KEYS: Final = 4096


@functools.lru_cache(maxsize=ADDRESS_KEYS)
def _address_key(address: str) -> str:
    """``addr:`` and the address, an IPv6 one as its /64, an IPv4-mapped one as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "addr:" + address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "addr:" + str(ip.ipv4_mapped)
        return "addr:" + str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return "addr:" + str(ip)


class Admission(Protocol):
    """Wraps the creation of a session for an owner: refuses it by raising on entry,
    or gives the caps the store is to count in the creation (None: none), and raises
    TooManySessions for the store's refusal at them (OwnerAtCap). ``replacing``: the
    expired session the creation takes the place of, if any. When it is the owner's it
    goes with the creation, so the owner's counts stay as they were: the count of
    stored sessions always, the count of sessions not closed if it was not closed."""

    def __call__(
        self, owner: str | None, replacing: SessionMetadata | None = None
    ) -> AbstractAsyncContextManager[OwnerCaps | None]: ...


class SessionQuotas:
    """The per-user caps and the creation rates of one server process."""

    def __init__(
        self, storage: SessionStorage, config: ServerConfig, reads: PageReads | None = None
    ) -> None:
        self.storage = storage
        self.reads = reads  # the store's read deadline, for the count of an owner's sessions
        self.max_per_user = config.max_sessions_per_user  # 0: no cap
        self.max_stored_per_user = config.max_stored_sessions_per_user  # 0: no cap
        # A store several processes write counts an owner's sessions as it creates one.
        self.store_counts = getattr(storage, "counts_owner_caps", False)
        self.rate = config.session_create_rate  # sessions per second per creator; 0: none
        self.burst = config.session_create_burst
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        # Owners with a creation under way in this process: their lock and its users.
        self._owners: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def admission(self, creator: str | None, deadline: float | None = None) -> Admission:
        """What wraps the creation of a session made by ``creator``; its count of the
        owner's sessions ends by ``deadline`` (default: the read deadline from its
        start). Every hello asks for one, and most create nothing: a partial of the
        method, not a closure made a context manager on each call (functools'
        update_wrapper and all, some 1% of a connect's CPU, h383)."""
        return functools.partial(self._admit, creator, deadline)

    @contextlib.asynccontextmanager
    async def _admit(
        self,
        creator: str | None,
        deadline: float | None,
        owner: str | None,
        replacing: SessionMetadata | None = None,
    ) -> AsyncIterator[OwnerCaps | None]:
        bucket = self._take_token(creator)
        try:
            if owner is None or (self.max_per_user <= 0 and self.max_stored_per_user <= 0):
                yield None
                return
            if self.store_counts:
                try:
                    yield OwnerCaps(self.max_per_user, self.max_stored_per_user)
                except OwnerAtCap as exc:
                    raise self._at_cap(owner, exc) from None
                return
            # One creation at a time per owner in this process, from its count to its
            # end: two of them never both take the last place.
            async with self._owner_lock(owner):
                kept = await self._count(owner, deadline)
                self._check_counts(owner, kept, replacing)
                yield None
        except SessionExists:
            # Nothing created: the session was there after all (made by another, or an
            # expired one renewed by its append), and the hello attaches to it, which
            # costs no token. (A refusal or a failure keeps its token: a creator
            # retrying one is metered.)
            if bucket is not None:
                bucket.refund(1)
            raise

    def _check_counts(
        self, owner: str, kept: OwnerCount, replacing: SessionMetadata | None
    ) -> None:
        """TooManyStoredSessions or TooManySessions unless one more session fits."""
        # The owner's expired session it replaces is in the counts, and goes with it.
        replaced = replacing if replacing is not None and replacing.user_id == owner else None
        stored = kept.stored - (replaced is not None)
        live = kept.live - (replaced is not None and replaced.state != SessionState.CLOSED)
        # The stored cap first: past it, closing sessions would not make room.
        if 0 < self.max_stored_per_user <= stored:
            raise TooManyStoredSessions(
                owner, f"{owner!r} keeps {kept.stored} sessions in the store"
            )
        if 0 < self.max_per_user <= live:
            raise TooManySessions(f"{owner!r} keeps {kept.live} sessions")

    @staticmethod
    def _at_cap(owner: str, exc: OwnerAtCap) -> TooManySessions:
        """The store's refusal at a cap, as the one counted here would be."""
        if exc.stored:
            return TooManyStoredSessions(
                owner, f"{owner!r} keeps {exc.count} sessions in the store"
            )
        return TooManySessions(f"{owner!r} keeps {exc.count} sessions")

    @contextlib.asynccontextmanager
    async def _owner_lock(self, owner: str) -> AsyncIterator[None]:
        entry = self._owners.get(owner)
        if entry is None:
            entry = self._owners[owner] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._owners[owner]

    def _take_token(self, creator: str | None) -> TokenBucket | None:
        """CreatingTooFast unless the creator's bucket has a token, which is taken; the
        bucket (None when not metered)."""
        if creator is None or self.rate <= 0:
            return None
        bucket = self._buckets.get(creator)
        if bucket is None:
            bucket = self._buckets[creator] = TokenBucket(self.rate, self.burst)
            while len(self._buckets) > MAX_CREATORS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(creator)
        if not bucket.take():
            raise CreatingTooFast(f"over {self.rate:g} new sessions/s")
        return bucket

    async def _count(self, owner: str, deadline: float | None = None) -> OwnerCount:
        """The owner's sessions in the store, within the read deadline (StoreTimeout,
        which closes the hello with 1011)."""
        if self.reads is None:
            return await self._count_in_store(owner)
        return await self.reads.lookup(lambda: self._count_in_store(owner), deadline)

    async def _count_in_store(self, owner: str) -> OwnerCount:
        storage = self.storage
        mine = await storage.list_sessions(SessionFilter(user_id=owner, limit=0))  # counts alone
        # The closed ones matter to the live cap only, and not once the stored cap
        # refuses whatever the creation replaces (a user hammering at it: one listing).
        if self.max_per_user <= 0 or 0 < self.max_stored_per_user < mine.total:
            return OwnerCount(live=mine.total, stored=mine.total)
        closed = await storage.list_sessions(
            SessionFilter(user_id=owner, state=SessionState.CLOSED, limit=0)
        )
        return OwnerCount(live=mine.total - closed.total, stored=mine.total)
