"""``bamboo-session migrate`` copies stores offline, past every check a publish passes:
a source may hold an event that a server of the destination cannot send whole (one
stored under a larger ``--max-frame-bytes``, or before the frame's envelope was kept
free of the limit), which its viewers reading frames of that limit close 1009 at, and
meet again at each resume. It is copied all the same (refusing it would leave the store
unmovable, and dropping it would lose it), and each such event is named on stderr with
its session and seq, and the size the destination would need, against the
``--max-frame-bytes`` the run is told (1 MiB by default, that of ``serve``; 0: no
check). The exit status is 0: the copy is whole (``--verify`` agrees).

Real stores in a temp dir, the command in a child process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.models import AgentEvent, Session
from tests.test_migrate_cli import migrate, sqlite_url

LIMIT = 4096
OVER = LIMIT - EVENT_ENVELOPE_BYTES + 1  # bytes of JSON: one more than a frame carries


async def make_source(url: str) -> None:
    """Session ``big``: an event of OVER bytes in JSON between two small ones (seq 2),
    and one of OVER in MessagePack only (floats: 9 bytes there, 4 in JSON; seq 4);
    session ``small``: small events alone."""
    async with await open_storage(url, cleanup_interval=None) as store:
        await store.create_session(Session.new("big"))
        await store.create_session(Session.new("small"))
        text = "x" * (OVER - len('{"type":"token","content":""}'))
        floats = AgentEvent.custom("n", [0.5] * (LIMIT // 8))
        for event in (AgentEvent.token("a"), AgentEvent.token(text), AgentEvent.token("b"), floats):
            await store.append_event("big", event)
        await store.append_event("small", AgentEvent.token("c"))


def test_an_event_over_the_destinations_frame_limit_is_copied_and_named(tmp_path: Path) -> None:
    source = sqlite_url(tmp_path / "src.db")
    asyncio.run(make_source(source))
    target = sqlite_url(tmp_path / "dst.db")
    result = migrate("--from", source, "--to", target, "--max-frame-bytes", str(LIMIT), "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verify: all 2 sessions match" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, result.stderr
    assert warnings[0].startswith(
        f"warning: session 'big' seq 2: the event is {OVER} bytes in JSON, as JSON viewers get it"
    ), warnings
    assert f"({LIMIT - EVENT_ENVELOPE_BYTES})" in warnings[0]
    assert warnings[1].startswith("warning: session 'big' seq 4: the event is "), warnings
    assert "in MessagePack, as MessagePack viewers get it" in warnings[1]
    assert warnings[2].startswith("warning: 2 events copied (the first 2 named)"), warnings
    assert f"a frame of {LIMIT} bytes" in warnings[2] and "--max-frame-bytes" in warnings[2]
    # Under serve's default limit (1 MiB), and with the check off, they are no matter.
    for limit in ([], ["--max-frame-bytes", "0"]):
        again = sqlite_url(tmp_path / f"again{len(limit)}.db")
        result = migrate("--from", source, "--to", again, *limit)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr, result.stderr
    for refused in ("4095", "-1"):  # serve's bound: not a check of every event, nor none
        result = migrate("--from", source, "--to", target, "--max-frame-bytes", refused)
        assert result.returncode == 2 and "0 or at least 4096" in result.stderr, result.stderr


def test_an_event_of_more_free_form_values_than_a_frame_holds_is_measured_whole(
    tmp_path: Path,
) -> None:
    """An event of more than 16,384 free-form values (MAX_FREE_VALUES), which no frame
    holds but an in-process append stored before it was held to that bound (0.1.0),
    and a store written directly may hold: 150,000 floats are 600 KB of JSON and 1.35 MB
    in MessagePack, over a 1 MiB frame. Its size in MessagePack was bounded by its
    count of values as if it were a frame's (at most 16,384 floats of 5 bytes more):
    the copy named nothing, and its MessagePack viewers closed 1009 at it. A JSONL
    source, as most stores are."""
    source = f"jsonl://{tmp_path / 'src'}"

    async def make() -> None:
        async with await open_storage(source, cleanup_interval=None) as store:
            await store.create_session(Session.new("floats"))
            await store.append_event("floats", AgentEvent.custom("n", [0.5] * 150_000))

    asyncio.run(make())
    result = migrate("--from", source, "--to", sqlite_url(tmp_path / "dst.db"))
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert warnings[0].startswith(
        "warning: session 'floats' seq 1: the event is 1350030 bytes in MessagePack"
    ), warnings
    assert f"({1024 * 1024 - EVENT_ENVELOPE_BYTES})" in warnings[0]
