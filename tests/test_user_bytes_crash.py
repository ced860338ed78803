"""The per-user sums of stored bytes (``max_user_bytes``) of the file-backed stores after
writes that fail (RLIMIT_FSIZE: EFBIG) and after kill -9 at random instants while a
user's sessions are filled, deleted and created again (tests/user_bytes_child.py): the
store's sum, as a refused append reports it, is the sum of the sessions'
``stored_bytes``, never past the bound, and the user is not blocked for good."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bamboo_session.persistence import UserFull, open_storage
from bamboo_session.protocol.models import AgentEvent, Session
from tests import kills

CHILD = Path(__file__).with_name("user_bytes_child.py")
USER_CAP = 64 * 1024  # as the child's
URLS = {
    "jsonl": lambda d: f"jsonl://{d / 'store'}",
    "jsonl-os": lambda d: f"jsonl://{d / 'store'}?durability=os",
    "sqlite": lambda d: f"sqlite://{d / 'store.db'}",
}


@pytest.mark.parametrize("kind", sorted(URLS))
def test_sums_after_failed_writes(kind: str, tmp_path: Path) -> None:
    url = URLS[kind](tmp_path)
    limit = 150_000 if kind == "sqlite" else 20_000  # as the stores' own write-failure tests
    done = subprocess.run(
        [sys.executable, str(CHILD), "writefail", url, str(limit)],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["failed"], report
    assert report["counted"] == report["truth"], report


@pytest.mark.parametrize("kind", sorted(URLS))
def test_sums_after_kills(kind: str, tmp_path: Path) -> None:
    url = URLS[kind](tmp_path)
    rng = random.Random(f"user-bytes-{kind}")
    acked = 0
    for round_ in range(8):
        acked += len(kills.run_and_kill([str(CHILD), "crash", url, str(round_)], rng, late=1.0))
        asyncio.run(_check(url, tmp_path / "store" if kind.startswith("jsonl") else None))
    assert acked, "no child got as far as an append"


async def _check(url: str, jsonl: Path | None) -> None:
    store = await open_storage(url, max_user_bytes=USER_CAP)
    try:
        sessions = await store.list_user_sessions("u")
        truth = sum(meta.stored_bytes for meta in sessions)
        assert truth <= USER_CAP
        if jsonl is not None:  # the JSONL count is its logs' size, as on disk
            for meta in sessions:
                log_file = jsonl / "events" / f"{meta.id}.jsonl"
                on_disk = log_file.stat().st_size if log_file.exists() else 0
                assert meta.stored_bytes == on_disk, (meta.id, meta.stored_bytes, on_disk)
        if not sessions:
            await store.create_session(Session.new("s0", user_id="u"))
        session_id = sessions[0].id if sessions else "s0"
        with pytest.raises(UserFull) as refused:
            await store.append_event(session_id, AgentEvent.token("y" * (2 * USER_CAP)))
        assert refused.value.stored == truth
        # Not blocked for good: once its sessions go, the user has all the room again.
        for meta in sessions:
            await store.delete_session(meta.id)
        await store.create_session(Session.new("probe", user_id="u"))
        await store.append_event("probe", AgentEvent.token("z" * (USER_CAP // 2)))
        await store.delete_session("probe")
    finally:
        await store.close()
