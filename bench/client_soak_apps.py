"""The applications of the client soak (bench/client_soak.py): publishers and followers
built on the project's own clients, used through their public API only, recording what
each call returned and what each callback saw, for the checks at the end.

- :class:`Publisher`: a Python ``BambooClient`` publishing keyed tokens (the content is
  the key). A publish that raises is retried with the same key half of the time, as an
  application told "retries are safe with keys" would. Every so often the application
  closes its client (timed: a close must return within ``CLOSE_BOUND``) and opens
  another.
- :class:`Follower`: a Python ``BambooClient`` from seq 0, handing every event to a
  callback that records it; when ``events()`` ends it opens a new client from the
  ended one's ``last_seq`` and ``epoch`` (the README's way to resume later). Every so
  often it closes its client on purpose and resumes likewise.
- :class:`JsFollower`: the JavaScript client under Node (bench/client_soak_follower.mjs),
  the same follower, reporting on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient, Reset

ROOT = Path(__file__).resolve().parent.parent
# Seconds a client's close() may take; past it the client counts as hung.
CLOSE_BOUND = 5.0
# The clients' keepalive (both clients): a frozen link is found within about 2 s.
PING = 1.0
# Seconds between an application's own close-and-reopen of its client, drawn uniformly.
RECYCLE_AFTER = (20.0, 60.0)
# A first connect that fails (the server down) is tried again after this long.
CONNECT_RETRY = 0.2


@dataclasses.dataclass
class ClientFigures:
    """What one application's clients told it, summed over the clients it opened."""

    clients: int = 0
    reconnects: int = 0
    resent: int = 0
    connect_failures: int = 0
    ended_with: dict[str, int] = dataclasses.field(default_factory=dict)
    close_seconds: list[float] = dataclasses.field(default_factory=list)
    hung_closes: int = 0

    def ended(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.ended_with[name] = self.ended_with.get(name, 0) + 1


async def timed_close(client: BambooClient, figures: ClientFigures) -> None:
    """Closes ``client``, counting it hung when it takes more than ``CLOSE_BOUND``."""
    figures.reconnects += client.reconnects
    figures.resent += client.resent
    started = time.monotonic()
    task = asyncio.ensure_future(client.close())
    done, _ = await asyncio.wait({task}, timeout=CLOSE_BOUND)
    figures.close_seconds.append(time.monotonic() - started)
    if not done:
        figures.hung_closes += 1
        task.cancel()


async def open_client(
    url: str, session_id: str, figures: ClientFigures, **options: Any
) -> BambooClient:
    """``BambooClient.connect`` as an application does it: tried again until it works
    (the first connection is not retried by the client itself)."""
    while True:
        try:
            client = await BambooClient.connect(
                url, session_id, ping_interval=PING, ping_timeout=PING, open_timeout=5, **options
            )
        except Exception as exc:  # every failure is counted and tried again
            figures.connect_failures += 1
            figures.ended(exc)
            await asyncio.sleep(CONNECT_RETRY)
            continue
        figures.clients += 1
        return client


@dataclasses.dataclass
class Publisher:
    name: str
    url: str
    session_id: str
    rng: random.Random
    request_timeout: float | None
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # key: seq returned
    raised: dict[str, str] = dataclasses.field(default_factory=dict)  # key: last error
    calls: int = 0
    figures: ClientFigures = dataclasses.field(default_factory=ClientFigures)
    client: BambooClient | None = None

    async def run(self, stop: asyncio.Event) -> None:
        count = 0
        while not stop.is_set():
            client = self.client = await open_client(
                self.url, self.session_id, self.figures,
                receive_events=False, request_timeout=self.request_timeout,
            )  # fmt: skip
            recycle_at = time.monotonic() + self.rng.uniform(*RECYCLE_AFTER)
            while not stop.is_set() and time.monotonic() < recycle_at and not client.finished:
                burst = 1 if self.rng.random() < 0.8 else self.rng.randint(2, 8)
                keys = [f"{self.name}-{count + i}" for i in range(burst)]
                count += burst
                await asyncio.gather(*(self._publish(client, key) for key in keys))
                await asyncio.sleep(self.rng.uniform(0.0, 0.05))
            await timed_close(client, self.figures)

    async def _publish(self, client: BambooClient, key: str) -> None:
        while True:
            self.calls += 1
            try:
                seq = await client.publish(AgentEvent.token(key), key=key)
            except Exception as exc:
                self.raised[key] = repr(exc)
                self.figures.ended(exc)
                if client.finished or self.rng.random() < 0.5:
                    return  # given up; stored at most once
                continue  # the same key again: stored once all the same
            self.acked[key] = seq
            return


@dataclasses.dataclass
class Follower:
    name: str
    url: str
    session_id: str
    rng: random.Random
    slow: bool = False  # a callback that dawdles, with a small queue
    seen: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (seq, key)
    resets: int = 0
    resume_mismatches: list[str] = dataclasses.field(default_factory=list)
    figures: ClientFigures = dataclasses.field(default_factory=ClientFigures)
    client: BambooClient | None = None
    closing: bool = False
    codec: str = "json"

    def closed(self) -> bool:
        """Whether :meth:`close` came (read afresh after an await)."""
        return self.closing

    def delivered(self) -> int:
        """The seq of the last event its callback was given (0: none)."""
        return self.seen[-1][0] if self.seen else 0

    def deliver(self, item: Any) -> None:
        """The application's callback."""
        if isinstance(item, Reset):
            self.resets += 1
            return
        self.seen.append((item.seq, item.event.content))

    async def run(self, stop: asyncio.Event) -> None:
        """Follows until :meth:`close` (``stop`` ends the publishers: the followers
        must catch up after it)."""
        last_seq, epoch = 0, None
        options: dict[str, Any] = {"codec": self.codec}
        if self.slow:
            options["max_queued_events"] = 64
        while not self.closing:
            client = self.client = await open_client(
                self.url, self.session_id, self.figures, last_seq=last_seq, epoch=epoch, **options
            )
            if self.closed():  # close() came while it connected
                await timed_close(client, self.figures)
                return
            recycle = asyncio.ensure_future(asyncio.sleep(self.rng.uniform(*RECYCLE_AFTER)))
            reading = asyncio.ensure_future(self._read(client))
            await asyncio.wait({recycle, reading}, return_when=asyncio.FIRST_COMPLETED)
            recycle.cancel()
            if not reading.done():
                await timed_close(client, self.figures)  # the app's own close and resume
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reading, CLOSE_BOUND)
            delivered = self.delivered()
            if client.last_seq != delivered:
                self.resume_mismatches.append(f"last_seq {client.last_seq}, delivered {delivered}")
            last_seq, epoch = client.last_seq, client.epoch

    async def _read(self, client: BambooClient) -> None:
        try:
            async for item in client.events():
                self.deliver(item)
                if self.slow and self.rng.random() < 0.01:
                    await asyncio.sleep(0.5)
        except Exception as exc:
            self.figures.ended(exc)

    async def close(self) -> None:
        self.closing = True
        if self.client is not None:
            await timed_close(self.client, self.figures)


class JsFollower:
    """A follower on the JavaScript client, in a Node process of its own."""

    def __init__(
        self, name: str, url: str, session_id: str, work: Path, slow: bool, websocket: str
    ) -> None:
        self.name = name
        # "builtin" (Node's, which holds a silent socket it gave up) or "ws".
        self.websocket = websocket
        self.argv = [
            "node", "--experimental-websocket", "--no-warnings",
            str(ROOT / "bench" / "client_soak_follower.mjs"), url, session_id,
            "slow" if slow else "", websocket,
        ]  # fmt: skip
        self.stderr = work / f"{name}.stderr"
        self.proc: asyncio.subprocess.Process | None = None
        self.report: dict[str, Any] = {}
        self.rss_kib: list[int] = []
        self.progress = 0  # the last seq its callback saw, as it last said
        self.connected = False  # whether its client said connected, as it last said
        self._lines: asyncio.Task[bytes] | None = None

    async def start(self) -> None:
        with self.stderr.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.PIPE,
                stderr=err,
                limit=2**26,  # its report is one line, a few MiB at most
            )
        self._lines = asyncio.ensure_future(self._read_lines())

    async def _read_lines(self) -> bytes:
        """Follows its progress lines (the last seq delivered, and whether its client says
        connected); the last line, its report."""
        assert self.proc is not None and self.proc.stdout is not None
        last = b""
        async for line in self.proc.stdout:
            last = line
            with contextlib.suppress(ValueError):
                said = json.loads(line)
                self.progress = said.get("progress", self.progress)
                self.connected = said.get("connected", self.connected)
        return last

    def sample_rss(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        self.rss_kib.append(int(line.split()[1]))

    async def stop(self, bound: float) -> str | None:
        """Asks it to close its client (SIGTERM) and report; a problem when it does not
        within ``bound`` seconds (then it is killed, by its pid)."""
        assert self.proc is not None and self._lines is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            out = await asyncio.wait_for(self._lines, bound)
            await asyncio.wait_for(self.proc.wait(), bound)
        except TimeoutError:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            return f"{self.name}: did not stop within {bound} s of SIGTERM"
        try:
            self.report = json.loads(out)
        except ValueError:
            return f"{self.name}: no report (exit {self.proc.returncode}); see {self.stderr}"
        return None
