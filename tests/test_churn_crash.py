"""kill -9 while a JSONL or SQLite store does its rarer writes all at once
(tests/churn_child.py): cleanup removing expired sessions while a publisher appends to
a live one, a session deleted and created again under its id, appends racing a close.
After each kill, the store opens and holds every acknowledged event exactly once, at
its seq, in a gap-free log; no session cleaned up or deleted is back; every session
whose close was acknowledged is closed; ``d`` is the session its last step left."""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from pathlib import Path

import pytest

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.protocol.models import SessionState
from tests import kills

CHILD = Path(__file__).with_name("churn_child.py")
ROUNDS = 4  # half of them killed around a cleanup, after one
URLS = {
    "jsonl": "jsonl://{}",
    "jsonl-os": "jsonl://{}?durability=os",
    "sqlite": "sqlite://{}/store.db",
}


class Acknowledged:
    """What the children's ``ack`` lines say the store must hold."""

    def __init__(self, lines: list[str]) -> None:
        self.events: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        self.cleaned: set[str] = set()
        self.closed: set[str] = set()
        self.last_step_of_d: tuple[str, str] | None = None
        for line in lines:
            words = line.split()[1:]
            if words[0] == "event":
                self.events[(words[1], words[2])].append((int(words[3]), words[4]))
            elif words[0] in ("cleaned", "closed"):
                getattr(self, words[0]).add(words[1])
            elif words[0] in ("creating", "created", "deleting", "deleted"):
                self.last_step_of_d = (words[0], words[2])


async def problems_in(storage: Storage, acked: Acknowledged) -> list[str]:
    problems = []
    for session_id in acked.cleaned:
        if await storage.get_metadata(session_id) is not None:
            problems.append(f"{session_id} was cleaned up and is back")
    for session_id in acked.closed:
        meta = await storage.get_metadata(session_id)
        if meta is None or meta.state != SessionState.CLOSED:
            problems.append(f"{session_id} was closed and is {meta and meta.state}")
    d = await storage.get_metadata("d")
    if acked.last_step_of_d is not None:
        step, epoch = acked.last_step_of_d
        if step == "deleted" and d is not None:
            problems.append(f"d of {epoch} was deleted, and d of {d.epoch} is there")
        if step == "created" and (d is None or d.epoch != epoch):
            problems.append(f"d of {epoch} was created, and d is {d and d.epoch}")
        if d is not None and d.epoch != epoch:  # creating, deleting: it or nothing
            problems.append(f"d of {epoch} was the last one, and d is of {d.epoch}")
    for (session_id, epoch), events in acked.events.items():
        meta = await storage.get_metadata(session_id)
        if session_id == "d" and (meta is None or meta.epoch != epoch):
            continue  # of a d since deleted (checked above)
        if meta is None or meta.epoch != epoch:
            problems.append(f"{session_id} of {epoch} is {meta and meta.epoch}")
            continue
        stored = await storage.read_events(session_id)
        seqs = [event.seq for event in stored]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{session_id}: seqs {seqs[:10]}... not 1..{len(seqs)}")
        at: dict[str, list[int]] = defaultdict(list)
        for event in stored:
            at[getattr(event.event, "content", "")].append(event.seq)
        for seq, tag in events:
            if at[tag] != [seq]:
                problems.append(f"{session_id}: {tag} acked at {seq}, stored at {at[tag]}")
    return problems


async def verify(url: str, lines: list[str]) -> None:
    storage = await open_storage(url, cleanup_interval=None)
    try:
        problems = await problems_in(storage, Acknowledged(lines))
    finally:
        await storage.close()
    assert problems == [], problems[:10]


@pytest.mark.parametrize("store", list(URLS))
def test_sigkill_amid_cleanup_deletes_and_closes_loses_nothing(store: str, tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)
    (tmp_path / "data").mkdir()
    url = URLS[store].format(tmp_path / "data")
    lines: list[str] = []
    for round_ in range(ROUNDS):
        argv = [str(CHILD), "crash", url, str(rng.getrandbits(32))]
        if round_ % 2:
            lines += kills.run_and_kill(argv, rng, late=1.5)
        else:
            # Within about the next cleanup after the second: one is done by then.
            lines += kills.run_and_kill_after(argv, rng, "ack cleaning", 2)
        asyncio.run(verify(url, lines))
    kinds = {line.split()[1] for line in lines}
    assert {"event", "cleaned", "closed", "deleted"} <= kinds, (seed, kinds)
