"""A Redis store whose Redis refuses the URL's credentials (a wrong password or user, or
none where ``requirepass`` asks for one), as an operator meets it with a real
redis-server: ``serve`` refuses it in one line naming the URL with its password masked,
and exits 2, as for any store its settings make refuse every start; with ``--workers
N`` the supervisor checks once before forking, so no worker starts, none is restarted,
and the line comes once. Before, each worker said "redis unavailable" and was restarted
again and again (status 3 each time); a lone ``serve`` exited 1, the status worth a
restart. The offline tools name the failure alike."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.parent_death import ending_with_this_process
from tests.redis_server import RedisServer
from tests.server_process import ROOT

PASSWORD = "Right-Pw-1"
WRONG = "Wrong-Pw-2"
REFUSED = "authentication failed for redis://"


@pytest.fixture
def guarded_redis(start_redis: Callable[[str], RedisServer]) -> RedisServer:
    """A redis-server that requires a password, and knows a user ``bob`` too."""
    server = start_redis("guarded")
    with redis.Redis(port=server.port) as admin:
        admin.execute_command("ACL", "SETUSER", "bob", "on", f">{PASSWORD}", "~*", "&*", "+@all")
        admin.config_set("requirepass", PASSWORD)
    return server


def run_serve(tmp_path: Path, store: str, *args: str) -> tuple[int, list[dict], str]:
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
    argv += ["--log-format", "json", "--store", store, *args]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        preexec_fn=ending_with_this_process(),
    )
    said = done.stdout + done.stderr
    lines = [json.loads(line) for line in said.splitlines() if line.startswith("{")]
    return done.returncode, lines, said


@pytest.mark.parametrize("workers", ["1", "3"])
@pytest.mark.parametrize(
    "credentials",
    [f":{WRONG}@", f"bob:{WRONG}@", f"nobody:{PASSWORD}@", ""],
    ids=["wrong password", "wrong password of a user", "unknown user", "none"],
)
def test_refused_credentials_stop_serve_once_with_status_2(
    guarded_redis: RedisServer, tmp_path: Path, credentials: str, workers: str
) -> None:
    store = f"redis://{credentials}127.0.0.1:{guarded_redis.port}/0?prefix=creds"
    status, lines, said = run_serve(tmp_path, store, "--workers", workers)
    assert status == 2, said
    refusals = [line for line in lines if REFUSED in str(line.get("event"))]
    assert len(refusals) == 1, said
    (refusal,) = refusals
    assert refusal["level"] == "error" and refusal["event"].startswith("cannot start: ")
    user = credentials.partition(":")[0]
    masked = f"{user}:***@" if credentials else ""
    assert f"for redis://{masked}127.0.0.1:{guarded_redis.port}/0 (" in refusal["event"]
    assert "check the user and password in the store URL" in refusal["event"]
    events = {str(line.get("event")) for line in lines}
    assert "worker started" not in events and "worker died; restarting" not in events
    assert WRONG not in said and PASSWORD not in said
    assert "Traceback" not in said


def test_the_right_credentials_serve_with_workers(
    guarded_redis: RedisServer, tmp_path: Path
) -> None:
    # The supervisor's check passes what the workers' opens pass: they listen.
    store = f"redis://bob:{PASSWORD}@127.0.0.1:{guarded_redis.port}/0?prefix=creds"
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
    argv += ["--log-format", "json", "--store", store, "--workers", "2"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=log, cwd=ROOT, preexec_fn=ending_with_this_process()
        )
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count('"listening on') < 2:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
    assert PASSWORD not in log_path.read_text()


def test_an_offline_tool_names_refused_credentials(
    guarded_redis: RedisServer, tmp_path: Path
) -> None:
    store = f"redis://:{WRONG}@127.0.0.1:{guarded_redis.port}/0"
    done = subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "ls", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert f"{REFUSED}:***@127.0.0.1:{guarded_redis.port}/0 (" in done.stderr
    assert WRONG not in done.stderr + done.stdout and "Traceback" not in done.stderr
