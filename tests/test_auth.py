"""Auth in-process (server/auth.py): token verification (signature, algorithm, dates,
leeway, audience and issuer), the access and binding rules, and the auth settings of
the config, the environment and the CLI, which refuses a public address without
auth."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import jwt
import pytest

from bamboo_session.protocol.models import Session, SessionMetadata
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
from tests.auth_support import BAD_TOKENS, SECRET, make_token

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
    check_access(Principal("alice", Role.AGENT, "s1"), metadata)
    check_access(Principal("alice", Role.USER, "s1"), metadata)
    check_access(Principal("root", Role.ADMIN, "s1"), metadata)
    for principal in (
        Principal("bob"),
        Principal("bot", Role.AGENT),
        Principal("bot", Role.AGENT, "s1"),  # a sid narrows a role, never widens it
        Principal("bot", Role.AGENT, "s2"),
        Principal("alice", Role.USER, "s2"),
        Principal("root", Role.ADMIN, "s2"),
    ):
        with pytest.raises(Forbidden):
            check_access(principal, metadata)
    nobody = _metadata("s1", None)
    for principal in (Principal("alice"), Principal("bot", Role.AGENT, "s1")):
        with pytest.raises(Forbidden):
            check_access(principal, nobody)
    check_access(Principal("root", Role.ADMIN), nobody)
    check_access(Principal("root", Role.ADMIN, "s1"), nobody)


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
