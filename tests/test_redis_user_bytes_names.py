"""The refusal of an append past ``--max-user-bytes`` on a Redis store names the user
whole, whatever the user id holds. append.lua gave it in the text of its error, which
Redis cuts at a NUL byte and whose line breaks it turns to spaces, and redis-py strips
it at the ends: a user id of line breaks alone, or with a NUL, left the error too short
to read, and the session's actor failed with an IndexError (a traceback, and every
connection of the session closed 1011); other ids were named wrong (``'x y'`` for
``'x\\ny'``, ``'trail'`` for ``'trail '``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server, token

CAP = 1000
EVENT_BYTES = 300  # four such events exceed the cap


@pytest.mark.parametrize("user", ["\n\n", "\x00z", "x\ny", "a\r\nb", "trail ", " \t"])
async def test_a_user_past_the_bound_is_refused_and_named_whatever_its_id_holds(
    redis_server: RedisServer, tmp_path: Path, user: str
) -> None:
    store = redis_server.url(prefix=prefix_for(tmp_path))
    async with (
        run_server(store=store, max_user_bytes=CAP) as a,
        run_server(store=store, max_user_bytes=CAP) as b,
        attach(a, "s1", create=True, user_id=user) as (first, _),
        attach(b, "s2", create=True, user_id=user) as (second, _),
    ):
        replies = []
        for n, peer in enumerate((first, second, first, second)):
            frame = {"type": "event", "id": n, "event": token("x" * EVENT_BYTES)}
            replies.append(await peer.request(frame, "ack" if n < 3 else "error"))
        refusal = replies[-1]
        assert refusal["code"] == "too_large"
        assert f"user {user!r}" in refusal["message"]
        # The session goes on: its connections were not closed.
        for peer in (first, second):
            assert (await peer.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"
