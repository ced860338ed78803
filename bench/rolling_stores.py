"""Scenario 1 of the rolling-upgrade bench (bench/rolling_upgrade.py): a store one
process holds (JSONL, SQLite) handed from a server of one version to one of another.

On one store, in four steps, each server stopped while a publisher streams (SIGTERM,
or SIGKILL: ``stop``):

1. the old version writes: a session left quiet, one closed, and a live session a
   publisher streams to while a viewer follows it;
2. upgrade: the new version starts on the old one's data; the publisher resends what
   was not acked, the viewer resumes; the new version writes a session of its own;
3. downgrade: the old version starts on what the new one wrote (as a rollback after
   a bad deploy does); it refuses, or the same checks run;
4. the new version again, on what the old one wrote last;
5. the store marked as of a format later than either reads (JSONL's ``FORMAT``,
   SQLite's schema version): does each version refuse it, or start on it?

After each start: every acked event at its seq once, the history, the metadata and the
listing as they were (bench/rolling_checks.py), the viewer's resume exact, and the
server's log free of errors.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from .rolling_checks import check_history, check_listing, check_log, check_metadata, metadata
from .rolling_peers import LOST, Publisher, Viewer, attach
from .rolling_trees import StartRefused, Tree, TreeServer

FLAGS = ("--default-ttl", "86400", "--shutdown-grace", "2")


def _set_user_version(path: str, version: int) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(f"PRAGMA user_version = {version}")
        connection.commit()
    finally:
        connection.close()


def store_url(kind: str, work: Path) -> str:
    if kind == "jsonl":
        return f"jsonl://{work / 'data'}"
    return f"sqlite://{work / 'sessions.db'}"


async def close_session(url: str) -> None:
    ws, _ = await attach(url)
    try:
        await ws.send(json.dumps({"type": "state", "id": 1, "state": "closed"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10)).get("type") != "closed":
            pass
    except LOST:
        pass  # the server closes the connection once the session is closed
    finally:
        await ws.close()


class StoreRun:
    """One store handed between versions; ``report`` says what each step found."""

    def __init__(self, kind: str, stop: str, old: Tree, new: Tree, work: Path, events: int):
        self.kind, self.stop_mode, self.old, self.new = kind, stop, old, new
        self.store = store_url(kind, work)
        self.log = work / f"{kind}-{stop}.log"
        self.events = events
        self.server: TreeServer | None = None
        self.deadline = time.monotonic() + 300
        self.live = Publisher("p", "live", title="live")
        self.viewer = Viewer("v", "live")
        self.known: dict[str, dict[str, Any]] = {}  # id -> metadata as last read
        self.pubs: dict[str, Publisher] = {}  # session id -> its one-off publisher
        self.report: dict[str, Any] = {"store": kind, "stop": stop, "steps": []}

    def endpoint(self, session_id: str) -> str:
        assert self.server is not None
        return self.server.ws(session_id)

    @property
    def base(self) -> str:
        assert self.server is not None
        return self.server.http("")

    async def run(self) -> dict[str, Any]:
        try:
            await self._start(self.old, "old writes")
            await self._one_off("quiet-old", close=False)
            await self._one_off("closed-old", close=True)
            await self.live.publish(self.endpoint, self.events // 2, self.deadline)
            for tree, step in (
                (self.new, "upgrade: new on old's data"),
                (self.old, "downgrade: old on new's data"),
                (self.new, "new again on old's data"),
            ):
                await self._hand_over(tree, step)
            if self.server is not None:
                self.report["final_stop_status"] = await asyncio.to_thread(self.server.stop)
                self.steps[-1]["log_problems"] = self.server.problems()
                self.server = None
            self.report["future_format"] = await self._future_format()
        finally:
            if self.server is not None:
                self.server.kill()
        # A start refused in one line with status 2 (a newer format) is a clear refusal.
        self.report["ok"] = (
            all(
                (s["started"] and not s.get("problems")) or s.get("status") == 2 for s in self.steps
            )
            and self.report.get("future_format", {}).get("new", {}).get("status") == 2
        )
        return self.report

    async def _future_format(self) -> dict[str, Any]:
        """The store marked as written by a format after the new tree's (JSONL: its
        ``FORMAT`` record; SQLite: its schema version), and each tree started on it: a
        refusal (status, line) or a start. The new tree goes first, as it must change
        nothing; the old one, if it starts, may."""
        if self.kind == "jsonl":
            path = Path(self.store.removeprefix("jsonl://")) / "FORMAT"
            await asyncio.to_thread(path.write_text, '{"format": 99}\n')
        else:
            await asyncio.to_thread(_set_user_version, self.store.removeprefix("sqlite://"), 99)
        found: dict[str, Any] = {}
        for tree in (self.new, self.old):
            server = TreeServer(tree, self.store, self.log, FLAGS)
            try:
                await asyncio.to_thread(server.start)
            except StartRefused as exc:
                found[tree.name] = {"refused": True, "status": exc.status, "says": exc.tail}
                continue
            found[tree.name] = {
                "refused": False,
                "stop_status": await asyncio.to_thread(server.stop),
            }
        return found

    @property
    def steps(self) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = self.report["steps"]
        return steps

    async def _start(self, tree: Tree, step: str) -> bool:
        server = TreeServer(tree, self.store, self.log, FLAGS)
        try:
            self.server = await asyncio.to_thread(server.start)
        except StartRefused as exc:
            self.server = None
            self.steps.append(
                {"step": step, "started": False, "status": exc.status, "says": exc.tail}
            )
            return False
        self.steps.append({"step": step, "started": True, "problems": []})
        return True

    async def _one_off(self, session_id: str, close: bool) -> None:
        pub = Publisher(session_id[0], session_id, title=session_id)
        await pub.publish(self.endpoint, 20, self.deadline)
        if close:
            await close_session(self.endpoint(session_id))
        self.pubs[session_id] = pub
        self.known[session_id] = await metadata(self.base, session_id)

    async def _hand_over(self, tree: Tree, step: str) -> bool:
        """Stops the server while the live publisher streams, starts ``tree``'s on the
        store, lets the publisher finish and the viewer catch up, and checks. After a
        refused start (no server up) ``tree``'s starts and is checked alone."""
        if self.server is None:
            if await self._start(tree, step):
                await self._check(self.steps[-1]["problems"])
            return self.server is not None
        self.known["live"] = await metadata(self.base, "live")
        stream = asyncio.create_task(
            self.live.publish(self.endpoint, self.events, self.deadline, pace=0.001)
        )
        # The viewer follows through the stop and the start: it resumes on the next
        # server from the last event it saw.
        follow = asyncio.create_task(
            self.viewer.follow(self.endpoint, lambda: self._caught_up(stream), self.deadline)
        )
        target = len(self.live.acked) + self.events // 3
        while len(self.live.acked) < target and not stream.done():  # noqa: ASYNC110 - a record
            await asyncio.sleep(0.01)
        stopping = self.server
        self.steps[-1]["stopped_at_acked"] = len(self.live.acked)
        if self.stop_mode == "kill":
            await asyncio.to_thread(stopping.kill)
        else:
            self.steps[-1]["stop_status"] = await asyncio.to_thread(stopping.stop)
        self.steps[-1]["log_problems"] = stopping.problems()
        if not await self._start(tree, step):
            for task in (stream, follow):
                task.cancel()
            await asyncio.gather(stream, follow, return_exceptions=True)
            return False
        problems: list[str] = self.steps[-1]["problems"]
        try:
            await stream
        except (TimeoutError, *LOST) as exc:
            problems.append(f"the publisher did not finish: {exc!r}")
        await follow
        await self._check(problems)
        mine = f"made-by-{tree.name}-{len(self.steps)}"
        await self._one_off(mine, close=False)
        return True

    def _caught_up(self, stream: asyncio.Task[None]) -> bool:
        acked = self.live.acked.values()
        return stream.done() and self.viewer.last_seq >= max(acked, default=0)

    async def _check(self, problems: list[str]) -> None:
        step = self.steps[-1]
        step["viewer_resumes"] = self.viewer.resumes
        step["duplicates_answered"] = self.live.duplicates
        problems += self.viewer.problems
        self.viewer.problems = []
        wrong = [k for k, s in self.live.acked.items() if self.viewer.contents.get(s) != k]
        if wrong:
            problems.append(f"the viewer saw {len(wrong)} acked events not at their seq")
        problems += await check_log(self.base, [self.live])
        problems += await check_history(self.base, self.live)
        for pub in self.pubs.values():
            problems += await check_log(self.base, [pub])
            problems += await check_history(self.base, pub)
        now = {sid: await metadata(self.base, sid) for sid in self.known}
        for sid, before in self.known.items():
            problems += check_metadata(before, now[sid])
        problems += await check_listing(self.base, self.known)
        self.known.update(now)
        if self.live.errors:
            problems.append(f"the publisher got errors: {self.live.errors[:3]}")
            self.live.errors = []
