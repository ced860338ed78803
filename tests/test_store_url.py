"""persistence/url.py as an operator meets it: a store URL's password never shows in
what names the URL (``without_password``, which every refusal of ``serve``, ``migrate``
and the offline tools uses), whatever characters the password holds unencoded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bamboo_session.persistence.url import parse_store_url, without_password

PASSWORD = "Hunter2"  # found in nothing printed, whatever is around it

# A password with a character a URL parser takes for the end of the host (or refuses),
# not percent-encoded, as an operator pastes it from a secret store.
ODD_PASSWORDS = [
    f"{PASSWORD}/x",
    f"x/{PASSWORD}",
    f"{PASSWORD}?x",
    f"x?{PASSWORD}=1",
    f"{PASSWORD}#x",
    f"x#{PASSWORD}",
    f"x@{PASSWORD}",
    f"{PASSWORD}[x",
    f"x]{PASSWORD}",
    f"{PASSWORD}:x",
    f"/?#{PASSWORD}@",
    f"{PASSWORD}%2F",
]


@pytest.mark.parametrize("password", ODD_PASSWORDS)
@pytest.mark.parametrize("user", ["", "bamboo"])
@pytest.mark.parametrize("tail", ["", "/0", "/0?prefix=p", ":6379/0?wait_replicas=1"])
def test_no_character_of_a_password_shows(password: str, user: str, tail: str) -> None:
    url = f"redis://{user}:{password}@127.0.0.1{tail}"
    shown = without_password(url)
    assert shown == f"redis://{user}:***@127.0.0.1{tail}"
    assert PASSWORD not in shown


def test_what_holds_no_password_is_left_as_it_is() -> None:
    for url in (
        "redis://127.0.0.1:6379/0",
        "redis://bamboo@127.0.0.1:6379/0",  # a user alone
        "redis://[::1]:6379/0?prefix=p",
        "memory://",
        "jsonl:///var/lib/a:b@c",  # a file store's path, however odd
        "sqlite:////var/b.db",
        "/var/lib/bamboo",
        "",
    ):
        assert without_password(url) == url
    assert without_password("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"


@pytest.mark.parametrize("password", ODD_PASSWORDS)
def test_a_refusal_of_a_url_with_an_odd_password_does_not_show_it(password: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_store_url(f"rediss://u:{password}@127.0.0.1:9/0")  # an unknown scheme
    assert PASSWORD not in str(refused.value)


def test_a_password_a_parser_would_split_is_refused_by_name() -> None:
    # redis://:pa/ss@host read as host "" and path "/ss@host": what was connected to,
    # and what messages quoted of its options, held pieces of the password.
    for url in (f"redis://:pa/{PASSWORD}@127.0.0.1:6379/0", f"redis://u:{PASSWORD}?@h/0"):
        with pytest.raises(ValueError, match="percent-encoded") as refused:
            parse_store_url(url)
        assert PASSWORD not in str(refused.value)
    assert parse_store_url("redis://:pa%2Fss@127.0.0.1:6379/0").location == (
        ":pa%2Fss@127.0.0.1:6379/0"
    )


SERVE = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]


def _run(*argv: str) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_serve_names_a_refused_url_without_an_odd_password(tmp_path: Path) -> None:
    for password in (f"pa/{PASSWORD}", f"pa?{PASSWORD}", f"pa[{PASSWORD}"):
        store = f"redis://u:{password}@127.0.0.1:9/0?nope=1"
        status, said = _run(*SERVE, "--store", store, "--data-dir", str(tmp_path))
        assert status == 2, said
        assert "store URL" in said and "u:***@127.0.0.1:9/0" in said
        assert PASSWORD not in said
