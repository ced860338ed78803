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
