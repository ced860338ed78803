"""The offline tools as an operator meets them: they read the store ``serve`` would use
(flags, then ``BAMBOO_STORE`` / ``BAMBOO_DATA_DIR``), read it without writing, refuse
what is not a store, and ``cleanup`` lists before it removes, showing progress.

The tests that a read creates and changes nothing, and that a directory that is not a
store is refused, need the JSONL backend's read-only opening (``open_storage(url,
read_only=True)``, on the jsonl branch)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import Message, Session, utcnow
from bamboo_session.protocol.models import SessionState
from tests.forks import ForkedChild
from tests.support import attach, run_server
from tests.test_cli_tools import make_data_dir

TIMEOUT = 30.0


def tool(
    *argv: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> tuple[int, str, str]:
    """``bamboo-session ARGV`` as a process, with only ``env`` of the BAMBOO_* variables:
    forked once the imports are done (tests/forks.py), which were most of its CPU."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BAMBOO_")}
    child = ForkedChild(["-m", "bamboo_session.server", *argv], env={**clean, **(env or {})})
    out, err = child.communicate(timeout=timeout)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``, with its size and mtime."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


# -- reading creates and changes nothing (needs read-only JSONL opening) ------------------


@pytest.mark.parametrize("command", [["ls"], ["show", "a"]])
def test_reading_an_arbitrary_directory_creates_nothing_and_names_it(
    tmp_path: Path, command: list[str]
) -> None:
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"\xff\xd8")
    before = snapshot(stranger)
    code, out, err = tool(*command, "--data-dir", str(stranger))
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bamboo-session: "), err
    assert str(stranger) in lines[0]
    assert snapshot(stranger) == before  # no LOCK, events/, sessions/ or wal/


def test_reading_a_store_writes_nothing(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    before = snapshot(data_dir)
    for command in (["ls"], ["show", "a"], ["cleanup", "--dry-run"]):
        code, _, err = tool(*command, "--data-dir", str(data_dir))
        assert code == 0, err
        assert snapshot(data_dir) == before, command


def test_cleanup_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    stranger = tmp_path / "home"
    stranger.mkdir()
    code, out, err = tool("cleanup", "--data-dir", str(stranger))
    assert code != 0 and out == "" and str(stranger) in err
    assert snapshot(stranger) == {}


# -- where the store is --------------------------------------------------------------------


def test_the_store_comes_from_flags_then_the_environment(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    for env in ({"BAMBOO_DATA_DIR": str(data_dir)}, {"BAMBOO_STORE": f"jsonl://{data_dir}"}):
        code, out, err = tool("ls", "--json", env=env)
        assert code == 0, err
        assert {s["id"] for s in json.loads(out)["sessions"]} == {"a", "b", "c", "old"}, env
        code, out, err = tool("show", "a", "--json", env=env)
        assert code == 0 and json.loads(out)["metadata"]["id"] == "a", err
    # BAMBOO_STORE wins over BAMBOO_DATA_DIR, as for serve; a flag wins over both.
    both = {"BAMBOO_STORE": "memory://", "BAMBOO_DATA_DIR": str(data_dir)}
    code, out, _ = tool("ls", "--json", env=both)
    assert code == 0 and json.loads(out)["total"] == 0
    code, out, _ = tool("ls", "--json", "--data-dir", str(data_dir), env=both)
    assert code == 0 and json.loads(out)["total"] == 4
    code, out, _ = tool("ls", "--json", "--store", "memory://", env={"BAMBOO_DATA_DIR": "/x"})
    assert code == 0 and json.loads(out)["total"] == 0
    code, _, err = tool("cleanup", "--dry-run", env={"BAMBOO_DATA_DIR": str(data_dir)})
    assert code == 0 and "1 expired" in err


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"BAMBOO_STORE": "ftp://x"}, "unknown scheme 'ftp'"),
        ({"BAMBOO_STORE": "memory"}, "names a kind of store but has no '://'"),
        ({"BAMBOO_STORE": "redis:127.0.0.1:6379"}, "write redis://"),
        ({"BAMBOO_DATA_DIR": "/nonexistent/bamboo"}, "no data directory at /nonexistent/bamboo"),
    ],
)
def test_a_bad_store_from_the_environment_is_one_line(env: dict[str, str], says: str) -> None:
    for command in (["ls"], ["show", "a"], ["cleanup"]):
        code, out, err = tool(*command, env=env)
        assert code == 1 and out == "", err
        assert err.count("\n") == 1 and says in err, err


def test_a_redis_store_out_of_reach_is_named_without_its_password() -> None:
    # "bamboo-session: :hunter2@127.0.0.1:9/0: redis unavailable": the store was named
    # by its location, which for Redis is the URL's netloc, password and all.
    url = "redis://:hunter2@127.0.0.1:9/0"  # (nothing listens on port 9)
    for command in (["ls"], ["cleanup", "--store", url]):
        code, out, err = tool(*command, env={"BAMBOO_STORE": url})
        assert code == 1 and out == "", err
        assert "redis://:***@127.0.0.1:9/0: redis unavailable" in err, err
        assert "hunter2" not in err


# -- cleanup -------------------------------------------------------------------------------


def make_expired(path: Path, count: int) -> None:
    async def fill() -> None:
        config = JsonlStorageConfig(path, durability="os")
        async with await JsonlStorage.open(config) as storage:
            await storage.create_session(Session.new("kept", user_id="u"))
            for i in range(count):
                old = Session.new(f"old-{i}", ttl=60)
                old.metadata.touch(utcnow() - timedelta(hours=1))
                await storage.create_session(old)
            await storage.append_message("kept", Message.user("still here"))

    asyncio.run(fill())


def test_cleanup_dry_run_lists_and_removes_nothing_then_cleanup_removes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_expired(data_dir, 30)
    code, out, err = tool("cleanup", "--dry-run", "--data-dir", str(data_dir))
    assert code == 0, err
    listed = [line.split("\t")[0] for line in out.splitlines()]
    assert sorted(listed) == sorted(f"old-{i}" for i in range(30))
    assert "30 expired, none removed" in err
    code, out, err = tool("ls", "--json", "--limit", "1000", "--data-dir", str(data_dir))
    assert json.loads(out)["total"] == 31
    code, out, err = tool("cleanup", "--data-dir", str(data_dir))
    assert (code, out) == (0, "30\n"), err
    assert (
        err.strip().splitlines()[-1]
        == "bamboo-session: cleanup: expired sessions removed: 30 of 30"
    )
    code, out, _ = tool("ls", "--json", "--data-dir", str(data_dir))
    assert [s["id"] for s in json.loads(out)["sessions"]] == ["kept"]


# -- show over HTTP reads every page --------------------------------------------------------


async def test_show_over_http_reads_a_long_history_page_by_page(tmp_path: Path) -> None:
    async with run_server(tmp_path, durability="os", max_history_page=300) as server:
        async with attach(server, "long", create=True) as (peer, _):
            for i in range(1_100):
                message = {"role": "user", "content": f"m{i}"}
                await peer.send({"type": "message", "id": i, "message": message})
            for _ in range(1_100):
                await peer.recv_type("ack")
        url = f"http://127.0.0.1:{server.port}"
        code, out, err = await asyncio.to_thread(tool, "show", "long", "--url", url, "--json")
    assert code == 0, err
    session = json.loads(out)
    assert [m["content"] for m in session["messages"]] == [f"m{i}" for i in range(1_100)]


# -- delete --------------------------------------------------------------------------------


def test_delete_removes_sessions_by_id_whatever_their_state(tmp_path: Path) -> None:
    # A closed session counts toward its user's --max-user-bytes until it is deleted:
    # this is how an operator frees a user's room (peers have no delete).
    data_dir = tmp_path / "data"
    make_expired(data_dir, 2)

    async def close_kept() -> None:
        config = JsonlStorageConfig(data_dir, durability="os")
        async with await JsonlStorage.open(config) as storage:
            await storage.update_session_state("kept", SessionState.CLOSED)

    asyncio.run(close_kept())
    code, out, err = tool("delete", "kept", "old-0", "kept", "--data-dir", str(data_dir))
    assert (code, out, err) == (0, "2\n", "")
    code, out, _ = tool("ls", "--json", "--data-dir", str(data_dir))
    assert [s["id"] for s in json.loads(out)["sessions"]] == ["old-1"]
    code, out, err = tool("delete", "old-1", "nobody", "--data-dir", str(data_dir))
    assert (code, out) == (1, "1\n")
    assert err.strip() == "bamboo-session: delete: no session nobody"
    code, out, _ = tool("ls", "--json", "--data-dir", str(data_dir))
    assert json.loads(out)["sessions"] == []


def test_a_delete_the_store_fails_names_the_session_and_counts_those_removed(
    tmp_path: Path,
) -> None:
    """A directory stands where "b"'s delete puts its checkpoint (the rename fails, the
    session stays): the tool says which session was not deleted, and why; the one
    removed before it is counted, the one after it not tried."""
    data_dir = tmp_path / "store"

    async def three_sessions() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(data_dir)) as storage:
            for session_id in ("a", "b", "c"):
                await storage.create_session(Session.new(session_id))

    asyncio.run(three_sessions())
    obstacle = JsonlStorageConfig(data_dir).layout.tombstone("b")
    obstacle.mkdir()
    (obstacle / "x").touch()
    code, out, err = tool("delete", "a", "b", "c", "--data-dir", str(data_dir))
    assert (code, out) == (1, "1\n")
    said = [line for line in err.splitlines() if line.startswith("bamboo-session: delete:")]
    assert said[0].startswith("bamboo-session: delete: session b not deleted: "), err
    assert "Is a directory" in said[0]
    assert said[1:] == ["bamboo-session: delete: not tried: c"]
    code, out, _ = tool("ls", "--json", "--data-dir", str(data_dir))
    assert sorted(s["id"] for s in json.loads(out)["sessions"]) == ["b", "c"]


async def test_delete_is_refused_while_a_server_holds_the_store(tmp_path: Path) -> None:
    async with run_server(tmp_path, durability="os") as server:
        async with attach(server, "busy", create=True):
            pass
        code, out, err = await asyncio.to_thread(
            tool, "delete", "busy", "--data-dir", str(tmp_path)
        )
    assert code == 1 and out == ""
    # No --url to turn to: the tools that write have none.
    assert err.strip() == f"bamboo-session: {tmp_path} is in use by a running server; stop it first"


async def test_ls_and_show_read_a_held_jsonl_store_and_refuse_a_held_sqlite_one_as_said(
    tmp_path: Path,
) -> None:
    for command in (["ls"], ["show", "a"]):
        code, out, _ = await asyncio.to_thread(tool, *command, "--help")
        help_text = " ".join(out.split())
        assert code == 0 and "refused while a server holds it" not in help_text
        assert "a JSONL store a server holds is read as it is" in help_text, help_text
        assert "an SQLite one is refused" in help_text, help_text
    database = tmp_path / "held.db"
    for store in (f"jsonl://{tmp_path / 'held'}", f"sqlite://{database}"):
        async with run_server(store=store, durability="os") as server:
            async with attach(server, "a", create=True):
                pass
            listed = await asyncio.to_thread(tool, "ls", "--json", "--store", store)
            shown = await asyncio.to_thread(tool, "show", "a", "--json", "--store", store)
        if store.startswith("jsonl"):
            assert listed[0] == 0 and [s["id"] for s in json.loads(listed[1])["sessions"]] == ["a"]
            assert shown[0] == 0 and json.loads(shown[1])["metadata"]["id"] == "a"
        else:
            for code, out, err in (listed, shown):
                assert code == 1 and out == "" and "is in use" in err, err
                assert "ask that server with --url" in err, err  # as the help says


@pytest.mark.parametrize("command", [["delete", "a"], ["cleanup"], ["recount"]])
def test_a_tool_that_writes_makes_no_sqlite_store_where_there_is_none(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "typo.db"
    code, out, err = tool(*command, "--store", f"sqlite://{path}")
    assert (code, out, err.strip()) == (1, "", f"bamboo-session: no SQLite store at {path}")
    assert list(tmp_path.iterdir()) == []


# -- a tool's start imports what it uses -----------------------------------------------------

# What only `serve` (structlog, and rich with it where installed), `tail`/`publish`
# (websockets) and `--url` (the HTTP client) need: most of a tool's start is its imports.
SERVER_ONLY_MODULES = ("structlog", "rich", "websockets", "urllib.request")

IMPORTS_OF_COMMANDS = """
import contextlib, io, json, sys
from bamboo_session.server.cli import main
statuses = []
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for argv in json.loads(sys.argv[1]):
        statuses.append(main(argv))
print(json.dumps({"statuses": statuses, "loaded": [m for m in json.loads(sys.argv[2])
                                                   if m in sys.modules]}))
"""


def test_offline_tools_and_a_refused_setting_do_not_import_the_server_stack(
    tmp_path: Path,
) -> None:
    data_dir = str(make_data_dir(tmp_path / "data"))
    commands = [
        ["ls", "--data-dir", data_dir],
        ["show", "a", "--data-dir", data_dir],
        ["cleanup", "--dry-run", "--data-dir", data_dir],
        ["serve", "--port", "x"],
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            IMPORTS_OF_COMMANDS,
            json.dumps(commands),
            json.dumps(SERVER_ONLY_MODULES),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"statuses": [0, 0, 0, 2], "loaded": []}
