"""The project's Python clients against the HTTP API's refusals that say when to ask
again (a 429 or a 503 with ``Retry-After``, docs/protocol.md "Order of checks"): the
client's one request after a resume refused with 4409 (``Dialer.events_after``), and
the operator tools' reads of a running server (``ls``/``show --url``). Each waits as
told, then asks again, rather than fail or, worse, report events as maybe missing.
Real servers, real clients, a real debt: a small read allowance and a big page."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, ConnectionLost
from tests.client_backlog_support import read_to_the_end, take, url
from tests.instances import eventually
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.test_http_read_limits import a_log, in_thread, stalled_get, status_of

# A page of about 1 MB costs 60 kB of an allowance of 20 kB at 20 kB a second: its peer
# is some 2 s in debt once it is read, and its next request for a page gets 429 with
# Retry-After: 3 (or 2).
LIMITS = {"rate_limit_bytes": 20_000, "rate_limit_bytes_burst": 20_000}


async def into_debt(server: Any) -> None:
    """Puts 127.0.0.1 in debt with a page of about 1 MB, and checks that it is."""
    assert (await in_thread(status_of, server.port, "/api/v1/sessions/big?limit=100"))[0] == 200
    status, retry_after = await in_thread(status_of, server.port, "/api/v1/sessions/big?limit=1")
    assert status == 429 and int(retry_after) >= 2, (status, retry_after)


async def test_the_clients_check_after_a_4409_waits_out_a_429() -> None:
    """The viewer has events 1..5 when its connection is cut; 5 more are appended and
    the session closed while it is away, so its resume is refused with 4409, and it
    asks the HTTP API whether events follow seq 5, while its address is in debt: 429,
    Retry-After 3. It ended events() with "events after seq 5 may not have been
    delivered (HTTP 429 …)", for events the server had for it; it now waits 3 s, asks
    again, and is told which seq to read after."""
    async with run_server(**LIMITS) as server:
        await a_log(server, "big", 96)
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        publisher = await BambooClient.connect(
            url(server), "away", create=True, role="agent", receive_events=False
        )
        viewer = await BambooClient.connect(
            f"ws://127.0.0.1:{port}", "away", backoff_initial=0.05, backoff_max=0.2
        )
        try:
            for _ in range(5):
                await publisher.publish(Token("before"))
            assert [e.seq for e in await take(viewer, 5, timeout=5)] == [1, 2, 3, 4, 5]
            proxy.cut()
            await eventually(lambda: not viewer.connected)
            for _ in range(5):
                await publisher.publish(Token("after"))
            await publisher.set_state("closed")
            await into_debt(server)
            started = time.monotonic()
            proxy.mend()
            seqs, error = await read_to_the_end(viewer, 15)
        finally:
            await viewer.close()
            await publisher.close()
            await proxy.close()
    assert seqs == [], seqs
    assert isinstance(error, ConnectionLost), repr(error)
    assert "after seq 5 not delivered" in str(error) and error.after_seq == 5, str(error)
    assert time.monotonic() - started > 1.5  # it waited as told


async def cli_process(*argv: str) -> tuple[int, str, str]:
    """``bamboo-session ARGV`` as a fresh process: two wait at once below, where the
    forked children of tests/test_cli_tools.py's ``cli`` run one at a time (a second
    ends the first, and the two threads read each other's answers from the fork
    server: "KeyError: 'pid'" in a CI run)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bamboo_session.server",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_ls_and_show_with_url_wait_out_a_503_that_says_when() -> None:
    """Answers not yet read hold all the server's buffer may (a peer leaves a page of
    about 1.5 MB unread, of a 4 MiB budget: 1 MiB): every GET of the session API gets
    503 with Retry-After: 1. The tools waited out a 429 as its Retry-After says, and
    failed on this 503 at once ("HTTP 503: busy …"); now they wait it out alike, and
    answer once the peer has gone."""
    async with run_server(memory_budget=4 * 1024 * 1024, max_page_bytes=2 * 1024 * 1024) as server:
        await a_log(server, "held", 150)
        await a_log(server, "mine", 1)
        stalled = await in_thread(stalled_get, server.port, "/api/v1/sessions/held?limit=1000")
        await eventually(lambda: server.unread_answers.full)
        base = f"http://127.0.0.1:{server.port}"
        assert (await in_thread(status_of, server.port, "/api/v1/sessions/mine?limit=1")) == (
            503,
            "1",
        )
        asked = asyncio.ensure_future(
            asyncio.gather(
                cli_process("ls", "--url", base), cli_process("show", "mine", "--url", base)
            )
        )
        await asyncio.sleep(3)  # both have been told 503 by now, and wait
        stalled.close()
        (ls_code, ls_out, ls_err), (show_code, show_out, show_err) = await asyncio.wait_for(
            asked, 30
        )
    assert ls_code == 0 and "held" in ls_out and "mine" in ls_out, ls_err
    assert show_code == 0 and "messages:" in show_out, show_err
