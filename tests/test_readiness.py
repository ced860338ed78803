"""What ``/readyz`` answers over time while sessions' appends fail among good ones: a real
server on a JSONL store in a temp dir, a failing session's log a directory (EISDIR at
every open: a failure of its own file, the store says), or the WAL's sync failing (EIO:
the store's); and the file ``/readyz`` probes the logs' directory with a directory too,
so that only appends tell it whether the store takes them. Then each directory the
store's appends write in, gone, with a file in its place (ENOTDIR, as root too): the
probes of ``/readyz`` fail while it is gone, though the store's base directory takes
files."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from bamboo_session.server.readiness import AppendHealth, probe_path, write_probes
from tests.instances import eventually
from tests.jsonl_support import break_log, mend_log
from tests.support import Peer, attach, get, run_server, token
from tests.test_jsonl_replace_failures import (  # noqa: F401 (the fixture)
    FailingSync,
    fail_sync_fixture,
)

READY = (200, "ready\n")
# /readyz probes at most once a second: on a loaded machine, a few more.
PROBED_WITHIN = 15.0
# How long another session's append shows the store takes appends, in the tests that do
# not test that window: longer than any stall of a loaded machine between two requests.
LATELY = 3600.0


async def acked(peer: Peer, text: str) -> None:
    await peer.request({"type": "event", "id": text, "event": token(text)}, "ack")


async def refused(peer: Peer, text: str, why: str = "Is a directory") -> None:
    error = await peer.request({"type": "event", "id": text, "event": token(text)}, "error")
    assert error["code"] == "internal" and why in error["message"], error


async def not_ready(server: Any, session_id: str) -> None:
    status, body = await get(server, "/readyz")
    assert status == 503, body
    prefix = (
        f"not ready: appends are failing: could not append to the log of session {session_id!r}"
    )
    assert body.startswith(prefix), body


@contextlib.asynccontextmanager
async def probes_failing(data: Path) -> AsyncIterator[Path]:
    """Every probe of the disk by ``/readyz`` fails (EISDIR) while the directory this
    yields, where it probes the logs' directory, stands."""
    probe = probe_path(data / "events")
    probe.mkdir()
    try:
        yield probe
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


async def test_a_session_whose_appends_fail_for_good_among_good_ones_leaves_it_ready(
    tmp_path: Path,
) -> None:
    """A session's failures, though of its own file, may be the store's while no other
    session appends: 503 (a probe that succeeds says nothing of them). Once another
    session's append succeeds, its failures are its own, and so are those of another
    session whose file fails, from its first: taking the server out of rotation would
    serve them no better and every other session worse, so ``/readyz`` stays ready; and
    the log tells one outage, ended when the session that began it appends again."""
    data = tmp_path / "data"
    async with run_server(store=f"jsonl://{data}") as server, probes_failing(data) as probe:

        async def ready() -> bool:
            return await get(server, "/readyz") == READY

        server.manager.append_health.alone_within = LATELY
        failures = server.manager.append_health.failures
        failures.quiet = 3600.0  # b's appends come within it, however loaded the machine
        failures.every = 3600.0  # no summary line either, however long the test takes
        async with (
            attach(server, "x", create=True) as (x, _),
            attach(server, "c", create=True) as (c, _),
            attach(server, "b", create=True) as (b, _),
        ):
            logs_of_x = break_log(data, "x")
            with capture_logs(processors=[merge_contextvars]) as logs:
                for attempt in ("x0", "x0 again"):  # nothing else appended: the store's
                    await refused(x, attempt)
                    await not_ready(server, "x")
                probe.rmdir()  # the disk takes a probe: ready, though no append proved it
                await eventually(ready, PROBED_WITHIN)
                probe.mkdir()
                await refused(x, "x0 after the probe")  # still, nothing else appended
                await not_ready(server, "x")
                answers = []
                for n in range(1, 4):
                    await acked(b, f"b{n}")
                    answers.append(await get(server, "/readyz"))
                    await refused(x, f"x{n}")
                    answers.append(await get(server, "/readyz"))
                assert answers == [READY] * 6
                # Another session's own file fails: its own failure, from its first.
                break_log(data, "c")
                await refused(c, "c0")
                assert await get(server, "/readyz") == READY
                for n in range(1, 3):
                    await refused(c, f"c{n}")
                    await refused(x, f"x{3 + n}")
                    assert await get(server, "/readyz") == READY
                mend_log(logs_of_x)
                failures.settle = 0.0  # as if no append had failed for that long
                await acked(x, "back")
                assert await get(server, "/readyz") == READY
    told = [line for line in logs if line["event"].startswith("append")]
    assert [(line["event"], line.get("session_id")) for line in told] == [
        ("append failed", "x"),
        ("appends succeed again", None),
    ]
    ended = told[1]
    assert ended["failed"] == 3 + 3 + 3 + 2  # x's and c's, the first included
    assert ended["ended_by"] == "an append of session 'x', whose failure began it"


async def test_sessions_failing_alone_in_turn_among_good_ones_leave_it_ready(
    tmp_path: Path,
) -> None:
    """Several sessions' own files fail, each at every append, in turn among good ones:
    ``/readyz`` stays ready at every poll, from each one's first failure on, and when
    each fails again after the others did. Nothing is kept per failing session, so
    their number does not matter here (the unit test below counts to 1,000 of them)."""
    data = tmp_path / "data"
    failing = [f"f{n}" for n in range(4)]
    async with (
        run_server(store=f"jsonl://{data}") as server,
        probes_failing(data),
        contextlib.AsyncExitStack() as peers,
    ):
        server.manager.append_health.alone_within = LATELY
        good, _ = await peers.enter_async_context(attach(server, "good", create=True))
        attached = await asyncio.gather(
            *(peers.enter_async_context(attach(server, sid, create=True)) for sid in failing)
        )
        for session_id in failing:
            break_log(data, session_id)
        answers = []
        for round_ in range(2):
            await acked(good, f"good{round_}")
            for session_id, (peer, _) in zip(failing, attached, strict=True):
                await refused(peer, f"{session_id}.{round_}")
                answers.append(await get(server, "/readyz"))
        assert answers == [READY] * 2 * len(failing)


async def test_a_failure_of_the_store_is_not_ready_at_once_though_others_appended(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    """The disk fails a sync (EIO, for real: tests/failing_sync_helper.py): the store's
    failure, 503 from the first, however lately another session appended; ready again
    at the next append that succeeds."""
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}") as server,
        probes_failing(data),
        attach(server, "b", create=True) as (b, _),
        attach(server, "x", create=True) as (x, _),
    ):
        server.manager.append_health.alone_within = LATELY
        await acked(x, "x1")  # each log written once: an append syncs the WAL only
        await acked(b, "b1")
        fail_sync.arm()
        await refused(x, "x2", "Input/output error")
        assert fail_sync.fired()
        await not_ready(server, "x")
        await acked(b, "b2")
        assert await get(server, "/readyz") == READY


async def test_a_sessions_own_failure_with_no_other_append_lately_is_the_stores(
    tmp_path: Path,
) -> None:
    """A failure of a session's own file is its alone only while another session's
    append succeeded less than ``alone_within`` seconds before (0 here: never): else
    every file may be failing so, and it is the store's."""
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}") as server,
        probes_failing(data),
        attach(server, "b", create=True) as (b, _),
        attach(server, "x", create=True) as (x, _),
    ):
        server.manager.append_health.alone_within = 0.0
        break_log(data, "x")
        await acked(b, "b1")
        await refused(x, "x1")
        await not_ready(server, "x")
        await acked(b, "b2")
        assert await get(server, "/readyz") == READY


def store_failures_in_turn(failing: int, own: bool, rounds: int = 3) -> list[bool]:
    """``failing`` sessions failing in turn, b's append succeeding before each, each
    failure of the session's own file (``own``) or not: whether each was taken as the
    store's."""
    health = AppendHealth()
    health.alone_within = LATELY
    taken = []
    for n in range(failing * rounds):
        health.appended("b", time.monotonic(), health.reported)
        health.failed(f"failing-{n % failing}", "could not append", 1, own)
        taken.append(health.failure is not None)
    return taken


def test_failures_of_sessions_own_files_among_good_appends_are_never_the_stores() -> None:
    """However many sessions fail in turn among good appends, and whether or not each
    appends between its failures: none is taken as the store's if its own file fails,
    every one if not."""
    for failing in (1, 64, 65, 1000):
        assert not any(store_failures_in_turn(failing, own=True))
        assert all(store_failures_in_turn(failing, own=False))
    health = AppendHealth()
    health.alone_within = LATELY
    health.appended("b", time.monotonic(), health.reported)
    for _ in range(100):  # one session near its file's limit: fits, too big, fits...
        health.appended("x", time.monotonic(), health.reported)
        health.failed("x", "could not append", 1, own=True)
        assert health.failure is None
    health.failed("b", "could not append", 1, own=True)  # x appended lately: b is alone
    assert health.failure is None
    alone = AppendHealth()
    alone.alone_within = LATELY
    alone.appended("x", time.monotonic(), alone.reported)
    alone.failed("x", "could not append", 1, own=True)  # its own append shows nothing
    assert alone.failure == "could not append"


@contextlib.contextmanager
def directory_gone(directory: Path) -> Iterator[None]:
    """A directory of the store gone, with a file in its place (a mount of its own
    lost): every new file in it fails (ENOTDIR), whoever the process runs as; files
    open in it stay writable. Back as it was when the block ends."""
    saved = directory.with_name(directory.name + ".away")
    directory.rename(saved)
    directory.write_bytes(b"")
    try:
        yield
    finally:
        directory.unlink()
        saved.rename(directory)


async def test_appends_failing_in_the_logs_directory_alone_keep_it_not_ready(
    tmp_path: Path,
) -> None:
    """Appends fail because the logs' directory takes no new log (the store's failure,
    whatever else appends), while the store's base directory takes files: ``/readyz``
    stays 503 at every probe, and is ready at the first probe once the directory is
    back, though no append proved it."""
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}") as server,
        attach(server, "x", create=True) as (x, _),  # its log not open: never appended
    ):
        server.services.readiness.probe_every = 0.0  # a probe at each /readyz, no waiting
        with directory_gone(data / "events"):
            await refused(x, "x1", "Not a directory")
            for _ in range(4):
                await not_ready(server, "x")
        assert await get(server, "/readyz") == READY


@pytest.mark.parametrize(
    ("store", "directory"),
    [
        ("jsonl://{}", "events"),
        ("jsonl://{}", "sessions"),
        ("jsonl://{}", "wal"),
        ("sqlite://{}/bamboo.db", "."),  # the database's, where its journal and WAL go
    ],
)
async def test_each_directory_the_appends_write_in_is_probed(
    tmp_path: Path, store: str, directory: str
) -> None:
    """The logs', the checkpoints' and the WAL's directories each may fail alone (a
    mount of its own): a probe that passes beside the others does not make it ready."""
    data = tmp_path / "data"
    async with run_server(store=store.format(data)) as server:
        server.services.readiness.probe_every = 0.0
        # As the actors report an append that failed for a reason of the store's.
        server.manager.append_health.failed("s1", "storage failed: [Errno 5] I/O error", 1)
        with directory_gone((data / directory).resolve()):
            for _ in range(4):
                status, body = await get(server, "/readyz")
                assert status == 503 and body.startswith("not ready: appends are failing"), body
        assert await get(server, "/readyz") == READY


async def test_a_symlinked_sqlite_file_is_probed_where_sqlite_writes(tmp_path: Path) -> None:
    """The database a symlink to a file on another disk: SQLite writes its journal and
    WAL beside that file, not beside the link, and so does the probe."""
    data, disk = tmp_path / "data", tmp_path / "disk"
    data.mkdir()
    disk.mkdir()
    (data / "bamboo.db").symlink_to(disk / "bamboo.db")
    async with run_server(store=f"sqlite://{data}/bamboo.db") as server:
        assert (disk / "bamboo.db-wal").exists()  # where SQLite writes
        server.services.readiness.probe_every = 0.0
        server.manager.append_health.failed("s1", "storage failed: [Errno 5] I/O error", 1)
        with directory_gone(disk):
            status, body = await get(server, "/readyz")
            assert status == 503 and body.startswith("not ready: appends are failing"), body
        assert await get(server, "/readyz") == READY


async def test_a_directory_the_appends_do_not_write_in_is_not_probed(tmp_path: Path) -> None:
    """``os`` mode keeps no WAL: its directory gone does not hold ``/readyz`` at 503
    once the appends' own directories take a probe."""
    data = tmp_path / "data"
    async with run_server(store=f"jsonl://{data}?durability=os") as server:
        server.services.readiness.probe_every = 0.0
        server.manager.append_health.failed("s1", "storage failed: [Errno 5] I/O error", 1)
        with directory_gone(data / "wal"):
            assert await get(server, "/readyz") == READY


def test_a_probe_a_crash_cut_short_is_overwritten_and_removed_by_the_next(tmp_path: Path) -> None:
    """A server killed mid-probe leaves the probe's file; the next probe, by any later
    process, writes the same file and removes it: crashes never pile files up."""
    directories = (tmp_path / "events", tmp_path / "wal")
    for directory in directories:
        directory.mkdir()
    leave = "import sys; from pathlib import Path; from bamboo_session.server.readiness import"
    leave += " probe_path; [probe_path(Path(d)).write_bytes(bytes(65536)) for d in sys.argv[1:]]"
    subprocess.run([sys.executable, "-c", leave, *map(str, directories)], check=True)
    write_probes(directories, 4096)
    assert [list(directory.iterdir()) for directory in directories] == [[], []]
