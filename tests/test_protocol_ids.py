"""Session id validation and generated ids (protocol/ids.py; message ids,
protocol/messages.py)."""

import os
import re
import subprocess
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo_session.protocol import (
    InvalidSessionId,
    check_session_id,
    is_valid_session_id,
    new_connection_id,
    new_session_id,
)
from bamboo_session.protocol.models import new_message_id

VALID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


@pytest.mark.parametrize("session_id", ["a", "A-b_c.d", "...", ".a", "a..", "x" * 128, "0"])
def test_valid_ids(session_id: str) -> None:
    assert is_valid_session_id(session_id)
    assert check_session_id(session_id) == session_id


@pytest.mark.parametrize(
    "session_id",
    [
        "",
        ".",
        "..",
        "x" * 129,
        "a\n",  # re's `$` would accept a trailing newline; fullmatch does not
        "\na",
        "a b",
        "a/b",
        "../etc",
        "a\\b",
        "a\x00",
        "é",
        "\u212a",  # KELVIN SIGN, lowercases to "k"
        "\uff41",  # FULLWIDTH LATIN SMALL LETTER A
        "\u0661",  # ARABIC-INDIC DIGIT ONE, matched by \d
        "\u2010",  # HYPHEN, looks like "-"
        "a\u200b",  # zero-width space
        None,
        1,
        b"abc",
        ["a"],
    ],
)
def test_invalid_ids(session_id: object) -> None:
    assert not is_valid_session_id(session_id)
    with pytest.raises(InvalidSessionId):
        check_session_id(session_id)


def test_invalid_id_is_a_value_error_with_bounded_message() -> None:
    with pytest.raises(ValueError, match="invalid session id") as info:
        check_session_id("/" * 10_000)
    assert len(str(info.value)) < 200


@given(st.text(alphabet=VALID_CHARS, min_size=1, max_size=128))
def test_every_id_of_the_alphabet_is_valid_but_dots(session_id: str) -> None:
    assert is_valid_session_id(session_id) == (session_id not in (".", ".."))


@given(st.text(max_size=140))
def test_validity_matches_the_rule(session_id: str) -> None:
    expected = (
        1 <= len(session_id) <= 128
        and all(c in VALID_CHARS for c in session_id)
        and session_id not in (".", "..")
    )
    assert is_valid_session_id(session_id) == expected


def test_generated_ids_are_valid_and_distinct() -> None:
    sessions = {new_session_id() for _ in range(100)}
    connections = {new_connection_id() for _ in range(100)}
    assert len(sessions) == len(connections) == 100
    assert all(s.startswith("s_") and is_valid_session_id(s) for s in sessions)
    assert all(c.startswith("c_") and is_valid_session_id(c) for c in connections)


def test_message_ids_are_96_random_bits_and_distinct() -> None:
    # Many more than are drawn at a time (64): ids from several draws.
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"m_[A-Za-z0-9_-]{16}", i) for i in ids)  # docs/protocol.md


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_process_never_makes_its_parents_next_message_ids() -> None:
    new_message_id()  # ids drawn ahead now wait in the parent
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write_end, " ".join(new_message_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        childs = set(pipe.read().split())
    assert os.waitpid(child, 0)[1] == 0
    assert len(childs) == 8 and not childs & {new_message_id() for _ in range(8)}


def test_threads_drawing_message_ids_at_once_never_share_one() -> None:
    # Threads switched as often as the interpreter allows: an id read from the drawn
    # ones before it is taken away (rather than in one popleft) is then handed out twice.
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(mine: list[str]) -> None:
        mine.extend([new_message_id() for _ in range(100_000)])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    ids = [i for mine in drawn for i in mine]
    assert len(ids) == len(set(ids)) == 800_000


def test_message_ids_are_made_where_there_is_no_fork() -> None:
    # Windows has neither os.fork nor os.register_at_fork, and the Python client, which
    # imports protocol/, runs there.
    code = (
        "import os; del os.fork, os.register_at_fork\n"
        "from bamboo_session.protocol.models import new_message_id; print(new_message_id())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"m_[A-Za-z0-9_-]{16}\n", run.stdout)
