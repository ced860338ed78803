"""An in-memory store whose appends can be held in the store at a chosen moment, as a
slow or stalled disk would hold them: for the tests of what the server does meanwhile
(an inline append's reader, an actor retiring mid-batch, a publisher's frame rate)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bamboo_session.persistence.base import Appended
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol import AgentEvent


class GatedAppends(MemoryStorage):
    """Appends wait for a permit of ``gate`` while it is set (``asyncio.Semaphore(0)``:
    each ``release`` lets one through; :meth:`open_gate` lets all through). Records how
    many wait (``in_store``), the most at once, and the size of each append asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Semaphore | None = None
        self.in_store = 0
        self.most_in_store = 0
        self.sizes: list[int] = []

    def open_gate(self) -> None:
        """Lets every append held at the gate through, and the next ones straight on."""
        gate, self.gate = self.gate, None
        if gate is not None:
            for _ in range(self.in_store):
                gate.release()

    async def append_events(
        self,
        session_id: str,
        items: Sequence[tuple[AgentEvent, str | None]],
        *,
        epoch: str | None = None,
    ) -> list[Appended]:
        self.sizes.append(len(items))
        if self.gate is not None:
            self.in_store += 1
            self.most_in_store = max(self.most_in_store, self.in_store)
            try:
                await self.gate.acquire()
            finally:
                self.in_store -= 1
        return await super().append_events(session_id, items, epoch=epoch)
