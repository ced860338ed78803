"""The operator subcommands: ``ls``, ``show``, ``cleanup`` offline on a data directory
(in-process), and ``ls``/``show`` over HTTP, ``tail`` and ``publish`` against a real
server (as processes, forked: tests/forks.py). Every error is one line on stderr and
a non-zero status."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent, Message, Session, utcnow
from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.cli import main
from tests.forks import ForkedChild
from tests.support import get, run_server

TIMEOUT = 15.0


def make_data_dir(path: Path) -> Path:
    """Three sessions (two of u1, one of u2) and one that expired an hour ago."""

    async def fill() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(path)) as storage:
            for sid, user, title in [
                ("a", "u1", "Alpha chat"),
                ("b", "u1", "Beta"),
                ("c", "u2", None),
            ]:
                session = Session.new(sid, user_id=user, title=title)
                await storage.create_session(session)
            await storage.append_message("a", Message.user("hello"))
            await storage.append_message("a", Message.assistant("hi there"))
            old = Session.new("old", user_id="u3", title="Old", ttl=60)
            old.metadata.touch(utcnow() - timedelta(hours=1))
            await storage.create_session(old)

    asyncio.run(fill())
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path / "data")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str) -> None:
    assert code != 0
    assert err.startswith("bamboo-session: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_ls_prints_a_table_and_filters(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["ls", "--data-dir", str(data_dir)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "USER",
        "STATE",
        "MESSAGES",
        "LAST_SEQ",
        "LAST",
        "ACTIVITY",
        "TITLE",
    ]
    assert {line.split()[0] for line in lines[1:-1]} == {"a", "b", "c", "old"}
    assert lines[-1] == "1-4 of 4 sessions"

    code, out, _ = run(["ls", "--data-dir", str(data_dir), "--user-id", "u1", "--json"], capsys)
    listing = json.loads(out)
    assert code == 0 and listing["total"] == 2
    assert {s["id"] for s in listing["sessions"]} == {"a", "b"}

    argv = ["ls", "--data-dir", str(data_dir), "--title-contains", "chat", "--json"]
    assert [s["id"] for s in json.loads(run(argv, capsys)[1])["sessions"]] == ["a"]
    argv = [
        "ls",
        "--data-dir",
        str(data_dir),
        "--sort-by",
        "message_count",
        "--limit",
        "1",
        "--json",
    ]
    assert [s["id"] for s in json.loads(run(argv, capsys)[1])["sessions"]] == ["a"]
    argv = ["ls", "--data-dir", str(data_dir), "--created-after", "2999-01-01", "--json"]
    assert json.loads(run(argv, capsys)[1])["total"] == 0


def test_show_prints_metadata_and_history(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["show", "a", "--data-dir", str(data_dir)], capsys)
    assert code == 0
    assert "id:            a" in out and "title:         Alpha chat" in out
    assert out.rstrip().endswith("assistant: hi there") and "] user: hello" in out
    code, out, _ = run(["show", "a", "--data-dir", str(data_dir), "--json"], capsys)
    session = json.loads(out)
    assert session["metadata"]["message_count"] == 2
    assert [m["content"] for m in session["messages"]] == ["hello", "hi there"]


def test_cleanup_removes_expired_sessions(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["cleanup", "--data-dir", str(data_dir)], capsys)[:2] == (0, "1\n")
    assert run(["cleanup", "--data-dir", str(data_dir)], capsys)[:2] == (0, "0\n")
    code, out, _ = run(["ls", "--data-dir", str(data_dir), "--json"], capsys)
    assert code == 0 and {s["id"] for s in json.loads(out)["sessions"]} == {"a", "b", "c"}


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--data-dir", "/nonexistent/bamboo"],
        ["show", "missing", "--data-dir", "{data}"],
        ["cleanup", "--data-dir", "/nonexistent/bamboo"],
        ["ls", "--url", "ftp://example"],
        ["ls", "--url", "http://127.0.0.1:1"],
        ["publish", "x", "--event", "{not json", "--url", "ws://127.0.0.1:1"],
        ["publish", "x", "--event", '{"type": "nope"}', "--url", "ws://127.0.0.1:1"],
        [
            "publish",
            "x",
            "--event",
            '{"type": "token", "content": "x"}',
            "--url",
            "ws://127.0.0.1:1",
        ],
        ["tail", "x", "--url", "ws://127.0.0.1:1"],
    ],
)
def test_errors_are_one_line(
    argv: list[str], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.replace("{data}", str(data_dir)) for arg in argv]
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err)
    assert out == ""


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["show", "../x"], ["ls", "--limit", "0"], ["ls", "--created-after", "soon"]):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        assert "error:" in capsys.readouterr().err


def test_every_flag_has_help() -> None:
    import argparse

    from bamboo_session.server.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("ls", "show", "tail", "cleanup", "publish"):
        for action in commands.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


# -- against a running server (subprocesses) ----------------------------------------------


async def cli(*argv: str) -> tuple[int, str, str]:
    """``bamboo-session ARGV`` as a process, forked once its imports are done
    (tests/forks.py), which were most of its CPU. One at a time: a second child ends
    the first."""

    def run() -> tuple[int, str, str]:
        child = ForkedChild(["-m", "bamboo_session.server", *argv])
        out, err = child.communicate(timeout=TIMEOUT)
        assert child.returncode is not None
        return child.returncode, out.decode(), err.decode()

    return await asyncio.to_thread(run)


async def test_online_commands(tmp_path: Path) -> None:
    async with run_server(tmp_path / "live", durability="os") as server:
        ws_url = f"ws://127.0.0.1:{server.port}"
        http_url = f"http://127.0.0.1:{server.port}"
        token = '{"type": "token", "content": "hi"}'
        first = await cli("publish", "t", "--event", token, "--url", ws_url, "--create")
        again = await cli("publish", "t", "--event", token, "--url", ws_url, "--key", "k1")
        offline = await cli("ls", "--data-dir", str(tmp_path / "live"))
        listed = await cli("ls", "--url", http_url, "--json")
        shown = await cli("show", "t", "--url", ws_url, "--json")
        assert await cli("publish", "t", "--event", token, "--url", ws_url, "--key", "k1") == again
        assert first == (0, "1\n", "") and again == (0, "2\n", "")  # the same key: once
        # Reading a store a server holds: a read-only view, no lock taken, nothing written.
        assert offline[0] == 0 and "t" in offline[1].split(), offline
        nothing = await cli("cleanup", "--data-dir", str(tmp_path / "live"))
        assert nothing[:2] == (0, "0\n"), nothing  # found nothing expired: wrote nothing
        assert listed[0] == 0 and [s["id"] for s in json.loads(listed[1])["sessions"]] == ["t"]
        assert shown[0] == 0 and json.loads(shown[1])["metadata"]["id"] == "t"

        async with await BambooClient.connect(ws_url, "t") as agent:
            await agent.publish(AgentEvent.token("second"))
            await agent.publish(AgentEvent.token("third"))
            code, out, err = await cli(
                "tail", "t", "--url", ws_url, "--from-seq", "1", "--count", "3"
            )
            assert code == 0, err
            lines = [json.loads(line) for line in out.splitlines()]
            assert [line["seq"] for line in lines] == [2, 3, 4]
            assert [line["event"]["content"] for line in lines] == ["hi", "second", "third"]

            # The counted tail's process has ended, but the server may not have seen
            # its connection go yet: its presence would pass for the live tail's below.
            while agent.connections > 1:  # noqa: ASYNC110 - a property, not an event
                await asyncio.sleep(0.05)
            # Live: a tail without --count ends when the session is closed.
            tail = asyncio.create_task(cli("tail", "t", "--url", ws_url, "--from-seq", "4"))
            # Presence updates agent.connections; the session must not close before the
            # tail attaches (it would get 4409), so wait for it.
            while agent.connections < 2:  # noqa: ASYNC110 - a property, not an event
                await asyncio.sleep(0.05)
            await agent.publish(AgentEvent.token("live"))
            await agent.set_state("closed")
            code, out, err = await tail
            assert code == 0, err
            assert [json.loads(line)["event"]["content"] for line in out.splitlines()] == ["live"]

        code, _, err = await cli("show", "nope", "--url", http_url)
        assert_one_line_error(code, err)
        assert "session not found" in err


async def test_show_over_http_waits_out_a_429(tmp_path: Path) -> None:
    """A peer in debt with its read allowance gets 429 with ``Retry-After``: ``show``
    waits it out and asks again, rather than failing."""
    # A page of 400 kB costs 25 kB: 2.5 s of debt past a burst of 20 kB, at 2 kB a second.
    limits = {"rate_limit_bytes": 2_000, "rate_limit_bytes_burst": 20_000}
    async with run_server(tmp_path / "live", **limits) as server:
        message = {"type": "message", "message": {"role": "user", "content": "x" * 10_000}}
        await server.manager.create_session(session_id="long")
        await server.manager.append_events("long", [(message, None)] * 40)
        http_url = f"http://127.0.0.1:{server.port}"
        status, _ = await get(server, "/api/v1/sessions/long/events")  # 400 kB: in debt
        assert status == 200
        assert (await get(server, "/api/v1/sessions/long?limit=1"))[0] == 429
        started = time.monotonic()
        code, out, err = await cli("show", "long", "--url", http_url, "--json")
        assert code == 0, err
        assert len(json.loads(out)["messages"]) == 40
        assert time.monotonic() - started >= 0.9  # a Retry-After of 1 s, waited


def reader_gone(*argv: str) -> tuple[int, str]:
    """``bamboo-session ARGV | head -c 0``: its stdout a pipe whose reader left before the
    first line (closed at once; the process takes far longer to start), its output
    buffered (as it is unless PYTHONUNBUFFERED is set: then written at the exit) and
    unbuffered (written as it goes); the status and stderr, the same for both."""
    answers = set()
    for unbuffered in ({}, {"PYTHONUNBUFFERED": "1"}):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        process = subprocess.Popen(
            [sys.executable, "-m", "bamboo_session.server", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, **unbuffered},
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        err = process.stderr.read().decode()
        answers.add((process.wait(TIMEOUT), err))
    assert len(answers) == 1, answers
    return answers.pop()


async def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path: Path) -> None:
    """``ls | head``, ``tail | head``: the command ends as one killed by SIGPIPE does,
    status 141 and not a word (it said ``bamboo-session: Broken pipe``, status 1)."""
    data = await asyncio.to_thread(make_data_dir, tmp_path / "data")
    migrate = ["migrate", "--from", str(data), "--to", "memory://", "--progress", "none"]
    for argv in (["ls", "--data-dir", str(data)], ["show", "a", "--data-dir", str(data)], migrate):
        assert await asyncio.to_thread(reader_gone, *argv) == (141, "")
    async with run_server(store="memory://") as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(url, "t", create=True) as agent:
            await agent.publish(AgentEvent.token("hi"))
            argv = ["tail", "t", "--url", url, "--from-seq", "0"]
            assert await asyncio.to_thread(reader_gone, *argv) == (141, "")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["serve", "--help"], ["ls", "--help"]])
def test_help_and_version_end_quietly_when_their_reader_leaves(argv: list[str]) -> None:
    """``--version | head -c 0``, ``--help | head -c 0``: 141 and not a word, as every
    other command (argparse prints and exits inside parse_args: the broken pipe met at
    the interpreter's exit made it 120 and a message, or a traceback unbuffered)."""
    assert reader_gone(*argv) == (141, "")


def test_a_refused_flag_keeps_its_status_whoever_reads_stdout() -> None:
    status, err = reader_gone("ls", "--no-such-flag")
    assert status == 2 and "unrecognized arguments: --no-such-flag" in err


def test_ls_says_where_the_expired_sessions_are(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--state expired`` lists nothing (the server never sets that state) while a
    session's TTL has passed: the help says so, and which command lists them."""
    listed = run(["ls", "--data-dir", str(data_dir), "--state", "expired"], capsys)
    assert listed[0] == 0 and "0-0 of 0 sessions" in listed[1]
    code, out, _ = run(["cleanup", "--data-dir", str(data_dir), "--dry-run"], capsys)
    assert code == 0 and out.startswith("old\t")
    with pytest.raises(SystemExit):
        main(["ls", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "no session is ever 'expired'" in help_text
    assert "'cleanup --dry-run' lists those" in help_text


def _with_stdout(where: str, argv: list[str], unbuffered: bool) -> subprocess.Popen[str]:
    """``bamboo-session ARGV`` started by a shell with its stdout closed (``>&-``) or on
    a full disk (``>/dev/full``), stderr read."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    redirect = ">&-" if where == "closed" else ">/dev/full"
    return subprocess.Popen(
        [
            "sh",
            "-c",
            f'exec "$@" {redirect}',
            "sh",
            sys.executable,
            "-m",
            "bamboo_session.server",
            *argv,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**env, **({"PYTHONUNBUFFERED": "1"} if unbuffered else {})},
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
@pytest.mark.parametrize("where", ["closed", "full"])
def test_output_that_cannot_be_written_is_said_in_one_line(tmp_path: Path, where: str) -> None:
    """``--version >&-``, ``--help >/dev/full``, ``ls >&-``: one line on stderr and
    status 1, as the shell's own tools (it was a traceback and 1, status 120 and a
    message, or, for an unbuffered --help on a full disk, 0 with nothing written)."""
    data = make_data_dir(tmp_path / "data")
    reason = "Bad file descriptor" if where == "closed" else "No space left on device"
    for argv in (["--version"], ["--help"], ["serve", "--help"], ["ls", "--data-dir", str(data)]):
        for unbuffered in (False, True):
            process = _with_stdout(where, argv, unbuffered)
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 1, (argv, unbuffered, err)
            assert err.startswith("bamboo-session: ") and err.endswith(f"{reason}\n"), err
            assert err.count("\n") == 1, err
    process = _with_stdout(where, ["--no-such-flag"], unbuffered=False)
    assert process.communicate(timeout=TIMEOUT)[0] is None and process.returncode == 2


def test_serve_with_its_stdout_closed_stops_cleanly(tmp_path: Path) -> None:
    """``serve >&-``: its listening socket took the free number 1, and uvloop aborted
    at the stop as it closed it (status 134, SIGABRT): stdin, stdout and stderr found
    closed are opened on the null device before anything else."""
    process = _with_stdout("closed", ["serve", "--port", "0", "--store", "memory://"], False)
    assert process.stderr is not None
    for line in process.stderr:
        if "listening on" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(TIMEOUT) == 0, rest
    assert '"stopped"' in rest
