"""An in-memory store whose chosen reads wait, as on a stalled disk, until its gate is
set: for the tests of what the server gives up when the peer it reads for is gone
(tests/test_http_reset_storm.py, tests/test_http_stream_reset.py)."""

from __future__ import annotations

import asyncio

from bamboo_session.persistence.memory import MemoryStorage


class GatedReads(MemoryStorage):
    """A subclass's reads that call :meth:`wait_for_gate` wait until ``gate`` is set,
    ``held`` of them meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0
        self.gate = asyncio.Event()

    async def wait_for_gate(self) -> None:
        self.held += 1
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
