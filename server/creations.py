"""Session creations under way, by id: concurrent get-or-creates of one session share
one creation, whose outcome is taken even when every caller gave up on it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from typing import Any

import structlog

from bamboo_session.protocol.models import Session

from .failures import is_expected

log = structlog.get_logger("bamboo_session.manager")


class Creations:
    """The creations under way (``SessionManager.ensure_session``), one per id."""

    def __init__(self) -> None:
        self._under_way: dict[str, asyncio.Future[Session]] = {}

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._under_way

    def get(self, session_id: str) -> asyncio.Future[Session] | None:
        """The creation of ``session_id`` under way, if any."""
        return self._under_way.get(session_id)

    def start(
        self, session_id: str, creation: Coroutine[Any, Any, Session]
    ) -> asyncio.Future[Session]:
        """Runs ``creation`` as the one under way for ``session_id`` until it ends."""
        task = asyncio.ensure_future(creation)
        self._under_way[session_id] = task
        task.add_done_callback(functools.partial(self._ended, session_id))
        return task

    def _ended(self, session_id: str, creation: asyncio.Future[Session]) -> None:
        """A creation's outcome, taken whether or not its caller still waits (a caller
        cancelled at a stop does not): its failure, nobody's, was logged by asyncio
        with a traceback as "Task exception was never retrieved"."""
        del self._under_way[session_id]
        if creation.cancelled():
            return
        failure = creation.exception()
        if failure is not None and not is_expected(failure):
            log.error("creating a session failed", session_id=session_id, exc_info=failure)
