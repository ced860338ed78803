"""Invisible characters in what a peer writes (a title, a ``user_id`` without auth, a
close frame's reason) reached an operator's terminal as they were: ``bamboo-session
ls`` showed a title with a zero-width space (U+200B), a word joiner (U+2060), a soft
hyphen (U+00AD) or tags (U+E0000 on, which spell ASCII unseen) like one without, so two
sessions, or two users, looked the same, and a user id made only of them looked empty.
Every format character (Unicode category Cf) and default-ignorable one is now shown as
an escape (``\\u200b``, ``\\U000e0041``), but for the joiners and variation selectors
that legitimate text puts after a visible character that is not ASCII (emoji
sequences, Persian and Indic words). In ``--json`` and the JSON log all are escaped,
JSON's way (``\\udb40\\udc41`` beyond U+FFFF): the same data.

Against a real server, the sessions made by real WebSocket peers, the commands run as
processes over HTTP and on the data directory; the logs of a real ``serve``."""

from __future__ import annotations

import json
import sys
import unicodedata
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bamboo_session.server.terminal_text import shown
from tests.instances import eventually
from tests.server_process import ServerProcess
from tests.support import run_server, stream_url
from tests.test_cli_tools import cli

# (session id, title, user id): the second and third look like the first once their
# invisible characters are not shown; the fourth's user looks empty.
SPOOFS = [
    ("plain", "Payroll", "alice"),
    ("zwsp", "Pay\u200broll", "al\u2060ice"),
    ("tagged", "Payroll\U000e0069\U000e0067\U000e006e", "a\u00adlice\u180e"),
    ("blank", "Payroll\u2061\u206a\ufff9", "\u200b\u200d\u3164\ufe0f"),
]
SHOWN = {
    "zwsp": ("Pay\\u200broll", "al\\u2060ice"),
    "tagged": ("Payroll\\U000e0069\\U000e0067\\U000e006e", "a\\xadlice\\u180e"),
    "blank": ("Payroll\\u2061\\u206a\\ufff9", "\\u200b\\u200d\\u3164\\ufe0f"),
}
# What legitimate text keeps: a ZWJ emoji sequence, a selector and a ZWJ (❤️‍🔥), a
# keycap, a Persian word with its ZWNJ, a Devanagari conjunct with a ZWJ.
LEGIT_TITLE = "\U0001f469\u200d\U0001f4bb \u2764\ufe0f\u200d\U0001f525 1\ufe0f\u20e3"
LEGIT_USER = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \u0915\u094d\u200d\u0937"
INVISIBLE = "\u200b\u2060\u00ad\u180e\u2061\u206a\ufff9\u3164\u200d\ufe0f"


async def made_by_peers(server: object) -> None:
    for session_id, title, user in [*SPOOFS, ("legit", LEGIT_TITLE, LEGIT_USER)]:
        async with connect(stream_url(server, session_id)) as ws:  # type: ignore[arg-type]
            hello = {"type": "hello", "create": True, "title": title, "user_id": user}
            await ws.send(json.dumps(hello))
            assert json.loads(await ws.recv())["type"] == "welcome"


def row(out: str, session_id: str) -> str:
    (line,) = [line for line in out.splitlines() if line.startswith(session_id + " ")]
    return line


def assert_nothing_hidden(out: str) -> None:
    legit = row(out, "legit")
    assert LEGIT_TITLE in legit and LEGIT_USER in legit, legit  # kept as written
    rest = out.replace(legit, "")
    assert [c for c in rest if c in INVISIBLE or 0xE0000 <= ord(c) <= 0xE0FFF] == [], rest
    for session_id, (title, user) in SHOWN.items():
        assert title in row(out, session_id) and user in row(out, session_id), out


async def test_ls_shows_what_makes_two_titles_or_users_differ(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with run_server(data, durability="os") as server:
        await made_by_peers(server)
        url = f"http://127.0.0.1:{server.port}"
        for argv in (("ls", "--url", url), ("ls", "--data-dir", str(data))):
            code, out, err = await cli(*argv)
            assert code == 0, err
            assert_nothing_hidden(out)
        code, out, err = await cli("show", "blank", "--url", url)
        assert code == 0, err
        assert "\\u200b\\u200d\\u3164\\ufe0f" in out and "\u200b" not in out
        for argv in (("ls", "--url", url, "--json"), ("ls", "--data-dir", str(data), "--json")):
            code, out, err = await cli(*argv)
            assert code == 0, err
            sessions = {s["id"]: s for s in json.loads(out)["sessions"]}
            for session_id, title, user in [*SPOOFS, ("legit", LEGIT_TITLE, LEGIT_USER)]:
                assert (sessions[session_id]["title"], sessions[session_id]["user_id"]) == (
                    title,
                    user,
                )  # the data itself, untouched
            assert [c for c in out if c in INVISIBLE or 0xE0000 <= ord(c) <= 0xE0FFF] == []
            assert "Payroll\\udb40\\udc69\\udb40\\udc67\\udb40\\udc6e" in out
            assert "\\u200b\\u200d\\u3164\\ufe0f" in out


def test_every_format_character_is_escaped_after_ascii() -> None:
    """Every Cf of this Python's Unicode (sys.version's unicodedata) is escaped where
    nothing could need it: a later Unicode's new ones too, or this fails."""
    missed = [
        f"U+{code:04X}"
        for code in range(0x110000)
        if unicodedata.category(chr(code)) == "Cf" and shown("a" + chr(code)) == "a" + chr(code)
    ]
    assert missed == [], (unicodedata.unidata_version, sys.version, missed)


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_a_close_reason_of_invisible_characters_reaches_the_logs_escaped(
    tmp_path: Path, log_format: str
) -> None:
    reason = "bye\u200b\u2060\U000e0041"
    log_path = tmp_path / "server.log"
    server = ServerProcess(tmp_path / "data", log_path, "--log-format", log_format)
    await server.start_in_loop()
    try:
        async with connect(server.url("logged")) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.close(code=3000, reason=reason)
        await eventually(lambda: b"connection closed" in log_path.read_bytes())
    finally:
        server.stop()
    log = log_path.read_bytes().decode()
    line = next(line for line in log.splitlines() if "connection closed" in line)
    assert [c for c in log if c in reason[3:]] == [], line
    if log_format == "json":
        assert json.loads(line)["close_reason"] == reason  # the same data
        assert "bye\\u200b\\u2060\\udb40\\udc41" in line
    else:
        assert "bye\\u200b\\u2060\\U000e0041" in line


async def test_a_backslash_typed_as_an_escape_looks_unlike_the_character(tmp_path: Path) -> None:
    """A title or user that writes an escape's text (``Pay\\u200broll`` typed, a
    backslash and ``u200b``) looked exactly like the one with the invisible character
    it names, escaped: two titles, two users, one look. A backslash before what could
    read as an escape is shown doubled, as Python's and JSON's escapes show it."""
    data = tmp_path / "data"
    typed = [
        ("real", "Pay\u200broll", "al\x1bice"),
        ("typed", "Pay\\u200broll", "al\\x1bice"),
        ("both", "Pay\\\u200broll", "C:\\Users\\al\\ice"),
    ]
    async with run_server(data, durability="os") as server:
        for session_id, title, user in typed:
            async with connect(stream_url(server, session_id)) as ws:
                hello = {"type": "hello", "create": True, "title": title, "user_id": user}
                await ws.send(json.dumps(hello))
                assert json.loads(await ws.recv())["type"] == "welcome"
        code, out, err = await cli("ls", "--url", f"http://127.0.0.1:{server.port}")
    assert code == 0, err
    real, typed_row, both = (row(out, session_id) for session_id, _, _ in typed)
    assert "Pay\\u200broll" in real and "al\\x1bice" in real, real
    assert "Pay\\\\u200broll" in typed_row and "al\\\\x1bice" in typed_row, typed_row
    assert "Pay\\\\\\u200broll" in both and "C:\\\\Users\\al\\ice" in both, both
