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
- no client's close took longer than its bound; tasks and memory did not keep growing.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

from .client_soak_apps import Follower, JsFollower, Publisher
from .crash_stores import Record

# Growth allowed between the first and the last third of the run: past warm-up, a
# bounded client holds about as much at the end as early on.
TASKS_SLACK = 20
RSS_SLACK_KIB = 64 * 1024


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
