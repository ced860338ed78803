"""The ``serve`` command as an operator runs it: a real process, signals, flags, env."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bamboo_session.server.config import _BOUNDS, ServerConfig
from bamboo_session.server.manager_config import SessionManagerConfig
from bamboo_session.server.settings import load_config, settings_from_flags
from tests.forks import ForkedChild
from tests.parent_death import ending_with_this_process
from tests.server_process import ServerProcess


@asynccontextmanager
async def serve_process(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    lines: list[str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``python -m bamboo_session.server serve`` on a free port; yields (process, port)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bamboo_session.server",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--log-format",
        "json",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        preexec_fn=ending_with_this_process(),  # no server left by a killed test process
    )
    try:
        port = await asyncio.wait_for(_read_port(process, lines), 60)
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_port(process: asyncio.subprocess.Process, lines: list[str] | None) -> int:
    assert process.stderr is not None
    while True:
        line = (await process.stderr.readline()).decode()
        assert line, "server exited before listening"
        if lines is not None:
            lines.append(line)
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        if found:
            return int(found.group(1))


async def test_sigterm_closes_connections_with_1012_and_exits_0_then_resume_works(
    tmp_path: Path,
) -> None:
    async with serve_process(tmp_path) as (process, port):
        url = f"ws://127.0.0.1:{port}/api/v1/stream/s1"
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            welcome = json.loads(await ws.recv())
            for i in range(3):
                await ws.send(
                    json.dumps(
                        {"type": "event", "id": i, "event": {"type": "token", "content": str(i)}}
                    )
                )
                assert json.loads(await ws.recv())["type"] == "ack"
            process.send_signal(signal.SIGTERM)
            closed = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert closed == {"type": "closed", "reason": "server restarting"}
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1012
        assert await asyncio.wait_for(process.wait(), 10) == 0
    async with serve_process(tmp_path) as (process, port):
        url = f"ws://127.0.0.1:{port}/api/v1/stream/s1"
        async with connect(url, open_timeout=5) as ws:
            hello = {"type": "hello", "last_seq": 1, "epoch": welcome["epoch"]}
            await ws.send(json.dumps(hello))
            resumed = json.loads(await ws.recv())
            assert resumed["resumed"] is True and resumed["replay"] == 2
            seqs = [json.loads(await ws.recv())["seq"] for _ in range(2)]
            assert seqs == [2, 3]
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0


def serve_refusal(*args: str, env: dict[str, str] | None = None) -> str:
    """The one line ``serve`` exits with (status 2) for a bad setting: a process forked
    once its imports are done (tests/forks.py), which were most of its CPU; the tests
    here of a server that starts and logs start a fresh interpreter."""
    child = ForkedChild(
        ["-m", "bamboo_session.server", "serve", *args], env={**os.environ, **(env or {})}
    )
    _, err = child.communicate(timeout=30)
    stderr = err.decode()
    assert child.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_flag_values_fail_with_one_line_and_status_2() -> None:
    assert serve_refusal("--port", "many") == (
        "bamboo-session: --port: expected an integer, not 'many'"
    )
    # A number out of range no longer wraps around (70000 was 4464).
    assert serve_refusal("--port", "70000") == (
        "bamboo-session: --port: must be between 0 and 65535, not 70000"
    )


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--max-sessions", "0", "must be at least 1, not 0"),
        ("--ping-interval", "nan", "expected a finite number"),
        ("--rate-limit", "-1", "must be at least 0, not -1"),
        ("--hello-timeout", "0", "must be at least 0.001, not 0"),
        ("--max-frame-bytes", "1.5", "expected an integer, not '1.5'"),
        ("--max-frame-bytes", "4095", "must be at least 4096, not 4095"),
        ("--compression", "maybe", "expected true or false, not 'maybe'"),
        ("--default-ttl", "0", "must be between 1 and 3153600000, not 0"),
        ("--read-slots", "1", "must be between 2 and 256, not 1"),
        ("--read-slots", "257", "must be between 2 and 256, not 257"),
        ("--read-slots", "4.5", "expected an integer, not '4.5'"),
        ("--max-batch-items", "10001", "must be between 1 and 10000, not 10001"),
    ],
)
def test_every_number_is_checked(flag: str, value: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        settings_from_flags({flag.removeprefix("--").replace("-", "_"): value})
    message = str(refused.value)
    assert message.startswith(f"{flag}: ") and says in message, message


def test_the_least_each_session_setting_may_be_the_manager_takes() -> None:
    """The flags' bounds and SessionManagerConfig's checks agree: a value the flags take
    never fails only at start (in every worker of --workers N)."""
    for field in dataclasses.fields(SessionManagerConfig):
        low, _ = _BOUNDS.get(field.name, (0, None))
        kind = type(getattr(ServerConfig(), field.name))
        ServerConfig(**{field.name: kind(low)}).manager_config()


def test_the_read_slots_are_a_setting_refused_at_start_when_bad() -> None:
    assert settings_from_flags({"read_slots": "12"}) == {"read_slots": 12}
    assert ServerConfig.from_env({"BAMBOO_READ_SLOTS": "3"}).manager_config().read_slots == 3
    assert ServerConfig().read_slots == 8
    assert serve_refusal("--read-slots", "0") == (
        "bamboo-session: --read-slots: must be between 2 and 256, not 0"
    )
    assert serve_refusal(env={"BAMBOO_READ_SLOTS": "many"}) == (
        "bamboo-session: BAMBOO_READ_SLOTS: expected an integer, not 'many'"
    )


def test_the_environment_is_checked_as_flags_are() -> None:
    line = serve_refusal(env={"BAMBOO_LOG_FORMAT": "xml"})
    assert line == (
        "bamboo-session: BAMBOO_LOG_FORMAT: expected one of auto, json, console, not 'xml'"
    )
    assert "BAMBOO_PORT: must be between" in serve_refusal(env={"BAMBOO_PORT": "-5"})
    with pytest.raises(ValueError, match="log_level"):
        ServerConfig(log_level="loud")  # type: ignore[arg-type]


def test_a_toml_file_sets_what_env_and_flags_do_not(tmp_path: Path) -> None:
    path = tmp_path / "bamboo.toml"
    path.write_text(
        'port = 9100\nlog-format = "json"\nallowed_origins = ["https://a.example"]\n'
        'ping_interval = "none"\nmax_sessions = 7\ncompression = true\nrate_limit = 5\n'
    )
    config = load_config({}, {}, str(path))
    assert (config.port, config.log_format, config.allowed_origins) == (
        9100,
        "json",
        ("https://a.example",),
    )
    assert config.ping_interval is None and config.compression and config.rate_limit == 5.0
    # The environment wins over the file, flags over both.
    config = load_config(
        {"port": "9300"}, {"BAMBOO_PORT": "9200", "BAMBOO_MAX_SESSIONS": "8"}, str(path)
    )
    assert (config.port, config.max_sessions) == (9300, 8)
    # BAMBOO_CONFIG names the file when --config does not.
    assert load_config({}, {"BAMBOO_CONFIG": str(path)}, None).port == 9100


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("prot = 1\n", "unknown setting 'prot'"),
        ('port = "x"\n', "port: expected an integer, not 'x'"),
        ("port = 1.5\n", "port: expected an integer, not 1.5"),
        ("compression = 1\n", "compression: expected true or false, not 1"),
        ("[serve]\nport = 1\n", "unknown setting 'serve'"),
        ("port = \n", "not TOML"),
        ('log_format = "xml"\n', "log_format: expected one of auto, json, console, not 'xml'"),
        ("port = 70000\n", "port: must be between 0 and 65535, not 70000"),
    ],
)
def test_a_bad_toml_file_is_one_line_naming_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    line = serve_refusal("--config", str(path))
    assert line == f"bamboo-session: {path}: {says}" or (
        says == "not TOML" and line.startswith(f"bamboo-session: {path}: not TOML")
    ), line
    missing = serve_refusal("--config", str(tmp_path / "nowhere.toml"))
    assert missing.startswith(f"bamboo-session: {tmp_path / 'nowhere.toml'}: ")


async def test_in_json_mode_every_line_of_the_log_is_json(tmp_path: Path) -> None:
    lines: list[str] = []
    async with serve_process(tmp_path, lines=lines) as (process, port):
        url = f"ws://127.0.0.1:{port}/api/v1/stream/s1"
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert process.stderr is not None
        lines += (await process.stderr.read()).decode().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    events = [r["event"] for r in records]
    assert f"listening on 127.0.0.1:{port}" in events
    assert "connection closed" in events and "stopped" in events


async def test_the_listening_line_comes_out_whatever_the_log_level(tmp_path: Path) -> None:
    lines: list[str] = []
    async with serve_process(tmp_path, "--log-level", "error", lines=lines) as (process, port):
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    (record,) = (json.loads(line) for line in lines if "listening on" in line)
    assert record["event"] == f"listening on 127.0.0.1:{port}" and record["port"] == port
    assert record["level"] == "info" and record["timestamp"].endswith("Z")


async def test_console_logs_into_a_pipe_carry_no_colour_codes(tmp_path: Path) -> None:
    lines: list[str] = []
    async with serve_process(tmp_path, "--log-format", "console", lines=lines) as (process, _):
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert process.stderr is not None
        lines += (await process.stderr.read()).decode().splitlines()
    assert any("listening on" in line for line in lines)
    assert not any("\x1b[" in line for line in lines), lines


def test_a_refusal_after_logging_is_set_up_is_a_json_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bamboo_session.server",
            "serve",
            "--log-format",
            "json",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["event"].startswith("cannot start: refusing")


def test_environment_sets_defaults_and_flags_win() -> None:
    config = ServerConfig.from_env(
        {"BAMBOO_PORT": "9001", "BAMBOO_PING_INTERVAL": "none", "BAMBOO_COMPRESSION": "yes"}
    )
    assert config.port == 9001 and config.ping_interval is None and config.compression is True
    with pytest.raises(ValueError, match="BAMBOO_MAX_SESSIONS"):
        ServerConfig.from_env({"BAMBOO_MAX_SESSIONS": "lots"})


def soft_open_files(pid: int) -> int:
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    (line,) = [line for line in limits if line.startswith("Max open files")]
    return int(line.split()[3])


def test_serve_raises_its_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """A soft limit of 1,024 (a common default) is too few for a thousand peers and
    their sessions' open logs; serve takes what the hard limit allows (started here
    with 256)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    expected = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    log = tmp_path / "server.log"
    with ServerProcess(tmp_path / "data", log, preexec_fn=low_soft_limit) as server:
        assert server.proc is not None
        assert soft_open_files(server.proc.pid) == expected


OPEN_LOGS_FOR_LIMIT = [(256, 32), (1024, 85), (12288, 1024), (18000, 1500)]


@pytest.mark.parametrize(("soft", "open_logs"), OPEN_LOGS_FOR_LIMIT)
def test_the_jsonl_store_keeps_a_twelfth_of_the_open_file_limit_in_open_logs(
    soft: int, open_logs: int
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < soft:
        pytest.skip(f"the hard open-file limit is below {soft}")
    code = "from bamboo_session.persistence import JsonlStorageConfig as C\n"
    code += "print(C('d').max_open_logs)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == open_logs
