"""Several peers publishing at once into a session near its byte cap (and its user's
bound), so that the server's group commits hold appends of several requests that it
tries again one at a time: every request gets one answer, the acknowledged seqs are
gap-free and unique, a viewer sees exactly the acknowledged events in order, keyed
retries of refused and of acknowledged publishes are answered as they should be, and
the stored count stays within the cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import Peer, attach, get, run_server, token

CAP = 16 * 1024
PAYLOAD = "x" * 300


async def publish_all(peer: Peer, name: str, count: int) -> dict[str, dict[str, Any]]:
    """Pipelines ``count`` keyed publishes; each request's answer, by key."""
    for n in range(count):
        key = f"{name}{n}"
        frame = {"type": "event", "id": key, "event": token(f"{key}:{PAYLOAD}"), "key": key}
        await peer.send(frame)
    answers: dict[str, dict[str, Any]] = {}
    while len(answers) < count:
        reply = await peer.recv(timeout=20)
        if reply["type"] in ("ack", "error"):
            assert reply["id"] not in answers, reply
            answers[reply["id"]] = reply
    return answers


@pytest.mark.parametrize("bound", ["session", "user"])
async def test_publishers_at_once_near_the_cap(bound: str) -> None:
    settings = {"max_session_bytes": CAP} if bound == "session" else {"max_user_bytes": CAP}
    async with (
        run_server(**settings) as server,
        attach(server, "s", create=True, role="agent", user_id="u") as (a, _),
        attach(server, "s", role="agent", user_id="u") as (b, _),
        attach(server, "s", role="agent", user_id="u") as (c, _),
        attach(server, "s", user_id="u") as (viewer, _),
    ):
        results = await asyncio.gather(
            publish_all(a, "a", 30), publish_all(b, "b", 30), publish_all(c, "c", 30)
        )
        answers = {key: reply for result in results for key, reply in result.items()}
        acked = {key: r["seq"] for key, r in answers.items() if r["type"] == "ack"}
        refused = [key for key, r in answers.items() if r["type"] == "error"]
        assert refused and all(answers[k]["code"] == "too_large" for k in refused)
        assert sorted(acked.values()) == list(range(1, len(acked) + 1))
        # The viewer: exactly the acknowledged events, in seq order, nothing refused.
        seen: list[tuple[int, str]] = []
        while len(seen) < len(acked):
            frame = await viewer.recv(timeout=10)
            if frame["type"] == "event":
                seen.append((frame["seq"], frame["event"]["content"].split(":")[0]))
        assert seen == sorted((seq, key) for key, seq in acked.items())
        status, body = await get(server, "/api/v1/sessions/s")
        assert status == 200 and body["metadata"]["stored_bytes"] <= CAP
        # Keyed retries: an acknowledged one is a duplicate; a refused one still refused.
        some_acked = next(iter(acked))
        retry = {"type": "event", "id": "r1", "key": some_acked}
        await a.send({**retry, "event": token(f"{some_acked}:{PAYLOAD}")})
        reply = await a.recv_type("ack")
        assert reply == {"type": "ack", "id": "r1", "seq": acked[some_acked], "duplicate": True}
        await a.send({"type": "event", "id": "r2", "key": refused[0], "event": token("z" * 9000)})
        reply = await a.recv_type("error")
        assert reply["code"] == "too_large" and reply["id"] == "r2"
