"""A SIGTERM as a mix of peers sees it: idle readers (JSON, msgpack, permessage-deflate),
one whose socket is full, one in the middle of a replay. Each gets what was queued for
it, then ``closed``, then close 1012, then the end of the TCP stream, whichever way its
close went out (in one write with the frames ahead of it, or by its writer task)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach
from tests.test_server_shutdown import RESTARTING, MutePeer, publish_acked

EVENTS = 40  # of 60 KB: 2.4 MB, far past what a peer with a 4 KB buffer takes unread


def event_seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["seq"] for frame in frames if frame["type"] == "event"]


async def test_sigterm_gives_each_kind_of_peer_its_frames_closed_1012_then_the_end(
    tmp_path: Path,
) -> None:
    flags = ("--shutdown-grace", "30", "--close-timeout", "60", "--compression", "true")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    with server:
        port = server.port
        plain, _ = await MutePeer.attach(port, "s1", create=True)
        packed, _ = await MutePeer.attach(port, "s1", msgpack=True)
        deflated, _ = await MutePeer.attach(port, "s1", compress=True)
        stuck, _ = await MutePeer.attach(port, "s1", receive_buffer=4096)
        readers = [
            (peer, asyncio.ensure_future(peer.until_close())) for peer in (plain, packed, deflated)
        ]
        async with attach(server, "s1", role="agent") as (agent, welcome):
            await publish_acked(agent, EVENTS)
            resuming, hello = await MutePeer.attach(
                port, "s1", receive_buffer=4096, last_seq=0, epoch=welcome["epoch"]
            )
            assert hello["replay"] == EVENTS
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop, 60))
            for peer, reading in readers:
                frames, code = await reading
                assert code == 1012 and frames[-1] == RESTARTING, frames[-3:]
                assert event_seqs(frames) == list(range(1, EVENTS + 1))
            assert bool(deflated.protocol.extensions) and not plain.protocol.extensions
            frames, code = await stuck.until_close()  # it reads again only now
            assert code == 1012 and frames[-1] == RESTARTING
            assert event_seqs(frames) == list(range(1, EVENTS + 1))
            frames, code = await resuming.until_close()
            # Cut where the stop found it: a prefix of the log, with no gap.
            assert code == 1012 and frames[-1] == RESTARTING
            assert event_seqs(frames) == list(range(1, len(event_seqs(frames)) + 1))
            agent_code, agent_frames = await agent.closed(timeout=30)
            assert agent_code == 1012 and agent_frames[-1] == RESTARTING
            for peer in (plain, packed, deflated, stuck, resuming):
                assert await peer.ended()
                peer.writer.close()
            assert await stopping == 0
    records = server.log_records()
    assert_no_tracebacks(records)
    assert not [r for r in records if r["level"] in ("warning", "error")], records
    (stopped,) = (r for r in records if r["event"] == "stopped")
    assert stopped["connections"] == 6
