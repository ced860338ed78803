"""The outside check of the wire contract from the JDK: tests/conformance/java/Conformance.java,
a Java client written from the protocol document alone (never from this code) with
nothing but java.net.http's HttpClient and WebSocket, a WebSocket stack unlike those of
Python, Node and Chromium. It is compiled once into a temporary directory and run
against a real ``bamboo-session serve`` per mode: open (no auth), auth, and restart
(one run, the server stopped by SIGTERM and started again on its data directory, a
second run).

A run passes when the client exits 0 and prints no FAIL line, and the server, stopped
by its pid, logged no traceback and nothing at error level. Without javac each test
skips with one line saying how to install a JDK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conformance_support import (  # noqa: F401 (servers, a fixture)
    assert_client_passed,
    base_url,
    restart_across_a_stop,
    servers_fixture,
    start_server,
    stop_cleanly,
    wait_for_line,
)
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "conformance" / "java" / "Conformance.java"
HINT = "install a JDK: apt-get install -y default-jdk-headless"
# C1 only, and the serial collector: a run of a few seconds takes half the CPU of the
# JVM's defaults (1.0 s of 1.7 s for mode open, 0.8 s of 2.1 s for javac, on 2 cores).
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
# Mode open takes some 3 s, the others under 1 s; the bound is for a machine under load.
JAVA_TIMEOUT = 120
AUTH_SECRET = "conformance-secret-" + "s" * 32
# The server's flags for each mode, as the client's usage (its header comment) asks.
SERVER_FLAGS: dict[str, tuple[str, ...]] = {
    # Two waits run beside the other checks: a silent connection's 4408 (a hello timeout
    # of 2 s, not 1, so that a loaded machine does not close the other connections before
    # their hello is read) and the server's keepalive pings (every second).
    "open": (
        *("--hello-timeout", "2", "--ping-interval", "1", "--default-ttl", "600"),
        *("--max-session-bytes", "2097152"),
    ),
    "auth": (
        *("--auth-secret", AUTH_SECRET, "--max-sessions", "4"),
        *("--rate-limit", "10", "--rate-limit-burst", "10", "--rate-limit-refusals", "5"),
    ),
}


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client, compiled once for the module's tests."""
    javac = shutil.which("javac")
    if javac is None or shutil.which("java") is None:
        pytest.skip(HINT)
    out = tmp_path_factory.mktemp("conformance-java")
    jvm = [f"-J{flag}" for flag in JVM_FLAGS]
    result = subprocess.run(
        [javac, *jvm, "-d", str(out), str(CLIENT)],
        capture_output=True,
        text=True,
        timeout=JAVA_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def client_argv(classes: Path, mode: str, base: str) -> list[str]:
    return ["java", *JVM_FLAGS, "-cp", str(classes), "Conformance", mode, base]


def run_client(classes: Path, mode: str, base: str, env: dict[str, str]) -> str:
    """The client's report; fails the test on a non-zero exit or a FAIL line."""
    try:
        result = subprocess.run(
            client_argv(classes, mode, base),
            capture_output=True,
            text=True,
            timeout=JAVA_TIMEOUT,
            env={**os.environ, **env},
        )
    except subprocess.TimeoutExpired as timeout:  # run() killed it
        output = timeout.stdout or b""
        report = output.decode(errors="replace") if isinstance(output, bytes) else output
        pytest.fail(f"mode {mode} ran over {JAVA_TIMEOUT} s:\n{report}")
    assert_client_passed(mode, result.returncode, result.stdout + result.stderr)
    return result.stdout


@pytest.mark.parametrize("mode", list(SERVER_FLAGS))
def test_conformance_mode(
    mode: str, classes: Path, servers: list[ServerProcess], tmp_path: Path
) -> None:
    server = start_server(servers, tmp_path, mode, *SERVER_FLAGS[mode])
    run_client(classes, mode, base_url(server), {"SECRET": AUTH_SECRET})
    stop_cleanly(server)


def test_conformance_restart(classes: Path, servers: list[ServerProcess], tmp_path: Path) -> None:
    """restart1 holds three connections (one MessagePack) while the server shuts down
    (SIGTERM) and reads their closes; restart2 finds the session, its epoch, its log
    and its idempotency keys on the server started again on the same data directory."""
    server = start_server(servers, tmp_path, "restart")
    env = {"CONFORMANCE_STATE": str(tmp_path / "restart-state.json")}
    restart_across_a_stop(
        server,
        client_argv(classes, "restart1", base_url(server)),
        tmp_path / "restart1.txt",
        env,
        JAVA_TIMEOUT,
    )
    run_client(classes, "restart2", base_url(server), env)
    stop_cleanly(server)
