"""server/failed_leaves.py's FailedLeaves, pure data: failed presence leaves are
forgotten a heartbeat after they failed, whatever the order they came back in (an owed
state's park takes a session's and puts them back when the store fails it again, after
newer ones). A clock of the test's own: what is asserted is which are kept at a time."""

from __future__ import annotations

from bamboo_session.server.failed_leaves import FailedLeaves


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_put_back_after_newer_ones_is_forgotten_a_heartbeat_after_it_failed() -> None:
    clock = Clock()
    leaves = FailedLeaves(heartbeat=1.0, clock=clock)
    leaves.add("older", [("c1", "agent")], "e1")
    clock.now += 0.5
    leaves.add("newer", [("c2", "agent")], "e2")
    taken = leaves.pop("older")  # a park takes it; the store fails the park
    assert taken is not None
    leaves.put_back("older", *taken)
    assert ("older" in leaves, "newer" in leaves, leaves.count) == (True, True, 2)

    clock.now += 0.6  # the older failed 1.1 s ago, the newer 0.6 s ago
    leaves.forget_lapsed()
    assert ("older" in leaves, "newer" in leaves, leaves.count) == (False, True, 1)
    clock.now += 0.5
    leaves.forget_lapsed()
    assert ("newer" in leaves, leaves.count) == (False, 0)


def test_a_session_that_fails_again_is_kept_a_heartbeat_from_its_last_failure() -> None:
    clock = Clock()
    leaves = FailedLeaves(heartbeat=1.0, clock=clock)
    leaves.add("s", [("c1", "agent")], "e")
    clock.now += 0.8
    leaves.add("s", [("c2", "agent")], "e")
    clock.now += 0.5  # a heartbeat past the first failure, not the last
    leaves.forget_lapsed()
    assert ("s" in leaves, leaves.count) == (True, 2)
    clock.now += 0.5
    leaves.forget_lapsed()
    assert ("s" in leaves, leaves.count) == (False, 0)


def test_many_taken_and_put_back_keep_what_it_holds_bounded() -> None:
    clock = Clock()
    leaves = FailedLeaves(heartbeat=1.0, clock=clock)
    leaves.add("s", [("c", "agent")], "e")
    for _ in range(10_000):  # each owed round of an outage: taken, failed, put back
        taken = leaves.pop("s")
        assert taken is not None
        leaves.put_back("s", *taken)
    assert len(leaves._lapsing) <= 2 * 1 + 64 + 1
    clock.now += 1.0
    leaves.forget_lapsed()
    assert ("s" in leaves, leaves.count, leaves._lapsing) == (False, 0, [])
