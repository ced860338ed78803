"""The book of unanswered requests behind exactly-once publishing
(protocol/client/pending.py). Futures are made on an event loop that never runs: the
book only settles them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bamboo_session.protocol.client import RequestError, SessionEnded
from bamboo_session.protocol.client.pending import PendingRequests


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def add(
    book: PendingRequests, loop: asyncio.AbstractEventLoop, is_publish: bool = True
) -> tuple[int, asyncio.Future[Any]]:
    request_id = book.next_id()
    future: asyncio.Future[Any] = loop.create_future()
    book.add(request_id, f"frame {request_id}", future, is_publish)
    return request_id, future


def test_ids_count_from_one() -> None:
    book = PendingRequests()
    assert [book.next_id() for _ in range(3)] == [1, 2, 3]


def test_unsent_lists_what_a_connection_has_not_had_oldest_first(
    loop: asyncio.AbstractEventLoop,
) -> None:
    book = PendingRequests()
    ids = [add(book, loop)[0] for _ in range(4)]
    assert [p.frame for p in book.unsent(1)] == [f"frame {i}" for i in ids]
    first, second = book.unsent(1)[:2]
    assert first.mark_sent(1) is False and second.mark_sent(1) is False  # first sends
    assert [p.frame for p in book.unsent(1)] == ["frame 3", "frame 4"]
    # A new connection: everything still unanswered goes out again, in the same order,
    # and what went out before counts as resent.
    assert [p.frame for p in book.unsent(2)] == [f"frame {i}" for i in ids]
    assert [p.mark_sent(2) for p in book.unsent(2)] == [True, True, False, False]
    assert book.unsent(2) == []


def test_an_answer_settles_its_request_once(loop: asyncio.AbstractEventLoop) -> None:
    book = PendingRequests()
    (one, first), (two, second) = add(book, loop), add(book, loop, is_publish=False)
    assert book.answer(one, "ack") is not None and first.result() == "ack"
    assert book.answer(one, "again") is None  # a late duplicate reply: nobody waits
    error = RequestError("bad_request", "limit")
    assert book.answer(two, error=error) is not None and second.exception() is error
    assert len(book) == 0


@pytest.mark.parametrize("request_id", ["1", None, 1.0, 99])
def test_replies_to_ids_we_never_gave_are_ignored(
    loop: asyncio.AbstractEventLoop, request_id: Any
) -> None:
    book = PendingRequests()
    add(book, loop)
    assert book.get(request_id) is None and book.answer(request_id, "x") is None
    assert len(book) == 1


def test_unanswered_publishes_are_counted(loop: asyncio.AbstractEventLoop) -> None:
    book = PendingRequests()
    publish, _ = add(book, loop)
    add(book, loop, is_publish=False)
    add(book, loop)
    assert book.unanswered_publishes == 2
    book.answer(publish, "ack")
    assert book.unanswered_publishes == 1


def test_a_publish_nobody_waits_for_stays_until_answered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    book = PendingRequests()
    publish, _ = add(book, loop)
    query, _ = add(book, loop, is_publish=False)
    book.release(publish)  # its caller was cancelled: it may be stored all the same
    book.release(query)  # a query nobody waits for is simply forgotten
    assert [p.frame for p in book.unsent(1)] == [f"frame {publish}"]
    assert book.unanswered_publishes == 1
    book.answer(publish, "ack")
    book.release(publish)  # after the answer, release finds nothing to do
    assert len(book) == 0 and book.unanswered_publishes == 0


def test_fail_all_fails_every_waiter_and_empties_the_book(
    loop: asyncio.AbstractEventLoop,
) -> None:
    book = PendingRequests()
    futures = [add(book, loop)[1] for _ in range(3)]
    futures[0].cancel()  # a waiter gone already is left alone
    ended = SessionEnded("client closed")
    book.fail_all(ended)
    assert [f.exception() for f in futures[1:]] == [ended, ended]
    assert len(book) == 0 and book.unanswered_publishes == 0 and book.unsent(1) == []


def test_a_batch_maps_its_reply_to_its_publishes_for_one_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    book = PendingRequests()
    ids = [add(book, loop)[0] for _ in range(3)]
    batch_id = book.next_id()
    book.add_batch(batch_id, ids[:2])
    assert book.take_batch(ids[2]) is None  # a request of its own, not a batch
    assert book.take_batch(batch_id) == ids[:2]
    assert book.take_batch(batch_id) is None  # one reply per batch
    book.add_batch(book.next_id(), ids)
    book.forget_batches()  # a new connection: its batches are gone, their publishes stay
    assert book.take_batch(batch_id + 1) is None and len(book) == 3
    book.answer(ids[0], "ack")
    assert [p.settled for p in book.unsent(9)] == [False, False]
