"""The epoch fence between two servers on one Redis store, where the old session's peer
stays on an instance that has not heard of its end (its pub/sub connection killed;
tests/test_server_instances.py ``alice_unheard``): ``s1`` deleted or expired on B,
and bob creating it again there (a new epoch). Alice's instance, A, must not let her
count in bob's session (its presence heartbeat), must end her at its next look at the
session (it finds another epoch stored), and her ``events`` request must not name
the new log's last seq."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.redis import listener
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, run_server, token
from tests.test_server_instances import alice_unheard


@pytest.mark.parametrize("ending", ["expired", "deleted"])
async def test_a_look_that_finds_another_epoch_ends_the_old_sessions_peers(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A hears nothing for 10 s; its look at alice's session (every 0.5 s here) finds
    ``s1`` stored with bob's epoch: alice's session is gone, and she gets ``closed``
    and 4404 as for a deletion, long before A's listener is back. Bob stays."""
    monkeypatch.setattr(listener, "RECONNECT_DELAYS", (10.0,))
    url = redis_server.url(prefix=prefix_for(tmp_path))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with (
            run_server(store=url, idle_timeout=0.5) as a,
            run_server(store=url, idle_timeout=0.5) as b,
        ):
            async with alice_unheard(a, b, admin, ending) as (alice, old):
                async with attach(b, "s1", create=True, user_id="bob") as (bob, new):
                    assert new["epoch"] != old["epoch"]
                    code, frames = await alice.closed(timeout=4)
                    assert code == 4404
                    # An expired one may be found expired, by a look before bob's create.
                    reasons = {"session deleted"}
                    if ending == "expired":
                        reasons.add("session expired")
                    assert frames[-1]["type"] == "closed" and frames[-1]["reason"] in reasons
                    mine = {"type": "event", "id": 1, "event": token("bob")}
                    assert (await bob.request(mine, "ack"))["seq"] == 1
                    status, body = await get(b, "/api/v1/sessions/s1")
                    assert status == 200 and body["metadata"]["epoch"] == new["epoch"]
    finally:
        await admin.aclose()
