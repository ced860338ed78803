"""The browser soak's checks (bench/browser_soak.py): what the pages show, once the
chaos stopped and they caught up, against the log the server stored and what the
agents were acknowledged; and how the pages' memory, DOM, listeners, timers and
sockets went with the number of events. Each check returns a line per problem.

- The console's session page: its live tail (bench/browser_soak_web/probe.js reads it)
  shows every event from its first shown up to the session's last, each exactly once,
  in order, each as the log has it (a block of tokens is exactly their text, joined);
  no line saying events may be missing, were not kept or could not be resumed; the
  badge is live. Its message list is a run of consecutive messages up to the newest,
  each the stored one.
- The JavaScript client page: each follower saw seq 1 to the last, once each, in
  order (count, duplicates, gaps), its digest that of the log, and no reset.
- Every acknowledged seq holds the event the agent published.

The log and the history are read over HTTP from the server itself (not through the
proxy), once the pages caught up.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .browser_soak_agents import marker

FNV_OFFSET, FNV_PRIME = 2166136261, 16777619
TAIL_JS = Path(__file__).resolve().parent.parent / "server" / "web" / "console" / "tail.js"
# Lines of the tail that say the page did not get every event.
BAD_NOTES = ("could not resume", "no longer kept", "may be missing", "replaced", "not shown")
# Growth allowed between the first and the last third of a run, for counts that must
# not grow with events or reconnects (past warm-up).
FLAT = {"timers": 5, "intervals": 0, "sockets": 2, "listeners": 50}


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return json.loads(answer.read())


def read_log(port: int, session_id: str) -> dict[int, dict[str, Any]]:
    """The session's whole log over HTTP, page after page: seq to event."""
    log: dict[int, dict[str, Any]] = {}
    after = 0
    while True:
        page = get_json(port, f"/api/v1/sessions/{session_id}/events?after_seq={after}&limit=1000")
        for item in page["events"]:
            log[item["seq"]] = item["event"]
            after = item["seq"]
        if after >= page["last_seq"] or not page["events"]:
            return log


def tail_bound(name: str) -> int:
    """One of the console tail's bounds (``MAX_BLOCKS``, ``MAX_TAIL_CHARS``), as tail.js
    has it."""
    found = re.search(rf"{name} = ([0-9_]+)", TAIL_JS.read_text())
    return int(found.group(1).replace("_", "")) if found else 0


def projected_at_bound(sample: dict[str, Any]) -> dict[str, Any] | None:
    """What the console's tail would hold at its bound, as its blocks cost in
    ``sample``: it stops at MAX_BLOCKS blocks or MAX_TAIL_CHARS characters, whichever
    its blocks reach first at their size in the sample (``bound`` says which), and its
    nodes and Blink heap are scaled by the blocks it would hold. None without blocks."""
    blocks, chars = sample.get("tailBlocks"), sample.get("tailChars")
    if not blocks or chars is None:
        return None
    max_blocks, max_chars = tail_bound("MAX_BLOCKS"), tail_bound("MAX_TAIL_CHARS")
    per_block = chars / blocks
    by_chars = max_chars / per_block if per_block > 0 else float("inf")
    held = min(float(max_blocks), by_chars)
    scale = held / blocks
    return {
        "bound": "blocks" if max_blocks <= by_chars else "characters",
        "blocks": round(held),
        "chars": round(per_block * held),
        "nodes": round(sample["nodes"] * scale),
        "dom_heap_mb": round(sample["dom_heap_mb"] * scale, 1),
    }


def digest(log: dict[int, dict[str, Any]]) -> int:
    """The follower page's digest of the whole log (bench/browser_soak_web/follower.js)."""
    value = FNV_OFFSET
    for seq in sorted(log):
        for unit in f"{seq}|{marker(log[seq])}|".encode("utf-16-le")[::2]:
            value = ((value ^ unit) * FNV_PRIME) & 0xFFFFFFFF
    return value


def check_acked(name: str, acked: dict[int, str], log: dict[int, dict[str, Any]]) -> list[str]:
    wrong = [seq for seq, mark in acked.items() if seq not in log or marker(log[seq]) != mark]
    if wrong:
        return [
            f"{name}: {len(wrong)} acknowledged seqs do not hold their event (first {wrong[:5]})"
        ]
    return []


def check_tail(name: str, shown: dict[str, Any], log: dict[int, dict[str, Any]]) -> list[str]:
    """The console's live tail against the log (see the module's docstring)."""
    problems: list[str] = []
    seen: Counter[int] = Counter()
    starts: list[int] = []
    wrong: list[str] = []
    for block in shown["blocks"]:
        kind = block["kind"]
        if kind in ("ev-text", "ev-thinking"):
            seqs = range(block["from"], block["to"] + 1)
            want = "token" if kind == "ev-text" else "thinking"
            events = [log.get(s, {}) for s in seqs]
            if any(e.get("type") != want for e in events):
                wrong.append(f"{kind} #{block['from']}-#{block['to']} holds other events")
            elif block["text"] != "".join(e["content"] for e in events):
                wrong.append(f"{kind} #{block['from']}-#{block['to']}: text is not the tokens'")
            seen.update(seqs)
            starts.append(block["from"])
        elif kind == "ev-note":
            if any(bad in block["text"] for bad in BAD_NOTES):
                problems.append(f"{name}: the tail says {block['text']!r}")
        elif block["seq"] is not None:
            seq = block["seq"]
            seen[seq] += 1
            starts.append(seq)
            event = log.get(seq, {})
            if kind == "ev-tool":
                if event.get("tool_call_id") != block["tool"]:
                    wrong.append(f"tool block #{seq} is not {block['tool']}'s")
                if block["done"] is not None:
                    seen[block["done"]] += 1
                    done = log.get(block["done"], {})
                    if done.get("tool_call_id") != block["tool"]:
                        wrong.append(f"tool {block['tool']} completed by #{block['done']}")
            elif kind == "ev-message" and event.get("type") != "message":
                wrong.append(f"message block #{seq} is a {event.get('type')}")
            elif kind == "ev-complete" and event.get("type") != "complete":
                wrong.append(f"complete block #{seq} is a {event.get('type')}")
    problems += [f"{name}: {w}" for w in wrong[:5]]
    if len(wrong) > 5:
        problems.append(f"{name}: {len(wrong) - 5} more blocks unlike the log")
    if not seen:
        return [*problems, f"{name}: the tail shows no event"]
    last = max(log)
    twice = sorted(s for s, n in seen.items() if n > 1)
    missing = sorted(set(range(min(seen), last + 1)) - set(seen))
    foreign = sorted(set(seen) - set(log))
    if twice:
        problems.append(f"{name}: {len(twice)} events shown twice (first {twice[:5]})")
    if missing:
        problems.append(
            f"{name}: {len(missing)} events of #{min(seen)}-#{last} not shown (first {missing[:5]})"
        )
    if foreign:
        problems.append(f"{name}: {len(foreign)} events shown that the log lacks ({foreign[:5]})")
    if starts != sorted(starts):
        problems.append(f"{name}: the tail's blocks are out of order")
    if shown["state"] != "open":
        problems.append(f"{name}: the badge says {shown['state']!r}, not live")
    return problems


def check_messages(name: str, shown: list[dict[str, Any]], stored: list[str]) -> list[str]:
    """The console's message list: consecutive stored messages up to the newest."""
    indices = [m["index"] for m in shown]
    if not indices:
        return [f"{name}: no message shown of {len(stored)}"] if stored else []
    problems = []
    if indices != list(range(indices[0], indices[0] + len(indices))):
        problems.append(f"{name}: message indices are not consecutive ({len(indices)} shown)")
    if indices[-1] != len(stored) - 1:
        problems.append(f"{name}: the newest message shown is #{indices[-1]}, of {len(stored)}")
    unlike = [
        m["index"] for m in shown if m["index"] >= len(stored) or m["text"] != stored[m["index"]]
    ]
    if unlike:
        problems.append(f"{name}: {len(unlike)} messages unlike the stored ones ({unlike[:5]})")
    return problems


def check_follower(name: str, f: dict[str, Any], log: dict[int, dict[str, Any]]) -> list[str]:
    last = max(log, default=0)
    problems = []
    if f["count"] != last or f["last"] != last:
        problems.append(f"{name}: saw {f['count']} events up to #{f['last']}, of {last}")
    for what in ("duplicates", "gaps", "resets", "mismatches"):
        if f[what]:
            problems.append(f"{name}: {f[what]} {what} (first problem: {f['firstProblem']})")
    if f["count"] == last and f["digest"] != digest(log):
        problems.append(f"{name}: the events seen are not the log's (digest)")
    return problems


def growth(samples: Sequence[dict[str, Any]], field: str) -> tuple[Any, Any, Any]:
    """A field's value after warm-up (the first third's highest), at the end (the last
    third's highest), and per 1,000 events between the two (None when not computed)."""
    values = [s for s in samples if s.get(field) is not None]
    if len(values) < 6:
        return None, None, None
    third = len(values) // 3
    early = max(values[:third], key=lambda s: s[field])
    late = max(values[-third:], key=lambda s: s[field])
    events = late["events"] - early["events"]
    per_k = round(1000 * (late[field] - early[field]) / events, 3) if events > 0 else None
    return early[field], late[field], per_k


def check_flat(name: str, samples: Sequence[dict[str, Any]]) -> list[str]:
    """Counts that must not grow with events nor reconnects: timers, sockets, listeners."""
    problems = []
    for field, slack in FLAT.items():
        early, late, _ = growth(samples, field)
        if early is not None and late > early + slack:
            problems.append(f"{name}: {field} grew from {early} to {late}")
    return problems
