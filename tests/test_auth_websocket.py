"""Auth over WebSocket, on a real server: the authorization matrix of a hello, session
ownership, Origin checks, a connection closed 4401 at its token's expiry, the
settings that reach the check, and the Python client, which resumes with a fresh token
from a function and stops at a fixed token's expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bamboo_session.protocol.client import BambooClient, Refused
from bamboo_session.protocol.models import AgentEvent
from bamboo_session.server.app import BambooServer
from tests.auth_support import BAD_TOKENS, SECRET, alice_session, bearer, hello_outcome, make_token
from tests.support import WELCOME_TIMEOUT, attach, open_peer, run_server

# -- over WebSocket ----------------------------------------------------------------------


async def test_websocket_authorization_matrix() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        allowed = {
            "owner": make_token("alice"),
            "owner scoped to it": make_token("alice", sid=sid),
            "owner as agent scoped to it": make_token("alice", role="agent", sid=sid),
            "admin": make_token("root", role="admin"),
            "admin scoped to it": make_token("root", role="admin", sid=sid),
        }
        refused = {
            "other user": (make_token("bob"), 4403),
            "other user as agent": (make_token("bob", role="agent"), 4403),
            "other user as agent scoped to it": (make_token("bob", role="agent", sid=sid), 4403),
            "owner as agent scoped elsewhere": (
                make_token("alice", role="agent", sid="other"),
                4403,
            ),
            "owner scoped elsewhere": (make_token("alice", sid="other"), 4403),
            "admin scoped elsewhere": (make_token("root", role="admin", sid="other"), 4403),
            "no token": (None, 4401),
            **{name: (bad, 4401) for name, bad in BAD_TOKENS.items()},
        }
        for name, good in allowed.items():
            code, frames = await hello_outcome(server, sid, good)
            assert code is None, (name, code)
            assert frames[0]["session"]["id"] == sid
        for name, (bad, expected) in refused.items():
            code, frames = await hello_outcome(server, sid, bad)
            # refused before any session data: not a single frame arrives
            assert (code, frames) == (expected, []), name
        # the header carries a token just as well; hello.token wins when both are given
        code, _ = await hello_outcome(server, sid, headers=bearer(allowed["owner"]))
        assert code is None
        code, _ = await hello_outcome(server, sid, headers=bearer(BAD_TOKENS["alg none"]))
        assert code == 4401
        code, _ = await hello_outcome(
            server, sid, make_token("bob"), headers=bearer(allowed["owner"])
        )
        assert code == 4403
        # a missing session is 4404 for a valid token, 4401 without one
        assert (await hello_outcome(server, "nope", make_token("alice")))[0] == 4404
        assert (await hello_outcome(server, "nope"))[0] == 4401


async def test_sessions_created_under_a_token_belong_to_its_sub() -> None:
    async with run_server(auth_secret=SECRET) as server:
        async with attach(server, token=make_token("alice"), user_id="mallory") as (_, welcome):
            assert welcome["session"]["user_id"] == "alice"
        async with attach(
            server, "mine", token=make_token("alice"), create=True, user_id="mallory"
        ) as (_, welcome):
            assert welcome["session"]["user_id"] == "alice"
        # get-or-create never hands over someone else's session
        assert (await hello_outcome(server, "mine", make_token("bob"), create=True))[0] == 4403
        # a sid token may get-or-create its own session, but no new random one
        agent = make_token("bot", role="agent", sid="task-1")
        async with attach(server, "task-1", token=agent, create=True) as (_, welcome):
            assert welcome["session"]["user_id"] == "bot"
        assert (await hello_outcome(server, None, agent))[0] == 4403
        assert (await hello_outcome(server, "task-2", agent, create=True))[0] == 4403
        assert await server.manager.get_metadata("task-2") is None
        # a session that belongs to nobody: admin only
        await server.manager.create_session(None, session_id="orphan")
        assert (await hello_outcome(server, "orphan", make_token("alice")))[0] == 4403
        admin = make_token("root", role="admin")
        assert (await hello_outcome(server, "orphan", admin))[0] is None


async def test_an_agent_token_reaches_only_its_subs_sessions() -> None:
    """PROTOCOL.md's rules compose: ``sid`` narrows what a role reaches, never widens
    it, so an agent scoped to another user's session, or to one of nobody's, is refused
    as that user would be; an admin token with ``sid`` is the capability for those."""
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        bob_agent = make_token("bob", role="agent", sid=sid)
        assert await hello_outcome(server, sid, bob_agent) == (4403, [])
        # get-or-create of an existing session does not hand it over either
        assert await hello_outcome(server, sid, bob_agent, create=True) == (4403, [])
        metadata = await server.manager.get_metadata(sid)
        assert metadata is not None and metadata.user_id == "alice"
        code, frames = await hello_outcome(server, sid, make_token("alice", role="agent", sid=sid))
        assert (code, frames[0]["session"]["user_id"]) == (None, "alice")
        code, frames = await hello_outcome(server, sid, make_token("root", role="admin", sid=sid))
        assert (code, frames[0]["session"]["user_id"]) == (None, "alice")
        # a session of nobody: an admin, scoped to it or to none, and no one else
        await server.manager.create_session(None, session_id="orphan")
        for refused in (
            make_token("bot", role="agent", sid="orphan"),
            make_token("bot", sid="orphan"),
            make_token("root", role="admin", sid=sid),
        ):
            assert await hello_outcome(server, "orphan", refused) == (4403, [])
        for admin in (
            make_token("root", role="admin", sid="orphan"),
            make_token("root", role="admin"),
        ):
            code, frames = await hello_outcome(server, "orphan", admin)
            assert (code, frames[0]["session"]["user_id"]) == (None, None)


async def test_without_auth_hello_user_id_is_trusted() -> None:
    async with run_server() as server:
        async with attach(server, user_id="u1", token="ignored") as (_, welcome):
            assert welcome["session"]["user_id"] == "u1"


async def attached_until_its_token_expires(server: BambooServer, session_id: str) -> dict[str, Any]:
    """Attaches with a token of a second or two (``exp`` is in whole seconds; it was
    0.5 to 1.5 s, less than a loaded machine's hello and ping took), is served, and
    is closed 4401 at its expiry, not at some later look (the wait is 5 s past it);
    the welcome. A hello or ping answered only after the token's end cannot tell:
    tried again with a longer token, as the outside check does."""
    for life in (2, 6, 12):
        expires = int(time.time()) + life
        async with open_peer(server, session_id) as peer:
            try:
                await peer.send({"type": "hello", "create": True, "token": make_token(exp=expires)})
                welcome = await peer.recv(WELCOME_TIMEOUT)
                assert welcome["type"] == "welcome", welcome
                assert (await peer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
            except ConnectionClosed:
                assert (peer.ws.close_code, time.time() >= expires) == (4401, True)
                continue
            code, frames = await peer.closed(timeout=expires - time.time() + 5)
            assert (code, peer.ws.close_reason, frames) == (4401, "token expired", [])
            return welcome
    raise AssertionError("no attach and ping within its token's life in three tries")


async def test_a_connection_is_closed_4401_when_its_token_expires() -> None:
    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        welcome = await attached_until_its_token_expires(server, "s1")
        # With a fresh token the client resumes where it was.
        fresh = make_token(ttl=60)
        async with attach(server, "s1", token=fresh, last_seq=0, epoch=welcome["epoch"]) as (
            _,
            resumed,
        ):
            assert resumed["resumed"] is True


async def test_leeway_audience_and_issuer_come_from_the_config() -> None:
    config = {"auth_secret": SECRET, "auth_audience": "bamboo", "auth_issuer": "me"}
    async with run_server(**config) as server:
        async with attach(server, token=make_token(aud="bamboo", iss="me")) as (_, welcome):
            assert welcome["type"] == "welcome"
        async with open_peer(server) as peer:
            await peer.send({"type": "hello", "token": make_token(aud="bamboo")})
            assert (await peer.closed())[0] == 4401


async def test_origins_not_listed_get_403_before_the_upgrade() -> None:
    async with run_server(allowed_origins=("https://app.example",)) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with open_peer(server, headers={"Origin": "https://evil.example"}):
                pass
        assert refused.value.response.status_code == 403
        async with open_peer(server, headers={"Origin": "https://app.example"}) as peer:
            await peer.send({"type": "hello"})
            assert (await peer.recv())["type"] == "welcome"
        async with attach(server) as (_, welcome):  # no Origin: not a browser, allowed
            assert welcome["type"] == "welcome"


async def test_the_client_resumes_with_a_fresh_token_when_its_token_expires() -> None:
    """A client given a token function gets a new token when the server closes its
    connection at the old one's expiry, and resumes: nothing published is lost."""
    issued: list[str] = []

    async def fresh_token() -> str:
        # Two to three seconds (exp is in whole seconds; it was 0.5 to 1.5 s): a
        # reconnect that a loaded machine took longer over was refused, and the
        # client stopped, as it should.
        issued.append(make_token("alice", exp=int(time.time()) + 3))
        return issued[-1]

    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        url = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(
            url, "renewed", create=True, token=fresh_token, backoff_initial=0.02
        ) as agent:
            seqs = []
            for i in range(16):  # 4 s: across the first token's expiry, and on
                seqs.append(await agent.publish(AgentEvent.token(f"t{i}")))
                await asyncio.sleep(0.25)
            assert seqs == list(range(1, 17))
            assert agent.reconnects >= 1 and len(issued) >= 2


async def test_a_client_with_a_fixed_token_stops_at_its_expiry() -> None:
    async with run_server(auth_secret=SECRET, auth_leeway=0) as server:
        url = f"ws://127.0.0.1:{server.port}"
        # A token of a second or two; a connect later than that on a loaded machine
        # cannot tell, and is tried again with a longer one.
        for life in (2, 6, 12):
            expires = int(time.time()) + life
            token = make_token("alice", exp=expires)
            try:
                client = await BambooClient.connect(url, "fixed", create=True, token=token)
            except Refused as late:
                assert (late.code, time.time() >= expires) == (4401, True)
                continue
            async with client:
                with pytest.raises(Refused) as refused:
                    for _ in range(1000):  # until 5 s past its expiry: a guard
                        await client.ping()
                        if time.time() > expires + 5:
                            break
                        await asyncio.sleep(0.1)
            assert refused.value.code == 4401
            return
        raise AssertionError("no connect within its token's life in three tries")
