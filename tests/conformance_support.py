"""What the outside checks of the wire contract share (tests/test_conformance_node.py,
tests/test_conformance_java.py): real ``bamboo-session serve`` processes started for a
client in another language and stopped by their pid (the ``servers`` fixture, which a
test module takes in by importing it), and the reading of that client's report: no FAIL
line (shown with the STACK lines that follow one, if any), exit 0, the " N held, 0
failed" summary, and a server log without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parent_death import ending_with_this_process
from tests.server_process import ServerProcess, assert_no_tracebacks


@pytest.fixture(name="servers")
def servers_fixture() -> Iterator[list[ServerProcess]]:
    """The servers a test starts (append them), each killed at the end if still up."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.kill()


def start_server(
    servers: list[ServerProcess], tmp_path: Path, name: str, *flags: str
) -> ServerProcess:
    server = ServerProcess(tmp_path / f"data-{name}", tmp_path / f"server-{name}.log", *flags)
    servers.append(server)
    server.start()
    return server


def base_url(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}"


def assert_client_passed(mode: str, returncode: int, report: str) -> None:
    """Shown on a failure: the FAIL lines, and the STACK lines a client prints after a
    section that ended on an exception of its own (the Java client's)."""
    lines = report.splitlines()
    failures = [line for line in lines if line.startswith("FAIL")]
    shown = [line for line in lines if line.startswith(("FAIL", "STACK"))]
    assert not failures, f"mode {mode}: {len(failures)} FAIL\n" + "\n".join(shown)
    assert returncode == 0, f"mode {mode} exited {returncode}:\n{report}"
    assert " held, 0 failed" in report, report


def stop_cleanly(*servers: ServerProcess) -> None:
    """SIGTERM to each by its pid: a clean exit, and a log without a traceback."""
    for server in servers:
        assert server.stop() == 0, server.log_tail()
        assert_no_tracebacks(server.log_records())


def wait_for_line(path: Path, line: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the client's report at ``path`` holds ``line``; fails the test if the client
    ends, or ``timeout`` seconds pass, first."""
    deadline = time.monotonic() + timeout
    while line not in path.read_text().splitlines():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {line} from the client:\n{path.read_text()}")
        time.sleep(0.05)


def restart_across_a_stop(
    server: ServerProcess, argv: list[str], report_path: Path, env: dict[str, str], timeout: float
) -> None:
    """Runs a client's ``restart1`` (``argv``) until it says READY, stops the server
    (SIGTERM) under it, checks the client's report of the closes, and starts the
    server again on the same data directory, for the client's ``restart2``."""
    with report_path.open("w") as report:
        first = subprocess.Popen(
            argv,
            stdout=report,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, **env},
            preexec_fn=ending_with_this_process(),  # no client left by a killed test process
        )
    try:
        wait_for_line(report_path, "READY", first, timeout)
        assert server.stop() == 0, server.log_tail()
        returncode = first.wait(timeout)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_client_passed("restart1", returncode, report_path.read_text())
    server.start()
