"""Scenario 2 of the rolling-upgrade bench (bench/rolling_upgrade.py): the rolling
upgrade itself, on Redis. An instance of the old version and one of the new share one
redis-server of the bench's own (a free loopback port, stopped by its pid); clients
pick an instance in turn at every (re)connect, as behind a client-side rotation.

- presence across versions: a connection that joins on one instance is announced, with
  the session-wide count, to a watcher on the other, both ways;
- two publishers append to one session, each moving to the other instance every
  ``CHUNK`` items, while two viewers resume on the other instance every ``ROTATE``
  events: seqs allocated by both versions' scripts, fan-out from each to the other;
- the upgrade: the old instance leaves the rotation and is stopped (SIGTERM) while
  they stream; a new one takes its place; every acked item once at its seq, every
  viewer's resume exact;
- a dead instance (SIGKILL) beside a live one of the other version, each holding a
  connection of one session: the session stays active, with the live one's;
- a dead instance (SIGKILL) whose session had its only connection there: is the
  session parked by the survivor, for an old and for a new dead instance;
- cleanup across versions: a session left to expire (``--default-ttl``) is removed
  by whichever instance holds the cleanup lease;
- each instance's ``bamboo_redis_pubsub_unreadable_total`` and its log's errors;
- at the end, every instance stopped, the store's format record set past what either
  version reads: does each refuse to start on it?
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from .redis_scaling import Redis
from .rolling_checks import check_history, check_log, metadata
from .rolling_peers import Publisher, Viewer, attach, get_json
from .rolling_trees import StartRefused, Tree, TreeServer

TTL = 10  # seconds: --default-ttl, so that the expiring session goes within the run
HEARTBEAT = 1.0  # seconds: presence's, so that a dead instance's connections go soon
FLAGS = ("--default-ttl", str(TTL), "--cleanup-interval", "1", "--shutdown-grace", "2")
CHUNK = 50  # items a publisher sends on one instance before it moves
ROTATE = 40  # events a viewer reads on one instance before it moves


class Rotation:
    """The instances clients may connect to; each connect takes the next one."""

    def __init__(self) -> None:
        self.up: list[TreeServer] = []
        self.turn = 0

    def endpoint(self, session_id: str) -> str:
        self.turn += 1
        return self.up[self.turn % len(self.up)].ws(session_id)


async def presence_probe(watch_on: TreeServer, join_on: TreeServer, session_id: str) -> list[str]:
    """A watcher on one instance hears a joiner on the other join and leave."""
    watcher, _ = await attach(watch_on.ws(session_id), create=True)
    problems = []
    try:
        joiner, welcome = await attach(join_on.ws(session_id))
        if welcome["session"]["connections"] != 2:
            problems.append(
                f"{join_on.label} welcome counts {welcome['session']['connections']} "
                f"connections, {watch_on.label} holds one more"
            )
        joined = await _presence(watcher, "joined")
        await joiner.close()
        left = await _presence(watcher, "left")
        for kind, frame, count in (("joined", joined, 2), ("left", left, 1)):
            if frame is None:
                problems.append(f"{watch_on.label} never told {kind} from {join_on.label}")
            elif frame["connections"] != count:
                problems.append(f"{kind} from {join_on.label}: {frame['connections']} connections")
    finally:
        await watcher.close()
    return problems


async def _presence(ws: Any, kind: str, wait: float = 5.0) -> dict[str, Any] | None:
    import json

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        except TimeoutError:
            return None
        if frame.get("type") == "presence" and kind in frame:
            return dict(frame)
    return None


async def dead_instance(tree: Tree, store: str, log: Path, survivor: TreeServer) -> dict[str, Any]:
    """A session whose one connection is on an instance of ``tree`` that is killed:
    its state and count on the survivor, polled for 4 heartbeats and 2 s."""
    doomed = TreeServer(tree, store, log, FLAGS)
    await asyncio.to_thread(doomed.start)
    session_id = f"orphan-{tree.name}"
    ws, _ = await attach(doomed.ws(session_id), create=True)
    await asyncio.to_thread(doomed.kill)
    killed = time.monotonic()
    meta: dict[str, Any] = {}
    while time.monotonic() - killed < 4 * HEARTBEAT + 2:
        meta = await metadata(survivor.http(""), session_id)
        if meta.get("state") == "disconnected" and meta.get("connections") == 0:
            break
        await asyncio.sleep(0.1)
    await ws.close()
    parked = meta.get("state") == "disconnected"
    return {
        "dead": tree.name,
        "survivor": survivor.tree.name,
        "state": meta.get("state"),
        "connections": meta.get("connections"),
        "parked_after_s": round(time.monotonic() - killed, 2) if parked else None,
    }


async def dead_beside(tree: Tree, store: str, log: Path, holder: TreeServer) -> dict[str, Any]:
    """A session with a connection on ``holder`` (alive) and one on an instance of
    ``tree`` that is killed: once the dead one's heartbeat passed (4 heartbeats), the
    session must stay ``active`` with the one live connection, whichever version
    swept the dead one's."""
    doomed = TreeServer(tree, store, log, FLAGS)
    await asyncio.to_thread(doomed.start)
    session_id = f"shared-{tree.name}-{holder.tree.name}"
    kept, _ = await attach(holder.ws(session_id), create=True)
    lost, _ = await attach(doomed.ws(session_id))
    await asyncio.to_thread(doomed.kill)
    await asyncio.sleep(4 * HEARTBEAT)  # the dead one's deadline, and a sweep, passed
    meta = await metadata(holder.http(""), session_id)
    await kept.close()
    await lost.close()
    found = {"state": meta.get("state"), "connections": meta.get("connections")}
    return {"dead": tree.name, "alive": holder.tree.name, **found}


async def future_format(port: int, store: str, work: Path, trees: tuple[Tree, ...]) -> Any:
    """The store's format record set past what either tree reads, and each tree started
    on it (every instance stopped first): a refusal (status, line), or a start."""

    def mark() -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        try:
            client.set("rolling:{idx}:format", "99")
        finally:
            client.close()

    await asyncio.to_thread(mark)
    found: dict[str, Any] = {}
    for tree in trees:
        server = TreeServer(tree, store, work / f"future-{tree.name}.log", FLAGS)
        try:
            await asyncio.to_thread(server.start)
        except StartRefused as exc:
            found[tree.name] = {"refused": True, "status": exc.status, "says": exc.tail}
            continue
        found[tree.name] = {"refused": False, "stop_status": await asyncio.to_thread(server.stop)}
    return found


async def unreadable(server: TreeServer) -> float | None:
    def fetch() -> str:
        import urllib.request

        with urllib.request.urlopen(server.http("/metrics"), timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    found = re.findall(r"^bamboo_redis_pubsub_unreadable_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    return sum(float(v) for v in found) if found else None


async def cluster_scenario(old: Tree, new: Tree, work: Path, events: int) -> list[dict[str, Any]]:
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    redis = Redis(work)
    servers: list[TreeServer] = []
    try:
        store = f"{redis.url('rolling')}&heartbeat={HEARTBEAT:g}"
        report = await _cluster(old, new, work, store, events, servers)
        report["future_format"] = await future_format(redis.port, store, work, (new, old))
        refused = report["future_format"]["new"]
        report["ok"] = report["ok"] and refused.get("status") == 2
        return [report]
    finally:
        for server in servers:
            server.kill()
        redis.stop()


async def _cluster(
    old: Tree, new: Tree, work: Path, store: str, events: int, servers: list[TreeServer]
) -> dict[str, Any]:
    def started(tree: Tree, name: str) -> TreeServer:
        server = TreeServer(tree, store, work / f"{name}.log", FLAGS).start()
        servers.append(server)
        return server

    deadline = time.monotonic() + 300
    a = await asyncio.to_thread(started, old, "a-old")
    b = await asyncio.to_thread(started, new, "b-new")
    rotation = Rotation()
    rotation.up = [a, b]
    report: dict[str, Any] = {"scenario": "redis", "problems": []}
    problems: list[str] = report["problems"]
    problems += await presence_probe(a, b, "presence-1")
    problems += await presence_probe(b, a, "presence-2")
    report["dead_beside_live"] = [
        await dead_beside(new, store, work / "c-new.log", a),
        await dead_beside(old, store, work / "c-old.log", b),
    ]
    for case in report["dead_beside_live"]:
        if (case["state"], case["connections"]) != ("active", 1):
            problems.append(f"a live connection's session after a dead instance: {case}")
    expiring = Publisher("e", "expiring", title="expiring")
    await expiring.publish(lambda sid: a.ws(sid), 10, deadline)

    pubs = [Publisher("p1", "roll", title="roll"), Publisher("p2", "roll", title="roll")]
    viewers = [Viewer("v1", "roll"), Viewer("v2", "roll")]

    async def stream(pub: Publisher) -> None:
        while pub.sent < events:
            await pub.publish(rotation.endpoint, min(CHUNK, events - pub.sent), deadline, 0.001)

    streams = [asyncio.create_task(stream(pub)) for pub in pubs]

    def done() -> bool:
        last = max((s for pub in pubs for s in pub.acked.values()), default=0)
        return all(t.done() for t in streams) and all(v.last_seq >= last for v in viewers)

    follows = [
        asyncio.create_task(v.follow(rotation.endpoint, done, deadline, ROTATE)) for v in viewers
    ]
    # Half the items acked (the publishers' records: no event tells).
    while sum(len(p.acked) for p in pubs) < events and not all(t.done() for t in streams):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    # The upgrade: the old instance leaves the rotation, stops, and a new one comes up.
    rotation.up = [b]
    unread = {a.label: await unreadable(a)}
    report["old_stop_status"] = await asyncio.to_thread(a.stop)
    report["acked_at_old_stop"] = sum(len(p.acked) for p in pubs)
    a2 = await asyncio.to_thread(started, new, "a2-new")
    rotation.up = [b, a2]
    for outcome in await asyncio.gather(*streams, return_exceptions=True):
        if isinstance(outcome, BaseException):
            problems.append(f"a publisher did not finish: {outcome!r}")
    await asyncio.gather(*follows)
    report["connects"] = {p.name: len(p.connects) for p in pubs}
    report["connects"] |= {v.name: len(v.connects) for v in viewers}
    report["duplicates_answered"] = sum(p.duplicates for p in pubs)
    report["viewer_resumes"] = sum(v.resumes for v in viewers)
    base = b.http("")
    problems += await check_log(base, pubs)
    for pub in pubs:
        problems += await check_history(base, pub)
        if pub.errors:
            problems.append(f"{pub.name} got errors: {pub.errors[:3]}")
    all_acked = {k: s for pub in pubs for k, s in pub.acked.items()}
    for viewer in viewers:
        problems += [f"{viewer.name}: {p}" for p in viewer.problems]
        wrong = [k for k, s in all_acked.items() if viewer.contents.get(s) != k]
        if wrong:
            problems.append(f"{viewer.name} saw {len(wrong)} acked items not at their seq")
    report["dead_instances"] = [
        await dead_instance(old, store, work / "d-old.log", b),
        await dead_instance(new, store, work / "d-new.log", b),
    ]
    report["expiring"] = await _expired(b, "expiring", deadline)
    if report["expiring"] != "removed":
        problems.append(f"the expired session is {report['expiring']}")
    report["pubsub_unreadable"] = unread | {s.label: await unreadable(s) for s in (b, a2)}
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            await asyncio.to_thread(server.stop)
    report["log_problems"] = {
        f"{s.tree.name}:{s.log_path.stem}": s.problems() for s in servers if s.problems()
    }
    report["ok"] = not problems and not report["log_problems"]
    return report


async def _expired(server: TreeServer, session_id: str, deadline: float) -> str:
    """``removed`` once the session is gone (cleanup ran on some instance), else its state."""
    state = "unknown"
    give_up = min(deadline, time.monotonic() + TTL + 20)
    while time.monotonic() < give_up:
        answer = await get_json(server.http(f"/api/v1/sessions/{session_id}?limit=1"))
        if answer.get("status") == 404:
            return "removed"
        state = str(answer.get("metadata", {}).get("state", answer))
        await asyncio.sleep(0.25)
    return state
