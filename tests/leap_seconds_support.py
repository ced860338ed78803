"""What the tests of leap seconds share (tests/test_leap_seconds*.py): a leap second,
its reading (the last microsecond before it ends), a second 60 that is no leap second,
and a message of a frame sent at a given time."""

from __future__ import annotations

from typing import Any

LEAP = "2016-12-31T23:59:60Z"
ITS_LAST_MICROSECOND = "2016-12-31T23:59:59.999999Z"
NOT_A_LEAP_SECOND = "2016-12-31T12:34:60Z"


def message(content: str, created_at: str, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, "created_at": created_at, **fields}
