"""The cap on a session's stored bytes (``--max-session-bytes``) against a real server
and real WebSocket peers: an append past it gets ``error`` ``too_large`` and stores
nothing, while reads, duplicates and appends that fit go on; a batch frame is refused
whole; appends of several requests taken together are refused only where they do not
fit; the count survives a restart; refusals are counted in /metrics and /readyz stays
ready (a full session is not a failing store)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.support import Peer, attach, get, run_server, token

CAP = 4096
PAYLOAD = "x" * 300  # a log line of about 400 bytes: ten or so fit under CAP


async def append(peer: Peer, n: int, key: str | None = None) -> dict[str, Any]:
    """Publish token ``n`` (keyed ``k<n>`` unless ``key``); the ack or the error."""
    frame = {"type": "event", "id": n, "event": token(f"{n}:{PAYLOAD}"), "key": key or f"k{n}"}
    await peer.send(frame)
    while True:
        reply = await peer.recv()
        if reply["type"] in ("ack", "error") and reply.get("id") == n:
            return reply


async def fill(peer: Peer) -> int:
    """Append until the server refuses one with too_large; how many it took."""
    n = 0
    while True:
        reply = await append(peer, n + 1)
        if reply["type"] == "error":
            assert reply["code"] == "too_large", reply
            assert "nothing was stored" in reply["message"], reply
            return n
        n += 1
        assert reply == {"type": "ack", "id": n, "seq": n}


async def stored_bytes(server: Any, session_id: str) -> int:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    return int(body["metadata"]["stored_bytes"])


async def refusals(server: Any) -> int:
    text = (await get(server, "/metrics"))[1]
    found = re.search(r"^bamboo_appends_over_session_cap_total (\S+)$", text, re.M)
    assert found is not None
    return int(float(found[1]))


async def test_an_append_past_the_cap_gets_too_large_and_reads_go_on() -> None:
    async with (
        run_server(max_session_bytes=CAP) as server,
        attach(server, "full", create=True, role="agent") as (agent, _),
        attach(server, "full") as (viewer, _),
    ):
        stored = await fill(agent)
        assert 5 <= stored < CAP // 300
        assert await refusals(server) == 1
        assert await get(server, "/readyz") == (200, "ready\n")
        # The viewer saw every acknowledged event, and nothing of the refused one.
        seen = [(await viewer.recv_type("event"))["seq"] for _ in range(stored)]
        assert seen == list(range(1, stored + 1))
        events = await agent.request({"type": "events", "id": "e"}, "events")
        assert [event["seq"] for event in events["events"]] == seen
        assert events["last_seq"] == stored
        # A retry of an acknowledged append is still its duplicate; a message is refused.
        assert await append(agent, 1) == {"type": "ack", "id": 1, "seq": 1, "duplicate": True}
        message = {"role": "assistant", "content": PAYLOAD}
        await agent.send({"type": "message", "id": "m", "message": message})
        refused = await agent.recv_type("error")
        assert (refused["id"], refused["code"]) == ("m", "too_large")
        history = await agent.request({"type": "history", "id": "h"}, "history")
        assert history["messages"] == []
        # The connection and the session go on: a ping, and the metadata over HTTP.
        assert await agent.request({"type": "ping", "id": "p"}, "pong") == {
            "type": "pong",
            "id": "p",
        }
        status, body = await get(server, "/api/v1/sessions/full")
        assert status == 200
        assert body["metadata"]["last_seq"] == stored
        assert 0 < body["metadata"]["stored_bytes"] <= CAP


async def test_a_batch_frame_past_the_cap_is_refused_whole() -> None:
    async with (
        run_server(max_session_bytes=CAP) as server,
        attach(server, "b", create=True) as (peer, welcome),
    ):
        assert "batch" in welcome["extensions"]
        items = [{"event": token(f"{n}:{PAYLOAD}"), "key": f"b{n}"} for n in range(20)]
        await peer.send({"type": "batch", "id": 1, "items": items})
        refused = await peer.recv_type("error")
        assert (refused["id"], refused["code"]) == (1, "too_large")
        events = await peer.request({"type": "events", "id": 2}, "events")
        assert (events["events"], events["last_seq"]) == ([], 0)
        # Its first few fit: sent again, they are fresh appends, keys and all.
        await peer.send({"type": "batch", "id": 3, "items": items[:3]})
        assert (await peer.recv_type("acks"))["seqs"] == [1, 2, 3]


async def test_requests_taken_together_are_refused_only_where_they_do_not_fit() -> None:
    """Appends queued together go to the store as one append; past the cap, each request
    goes again on its own, so that one that does not fit takes none of the others down
    with it."""
    async with (
        run_server(max_session_bytes=CAP) as server,
        attach(server, "t", create=True) as (peer, _),
    ):
        # Filled to within 600 to 1,000 bytes of the cap: room for two small appends,
        # not for a big one.
        stored = 0
        while CAP - await stored_bytes(server, "t") >= 1000:
            stored += 1
            assert (await append(peer, stored))["seq"] == stored
        big = {"type": "event", "id": "big", "event": token(PAYLOAD * 4), "key": "big"}
        small = [
            {"type": "event", "id": f"s{n}", "event": token("."), "key": f"s{n}"} for n in range(2)
        ]
        # Pipelined: the server reads them together, and its session takes them together.
        for frame in [small[0], big, small[1]]:
            await peer.send(frame)
        replies = {}
        while len(replies) < 3:
            reply = await peer.recv()
            if reply["type"] in ("ack", "error"):
                replies[reply["id"]] = reply
        assert replies["big"]["code"] == "too_large"
        assert [replies[f"s{n}"].get("seq") for n in range(2)] == [stored + 1, stored + 2]
        assert await refusals(server) == 1


async def test_the_count_survives_a_restart(tmp_path: Path) -> None:
    async with (
        run_server(tmp_path, max_session_bytes=CAP) as server,
        attach(server, "r", create=True) as (peer, _),
    ):
        stored = await fill(peer)
        before = await stored_bytes(server, "r")
    async with (
        run_server(tmp_path, max_session_bytes=CAP) as server,
        attach(server, "r") as (peer, welcome),
    ):
        assert welcome["session"]["stored_bytes"] == before
        assert welcome["last_seq"] == stored
        reply = await append(peer, stored + 1)
        assert (reply["type"], reply["code"]) == ("error", "too_large")
        assert await append(peer, 2) == {"type": "ack", "id": 2, "seq": 2, "duplicate": True}
    # Without a cap (0), the same session takes appends again.
    async with (
        run_server(tmp_path, max_session_bytes=0) as server,
        attach(server, "r") as (peer, _),
    ):
        assert await append(peer, stored + 1) == {
            "type": "ack",
            "id": stored + 1,
            "seq": stored + 1,
        }
