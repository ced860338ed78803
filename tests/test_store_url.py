"""persistence/url.py as an operator meets it: a store URL's password never shows in
what names the URL (``without_password``, which every refusal of ``serve``, ``migrate``
and the offline tools uses), whatever characters the password holds unencoded; and a
store URL with a fragment (``#``) is refused, for every backend, rather than served
with part of it dropped."""

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


@pytest.mark.parametrize(
    "url",
    [
        "jsonl:///var/b#x",
        "jsonl:///var/b?durability=os#x",
        "sqlite:///var/b.db#",
        "memory://#x",
        "redis://127.0.0.1:6379/0#x",
        f"redis://u:pa#{PASSWORD}@127.0.0.1:6379/0",  # a '#' in a password, unencoded
    ],
)
def test_a_store_url_with_a_fragment_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="'#'") as refused:
        parse_store_url(url)
    assert PASSWORD not in str(refused.value)


def test_a_bare_path_may_hold_a_hash(tmp_path: Path) -> None:
    # Not a URL: a directory may be named so, and %23 is how a URL names it.
    assert parse_store_url(str(tmp_path / "p#x")).location == str(tmp_path / "p#x")
    assert parse_store_url(f"jsonl://{tmp_path}/p%23x").location == str(tmp_path / "p#x")


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


@pytest.mark.parametrize("durability", [[], ["--durability", "os"]])
def test_serve_refuses_a_store_url_with_a_fragment(tmp_path: Path, durability: list[str]) -> None:
    # It served jsonl:///p#x in /p, and with --durability os appended ?durability=os
    # to the fragment: a store at fsync, in another directory than the one named.
    store = f"jsonl://{tmp_path}/p#x"
    status, said = _run(*SERVE, "--store", store, *durability)
    assert status == 2, said
    assert "cannot start: store URL" in said and "fragment" in said
    assert "listening" not in said
    assert list(tmp_path.iterdir()) == []  # no store made at /p


def test_serve_names_a_refused_url_without_an_odd_password(tmp_path: Path) -> None:
    for password in (f"pa/{PASSWORD}", f"pa?{PASSWORD}", f"pa#{PASSWORD}", f"pa[{PASSWORD}"):
        store = f"redis://u:{password}@127.0.0.1:9/0?nope=1"
        status, said = _run(*SERVE, "--store", store, "--data-dir", str(tmp_path))
        assert status == 2, said
        assert "store URL" in said and "u:***@127.0.0.1:9/0" in said
        assert PASSWORD not in said


def test_the_offline_tools_and_migrate_refuse_a_fragment(tmp_path: Path) -> None:
    tool = [sys.executable, "-m", "bamboo_session.server"]
    store = f"redis://u:pa#{PASSWORD}@127.0.0.1:9/0"
    for argv in (
        [*tool, "ls", "--store", store],
        [*tool, "migrate", "--from", f"jsonl://{tmp_path}#x", "--to", f"sqlite://{tmp_path}/b.db"],
        [*tool, "migrate", "--from", store, "--to", f"sqlite://{tmp_path}/b.db"],
    ):
        status, said = _run(*argv)
        assert status != 0 and "fragment" in said, said
        assert PASSWORD not in said and "Traceback" not in said


@pytest.mark.parametrize("password", [f"pa?{PASSWORD}", f"{PASSWORD}?x", f"pa[{PASSWORD}"])
def test_serve_with_redis_flags_names_a_refused_url_without_an_odd_password(
    tmp_path: Path, password: str
) -> None:
    # --redis-wait-replicas rewrote the URL through urlsplit first: the password's '?'
    # began the query, urlencode turned the rest's '@' to %40, and the refusal of the
    # "option" that made named the URL up to its '?': 'redis://u:Hunter2?...'. A '['
    # was "Invalid IPv6 URL", the URL not named.
    store = f"redis://u:{password}@127.0.0.1:9/0"
    status, said = _run(*SERVE, "--store", store, "--redis-wait-replicas", "1")
    assert status == 2, said
    assert "store URL 'redis://u:***@127.0.0.1:9/0" in said and "percent-encoded" in said
    assert PASSWORD not in said


def test_a_store_whose_backend_is_not_installed_is_named_without_its_password() -> None:
    # redis-py is an extra (bamboo-session[redis]): where it is not installed, serve and
    # the tools said "store URL 'redis://u:Hunter2@...': the redis backend needs 'redis'".
    store = f"redis://u:{PASSWORD}@127.0.0.1:9/0"
    without_redis = "import sys; sys.modules['redis'] = None; "
    command = "from bamboo_session.server.cli import main; sys.exit(main())"
    for argv in (["serve", "--port", "0"], ["ls"]):
        status, said = _run(sys.executable, "-c", without_redis + command, *argv, "--store", store)
        assert status != 0, said
        assert "store URL 'redis://u:***@127.0.0.1:9/0': the redis backend needs" in said
        assert PASSWORD not in said


@pytest.mark.parametrize("path", ["/zz", "/1/2", "/0/extra", "/%31"])
def test_a_redis_path_that_is_no_database_number_is_refused(path: str) -> None:
    # redis-py reads the path as the database's number and drops what is not one:
    # redis://host/zz served database 0, and redis://host/1/2 database 12, unsaid.
    store = f"redis://u:{PASSWORD}@127.0.0.1:9{path}"
    for argv in ([*SERVE, "--store", store], [*SERVE[:-3], "ls", "--store", store]):
        status, said = _run(*argv)
        assert status != 0 and "its path names the database by number" in said, said
        assert PASSWORD not in said
    assert status == 1  # (the tools' status for a store they cannot open)
    assert _run(*SERVE, "--store", store)[0] == 2
