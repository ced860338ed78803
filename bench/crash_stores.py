"""The stores the crash soak (bench/crash_soak.py) runs its server on, and how it reads
back what each one stored once the server has stopped.

- ``jsonl``: the embedded store in a data directory (with a commit window:
  ``--store jsonl://<dir>?durability=fsync&commit_window=S``); read back from the files
  themselves: every checkpoint parses, no log ends in a torn line.
- ``sqlite``: ``--store sqlite:///<dir>/sessions.db`` (durability ``fsync``); read back
  through the store's own API (``open_storage``, read-only).
- ``redis``: ``--store redis://...`` on a redis-server of the soak's own, started on a
  free loopback port with ``appendonly yes`` and ``appendfsync always`` (what
  docs/storage-redis.md asks for acknowledged-means-on-disk); only the Bamboo server is
  killed, redis-server stays up and is stopped by its pid at the end. Read back through
  the store's API.

JSONL and SQLite run at durability ``fsync`` unless the soak asks for ``os``
(acknowledged once written to the page cache, not synced): a SIGKILL ends the process,
not the kernel, so ``os`` must lose nothing acknowledged either.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import Storage, StorageError
from bamboo_session.persistence.jsonl import checkpoint
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.protocol.models import StoredEvent

from .redis_scaling import Redis
from .soak_server import Server

KINDS = ("jsonl", "sqlite", "redis")
# The server's flags on every store: no rate limit, so publishers go as fast as they can.
SERVER_FLAGS = ("--rate-limit", "0")


@dataclasses.dataclass(frozen=True)
class Record:
    """One stored event, as the checks need it."""

    seq: int
    key: str | None
    content: str


class SoakStore(abc.ABC):
    """One store under test: the server that runs on it, and what it holds."""

    kind = ""

    def __init__(self, work: Path) -> None:
        self.work = work

    @abc.abstractmethod
    def server(self, log_path: Path) -> Server: ...

    @abc.abstractmethod
    async def records(self, session_id: str) -> tuple[list[Record], list[str]]:
        """The session's stored events, oldest first, and any problem seen reading them."""

    def close(self) -> None:  # noqa: B027 - most stores need nothing stopped
        """Stops whatever the store needed besides the server."""


class JsonlStore(SoakStore):
    kind = "jsonl"

    def __init__(self, work: Path, commit_window: float = 0.0, durability: str = "fsync") -> None:
        super().__init__(work)
        self.commit_window = commit_window  # seconds; 0: the store's default (none)
        self.durability = durability

    @property
    def data_dir(self) -> Path:
        return self.work / "data"

    def server(self, log_path: Path) -> Server:
        if not self.commit_window:
            flags = ("--durability", self.durability, *SERVER_FLAGS)
            server = Server(self.data_dir, log_path, flags)
        else:
            url = f"jsonl://{self.data_dir}?durability={self.durability}"
            url += f"&commit_window={self.commit_window:g}"
            server = Server(self.data_dir, log_path, SERVER_FLAGS, store=url)
        server.commit_window = self.commit_window  # (the WAL cycles' child too)
        return server

    async def records(self, session_id: str) -> tuple[list[Record], list[str]]:
        problems: list[str] = []
        layout = Layout(self.data_dir)  # (format 2's names: the server wrote the store)
        path = layout.checkpoint(session_id)
        try:
            checkpoint.read(path)  # a valid slot, whatever the crash cut short
        except StorageError as exc:
            problems.append(f"{path.name} does not parse: {exc}")
        raw = layout.log(session_id).read_bytes()
        if raw and not raw.endswith(b"\n"):
            problems.append(f"{session_id}: torn last line")
        lines = [json.loads(line) for line in raw.splitlines()]
        records = [Record(li["seq"], li.get("key"), li["event"]["content"]) for li in lines]
        return records, problems


class ApiStore(SoakStore):
    """A store read back through ``open_storage`` and ``read_events``."""

    @abc.abstractmethod
    def url(self) -> str: ...

    def server(self, log_path: Path) -> Server:
        return Server(self.work / "data", log_path, SERVER_FLAGS, store=self.url())

    async def records(self, session_id: str) -> tuple[list[Record], list[str]]:
        storage = await open_storage(self.url(), read_only=True, cleanup_interval=None)
        try:
            events = await read_all(storage, session_id)
            last_seq = await storage.last_seq(session_id)
        finally:
            await storage.close()
        problems = []
        if events and events[-1].seq != last_seq:
            problems.append(f"{session_id}: last_seq {last_seq}, last event {events[-1].seq}")
        records = [Record(e.seq, e.key, json.loads(bytes(e.event_json))["content"]) for e in events]
        return records, problems


async def read_all(storage: Storage, session_id: str, page: int = 10_000) -> list[StoredEvent]:
    """The session's whole log, a page at a time: read at once, a log of a few hundred
    thousand events took Redis longer than the client's socket timeout (10 s)."""
    events: list[StoredEvent] = []
    while True:
        after = events[-1].seq if events else 0
        found = await storage.read_events(session_id, after, limit=page)
        events += found
        if len(found) < page:
            return events


class SqliteStore(ApiStore):
    kind = "sqlite"

    def __init__(self, work: Path, durability: str = "fsync") -> None:
        super().__init__(work)
        self.durability = durability

    def url(self) -> str:
        return f"sqlite://{self.work / 'sessions.db'}?durability={self.durability}"


class RedisStore(ApiStore):
    kind = "redis"

    def __init__(self, work: Path, heartbeat: float | None = None) -> None:
        super().__init__(work)
        (work / "redis").mkdir(parents=True, exist_ok=True)
        self.redis = Redis(work / "redis")
        # Seconds a connection counts in presence after its instance last refreshed
        # it (None: the store's default, 30 s); the instances' soak shortens it so
        # that a killed instance's connections expire within the run.
        self.heartbeat = heartbeat

    def url(self) -> str:
        url = self.redis.url("soak")
        return url if self.heartbeat is None else f"{url}&heartbeat={self.heartbeat:g}"

    def close(self) -> None:
        self.redis.stop()


def open_soak_store(
    kind: str, work: Path, commit_window: float = 0.0, durability: str = "fsync"
) -> SoakStore:
    """The store of ``kind`` in ``work``; ``commit_window``: JSONL's, in seconds;
    ``durability``: JSONL's or SQLite's (Redis's is redis-server's own)."""
    if kind == "jsonl":
        return JsonlStore(work, commit_window, durability)
    if kind == "sqlite":
        return SqliteStore(work, durability)
    if durability != "fsync":
        raise ValueError("durability is for the JSONL and SQLite stores")
    return RedisStore(work)
