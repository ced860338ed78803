"""What ``bench.redis_disk_full`` watches, reads back and sums up: both instances'
``/readyz`` sampled, their CPU, RSS and log lines (by level and event, tracebacks) over
a window of the run, what the peers were told, and a fresh resume from seq 0 of each
session compared with what its publisher had acknowledged."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .common import cpu_seconds, rss_kib
from .redis_bad_day import Cluster, http
from .redis_bad_day_clients import PATIENCE, Publisher, Tally, Viewer, hello


def key_of(event: dict[str, Any]) -> str:
    """The publisher's key a stored event carries (its content: redis_bad_day_clients)."""
    if event["type"] == "message":
        return str(event["message"]["content"])
    return str(event.get("content", ""))


async def resume_from_zero(port: int, session_id: str, epoch: str) -> dict[str, Any]:
    """A fresh viewer's ``hello`` with ``last_seq: 0`` and ``epoch``: whether it
    resumed, the epoch now, and every event replayed as ``{key: [seq, ...]}``."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2, max_size=None) as ws:
        welcome = await hello(ws, last_seq=0, epoch=epoch)
        stored: dict[str, list[int]] = {}
        seqs: list[int] = []
        for _ in range(welcome.get("replay", 0)):
            frame = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
            if frame["type"] != "event":
                continue
            seqs.append(frame["seq"])
            stored.setdefault(key_of(frame["event"]), []).append(frame["seq"])
        return {
            "resumed": welcome["resumed"],
            "epoch": welcome["epoch"],
            "last_seq": welcome["last_seq"],
            "stored": stored,
            "gap_free": seqs == list(range(1, len(seqs) + 1)),
        }


async def compare(port: int, pubs: list[Publisher]) -> dict[str, Any]:
    """Every key a publisher had acknowledged, looked for in a resume from seq 0 under
    the epoch it was acked in. A key missing (or at another seq) while the epoch did
    not change is an acknowledged event lost without notice: a problem. One missing
    under a changed epoch is what a Redis that may lose writes is allowed to lose (the
    clients reload: resumed false): counted (read from 0 under the new epoch), not a
    problem."""
    out: dict[str, Any] = {
        "acked": 0,
        "lost_same_epoch": 0,
        "acked_under_changed_epoch": 0,
        "missing_under_changed_epoch": 0,
        "epochs": {},  # by session: acked under each epoch, and the epoch served now
    }
    problems: list[str] = []
    for pub in pubs:
        by_epoch: dict[str, dict[str, int]] = {}
        for key, (seq, epoch) in pub.acked.items():
            by_epoch.setdefault(epoch, {})[key] = seq
        told: dict[str, Any] = {"acked": {}, "now": None}
        out["epochs"][pub.session_id] = told
        for epoch, acked in by_epoch.items():
            read = await resume_from_zero(port, pub.session_id, epoch)
            told["acked"][epoch] = len(acked)
            told["now"] = read["epoch"]
            out["acked"] += len(acked)
            if not read["gap_free"]:
                problems.append(f"{pub.session_id}: the replay from 0 has a gap")
            if not read["resumed"]:  # the epoch changed: what the new one holds of them
                out["acked_under_changed_epoch"] += len(acked)
                now = await resume_from_zero(port, pub.session_id, read["epoch"])
                out["missing_under_changed_epoch"] += sum(k not in now["stored"] for k in acked)
                continue
            for key, seq in acked.items():
                if read["stored"].get(key) != [seq]:
                    out["lost_same_epoch"] += 1
                    if len(problems) < 10:
                        problems.append(
                            f"{pub.session_id} {key}: acked at {seq} in epoch {epoch}, "
                            f"resume from 0 reads {read['stored'].get(key)}"
                        )
            twice = [k for k, at in read["stored"].items() if len(at) > 1]
            problems += [f"{pub.session_id} {k}: stored twice" for k in twice[:5]]
    out["problems"] = problems
    return out


def log_window(path: Path, start: int, end: int | None = None) -> dict[str, Any]:
    """The log lines of ``path`` between byte offsets ``start`` and ``end``: how many,
    warnings and errors by event (the first line of each kept whole), tracebacks."""
    with path.open("rb") as log:
        log.seek(start)
        text = log.read(None if end is None else end - start).decode(errors="replace")
    lines = text.splitlines()
    events: dict[str, int] = {}
    first: dict[str, dict[str, Any]] = {}
    tracebacks = 0
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            tracebacks += line.startswith("Traceback")
            continue
        tracebacks += "exception" in entry
        if entry.get("level") not in ("warning", "error", "critical"):
            continue
        name = f"{entry['level']}: {str(entry.get('event'))[:100]}"
        events[name] = events.get(name, 0) + 1
        if name not in first:
            first[name] = {k: v for k, v in entry.items() if k not in ("timestamp", "level")}
    return {"lines": len(lines), "by_event": events, "first": first, "tracebacks": tracebacks}


class Sampler:
    """Samples both instances' ``/readyz`` every half second into ``codes`` and
    ``reasons``, from ``start`` until ``stop``."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.codes: set[tuple[int, ...]] = set()
        self.reasons: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        return {"codes": sorted(self.codes), "reasons": self.reasons}

    async def _run(self) -> None:
        while True:
            answers = [await asyncio.to_thread(http, p, "/readyz") for p in self.cluster.ports]
            self.codes.add(tuple(code for code, _ in answers))
            for code, body in answers:
                if code != 200:
                    reason = body[:220]
                    self.reasons[reason] = self.reasons.get(reason, 0) + 1
            await asyncio.sleep(0.5)


def snapshot(cluster: Cluster) -> dict[str, Any]:
    """Log offsets, CPU seconds and RSS of both instances, now."""
    procs = [p for p in cluster.instances if p is not None]
    return {
        "offsets": [(cluster.work / f"i{i}.log").stat().st_size for i in (0, 1)],
        "cpu": [cpu_seconds(p.pid) for p in procs],
        "rss": [rss_kib(p.pid) for p in procs],
        "at": time.monotonic(),
    }


def since(cluster: Cluster, before: dict[str, Any]) -> dict[str, Any]:
    after = snapshot(cluster)
    seconds = after["at"] - before["at"]
    return {
        "seconds": round(seconds, 1),
        "cpu_share": [
            round((b - a) / seconds, 3) for a, b in zip(before["cpu"], after["cpu"], strict=True)
        ],
        "rss_kib": [before["rss"], after["rss"]],
        "log": [
            log_window(cluster.work / f"i{i}.log", before["offsets"][i], after["offsets"][i])
            for i in (0, 1)
        ],
    }


def tallies(pubs: list[Publisher], viewers: list[Viewer], creator: Tally) -> dict[str, Any]:
    def merged(group: list[Tally]) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": {}, "closes": {}, "hangs": 0}
        for tally in group:
            for kind in ("errors", "closes"):
                for name, count in getattr(tally, kind).items():
                    out[kind][name] = out[kind].get(name, 0) + count
            out["hangs"] += tally.hangs
        return out

    return {
        "publishers": merged([p.tally for p in pubs]),
        "viewers": merged([v.tally for v in viewers]),
        "creator": merged([creator]),
        "viewer_problems": [q for v in viewers for q in v.problems][:10],
        "error_messages": {m: c for p in pubs for m, c in p.tally.messages.items()},
    }
