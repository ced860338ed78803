"""``serve``'s store flags and ``--store``: ``--durability`` goes into a JSONL or SQLite
store's URL that names none (it was ignored beside ``--store``: a store given as a URL
was synced at every commit whatever the flag said), and one that names another is
refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bamboo_session.persistence.url import parse_store_url
from bamboo_session.server.cli import build_parser, config_from_args
from bamboo_session.server.config import ServerConfig
from tests.support import open_peer, run_server


def store_url_of(*flags: str) -> str:
    return config_from_args(build_parser().parse_args(["serve", *flags])).store_url()


def test_durability_goes_into_a_file_store_url_that_names_none(tmp_path: Path) -> None:
    assert store_url_of("--store", "jsonl:///var/b", "--durability", "os") == (
        "jsonl:///var/b?durability=os"
    )
    assert store_url_of("--store", "sqlite:///var/b.db?x=1", "--durability", "os") == (
        "sqlite:///var/b.db?x=1&durability=os"
    )
    bare = store_url_of("--store", str(tmp_path / "b"), "--durability", "os")
    assert bare == f"jsonl://{tmp_path / 'b'}?durability=os"
    # As before: the URL's own word, the default, and stores with no such option.
    assert store_url_of("--store", "jsonl:///var/b?durability=os") == "jsonl:///var/b?durability=os"
    assert store_url_of("--store", "jsonl:///var/b") == "jsonl:///var/b"
    assert store_url_of("--store", "memory://", "--durability", "os") == "memory://"


def test_a_url_that_says_another_durability_is_refused() -> None:
    config = ServerConfig(store="jsonl:///var/b?durability=fsync", durability="os")
    with pytest.raises(ValueError, match="--durability os and the store's URL"):
        config.store_url()


def test_a_given_fsync_beside_a_url_that_says_os_is_refused() -> None:
    # fsync is the default, but one asked for must not be given a store that skips the
    # syncs (it was: the URL's os won without a word); from a flag, the environment or
    # the file alike. Not given at all, the URL's word stands.
    for url in ("jsonl:///var/b?durability=os", "sqlite:///var/b.db?durability=os"):
        with pytest.raises(ValueError, match="--durability fsync and the store's URL"):
            store_url_of("--store", url, "--durability", "fsync")
        with pytest.raises(ValueError, match="--durability fsync and the store's URL"):
            ServerConfig(store=url, durability="fsync").store_url()
        assert store_url_of("--store", url) == url
    assert store_url_of("--store", "jsonl:///var/b?durability=fsync", "--durability", "fsync") == (
        "jsonl:///var/b?durability=fsync"
    )
    assert store_url_of("--store", "jsonl:///var/b", "--durability", "fsync") == "jsonl:///var/b"


def test_durability_none_on_the_command_line_leaves_the_url_its_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # --help shows the default as none, and BAMBOO_DURABILITY=none or the file's
    # durability = "none" were taken; the flag was refused (invalid choice), so a
    # durability set in the environment could not be unsaid for one run.
    monkeypatch.setenv("BAMBOO_DURABILITY", "fsync")
    url = "jsonl:///var/b?durability=os"
    with pytest.raises(ValueError, match="fsync and the store's URL"):
        store_url_of("--store", url)
    assert store_url_of("--store", url, "--durability", "none") == url
    assert ServerConfig(data_dir="/var/b", durability=None).store_url() == "jsonl:///var/b"


def test_a_refusal_says_where_a_durability_not_on_the_command_line_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It said "--durability os and the store's URL ... disagree" to an operator who had
    # typed no --durability: the os was BAMBOO_DURABILITY's (a unit file's, say).
    monkeypatch.setenv("BAMBOO_DURABILITY", "os")
    with pytest.raises(ValueError, match="as BAMBOO_DURABILITY, or as durability in the"):
        store_url_of("--store", "jsonl:///var/b?durability=fsync")


def test_the_logged_store_is_one_serve_takes(tmp_path: Path) -> None:
    # What the "listening on" line says is what an operator copies into --store.
    for store in ("jsonl:///var/b?durability=os", "sqlite:///var/b.db", "memory://"):
        config = ServerConfig(store=store)
        assert config.store_for_logs() == store
        assert parse_store_url(config.store_for_logs()).text == store
    logged = ServerConfig(data_dir=str(tmp_path), durability="os").store_for_logs()
    assert logged == f"jsonl://{tmp_path}?durability=os"
    assert parse_store_url(logged).location == str(tmp_path)


async def test_a_store_url_served_with_durability_os_keeps_no_wal(tmp_path: Path) -> None:
    """What the flag changes, seen on disk: ``os`` syncs in the background and writes no
    write-ahead log; ``fsync`` (the URL served as given, before) writes one."""
    for durability, wal in (("os", False), ("fsync", True)):
        data = tmp_path / durability
        async with run_server(store=f"jsonl://{data}", durability=durability) as server:
            async with open_peer(server, "s") as peer:
                await peer.send({"type": "hello", "create": True})
                assert (await peer.recv())["type"] == "welcome"
                await peer.send(
                    {"type": "event", "id": 1, "event": {"type": "token", "content": "x"}}
                )
                assert (await peer.recv())["type"] == "ack"
                assert bool(list((data / "wal").glob("*.wal"))) == wal
