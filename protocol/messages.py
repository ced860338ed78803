"""Messages: the entries of a session's history, and the time and integer types the
whole data model shares (``utcnow``, ``Int64``, ``AwareDatetime``).

Field names follow the bamboo-session data model (PROTOCOL.md "Data"). Plain msgspec
Structs, no I/O; :mod:`.models` re-exports everything here.
"""

from __future__ import annotations

import base64
import collections
import enum
import os
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Self

import msgspec

from .absent import NullMeansAbsent

# Integers in typed fields must fit a signed 64-bit integer: JSON could carry more, but
# MessagePack cannot, and both codecs carry the same objects (msgspec bounds stop at int64).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A time sent by a peer must say its offset (RFC 3339); it is stored and sent in UTC.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (encoded as RFC 3339 with ``Z``)."""
    return datetime.now(UTC)


# Message ids are drawn ahead, this many at a time from one read of the system's random
# source: a read each (a getrandom call, ~1 us) was a fifth of a batch of messages'
# work. Each id is still 96 fresh random bits; a deque's popleft is atomic, so threads
# never share one, and a forked child drops the parent's ids rather than reuse them.
_IDS_DRAWN: Final = 64
_ID_BYTES: Final = 12  # 16 URL-safe base64 characters, no padding
_drawn_ids: collections.deque[str] = collections.deque()
if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork (the client runs there)
    os.register_at_fork(after_in_child=_drawn_ids.clear)


def new_message_id() -> str:
    """A fresh, unguessable message id: ``m_`` and 96 random bits (docs/protocol.md)."""
    while True:
        try:
            return _drawn_ids.popleft()
        except IndexError:
            _draw_ids()  # other threads may take them all first: then draw again


def _draw_ids() -> None:
    text = base64.urlsafe_b64encode(os.urandom(_ID_BYTES * _IDS_DRAWN)).decode()
    width = _ID_BYTES * 4 // 3
    _drawn_ids.extend("m_" + text[at : at + width] for at in range(0, len(text), width))


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: Any = None


class Message(msgspec.Struct, omit_defaults=True):
    """One entry of a session's history. ``id`` and ``created_at`` are filled in by
    the constructors, and by the server when a peer leaves them out (:meth:`completed`).
    ``content`` is required, so that it is always on the wire. A peer's ``null`` for
    ``id`` or ``metadata`` is as if it left them out (absent.py)."""

    role: Role
    content: str
    id: NullMeansAbsent[str] = ""
    created_at: AwareDatetime | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    metadata: NullMeansAbsent[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.id is None:
            sent.id = ""
        if sent.metadata is None:
            sent.metadata = {}

    @classmethod
    def _new(cls, role: Role, content: str, **fields: Any) -> Self:
        return cls(role=role, content=content, id=new_message_id(), created_at=utcnow(), **fields)

    @classmethod
    def user(cls, content: str) -> Self:
        return cls._new(Role.USER, content)

    @classmethod
    def assistant(cls, content: str) -> Self:
        return cls._new(Role.ASSISTANT, content)

    @classmethod
    def system(cls, content: str) -> Self:
        return cls._new(Role.SYSTEM, content)

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> Self:
        return cls._new(Role.TOOL, content, tool_call_id=tool_call_id)

    @classmethod
    def assistant_with_tools(cls, content: str, tool_calls: list[ToolCall]) -> Self:
        return cls._new(Role.ASSISTANT, content, tool_calls=list(tool_calls))

    def completed(self) -> Message:
        """This message with ``id`` and ``created_at`` filled in where absent, and
        ``created_at`` in UTC (a naive time is taken as UTC)."""
        created_at = self.created_at
        if created_at is None:
            created_at = utcnow()
        elif created_at.tzinfo is UTC:
            pass  # the common case, looked at without a call: decoded, then made UTC
        elif (offset := created_at.utcoffset()) is None:
            created_at = created_at.replace(tzinfo=UTC)
        elif offset:
            created_at = created_at.astimezone(UTC)
        if self.id and created_at is self.created_at:
            return self
        return msgspec.structs.replace(self, id=self.id or new_message_id(), created_at=created_at)
