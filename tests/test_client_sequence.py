"""The gap and duplicate check (protocol/client/sequence.py), fed seqs directly, as
docs/protocol.md's "Checking for gaps" describes them."""

from __future__ import annotations

import pytest

from bamboo_session.protocol.client import SequenceError
from bamboo_session.protocol.client.sequence import SequenceChecker


def test_events_in_order_move_the_position() -> None:
    seq = SequenceChecker(4)
    for s in (5, 6, 7):
        seq.event(s, 0)
    assert (seq.contiguous, seq.highest, seq.resume_point) == (7, 7, 7)


@pytest.mark.parametrize("repeated", [3, 5])
def test_an_event_seen_before_is_a_duplicate(repeated: int) -> None:
    seq = SequenceChecker(3)
    seq.event(4, 0)
    seq.event(5, 0)
    with pytest.raises(SequenceError, match=f"duplicate event seq {repeated}") as error:
        seq.event(repeated, 0)
    assert (error.value.expected, error.value.got) == (6, repeated)


def test_a_hole_no_unanswered_publish_can_fill_is_a_gap() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 0)
    with pytest.raises(SequenceError, match="gap: seq 2 never arrived") as error:
        seq.event(3, 0)
    assert (error.value.expected, error.value.got) == (2, 3)


def test_a_hole_waits_for_the_ack_of_our_publish() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.event(3, 1)  # 2 is ours: its ack trails event 3 of someone else
    seq.ack(2, duplicate=False)
    seq.check(0)
    assert (seq.contiguous, seq.above, seq.resume_point) == (3, set(), 3)


def test_our_acks_in_order_move_the_position() -> None:
    seq = SequenceChecker(0)
    for s in (1, 2, 3):
        seq.ack(s, duplicate=False)
        seq.check(0)
    assert seq.resume_point == 3


def test_a_fresh_ack_for_a_seq_seen_before_is_a_duplicate() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    with pytest.raises(SequenceError, match="duplicate ack seq 1"):
        seq.ack(1, duplicate=False)


def test_a_duplicate_ack_of_a_seq_already_seen_changes_nothing() -> None:
    seq = SequenceChecker(0)
    seq.ack(1, duplicate=False)  # our publish with key k
    seq.ack(1, duplicate=True)  # the same key again: the first append's seq
    seq.event(2, 0)
    assert (seq.contiguous, seq.above) == (2, set())


def test_a_duplicate_ack_fills_the_hole_of_a_publish_whose_ack_was_lost() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.event(3, 1)  # 2 was our publish, stored before a drop that lost its ack
    seq.ack(2, duplicate=True)  # the resent publish: "already stored, as 2"
    seq.check(0)
    assert seq.contiguous == 3


def test_reset_forgets_everything_seen() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.event(3, 1)
    seq.reset(10)
    assert (seq.contiguous, seq.highest, seq.above, seq.resume_point) == (10, 10, set(), 10)
    seq.event(11, 0)


# -- acks and other peers' events in either order ----------------------------------------


def test_an_ack_may_overtake_events_of_others_with_lower_seqs() -> None:
    seq = SequenceChecker(0)
    seq.ack(3, duplicate=False)  # ours; 1 and 2 (someone else's) are still on their way
    seq.check(0)
    assert seq.resume_point == 0, "a reconnect now must not skip 1 and 2"
    assert seq.event(1, 0) and seq.event(2, 0)
    assert seq.resume_point == 3 and seq.contiguous == 3
    assert seq.event(4, 0)


def test_a_gap_behind_an_overtaking_ack_is_still_found() -> None:
    seq = SequenceChecker(0)
    seq.ack(2, duplicate=False)
    seq.check(0)
    with pytest.raises(SequenceError, match="gap: seq 1 never arrived"):
        seq.event(3, 0)


def test_a_resumed_connection_gets_our_own_seqs_back_and_does_not_deliver_them() -> None:
    seq = SequenceChecker(0)
    seq.ack(2, duplicate=False)
    seq.ack(4, duplicate=False)
    assert seq.resume() == 0 == seq.resume(), "asking twice changes nothing"
    # The new connection sends 1..4: 2 and 4 are echoes of our publishes.
    assert [seq.event(s, 0) for s in (1, 2, 3, 4, 5)] == [True, False, True, False, True]
    assert (seq.contiguous, seq.above, seq.echoes) == (5, set(), set())


def test_without_a_reconnect_our_own_seq_as_an_event_is_a_duplicate() -> None:
    seq = SequenceChecker(0)
    seq.ack(2, duplicate=False)
    seq.event(1, 0)
    with pytest.raises(SequenceError, match="duplicate event seq 2"):
        seq.event(2, 0)


def test_an_event_below_the_last_one_is_out_of_order() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.event(3, 1)  # 2 may be our publish...
    with pytest.raises(SequenceError, match="out of order"):
        seq.event(2, 1)  # ...but events never come back down


def test_a_duplicate_ack_above_the_last_event_waits_for_its_event() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.ack(3, duplicate=True)  # same key as 3, someone else's (or ours, earlier)
    seq.check(0)
    assert seq.resume_point == 1
    assert seq.event(2, 0) and seq.event(3, 0), "3 arrives as an event and is delivered"


def test_a_hole_of_ours_below_the_resume_point_is_filled_by_the_resent_publish() -> None:
    seq = SequenceChecker(0)
    seq.event(1, 1)
    seq.event(3, 1)  # 2 is our publish; the connection drops before its ack
    assert seq.resume() == 3
    seq.ack(2, duplicate=True)  # resent on the new connection: stored already, as 2
    seq.check(0)
    assert seq.event(4, 0) and seq.contiguous == 4
