"""Auth: the authorization matrix over WebSocket and HTTP, session ownership, Origin
checks, and the refusal to listen on a public address without auth."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bamboo_session.protocol.client import BambooClient, Refused
from bamboo_session.protocol.models import AgentEvent, Session, SessionMetadata
from bamboo_session.server.app import BambooServer
from bamboo_session.server.auth import (
    Authenticator,
    Forbidden,
    InsecureConfig,
    Principal,
    Role,
    Unauthorized,
    bearer_token,
    check_access,
    check_binding,
    is_loopback,
)
from bamboo_session.server.config import ServerConfig
from tests.support import WELCOME_TIMEOUT, attach, get, open_peer, run_server

SECRET = "s" * 32
OTHER_SECRET = "o" * 32


def make_token(sub: str = "alice", *, secret: str = SECRET, ttl: float = 60, **claims: Any) -> str:
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def unsigned_token(**payload: Any) -> str:
    """A token with ``alg: none`` and an empty signature: must never be accepted."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": "alice", "exp": int(time.time() + 60), "role": "admin", **payload}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Made at collection: each but "expired" lives an hour, so that it is refused for what
# its name says however late its test runs (a test under four processes can start
# minutes after collection).
LATER = 3600
BAD_TOKENS = {
    "expired": make_token(ttl=-30),
    "wrong signature": make_token(secret=OTHER_SECRET, ttl=LATER),
    "alg none": unsigned_token(exp=int(time.time() + LATER)),
    "HS512": jwt.encode({"sub": "alice", "exp": int(time.time() + LATER)}, SECRET * 2, "HS512"),
    "no exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    "no sub": jwt.encode({"exp": int(time.time() + LATER)}, SECRET, algorithm="HS256"),
    "unknown role": make_token(role="root", ttl=LATER),
    "bad sid": make_token(sid="../x", ttl=LATER),
    "garbage": "not.a.token",
    "empty": "",
}


# -- unit ------------------------------------------------------------------------------


def test_verify_accepts_a_good_token_and_reads_role_and_sid() -> None:
    auth = Authenticator(SECRET)
    assert auth.verify(make_token()) == Principal("alice")
    assert auth.verify(make_token("b", role="agent", sid="s1")) == Principal("b", Role.AGENT, "s1")


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_verify_refuses_every_bad_token(name: str) -> None:
    with pytest.raises(Unauthorized):
        Authenticator(SECRET).verify(BAD_TOKENS[name])


def test_numeric_dates_must_be_numbers() -> None:
    auth = Authenticator(SECRET)
    now = int(time.time())
    for claims in (
        {"exp": str(now + 60)},
        {"nbf": str(now - 10)},
        {"iat": str(now)},
        {"exp": True},
    ):
        token = jwt.encode({"sub": "alice", "exp": now + 60, **claims}, SECRET, "HS256")
        with pytest.raises(Unauthorized):
            auth.verify(token)
    assert auth.verify(make_token(nbf=now - 10, iat=now + 0.5)).sub == "alice"


def test_the_leeway_absorbs_a_small_clock_difference() -> None:
    now = time.time()
    early = make_token(iat=int(now) + 2, nbf=int(now) + 2)  # its issuer's clock is ahead
    late = make_token(ttl=-2)  # just expired, by our clock
    for token in (early, late):
        assert Authenticator(SECRET).verify(token).sub == "alice"  # 5 s by default
        with pytest.raises(Unauthorized):
            Authenticator(SECRET, leeway=0).verify(token)
    with pytest.raises(Unauthorized, match="token expired"):
        Authenticator(SECRET).verify(make_token(ttl=-30))
    principal = Authenticator(SECRET, leeway=3).verify(make_token(ttl=60))
    assert principal.valid_until is not None
    assert abs(principal.valid_until - (int(now + 60) + 3)) <= 1


def test_audience_and_issuer_checks() -> None:
    plain = Authenticator(SECRET)
    for audience in ("bamboo", "", []):  # an audience nobody here claims to be, or empty
        with pytest.raises(Unauthorized):
            plain.verify(make_token(aud=audience))
    assert plain.verify(make_token(iss="anyone")).sub == "alice"
    scoped = Authenticator(SECRET, audience="bamboo", issuer="https://auth.example")
    good = {"aud": "bamboo", "iss": "https://auth.example"}
    assert scoped.verify(make_token(**good)).sub == "alice"
    assert scoped.verify(make_token(**{**good, "aud": ["other", "bamboo"]})).sub == "alice"
    for bad in (
        {"aud": "other"},
        {"iss": "https://evil.example"},
        {"aud": None},
        {"iss": None},
    ):
        claims = {k: v for k, v in {**good, **bad}.items() if v is not None}
        with pytest.raises(Unauthorized):
            scoped.verify(make_token(**claims))


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(InsecureConfig):
        Authenticator("short")


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_access_rules() -> None:
    metadata = _metadata("s1", "alice")
    check_access(Principal("alice"), metadata)
    check_access(Principal("root", Role.ADMIN), metadata)
    check_access(Principal("bot", Role.AGENT, "s1"), metadata)
    check_access(Principal("alice", Role.USER, "s1"), metadata)
    for principal in (
        Principal("bob"),
        Principal("bot", Role.AGENT),
        Principal("bot", Role.AGENT, "s2"),
        Principal("alice", Role.USER, "s2"),
        Principal("root", Role.ADMIN, "s2"),
    ):
        with pytest.raises(Forbidden):
            check_access(principal, metadata)
    nobody = _metadata("s1", None)
    with pytest.raises(Forbidden):
        check_access(Principal("alice"), nobody)
    check_access(Principal("root", Role.ADMIN), nobody)


def _metadata(session_id: str, user_id: str | None) -> SessionMetadata:
    return Session.new(session_id, user_id=user_id).metadata


def test_binding_rules() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host), host
        check_binding(host, None, insecure=False)
    for host in ("0.0.0.0", "", "::", "10.0.0.1", "example.com"):
        assert not is_loopback(host), host
        with pytest.raises(InsecureConfig):
            check_binding(host, None, insecure=False)
        check_binding(host, None, insecure=True)
        check_binding(host, SECRET, insecure=False)


def test_server_config_refuses_public_host_without_auth() -> None:
    with pytest.raises(InsecureConfig, match="--insecure"):
        BambooServer(ServerConfig(host="0.0.0.0"))
    BambooServer(ServerConfig(host="0.0.0.0", insecure=True))
    BambooServer(ServerConfig(host="0.0.0.0", auth_secret=SECRET))


def test_the_secret_never_shows_in_the_config_repr() -> None:
    assert SECRET not in repr(ServerConfig(auth_secret=SECRET))


def test_env_parsing_of_auth_settings() -> None:
    config = ServerConfig.from_env(
        {
            "BAMBOO_AUTH_SECRET": SECRET,
            "BAMBOO_INSECURE": "true",
            "BAMBOO_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "BAMBOO_RATE_LIMIT": "50",
            "BAMBOO_MAX_CONNECTIONS_PER_USER": "3",
        }
    )
    assert config.auth_secret == SECRET and config.insecure
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.rate_limit == 50.0 and config.max_connections_per_user == 3
    assert ServerConfig.from_env({"BAMBOO_AUTH_SECRET": ""}).auth_secret is None


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_cli_refuses_a_public_host_without_auth_in_one_line(tmp_path: Any) -> None:
    result = run_cli("--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure" in lines[0], result.stderr
    assert not (tmp_path / "LOCK").exists()  # refused before the storage was touched
    short = run_cli("--auth-secret", "short", "--port", "0", "--data-dir", str(tmp_path))
    assert short.returncode == 2 and "32 bytes" in short.stderr


# -- over WebSocket ----------------------------------------------------------------------


async def hello_outcome(
    server: BambooServer,
    session_id: str | None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **hello: Any,
) -> tuple[int | None, list[dict[str, Any]]]:
    """The close code (None when welcomed) and the frames received before it."""
    async with open_peer(server, session_id, headers=headers) as peer:
        frame: dict[str, Any] = {"type": "hello", **hello}
        if token is not None:
            frame["token"] = token
        await peer.send(frame)
        try:
            first = await peer.recv()
        except ConnectionClosed:
            return peer.ws.close_code, []
        if first["type"] == "welcome":
            return None, [first]
        code, rest = await peer.closed()
        return code, [first, *rest]


async def alice_session(server: BambooServer) -> str:
    async with attach(server, token=make_token("alice"), title="alice's") as (peer, welcome):
        await peer.request(
            {"type": "event", "id": 1, "event": {"type": "token", "content": "x"}}, "ack"
        )
        assert welcome["session"]["user_id"] == "alice"
        session_id: str = welcome["session"]["id"]
        return session_id


async def test_websocket_authorization_matrix() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        allowed = {
            "owner": make_token("alice"),
            "owner scoped to it": make_token("alice", sid=sid),
            "agent scoped to it": make_token("bot", role="agent", sid=sid),
            "admin": make_token("root", role="admin"),
        }
        refused = {
            "other user": (make_token("bob"), 4403),
            "other user as agent": (make_token("bob", role="agent"), 4403),
            "agent scoped elsewhere": (make_token("bot", role="agent", sid="other"), 4403),
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


# -- over HTTP ---------------------------------------------------------------------------


async def test_http_authorization_matrix() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        async with attach(server, token=make_token("bob")) as (_, welcome):
            bob_sid = welcome["session"]["id"]
        expectations: dict[str, tuple[str | None, int]] = {
            "owner": (make_token("alice"), 200),
            "owner scoped to it": (make_token("alice", sid=sid), 200),
            "agent scoped to it": (make_token("bot", role="agent", sid=sid), 200),
            "admin": (make_token("root", role="admin"), 200),
            "other user": (make_token("bob"), 403),
            "agent scoped elsewhere": (make_token("bot", role="agent", sid=bob_sid), 403),
            "no token": (None, 401),
            **{name: (bad, 401) for name, bad in BAD_TOKENS.items()},
        }
        for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/events"):
            for name, (token, expected) in expectations.items():
                status, body = await get(server, path, bearer(token) if token else None)
                assert status == expected, (path, name, status, body)
                if expected == 200:
                    assert "events" in body or body["metadata"]["id"] == sid
                else:
                    assert set(body) == {"error"}, body  # no session data in a refusal
        # 401 comes before 404: a missing session tells an anonymous caller nothing
        assert (await get(server, "/api/v1/sessions/nope"))[0] == 401
        assert (await get(server, "/api/v1/sessions/nope", bearer(make_token("bob"))))[0] == 404
        # health and metrics stay open for orchestrators
        assert (await get(server, "/healthz"))[0] == 200
        assert (await get(server, "/metrics"))[0] == 200


async def test_listing_shows_only_the_callers_sessions_unless_admin() -> None:
    async with run_server(auth_secret=SECRET) as server:
        sid = await alice_session(server)
        async with attach(server, token=make_token("bob")) as (_, welcome):
            bob_sid = welcome["session"]["id"]

        async def listed(token: str | None, query: str = "") -> tuple[int, Any]:
            return await get(server, f"/api/v1/sessions{query}", bearer(token) if token else None)

        status, body = await listed(make_token("alice"))
        assert status == 200 and [s["id"] for s in body["sessions"]] == [sid]
        status, body = await listed(make_token("alice"), "?user_id=alice")
        assert status == 200 and body["total"] == 1
        assert (await listed(make_token("alice"), "?user_id=bob"))[0] == 403
        status, body = await listed(make_token("root", role="admin"))
        assert status == 200 and {s["id"] for s in body["sessions"]} == {sid, bob_sid}
        status, body = await listed(make_token("root", role="admin"), "?user_id=bob")
        assert [s["id"] for s in body["sessions"]] == [bob_sid]
        assert (await listed(make_token("bot", role="agent", sid=sid)))[0] == 403
        assert (await listed(None))[0] == 401
        assert (await listed(BAD_TOKENS["alg none"]))[0] == 401
        assert (await listed(BAD_TOKENS["expired"]))[0] == 401


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
