"""The contract of a session's live subscription (``Subscription``), which every
backend's ``subscribe`` returns: a part of the storage contract (persistence/base.py
re-exports it), in a module of its own because the live side is its own concern."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bamboo_session.protocol.models import StoredEvent


class Subscription(Protocol):
    """A session's events after a seq, in seq order with no gap and no duplicate: first
    what is stored, then every new append. ``async for`` yields them one at a time;
    :meth:`next_batch` returns whatever is ready (waiting for at least one), which is
    what a fan-out loop wants. Ends (StopAsyncIteration, or an empty batch) when the
    subscription is closed, or when the session is closed or deleted (``ended``)."""

    @property
    def position(self) -> int:
        """The seq of the last event handed out."""
        ...

    @property
    def known_last(self) -> int:
        """The newest seq it knows the store holds (from what was published, or
        :meth:`stored_up_to`): it hands out every event up to it before it waits."""
        ...

    @property
    def ended(self) -> str | None:
        """Why the subscription ended: ``"closed"``, ``"deleted"``, ``"unsubscribed"``,
        ``"history lost"`` (the store changed the log's epoch), ``"events lost"`` (it
        no longer holds events it said it had), or None while it runs."""
        ...

    def ready(self) -> bool:
        """Whether :meth:`next_batch` would return without waiting."""
        ...

    def on_ready(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` (from the event loop, without arguments) whenever the
        subscription becomes ready; None stops it. For consumers that wait on several
        sources at once."""
        ...

    async def next_batch(self, limit: int = 512) -> list[StoredEvent]:
        """The next events, at most ``limit``; waits for one; empty once ended (and,
        taking nothing, for a ``limit`` below 1). Raises StorageError when what it must
        read from the store cannot be read (the subscription stays usable: a later
        call tries again)."""
        ...

    def take_buffered(self, limit: int = 512) -> list[StoredEvent]:
        """The next events, at most ``limit``, if they are at hand: what
        :meth:`next_batch` would return without awaiting anything; else none (it must
        wait, read the store, or end), and :meth:`next_batch` is the way on."""
        ...

    def __aiter__(self) -> AsyncIterator[StoredEvent]: ...

    async def __anext__(self) -> StoredEvent: ...

    def stored_up_to(self, seq: int) -> None:
        """The store holds events up to ``seq``, learnt other than from the
        subscription (a read of the session's metadata): the subscription becomes ready
        for whatever of them it has not handed out, and reads them from the store if
        it must. On a shared store a process learns of another's appends a moment
        later than the store has them; this lets a caller wait for no notification."""
        ...

    def close(self) -> None:
        """Stop following the session; ends the iteration."""
        ...
