"""Driver processes: load generators run as subprocesses of a bench script, so the load
can be split over several processes (one Python process cannot offer 10,000 events/s
and read as many back) and so a driver written for another runtime (the Socket.IO
driver, on Node) plugs in the same way.

Every driver speaks the same JSON lines on its stdin and stdout:

    stdin   line 1  the config (what to connect to, its share of the sessions, the load)
    stdout          {"ready": true}                 every connection is up
    stdin   line 2  {"start": T}                    go; T in time.perf_counter() seconds
                                                    (CLOCK_MONOTONIC: one clock for every
                                                    process on the machine)
    stdout          {"result": {...}}               then the driver closes and exits, or,
                                                    if it takes jobs one after another (the
                                                    Node driver), reads the next config

Anything else a driver has to say goes to stderr, which is the bench script's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common

READY_TIMEOUT = 120.0  # connecting 2,000 clients on a busy 2-core machine
EXIT_GRACE = 30.0  # closing 2,000 connections after the result
STREAM_LIMIT = 1 << 20


class DriverProcess:
    """One driver subprocess and its half of the JSON-lines conversation."""

    def __init__(self, name: str, argv: Sequence[str], config: dict[str, Any]) -> None:
        self.name = name
        self.argv = list(argv)
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=common.ROOT,
            limit=STREAM_LIMIT,
            preexec_fn=raise_open_file_limit,
        )
        self._write(self.config)

    def submit(self, config: dict[str, Any]) -> None:
        """The next job, for a driver that runs one after another."""
        self.config = config
        self._write(config)

    async def ready(self) -> None:
        async with asyncio.timeout(READY_TIMEOUT):
            message = await self._read()
        if message.get("ready") is not True:
            raise RuntimeError(f"{self.name} driver: expected ready, got {message}")

    def go(self, start: float) -> None:
        self._write({"start": start})

    async def result(self) -> dict[str, Any]:
        message = await self._read()
        if "result" not in message:
            raise RuntimeError(f"{self.name} driver: expected a result, got {message}")
        result: dict[str, Any] = message["result"]
        return result

    async def stop(self, grace: float = 0.0) -> None:
        """Wait up to ``grace`` seconds for the driver to exit (it closes its connections
        after its result), then kill it if it is still running."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def _write(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"{self.name} driver exited with {code} (its stderr is above)")
        message: dict[str, Any] = json.loads(line)
        return message


class DriverGroup:
    """Drivers run together: ``async with`` starts them (and kills any left at the end),
    ``ready`` waits until all are connected, ``go`` gives them one common start,
    ``results`` collects what each reports."""

    def __init__(self, drivers: Sequence[DriverProcess]) -> None:
        self.drivers = list(drivers)

    async def __aenter__(self) -> DriverGroup:
        try:
            await asyncio.gather(*(d.start() for d in self.drivers))
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop(EXIT_GRACE if exc_info[0] is None else 0.0)

    async def ready(self) -> None:
        await asyncio.gather(*(d.ready() for d in self.drivers))

    def go(self, lead: float = 0.2) -> float:
        """Start every driver ``lead`` seconds from now (time to read the line)."""
        start = time.perf_counter() + lead
        for driver in self.drivers:
            driver.go(start)
        return start

    async def results(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(d.result() for d in self.drivers)))

    async def _stop(self, grace: float = 0.0) -> None:
        await asyncio.gather(*(d.stop(grace) for d in self.drivers), return_exceptions=True)
