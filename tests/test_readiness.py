"""What ``/readyz`` answers over time while a session's appends fail for good among good
ones: a real server on a JSONL store in a temp dir, the session's log a directory
(EISDIR at every open), and the file ``/readyz`` probes the disk with a directory too,
so that only appends tell it whether the store takes them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from bamboo_session.server.readiness import FAILING_KEPT, AppendHealth
from tests.instances import eventually
from tests.jsonl_support import break_log, mend_log
from tests.support import Peer, attach, get, run_server, token

READY = (200, "ready\n")
# /readyz probes at most once a second: on a loaded machine, a few more.
PROBED_WITHIN = 15.0


async def acked(peer: Peer, text: str) -> None:
    await peer.request({"type": "event", "id": text, "event": token(text)}, "ack")


async def refused(peer: Peer, text: str) -> None:
    error = await peer.request({"type": "event", "id": text, "event": token(text)}, "error")
    assert error["code"] == "internal" and "Is a directory" in error["message"], error


async def not_ready(server: Any, session_id: str) -> None:
    status, body = await get(server, "/readyz")
    assert status == 503, body
    prefix = (
        f"not ready: appends are failing: could not append to the log of session {session_id!r}"
    )
    assert body.startswith(prefix), body


async def test_a_session_whose_appends_fail_for_good_among_good_ones_leaves_it_ready(
    tmp_path: Path,
) -> None:
    """A session's failures may be the store's: 503 until another session's append
    succeeds (a probe that succeeds says nothing of them). From then on, until it
    appends, its failures are its own: taking the server out of rotation would serve it
    no better and every other session worse, so ``/readyz`` stays ready; and the log
    tells one outage, ended when that session appends again."""
    data = tmp_path / "data"
    async with run_server(store=f"jsonl://{data}") as server:
        probe = data / f".bamboo-probe-{os.getpid()}"
        probe.mkdir()  # where /readyz probes the disk: every probe fails (EISDIR)

        async def ready() -> bool:
            return await get(server, "/readyz") == READY

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
                # Another session fails, its first failure: the store's, until shown not.
                break_log(data, "c")
                await refused(c, "c0")
                await not_ready(server, "c")
                await acked(b, "b4")
                for n in range(1, 3):
                    await refused(c, f"c{n}")
                    await refused(x, f"x{3 + n}")
                    assert await get(server, "/readyz") == READY
                mend_log(logs_of_x)
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


def store_failures_in_turn(failing: int, rounds: int = 3) -> list[bool]:
    """``failing`` sessions failing in turn, b's append succeeding after each: whether
    each failure after the first round was taken as the store's."""
    health = AppendHealth()
    taken = []
    for n in range(failing * rounds):
        health.failed(f"failing-{n % failing}", "could not append", 1)
        taken.append(health.failure is not None)
        health.appended("b")
    return taken[failing:]


def test_it_remembers_the_last_failing_sessions_up_to_its_bound() -> None:
    """Up to ``FAILING_KEPT`` sessions failing for good in turn among good appends: none
    is taken as the store's once each has failed once. One more, and the one failing
    next is always the one forgotten: each failure is taken as new (the bound that keeps
    what ``/readyz`` holds small, as docs/protocol.md says)."""
    assert not any(store_failures_in_turn(FAILING_KEPT))
    assert all(store_failures_in_turn(FAILING_KEPT + 1))
