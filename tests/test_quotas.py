"""Quotas on new sessions over real connections: field lengths, sessions per user, and
the creation rate per creator (token sub under auth, peer address without)."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from bamboo_session.persistence import MemoryStorage
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.quotas import FieldTooLong, creator_key
from tests.support import Peer, attach, open_peer, run_server

SECRET = "q" * 32


def make_token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, "HS256")


async def refused(peer: Peer, **hello: object) -> tuple[int | None, list[dict[str, object]]]:
    await peer.send({"type": "hello", **hello})
    return await peer.closed()


async def stored_ids(manager: SessionManager) -> list[str]:
    return sorted(m.id for m in (await manager.list_sessions()).sessions)


@pytest.mark.parametrize(("field", "value"), [("title", "t" * 101), ("user_id", "u" * 21)])
async def test_a_field_over_its_length_is_a_bad_hello_and_stores_nothing(
    field: str, value: str
) -> None:
    async with run_server(max_title_length=100, max_user_id_length=20) as server:
        for session_id in (None, "named"):
            async with open_peer(server, session_id) as peer:
                code, frames = await refused(peer, id="h", create=True, **{field: value})
                assert code == 1008
                assert [(f["code"], f["id"]) for f in frames] == [("bad_request", "h")]
                assert field in str(frames[0]["message"])
        assert await stored_ids(server.manager) == []
        async with attach(server, **{field: value[:-1]}):  # at the limit: fine
            pass


async def test_a_user_id_or_title_over_its_length_is_ignored_on_an_existing_session() -> None:
    # PROTOCOL.md: "`user_id` and `title` apply only when the session is created".
    async with run_server(max_title_length=100, max_user_id_length=20) as server:
        async with attach(server, "kept", create=True, user_id="owner", title="Kept"):
            for create in (False, True):  # with create, the session is found: no creation
                hello = {"create": create, "user_id": "u" * 21, "title": "t" * 101}
                async with attach(server, "kept", **hello) as (_, welcome):
                    assert (welcome["session"]["user_id"], welcome["session"]["title"]) == (
                        "owner",
                        "Kept",
                    )
        assert await stored_ids(server.manager) == ["kept"]


async def test_an_ignored_user_id_counts_against_no_user() -> None:
    # It is as if the hello had no user_id: not the owner's, and no count keyed by it
    # (on Redis a key refreshed while the connection is open), whatever its length.
    too_long = "u" * 300_000
    async with run_server(max_connections_per_user=1) as server:
        async with attach(server, "kept", create=True, user_id="u"):
            async with open_peer(server, "kept") as peer:
                assert (await refused(peer, user_id="u"))[0] == 4429
            async with (
                attach(server, "kept", user_id=too_long),
                attach(server, "kept", user_id=too_long, create=True),
            ):
                assert server.user_connections.count(too_long) == 0
                assert server.user_connections.count("u") == 1
                async with open_peer(server, "kept") as peer:
                    assert (await refused(peer, user_id="u"))[0] == 4429
            async with attach(server, "kept", user_id="v" * 256):  # at the limit: counted
                assert server.user_connections.count("v" * 256) == 1
        async with open_peer(server) as peer:  # creating with it is still refused
            code, frames = await refused(peer, id="h", user_id=too_long)
            assert (code, [(f["code"], f["id"]) for f in frames]) == (1008, [("bad_request", "h")])
        assert await stored_ids(server.manager) == ["kept"]


async def test_extra_over_its_size_is_refused_in_process() -> None:
    storage = await MemoryStorage.open()
    config = SessionManagerConfig(max_extra_bytes=1000)
    async with SessionManager(config, storage) as manager:
        with pytest.raises(FieldTooLong, match="extra"):
            await manager.create_session("u", extra={"blob": "x" * 1000})
        session = await manager.create_session("u", extra={"small": 1})
        assert session.metadata.extra == {"small": 1}
    await storage.close()


async def test_a_user_keeps_at_most_max_sessions_per_user_closed_ones_aside() -> None:
    async with run_server(max_sessions_per_user=2) as server:
        ids = []
        for _ in range(2):
            async with attach(server, user_id="u") as (_, welcome):
                ids.append(welcome["session"]["id"])
        async with open_peer(server) as third:
            code, frames = await refused(third, user_id="u")
            assert (code, frames, third.ws.close_reason) == (
                4403,
                [],
                "too many sessions for this user",
            )
        async with open_peer(server, "named") as named:
            assert (await refused(named, user_id="u", create=True))[0] == 4403
        # attaching to a session the user has is no creation; other users are apart
        async with attach(server, ids[0], user_id="u"), attach(server, user_id="v"):
            pass
        # closing a session makes room
        async with attach(server, ids[0], user_id="u") as (peer, _):
            await peer.request({"type": "state", "id": 1, "state": "closed"}, "ack")
        async with attach(server, user_id="u"):
            pass
        # anonymous sessions have no owner to count against
        for _ in range(3):
            async with attach(server):
                pass


async def test_concurrent_creations_never_pass_the_cap() -> None:
    async with run_server(max_sessions_per_user=3) as server:

        async def create() -> int | None:
            async with open_peer(server) as peer:
                await peer.send({"type": "hello", "user_id": "u"})
                frame = await peer.recv()
                return 0 if frame["type"] == "welcome" else None

        async def attempt() -> int | None:
            try:
                return await create()
            except Exception:
                return 4403

        results = await asyncio.gather(*(attempt() for _ in range(10)))
        assert results.count(0) == 3
        listed = await server.manager.list_sessions()
        assert listed.total == 3


async def test_under_auth_the_cap_counts_the_token_sub() -> None:
    async with run_server(auth_secret=SECRET, max_sessions_per_user=1) as server:
        async with attach(server, token=make_token("alice"), user_id="x"):
            pass
        async with open_peer(server) as again:
            assert (await refused(again, token=make_token("alice"), user_id="y"))[0] == 4403
        async with attach(server, token=make_token("bob")):
            pass


async def test_creating_too_fast_closes_4429_and_stores_nothing() -> None:
    async with run_server(session_create_rate=0.01, session_create_burst=3) as server:
        for _ in range(3):
            async with attach(server):
                pass
        for session_id in (None, "fresh"):
            async with open_peer(server, session_id) as peer:
                code, frames = await refused(peer, create=True)
                assert (code, frames) == (4429, [])
                assert peer.ws.close_reason == "creating sessions too fast"
        assert len(await stored_ids(server.manager)) == 3
        existing = (await stored_ids(server.manager))[0]
        async with attach(server, existing):  # attaching creates nothing: not counted
            pass
        metrics = server.metrics.render().decode()
        assert 'bamboo_closes_total{code="4429"} 2.0' in metrics


async def test_a_creation_refused_for_a_field_takes_no_creation_rate_token() -> None:
    # The fields are checked before the rate: fixing the field and retrying at once works.
    limits = {"session_create_rate": 0.01, "session_create_burst": 1, "max_title_length": 10}
    async with run_server(**limits) as server:
        for session_id in (None, "fresh"):
            async with open_peer(server, session_id) as peer:
                code, _ = await refused(peer, create=True, title="t" * 11)
                assert code == 1008
        async with attach(server, "fresh", create=True, title="t" * 10):
            pass


async def test_under_auth_the_creation_rate_is_per_user() -> None:
    config = {"auth_secret": SECRET, "session_create_rate": 0.01, "session_create_burst": 1}
    async with run_server(**config) as server:
        async with attach(server, token=make_token("alice")):
            pass
        async with open_peer(server) as peer:
            assert (await refused(peer, token=make_token("alice")))[0] == 4429
        async with attach(server, token=make_token("bob")):
            pass


def test_creator_keys() -> None:
    assert creator_key("alice", "10.0.0.1") == "user:alice"
    assert creator_key(None, "10.0.0.1") == "addr:10.0.0.1"
    assert creator_key(None, "::ffff:10.0.0.1") == "addr:10.0.0.1"
    # one host usually holds a whole /64: its addresses share one bucket
    assert creator_key(None, "2001:db8::1") == creator_key(None, "2001:db8::ffff:1")
    assert creator_key(None, "2001:db8::1") != creator_key(None, "2001:db8:0:1::1")
    assert creator_key(None, None) is None
