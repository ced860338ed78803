"""Readiness: can an append succeed right now? What ``/readyz`` answers.

Not ready while the store is not open (``storage.ready``), and from the moment an append
fails for a reason of the store's (disk full, I/O error, store unreachable) until appends
work again: the next append that succeeds, or a probe. Without a probe, a server that a
load balancer takes out of rotation for its 503 would get no more appends to prove
itself well, so while appends fail, ``/readyz`` probes (at most once a second) what a
failed append needed: for a file store, writing and syncing as many bytes as the largest
frame beside its files. A store without files is trusted again ``RETRY_AFTER`` seconds
after its last failure, so that traffic tries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bamboo_session.persistence.base import Storage

from .store_stats import store_location

PROBE_EVERY: Final = 1.0  # seconds between probes while appends fail
RETRY_AFTER: Final = 10.0  # seconds a store that cannot be probed stays unready


class AppendHealth:
    """What the session actors report of their appends (owned by the manager)."""

    __slots__ = ("failed_at", "failure")

    def __init__(self) -> None:
        self.failure: str | None = None
        self.failed_at = 0.0

    def failed(self, reason: str) -> None:
        self.failure = reason
        self.failed_at = time.monotonic()

    def succeeded(self) -> None:
        self.failure = None


class Readiness:
    def __init__(
        self,
        storage: Storage,
        health: AppendHealth,
        store_url: str,
        probe_bytes: int,
        serving: Callable[[], bool] = lambda: True,
    ) -> None:
        self.storage = storage
        self.serving = serving
        self.health = health
        location = store_location(store_url)
        self._probe_dir: Path | None = None
        if location is not None:
            kind, path = location
            self._probe_dir = path if kind == "dir" else path.parent
        self._probe_bytes = probe_bytes
        self._probed_at = -PROBE_EVERY
        self._probing: asyncio.Lock = asyncio.Lock()

    async def reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if not self.serving():
            return "not serving (starting or stopping)"
        if not self.storage.ready:
            return "storage is not open"
        health = self.health
        if health.failure is None:
            return None
        if self._probe_dir is None:
            if time.monotonic() - health.failed_at >= RETRY_AFTER:
                health.succeeded()
                return None
        elif await self._probe():
            return None
        return f"appends are failing: {health.failure}"

    async def _probe(self) -> bool:
        """Whether appends should work again: a probe succeeded (now or lately)."""
        async with self._probing:
            if time.monotonic() - self._probed_at < PROBE_EVERY:
                return self.health.failure is None
            self._probed_at = time.monotonic()
            assert self._probe_dir is not None
            try:
                await asyncio.to_thread(write_probe, self._probe_dir, self._probe_bytes)
            except OSError:
                return False  # the reason stays that of the append that failed
            self.health.succeeded()
            return True


def write_probe(directory: Path, size: int) -> None:
    """Writes ``size`` bytes beside the store's files, syncs them, removes the file."""
    path = directory / f".bamboo-probe-{os.getpid()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(bytes(size))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
