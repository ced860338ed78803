"""What ``serve`` says at its start about its store's settings, as an operator runs it (a
real process on 127.0.0.1): a durability given beside a store that has none (memory,
Redis) is ignored with one warning, not refused (a host-wide BAMBOO_DURABILITY would
stop every server on another store) and not silently; a file store takes it without
a word."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.parent_death import ending_with_this_process
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ROOT

IGNORED = "applies to file stores (jsonl, sqlite) and is ignored for this"


def start_lines(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[dict]:
    """The log lines of ``serve ARGS`` up to every worker's ``listening`` line (then it
    is stopped by its pid), or up to its exit."""
    log_path = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
    argv += ["--log-format", "json", "--data-dir", str(tmp_path / "data"), *args]
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=ending_with_this_process(),
        )
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if log_path.read_text().count('"listening on') >= workers:
                break
            time.sleep(0.05)
        else:
            assert process.poll() is not None, "not listening in 60 s"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log_path.read_text()
    assert "Traceback" not in text, text
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def warnings_of(lines: list[dict]) -> list[dict]:
    return [line for line in lines if IGNORED in str(line.get("event"))]


def test_a_durability_beside_a_memory_store_is_warned_of_once(tmp_path: Path) -> None:
    lines = start_lines(tmp_path, "--store", "memory://", "--durability", "os")
    assert any(str(line.get("event")).startswith("listening on") for line in lines)
    (warning,) = warnings_of(lines)
    assert warning["level"] == "warning"
    assert warning["event"].startswith("durability os (--durability, BAMBOO_DURABILITY")
    assert warning["event"].endswith("ignored for this memory:// store")


def test_a_host_wide_durability_is_warned_of_not_refused(tmp_path: Path) -> None:
    lines = start_lines(tmp_path, "--store", "memory://", env={"BAMBOO_DURABILITY": "fsync"})
    assert any(str(line.get("event")).startswith("listening on") for line in lines)
    assert len(warnings_of(lines)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--durability", "os"],  # the JSONL store in --data-dir
        ["--store", "sqlite:///{tmp}/s.db", "--durability", "os"],
        ["--store", "jsonl:///{tmp}/j", "--durability", "fsync"],
        ["--store", "memory://"],  # none given
        ["--store", "memory://", "--durability", "none"],
    ],
)
def test_no_warning_where_the_durability_applies_or_is_not_given(
    tmp_path: Path, args: list[str]
) -> None:
    lines = start_lines(tmp_path, *(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    assert any(str(line.get("event")).startswith("listening on") for line in lines)
    assert warnings_of(lines) == []


def test_a_redis_store_warns_once_for_all_its_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    store = redis_server.url(prefix=prefix_for(tmp_path))
    args = ("--store", store, "--durability", "os", "--workers", "2")
    lines = start_lines(tmp_path, *args)
    assert sum(str(line.get("event")).startswith("listening on") for line in lines) == 2
    (warning,) = warnings_of(lines)
    assert warning["event"].endswith("ignored for this redis:// store")
    assert "worker" not in warning  # the supervisor's, said before any worker starts
