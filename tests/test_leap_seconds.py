"""Leap seconds in the times peers send (docs/protocol.md, "Times"): RFC 3339 writes
one as second 60, at a month's end in the last minute of the UTC day. It is accepted,
in a message's ``created_at`` on either codec and in the listing's time parameters,
and read as the last microsecond before it ends; a second 60 anywhere else is refused
as any invalid time is. It was refused everywhere (``bad_request``, HTTP 400). How
the codecs decode frames that hold one: tests/test_leap_seconds_codec.py."""

from __future__ import annotations

from typing import Any

import pytest

from bamboo_session.protocol.leap_seconds import leap_second_read
from tests.leap_seconds_support import ITS_LAST_MICROSECOND, LEAP, NOT_A_LEAP_SECOND, message
from tests.support import Peer, attach, get, run_server


async def answer(peer: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``frame``, an error included (presence and events skipped)."""
    await peer.send(frame)
    while (reply := await peer.recv())["type"] in ("presence", "event"):
        pass
    return reply


@pytest.mark.parametrize("msgpack", [False, True])
async def test_a_leap_second_is_kept_as_the_last_microsecond_before_it_ends(msgpack: bool) -> None:
    async with run_server() as server:
        async with (
            attach(server, "s1", create=True, msgpack=msgpack) as (publisher, _),
            attach(server, "s1") as (viewer, _),
        ):
            just_before = message("a", "2016-12-31T23:59:59.5Z")
            leap = message("b", LEAP, metadata={"created_at": LEAP})  # free-form: as sent
            elsewhere = message("c", "1990-12-31T15:59:60.25-08:00")  # 23:59:60 UTC
            in_a_batch = message("d", "2015-06-30T23:59:60+00:00")
            for frame, reply in (
                ({"type": "message", "id": 1, "message": just_before}, "ack"),
                ({"type": "message", "id": 2, "message": leap}, "ack"),
                (
                    {"type": "event", "id": 3, "event": {"type": "message", "message": elsewhere}},
                    "ack",
                ),
                ({"type": "batch", "id": 4, "items": [{"message": in_a_batch}]}, "acks"),
            ):
                assert (await answer(publisher, frame))["type"] == reply, frame
            expected = [
                ("a", "2016-12-31T23:59:59.500000Z"),
                ("b", ITS_LAST_MICROSECOND),
                ("c", "1990-12-31T23:59:59.999999Z"),
                ("d", "2015-06-30T23:59:59.999999Z"),
            ]
            history = await publisher.request({"type": "history", "id": 5}, "history")
            assert [(m["content"], m["created_at"]) for m in history["messages"]] == expected
            assert history["messages"][1]["metadata"] == {"created_at": LEAP}
            seen = [(await viewer.recv_type("event"))["event"]["message"] for _ in expected]
            assert [(m["content"], m["created_at"]) for m in seen] == expected

            # Second 60 where no leap second is: no time, and the connection stays open.
            for created_at in (NOT_A_LEAP_SECOND, "2016-12-30T23:59:60Z", "2016-12-31T23:59:61Z"):
                frame = {"type": "message", "id": 6, "message": message("e", created_at)}
                assert await answer(publisher, frame) == {
                    "type": "error",
                    "id": 6,
                    "code": "bad_request",
                    "message": "Invalid RFC3339 encoded datetime - at `$.message.created_at`",
                }, created_at
            assert (await publisher.request({"type": "ping", "id": 7}, "pong"))["id"] == 7


async def test_the_listing_reads_a_leap_second_in_its_time_parameters() -> None:
    async with run_server() as server:
        await server.manager.create_session("u", session_id="now")
        for query, expected in (
            (f"created_after={LEAP}", ["now"]),
            (f"created_before={LEAP}", []),
            ("created_before=2016-12-31T23:59:60", []),  # no offset: UTC
            (f"active_after={LEAP.replace('Z', '%2B00:00')}", ["now"]),
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 200, (query, body)
            assert [s["id"] for s in body["sessions"]] == expected, query
        status, body = await get(server, f"/api/v1/sessions?created_after={NOT_A_LEAP_SECOND}")
        assert status == 400 and body["error"]["code"] == "bad_request", body


def test_second_60_is_read_only_where_a_leap_second_can_be() -> None:
    for sent, read in (
        (LEAP, ITS_LAST_MICROSECOND),
        ("2016-12-31t23:59:60.123456789z", "2016-12-31t23:59:59.999999z"),
        ("2016-02-29T23:59:60Z", "2016-02-29T23:59:59.999999Z"),  # any month may end in one
        ("1990-12-31T15:59:60-08:00", "1990-12-31T15:59:59.999999-08:00"),
        ("2017-01-01T00:59:60+01:00", "2017-01-01T00:59:59.999999+01:00"),
        ("9999-12-31T23:59:60Z", "9999-12-31T23:59:59.999999Z"),
    ):
        assert leap_second_read(sent) == read, sent
    for sent in (
        NOT_A_LEAP_SECOND,
        "2016-12-30T23:59:60Z",  # no month ends that day
        "2016-12-31T23:59:60+01:00",  # 22:59:60 in UTC
        "2015-02-29T23:59:60Z",  # no such day
        "9999-12-31T23:59:60-01:00",  # past year 9999 in UTC
        "2016-12-31T23:59:61Z",
        "2016-12-31T23:59:60.Z",
        "2016-12-31T23:59:59Z",  # not a leap second: read as it is, elsewhere
        "",
    ):
        assert leap_second_read(sent) is None, sent
