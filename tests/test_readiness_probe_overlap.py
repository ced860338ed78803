"""A ``/readyz`` probe under way when an append fails does not clear that failure: only
a probe begun after it does. A real server on a JSONL store in a temp dir; each failure
is real, its logs' directory gone with a file in its place (ENOTDIR, as root too), and
back before the probe writes, so that the probe itself succeeds.

Only the order is arranged, as no load could make it certain: the probe writes in a
thread of the loop's default executor, which here has one thread, held by the test
from before the probe begins until the second failure has been reported. Nothing else
of the server or of these tests uses that executor meanwhile (the JSONL store writes on
threads of its own; the HTTP requests go over raw sockets to an IP address)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bamboo_session.server.readiness import write_probes
from tests.http_support import raw_http
from tests.support import attach, run_server
from tests.test_readiness import directory_gone, refused

READYZ = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class HeldExecutor(ThreadPoolExecutor):
    """One thread, which :meth:`hold` keeps busy until ``released`` is set; tells when
    a probe's job (``asyncio.to_thread(write_probes, …)``) is queued behind it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="held-default")
        self.released = threading.Event()
        self.probe_queued = threading.Event()

    def hold(self) -> None:
        super().submit(self.released.wait)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # asyncio.to_thread submits functools.partial(context.run, func, *args).
        if write_probes in getattr(fn, "args", ()):
            self.probe_queued.set()
        return super().submit(fn, *args, **kwargs)


async def test_an_append_failing_while_a_probe_runs_keeps_it_not_ready(tmp_path: Path) -> None:
    executor = HeldExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    data = tmp_path / "data"
    try:
        # A deadline the held probe cannot reach, however loaded the machine.
        async with (
            run_server(store=f"jsonl://{data}", store_read_timeout=120.0) as server,
            attach(server, "x", create=True) as (x, _),  # its log not open: never appended
        ):
            server.services.readiness.probe_every = 0.0  # a probe at each /readyz
            with directory_gone(data / "events"):
                await refused(x, "x1", "Not a directory")
            executor.hold()
            answer = asyncio.ensure_future(raw_http(server, READYZ))
            for _ in range(2000):  # begun at once, unless the machine stalls
                if executor.probe_queued.is_set():
                    break
                await asyncio.sleep(0.01)
            assert executor.probe_queued.is_set(), "the probe never began"
            with directory_gone(data / "events"):
                await refused(x, "x2", "Not a directory")  # reported while it runs
            executor.released.set()
            status, _, body = await answer
            assert status == 503 and body.startswith(b"not ready: appends are failing"), body
            # A probe begun after the failure, which it succeeds: ready.
            status, _, body = await raw_http(server, READYZ)
            assert (status, body) == (200, b"ready\n")
    finally:
        executor.released.set()
