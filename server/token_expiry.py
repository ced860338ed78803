"""TokenExpiry: an open connection closed when its token expires, by the wall clock.

A token's ``exp`` is a time of the wall clock (RFC 7519), and a connection does not
outlive it (docs/protocol.md, Auth): at expiry it is closed with 4401, ``token
expired``, after what is queued, and the client resumes with a fresh token. Timers run
on the monotonic clock, which a step of the wall clock does not move: a timer set once
at the ``hello`` for the seconds left then kept a connection open for up to that long
past its ``exp`` once the clock stepped forward (bench/clock_jump.py: a token with 30
minutes left, the clock stepped an hour on, the connection stayed open), and closed one
early if it stepped back. So the wall clock is read again at most every ``LOOK``
seconds, and at the expiry the timer aimed at: a step forward closes the connection
within ``LOOK``, a step back keeps it open until the expiry by the new clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from bamboo_session.protocol.errors import CloseCode

from .outbox import Outbox

LOOK: Final = 10.0  # seconds at most between two reads of the wall clock per connection


class TokenExpiry:
    """The close of ``outbox`` once the wall clock passes ``valid_until``."""

    __slots__ = ("_handle", "_loop", "_outbox", "_valid_until")

    def __init__(self, valid_until: float, outbox: Outbox) -> None:
        self._valid_until = valid_until  # the token's exp plus the leeway (Unix seconds)
        self._outbox = outbox
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._look()

    def _look(self) -> None:
        left = self._valid_until - time.time()
        if left <= 0:
            self._handle = None
            self._outbox.close(CloseCode.UNAUTHORIZED, "token expired")
            return
        self._handle = self._loop.call_later(min(left, LOOK), self._look)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
