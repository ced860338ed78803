"""What the rolling-upgrade bench (bench/rolling_upgrade.py) checks a server shows of
the data an earlier server, maybe of another version, left: every acknowledged event
stored once at the seq it was acked with, the log gap-free, every acknowledged message
in the history once and in order, and the sessions' metadata (owner, title, creation,
TTL and expiry, epoch, state) as they were, in the listing too. Each check returns the
problems it found, as sentences; none is a pass.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from .rolling_peers import Publisher, content_of, get_json, read_log

# Fields a restart, of any version, must keep as they were.
KEPT = ("id", "user_id", "title", "created_at", "ttl", "epoch")


async def check_log(base: str, pubs: list[Publisher]) -> list[str]:
    """The session's log (every publisher in ``pubs`` wrote to the same session)."""
    session_id = pubs[0].session_id
    events, last_seq = await read_log(base, session_id)
    problems = []
    seqs = [e["seq"] for e in events]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"{session_id}: log seqs not 1..{len(seqs)}")
    if seqs and last_seq != seqs[-1]:
        problems.append(f"{session_id}: last_seq {last_seq}, last event {seqs[-1]}")
    contents = {e["seq"]: content_of(e["event"]) for e in events}
    twice = [k for k, n in Counter(contents.values()).items() if n > 1]
    if twice:
        problems.append(f"{session_id}: {len(twice)} keys stored twice, e.g. {twice[:3]}")
    for pub in pubs:
        wrong = [(k, s, contents.get(s)) for k, s in pub.acked.items() if contents.get(s) != k]
        if wrong:
            problems.append(
                f"{session_id}: {len(wrong)} of {pub.name}'s {len(pub.acked)} acked not at "
                f"their seq, e.g. {wrong[:3]}"
            )
    return problems


async def check_history(base: str, pub: Publisher) -> list[str]:
    """The session's history holds each acked message of ``pub`` once, in ack order."""
    answer = await get_json(f"{base}/api/v1/sessions/{pub.session_id}")
    if "messages" not in answer:
        return [f"{pub.session_id}: GET answered {answer}"]
    contents = [m["content"] for m in answer["messages"]]
    mine = [c for c in contents if c.startswith(f"{pub.name}-")]
    if mine != pub.messages:
        missing = sorted(set(pub.messages) - set(mine))
        return [
            f"{pub.session_id}: history has {len(mine)} of {pub.name}'s messages, acked "
            f"{len(pub.messages)} (missing e.g. {missing[:3]}, twice: "
            f"{len(mine) - len(set(mine))})"
        ]
    if answer["metadata"]["message_count"] != len(contents):
        return [
            f"{pub.session_id}: message_count {answer['metadata']['message_count']}, "
            f"history {len(contents)}"
        ]
    return []


async def metadata(base: str, session_id: str) -> dict[str, Any]:
    answer = await get_json(f"{base}/api/v1/sessions/{session_id}?limit=1")
    return dict(answer.get("metadata") or answer)


def check_metadata(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """A session's metadata after a restart against what it was: the kept fields equal,
    a closed session still closed, counts not lower, expiry its activity plus its TTL."""
    sid = before.get("id")
    if "id" not in after:
        return [f"{sid}: not found after the restart: {after}"]
    problems = [
        f"{sid}: {field} {before.get(field)!r} -> {after.get(field)!r}"
        for field in KEPT
        if before.get(field) != after.get(field)
    ]
    if (before["state"] == "closed") != (after["state"] == "closed"):
        problems.append(f"{sid}: state {before['state']} -> {after['state']}")
    for field in ("last_seq", "message_count"):
        if after[field] < before[field]:
            problems.append(f"{sid}: {field} {before[field]} -> {after[field]}")
    problems += check_expiry(after)
    return problems


def check_expiry(meta: dict[str, Any]) -> list[str]:
    ttl, expires = meta.get("ttl"), meta.get("expires_at")
    if ttl is None:
        return [] if expires is None else [f"{meta['id']}: no ttl but expires_at {expires}"]
    if meta["state"] == "closed" and expires is None:
        return []
    if expires is None:
        return [f"{meta['id']}: ttl {ttl} but no expires_at"]
    activity = _time(meta["last_activity_at"])
    if abs(_time(expires) - activity - timedelta(seconds=ttl)) > timedelta(seconds=1):
        return [f"{meta['id']}: expires_at {expires} is not last activity + ttl {ttl}"]
    return []


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def check_listing(base: str, expected: dict[str, dict[str, Any]]) -> list[str]:
    """``GET /api/v1/sessions`` lists every session in ``expected`` (by id: metadata
    read earlier), with its kept fields; the closed ones under ``state=closed`` too."""
    answer = await get_json(f"{base}/api/v1/sessions?limit=100")
    if "sessions" not in answer:
        return [f"listing answered {answer}"]
    listed = {s["id"]: s for s in answer["sessions"]}
    problems = []
    for sid, meta in expected.items():
        row = listed.get(sid)
        if row is None:
            problems.append(f"listing lacks {sid}")
            continue
        problems += [
            f"listing: {sid} {field} {meta.get(field)!r} -> {row.get(field)!r}"
            for field in KEPT
            if meta.get(field) != row.get(field)
        ]
    closed = await get_json(f"{base}/api/v1/sessions?state=closed&limit=100")
    closed_ids = {s["id"] for s in closed.get("sessions", [])}
    for sid, meta in expected.items():
        if (meta["state"] == "closed") != (sid in closed_ids):
            problems.append(f"listing by state=closed: {sid} ({meta['state']}) misplaced")
    if answer.get("total") != len(answer["sessions"]):
        problems.append(f"listing total {answer.get('total')}, rows {len(answer['sessions'])}")
    return problems
