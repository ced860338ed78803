"""The free-form values bound (docs/protocol.md, Free-form values) on a real server: a
frame holds at most 16,384, and a field whose value is a scalar counts one too, so a
message of more tool calls than that, or a batch whose scalar items run past it, is
refused (both were taken when only the values inside objects and arrays counted)."""

from __future__ import annotations

from bamboo_session.protocol.free_form import MAX_FREE_VALUES
from tests.support import attach, run_server


async def test_a_message_of_more_tool_calls_than_the_bound_is_refused() -> None:
    calls = [{"id": "", "name": ""} for _ in range(MAX_FREE_VALUES + 1000)]  # arguments: null
    message = {"role": "assistant", "content": "", "tool_calls": calls}
    async with run_server() as server, attach(server, create=True, msgpack=True) as (peer, _):
        await peer.send({"type": "message", "id": 1, "message": message})
        reply = await peer.recv()
        assert reply["type"] == "error", reply
        assert reply["code"] == "bad_request"


async def test_a_batch_whose_scalar_values_pass_the_bound_is_refused() -> None:
    full = {"event": {"type": "custom", "name": "rows", "data": [0] * (MAX_FREE_VALUES - 1)}}
    scalar = {"event": {"type": "custom", "name": "one", "data": 0}}
    async with run_server() as server, attach(server, create=True) as (peer, _):
        await peer.send({"type": "batch", "id": 1, "items": [full] + [scalar] * 500})
        reply = await peer.recv()
        assert reply["type"] == "error", reply
        assert reply["message"].startswith("items[1]: more than 16384")
