"""A graceful stop of ``serve`` parks at most ``--max-parked-at-stop`` of the sessions
it leaves attached, and its log line (``parked the sessions left attached at the
stop``) says ``stopped_at_bound`` true only when the store still holds some for the
next start's park: with exactly the bound attached the park reaches it with nothing
left (the flag said true then, r367 to h368: the park could not tell), with one more
the next start parks that one.

Real servers in processes of their own, stopped with SIGTERM by pid, on real stores in
temp dirs (JSONL, SQLite), read offline between the runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.protocol.models import SessionState
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_server_restart_park import STORES, hello, store_url

BOUND = 3
AT_STOP = "parked the sessions left attached at the stop"
AT_START = "parked the sessions a dead server left attached"


async def stored_states(url: str) -> dict[str, SessionState]:
    storage = await open_storage(url, default_ttl=3600)
    try:
        listing = await storage.list_sessions(SessionFilter(limit=100))
    finally:
        await storage.close()
    return {metadata.id: metadata.state for metadata in listing.sessions}


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("beyond", [0, 1], ids=["exactly the bound", "one more"])
async def test_the_stop_says_it_stopped_at_its_bound_only_when_it_left_sessions(
    kind: str, beyond: int, tmp_path: Path
) -> None:
    url = store_url(kind, tmp_path)
    flags = ("--store", url, "--default-ttl", "3600", "--max-parked-at-stop", str(BOUND))
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    await server.start_in_loop()
    try:
        attached = [await hello(server.port, f"chat-{n}") for n in range(BOUND + beyond)]
        assert await asyncio.to_thread(server.stop) == 0
        for ws, _ in attached:
            ws.transport.abort()

        states = await stored_states(url)
        parked = [name for name, state in states.items() if state == SessionState.DISCONNECTED]
        left = [name for name, state in states.items() if state == SessionState.ACTIVE]
        assert (len(parked), len(left)) == (BOUND, beyond), states

        await server.start_in_loop()  # the next start parks what the stop left
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        server.kill()
    records = server.log_records()
    at_stop = [r for r in records if r.get("event") == AT_STOP]
    assert [(r["sessions"], r["stopped_at_bound"]) for r in at_stop] == [(BOUND, beyond > 0)]
    at_start = [r["sessions"] for r in records if r.get("event") == AT_START]
    assert at_start == ([beyond] if beyond else [])
    assert set((await stored_states(url)).values()) == {SessionState.DISCONNECTED}
    assert_no_tracebacks(records)


PHASES = [
    "closing the sessions",
    "parking the sessions left attached",
    "delivering the peers' last bytes",
    "ending the background work",
    "closing the store",
]


@pytest.mark.parametrize("kind", STORES)
async def test_the_park_is_a_phase_of_the_stop_of_its_own_in_the_log(
    kind: str, tmp_path: Path
) -> None:
    """The phases a stop logs as each begins (``stop phase``, debug), by the names its
    other lines give them (``phase``: a second signal, a stop past its bound) and
    docs/operations.md lists: the park of the sessions left attached is its own, not
    part of ``closing the sessions`` (the log named it so until h389)."""
    url = store_url(kind, tmp_path)
    flags = ("--store", url, "--log-level", "debug")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    await server.start_in_loop()
    try:
        ws, _ = await hello(server.port, "chat")
        assert await asyncio.to_thread(server.stop) == 0
        ws.transport.abort()
    finally:
        server.kill()
    records = server.log_records()
    assert [r["phase"] for r in records if r.get("event") == "stop phase"] == PHASES
    phases = [r.get("event") for r in records if r.get("event") in ("stop phase", AT_STOP)]
    assert phases.index(AT_STOP) == 2  # the park's own line, within its phase
