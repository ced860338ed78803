"""The client soak's checks (bench/client_soak.py): what the applications saw and were
told, against what the store holds once the servers stopped. Each returns a line per
problem; none when the promise held.

- the log is seqs 1..n, each key stored once;
- every publish that returned a seq is stored exactly once, at that seq; one that only
  raised is stored at most once; nothing is stored that no publisher sent;
- every follower's callback saw every stored event exactly once, in seq order, with its
  key, and no ``Reset`` (the store kept everything, so every resume could resume);
- an ended client's ``last_seq`` is the last event its callback was given (the README's
  way to resume later);
- no client's close took longer than its bound; tasks and memory did not keep growing;
- every follower that caught up says ``connected`` within ``RESUME_PATIENCE``
  (:func:`connected_once_caught_up`, awaited while the soak settles).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence

from bamboo_session.protocol.client import BambooClient

from .client_soak_apps import Follower, JsFollower, Publisher
from .crash_stores import Record

# Growth allowed between the first and the last third of the run: past warm-up, a
# bounded client holds about as much at the end as early on.
TASKS_SLACK = 20
RSS_SLACK_KIB = 64 * 1024
# Seconds a follower that has caught up may take to say ``connected``: it may be resuming
# then (see connected_once_caught_up), one reconnect's backoff (at most the clients'
# default backoff_max, 5 s, after a connection that brought nothing new; the first wait,
# 0.1 s, after one that did) and connect (the soak's open_timeout, 5 s) away, with slack
# for a loaded machine.
RESUME_PATIENCE = 5.0 + 5.0 + 10.0


def check_all(
    records: Sequence[Record],
    publishers: Sequence[Publisher],
    followers: Sequence[Follower],
    js: Sequence[JsFollower],
    samples: Sequence[dict[str, int]],
) -> list[str]:
    problems = check_log(records)
    problems += check_publishes(records, publishers)
    stored = [(r.seq, r.content) for r in records]
    for f in followers:
        problems += check_seen(f.name, f.seen, stored, f.resets)
        problems += [f"{f.name}: ended client's {m}" for m in f.resume_mismatches]
        problems += check_closes(f.name, f.figures.hung_closes)
    for p in publishers:
        problems += check_closes(p.name, p.figures.hung_closes)
    for j in js:
        seen = [(int(s), str(k)) for s, k in j.report.get("seen", [])]
        problems += check_seen(j.name, seen, stored, int(j.report.get("resets", 0)))
        problems += [f"{j.name}: ended client's {m}" for m in j.report.get("mismatches", [])]
        problems += check_growth(f"{j.name} RSS (KiB)", j.rss_kib, RSS_SLACK_KIB)
    problems += check_growth("soak tasks", [s["tasks"] for s in samples], TASKS_SLACK)
    problems += check_growth(
        "soak max RSS (KiB)", [s["max_rss_kib"] for s in samples], RSS_SLACK_KIB
    )
    return problems


def check_log(records: Sequence[Record]) -> list[str]:
    problems = []
    seqs = [r.seq for r in records]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"stored seqs are not 1..{len(seqs)}")
    for key, count in Counter(r.content for r in records).items():
        if count > 1:
            problems.append(f"key {key} stored {count} times")
    return problems


def check_publishes(records: Sequence[Record], publishers: Sequence[Publisher]) -> list[str]:
    problems = []
    at = {r.content: r.seq for r in records}
    sent: set[str] = set()
    for p in publishers:
        sent |= set(p.acked) | set(p.raised)
        for key, seq in p.acked.items():
            if key not in at:
                problems.append(f"{p.name}: publish {key} returned seq {seq}, not stored")
            elif at[key] != seq:
                problems.append(f"{p.name}: publish {key} returned seq {seq}, stored at {at[key]}")
    # A publish still waiting when its client was closed is in neither; its key is the
    # publisher's name and a number, so only a key of no publisher at all is foreign.
    names = tuple(f"{p.name}-" for p in publishers)
    foreign = [k for k in at if k not in sent and not k.startswith(names)]
    if foreign:
        problems.append(f"{len(foreign)} stored events no publisher sent, e.g. {foreign[0]}")
    return problems


def check_seen(
    name: str, seen: Sequence[tuple[int, str]], stored: Sequence[tuple[int, str]], resets: int
) -> list[str]:
    problems = []
    if resets:
        problems.append(f"{name}: {resets} Reset(s) on a store that kept every event")
    if list(seen) == list(stored):
        return problems
    seqs = [s for s, _ in seen]
    dups = len(seqs) - len(set(seqs))
    out_of_order = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    missing = sorted({s for s, _ in stored} - set(seqs))
    wrong = [s for s, k in seen if 0 < s <= len(stored) and stored[s - 1] != (s, k)]
    problems.append(
        f"{name}: saw {len(seen)} events of {len(stored)} stored: {dups} duplicates,"
        f" {out_of_order} out of order, {len(missing)} missing"
        f" (first {missing[:5]}), {len(wrong)} with another key"
    )
    return problems


def check_closes(name: str, hung: int) -> list[str]:
    return [f"{name}: {hung} close() calls did not return within the bound"] if hung else []


def check_growth(what: str, values: Sequence[int], slack: int) -> list[str]:
    """The last third's highest against the first third's, past warm-up."""
    if len(values) < 6:
        return []
    third = len(values) // 3
    early, late = max(values[:third]), max(values[-third:])
    if late > early + slack and late > 1.5 * early:
        return [f"{what} grew from {early} to {late}"]
    return []


async def connected_once_caught_up(follower: Follower, patience: float) -> tuple[float, str | None]:
    """Seconds until a follower that has caught up says ``connected`` (its current client,
    read afresh), and a problem when it does not within ``patience``.

    Not read once at the instant it caught up: ``connected`` is then False for as long as
    the client is resuming, as it may legitimately be (README, the keepalive). The slow
    follower stalls with its events queue full and the path full behind it, so its
    Pongs wait unread and its own keepalive (1 s here) drops the connection; the client
    sees that when the application has read the queue down to half, and resumes after a
    backoff, while the application takes the rest of the queue, the session's last
    events. What a user can rely on is that the resume comes: the flag True again,
    with nothing more to deliver (what it delivered is checked apart)."""

    def connected() -> bool:
        client = follower.client
        return client is not None and client.connected

    def state() -> str:
        return f"{client_state(follower.client)}, delivered {follower.delivered()}"

    return await connected_within(follower.name, connected, state, patience)


async def js_connected_once_caught_up(js: JsFollower, patience: float) -> tuple[float, str | None]:
    """The same wait for a JavaScript follower, on what its progress lines say of its
    client's ``connected`` (every 0.5 s). Its slow follower pauses, rather than stalls,
    when its queue is full (a browser's client cannot stop reading): disconnected on
    purpose until the application has read the queue down, which it may not have done
    yet as it takes the session's last events."""
    return await connected_within(
        js.name, lambda: js.connected, lambda: f"delivered {js.progress}", patience
    )


async def connected_within(
    name: str, connected: Callable[[], bool], state: Callable[[], str], patience: float
) -> tuple[float, str | None]:
    """Seconds until ``connected()``, and a problem naming ``name`` and its ``state()``
    when not within ``patience``."""
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if connected():
            return waited, None
        if waited >= patience:
            return (
                waited,
                f"{name}: connected is False {patience:g} s after catching up ({state()})",
            )
        await asyncio.sleep(0.05)


def client_state(client: BambooClient | None) -> str:
    """What a problem's line says of a follower's client."""
    if client is None:
        return "no client"
    return (
        f"finished {client.finished}, queued {client.queued_events}, skipped"
        f" {client.skipped_events}, last_seq {client.last_seq}, reconnects {client.reconnects}"
    )
