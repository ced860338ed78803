"""A TTL so long that a session's ``expires_at`` runs past the year 9999.

``serve --default-ttl 999999999999`` (31,700 years: a typo, or "never" spelled as a big
number) started; every ``hello`` that made a session closed 1011 ``internal error``
(OverflowError), and on the JSONL store the failed create left its id reserved for
good: the id answered ``exists`` from then on, and the graceful stop waited for that
creation forever (SIGTERM did not end the process). ``--default-ttl`` is now at most
100 years (exit 2 past it), and the JSONL store reserves an id only once the new
session's metadata is made, so a create that fails there leaves nothing behind.

A real ``serve``, a real store in a temp dir."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage
from bamboo_session.persistence.jsonl.config import JsonlStorageConfig
from bamboo_session.protocol.models import Session
from tests.server_process import ROOT

TOO_LONG = 10**12  # seconds: 31,700 years


def test_serve_refuses_a_default_ttl_past_the_calendar(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
    argv += ["--data-dir", str(tmp_path / "data"), "--default-ttl", str(TOO_LONG)]
    ended = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ended.returncode == 2, ended
    assert "default" in ended.stderr and "Traceback" not in ended.stderr, ended.stderr


async def test_a_jsonl_create_that_fails_leaves_no_reservation(tmp_path: Path) -> None:
    """An embedder's store with such a TTL: each create fails alike (not ``exists``),
    and the close returns."""
    config = JsonlStorageConfig(tmp_path, default_ttl=TOO_LONG, cleanup_interval=None)
    storage = await JsonlStorage.open(config)
    try:
        for _ in range(2):
            with pytest.raises(OverflowError):
                await storage.create_session(Session.new("s", now=storage.now()))
    finally:
        async with asyncio.timeout(60):  # a guard against the hang, not a measure
            await storage.close()
