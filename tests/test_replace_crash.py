"""kill -9 while a JSONL or SQLite store replaces expired sessions (tests/
replace_child.py), at random instants, several times over one store: after each kill,
the session is the old one or a new one whole. Its epoch is one a replacement (or
the first create) was about to write, every event it holds was appended under that
epoch (never an old session's event under a new epoch), and every append
acknowledged under that epoch is there, gap-free.

Every other round's kill comes at a random instant after the child's open (during
the open's recovery, which may finish a replacement the last kill cut short, or
after it); the others' once the child has replaced the session 3 to 6 times in the
round, within about the next two replacements (``kills.run_and_kill_after``): so
many replacements are tested however slow a busy machine makes each one."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Token
from tests import kills

CHILD = Path(__file__).with_name("replace_child.py")
ROUNDS = 8  # half of them kill during replacements, after at least 3: 12 or more
URLS = {"jsonl": "jsonl://{}", "sqlite": "sqlite://{}/store.db"}


async def verify(url: str, lines: list[str]) -> None:
    storage = await open_storage(url)
    try:
        meta = await storage.get_metadata("r")
        events = [] if meta is None else await storage.read_events("r")
    finally:
        await storage.close()
    starts = [line.split()[2] for line in lines if line.startswith("ack replacing ")]
    done = [line.split()[2] for line in lines if line.startswith("ack replaced ")]
    if meta is None:
        assert not done, "a created session is gone"
        return
    assert meta.epoch in starts, "an epoch no create wrote"
    if done:  # the last replacement that returned, or one begun after it
        assert meta.epoch in starts[starts.index(done[-1]) :]
    contents = [event.event.content for event in events if isinstance(event.event, Token)]
    assert contents == [meta.epoch] * len(events), "an event of another session"
    assert [event.seq for event in events] == list(range(1, meta.last_seq + 1))
    acked = [int(line.split()[3]) for line in lines if line.startswith(f"ack event {meta.epoch} ")]
    assert max(acked, default=0) <= meta.last_seq, "an acknowledged event was lost"


@pytest.mark.parametrize("store", sorted(URLS))
def test_sigkill_while_replacing_leaves_the_old_session_or_the_new_one(
    store: str, tmp_path: Path
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4)))
    (tmp_path / "data").mkdir()
    url = URLS[store].format(tmp_path / "data")
    lines: list[str] = []
    for round_ in range(ROUNDS):
        argv = [str(CHILD), "crash", url, str(round_)]
        if round_ % 2:
            lines += kills.run_and_kill(argv, rng, late=0.4)
        else:
            count = rng.randint(3, 6)
            round_lines = kills.run_and_kill_after(argv, rng, "ack replaced ", count)
            replaced = sum(1 for line in round_lines if line.startswith("ack replaced "))
            assert replaced >= count, "the child was killed before it replaced enough"
            lines += round_lines
        asyncio.run(verify(url, lines))
    replaced = sum(1 for line in lines if line.startswith("ack replaced "))
    assert replaced > 10, "the children replaced too little to test anything"
