"""Peers that keep their parts of the unread answers full lock no other peer out
(server/unread_answers.py): when the account cannot take the answer of a peer that
holds less than an equal part of it, the peer holding the most, past its equal part,
loses its oldest unread answer (its connection dropped) to make room. Real server,
real sockets, real peers that do not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.server.unread_answers import AnswerShare, UnreadAnswers
from tests.auth_support import SECRET, make_token
from tests.memory_support import KIB, MIB
from tests.replay_support import metric
from tests.support import run_server
from tests.test_http_read_limits import a_log, head, in_thread
from tests.test_server_lifecycle import eventually

# The account of unread answers holds 8 MiB (a quarter of the budget), a peer's part of
# it 2 MiB: two pages of about 970 kB each, held unread, and the third is refused 429.
CONFIG = {"memory_budget": 32 * MIB, "auth_secret": SECRET}
MESSAGES = 96  # a page of them all: about 970 kB
HOLDERS = 5  # peers that keep their parts full
DEADLINE = 10.0


def hold_unread(
    port: int,
    path: str,
    token: str | None = None,
    *,
    address: str = "127.0.0.1",
    timeout: float = DEADLINE,
) -> tuple[socket.socket, int]:
    """A peer on a slow link, at ``address``: asks for ``path``, reads the status line
    and no more (a tiny receive buffer, so that the answer stays in the server's
    buffer)."""
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.bind((address, 0))
    peer.settimeout(timeout)
    peer.connect(("127.0.0.1", port))
    peer.sendall(head(path, token))
    status = b""
    while len(status) < len(b"HTTP/1.1 200"):
        chunk = peer.recv(len(b"HTTP/1.1 200") - len(status))
        assert chunk, status
        status += chunk
    return peer, int(status[9:12])


def read_rest(peer: socket.socket) -> bytes:
    """What is left of an answer, read as fast as it comes; b"" if it was cut."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := peer.recv(1 << 20):
            answer += chunk
    return answer


def read_whole(port: int, path: str, token: str) -> tuple[int, bytes]:
    """A well-behaved peer's GET, read as fast as it comes: its status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as peer:
        peer.sendall(head(path, token))
        answer = read_rest(peer)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return int(head_part[9:12]), body


def dropped_answers(server: Any) -> float:
    return metric(server.metrics.render().decode(), "bamboo_answers_dropped_total")


def all_behind_pace(server: Any, peer: str) -> bool:
    """Whether every answer ``peer`` holds is taken behind pace, so may be dropped
    for room: a page not read at all, once the grace and what its peer's receive
    buffer took no longer cover it (a little over 1 s)."""
    answers = server.unread_answers.share(peer)
    now = asyncio.get_running_loop().time()
    return all(holder.behind_pace(now) for holder in answers.holders)


async def test_peers_that_keep_their_parts_full_lock_no_other_peer_out() -> None:
    # Five peers each keep its part nearly full with pages it does not read (each
    # part stops short of a third page), and together they fill the account: a sixth,
    # well-behaved peer got 503 for every page of that size, for as long as they kept
    # asking again. Now the largest holder's oldest unread answer is dropped for it,
    # once it is behind the pace that would take it in its time (a page not read at
    # all, within seconds). Bob, on a slow link, holds one page, the oldest of all: he
    # is not the one dropped.
    async with run_server(**CONFIG) as server:
        users = ["bob", "alice", *(f"mallory{n}" for n in range(HOLDERS))]
        paths = {user: await a_log(server, user, MESSAGES, user_id=user) for user in users}
        tokens = {user: make_token(user) for user in users}
        answers = server.unread_answers
        peers: list[socket.socket] = []
        try:
            bob, status = await in_thread(hold_unread, server.port, paths["bob"], tokens["bob"])
            peers.append(bob)
            assert status == 200
            for user in users[2:]:
                while True:  # its part's pages, until it is told it holds enough
                    peer, status = await in_thread(
                        hold_unread, server.port, paths[user], tokens[user]
                    )
                    peers.append(peer)
                    if status != 200:
                        break
            page = len(json.dumps({"x": "x" * 10_000})) * MESSAGES
            assert answers.used + page > answers.limit, (answers.used, page)  # full for alice
            for user in users[2:]:
                await eventually(lambda user=user: all_behind_pace(server, f"user:{user}"))
            dropped = dropped_answers(server)  # the holders drop each other's too
            with capture_logs() as logs:
                status, body = await in_thread(
                    read_whole, server.port, paths["alice"], tokens["alice"]
                )
            assert status == 200, body[:200]
            # Each drop is logged, with whose answer it was and its bytes.
            drops = [e for e in logs if e["event"] == "unread answer dropped for room"]
            assert drops and all(e["peer"].startswith("user:mallory") for e in drops), logs
            assert all(e["bytes"] > 0 for e in drops), drops
            assert len(json.loads(body)["messages"]) == MESSAGES
            assert answers.used <= answers.limit
            assert dropped_answers(server) > dropped
            assert answers.share("user:bob").used > 0
            # Bob's answer, the oldest unread of all, is still whole: he reads it now.
            rest = await in_thread(read_rest, bob)
            assert json.loads(rest.partition(b"\r\n\r\n")[2])["messages"], rest[:200]
        finally:
            for peer in peers:
                peer.close()


async def test_an_equal_part_is_what_a_peer_may_claim() -> None:
    # Ten peers hold one page each (about 830 kB of it in the server's buffer, the rest
    # in the kernel's): the account cannot take another page, and a page is more than
    # an equal part of the account among eleven peers (760 kB). Alice is refused, and
    # nobody's answer is dropped: the account is as full as its size says.
    async with run_server(**CONFIG) as server:
        users = ["alice", *(f"peer{n}" for n in range(10))]
        paths = {user: await a_log(server, user, MESSAGES, user_id=user) for user in users}
        answers = server.unread_answers
        peers: list[socket.socket] = []
        try:
            for user in users[1:]:
                peer, status = await in_thread(
                    hold_unread, server.port, paths[user], make_token(user)
                )
                peers.append(peer)
                assert status in (200, 503), status
            assert answers.used > answers.limit - 900 * KIB
            status, body = await in_thread(
                read_whole, server.port, paths["alice"], make_token("alice")
            )
            assert status == 503, body[:200]
            assert dropped_answers(server) == 0
        finally:
            for peer in peers:
                peer.close()
        await asyncio.sleep(0)


class Held:
    """An answer's bytes held on ``share``, as a connection holds them, its peer
    behind pace unless ``on_pace``: dropped, it gives them back at once (http_answer.py
    ``drop_unread``)."""

    def __init__(self, share: AnswerShare, size: int, on_pace: bool = False) -> None:
        self.share, self.size, self.on_pace = share, size, on_pace
        share.charge(size)
        share.hold(self)

    def behind_pace(self, now: float) -> int:
        return 0 if self.on_pace else self.size

    def drop_unread(self) -> int:
        size, self.size = self.size, 0
        if size:
            self.share.release(size)
            self.share.let_go(self)
        return size


async def test_the_peer_holding_the_most_loses_its_oldest_answer_first() -> None:
    refused: list[str] = []
    account = UnreadAnswers(1000, 400, refused.append)
    mallory, eve, bob, alice, carol, dave, erin = (
        account.share(f"user:{name}")
        for name in ("mallory", "eve", "bob", "alice", "carol", "dave", "erin")
    )
    slow = Held(bob, 200)  # the oldest answer of all, on a slow link
    mallorys = [Held(mallory, 120) for _ in range(3)]
    eves = [Held(eve, 150) for _ in range(2)]
    assert account.used == 860
    # Alice's 200 bytes do not fit; an equal part of four is 250: mallory, who holds
    # the most, loses her oldest answer, and that is room enough.
    assert alice.refusal(200) is None
    alice.charge(200)
    assert [held.size for held in mallorys] == [0, 120, 120] and slow.size == 200
    # Carol's may be up to a fifth: eve holds the most now.
    assert carol.refusal(200) is None
    carol.charge(200)
    assert [held.size for held in eves] == [0, 150] and account.used == 990
    # A piece of a streamed answer waiting for room gets it so too (a sixth: 166).
    piece = dave.room(100)
    assert piece.done() and dave.used == 100
    assert [held.size for held in mallorys] == [0, 0, 120] and slow.size == 200
    # Past an equal part (a seventh: 142) no room is made: 503, nothing dropped.
    assert account.used + 150 > account.limit
    refusal = erin.refusal(150)
    assert refusal is not None and refusal.status_code == 503
    assert mallory.refusal(150) is not None  # nor for a peer at its equal part already
    assert slow.size == 200 and account.used == 970
    assert refused == ["server", "server"]


async def test_a_piece_within_its_equal_part_is_not_held_up_behind_one_past_it() -> None:
    # Four peers hold the whole account, Mallory the most. Her streamed answer's next
    # piece waits for room: with it she would hold past an equal part (250), so none is
    # made for it. Alice's piece comes after it, and room may be made for hers (an
    # equal part among five is 200): it waited behind Mallory's for as long as hers
    # waited (up to the page timeout, then her answer was dropped as too slow), while
    # a plain answer of Alice's got room at once. Now it gets room as that would.
    account = UnreadAnswers(1000, 400)
    mallory, eve, bob, carol, alice = (
        account.share(f"user:{name}") for name in ("mallory", "eve", "bob", "carol", "alice")
    )
    mallorys = Held(mallory, 300)
    eves = [Held(eve, 125), Held(eve, 125)]
    Held(bob, 250)
    carols = Held(carol, 200)
    mallorys_piece = mallory.room(100)
    assert not mallorys_piece.done()
    alices_piece = alice.room(100)
    assert alices_piece.done() and alice.used == 100
    # Mallory held the most: her answer went for it, and nobody else's.
    assert mallorys.size == 0 and [held.size for held in eves] == [125, 125]
    assert account.used == 800
    # Hers still comes first among what waits: at the next release, it is charged.
    carols.drop_unread()
    assert mallorys_piece.done() and mallory.used == 100


class CountedHolders(dict[Any, None]):
    """A share's holders that count how many of them are looked at."""

    looked_at = 0

    def __iter__(self) -> Any:
        for holder in super().__iter__():
            CountedHolders.looked_at += 1
            yield holder


async def test_room_made_from_many_answers_of_one_peer_looks_at_each_once() -> None:
    # Mallory holds her part of the account in 4,000 answers of 1 kB (what a peer
    # holds of each of many connections that read all but the end of their answers),
    # and loses 500 of them to make room for Alice's page. Each answer dropped copied
    # the list of all of hers first: 1.8 million looked at, 140 ms of the event loop
    # for one page at 16,000 answers. Now each is looked at once.
    account = UnreadAnswers(16_000_000, 4_000_000)
    mallory, alice = account.share("user:mallory"), account.share("user:alice")
    mallory.holders = CountedHolders()
    mallorys = [Held(mallory, 1000) for _ in range(4000)]
    for name in ("bob", "carol", "dave", "erin"):
        Held(account.share(f"user:{name}"), 3_000_000)
    assert account.used == account.limit
    CountedHolders.looked_at = 0
    assert alice.refusal(500_000) is None
    assert sum(1 for held in mallorys if not held.size) == 500
    assert CountedHolders.looked_at == 500


async def test_only_answers_taken_behind_pace_are_dropped_for_room() -> None:
    # Mallory holds the most, but her peer takes her answer at a pace that finishes it
    # in its time: Eve's answer behind pace goes instead, then Bob's oldest behind-pace
    # one, his on-pace one passed over. Peers on many addresses (each holding a little
    # past the equal part they make small) had the page of an honest peer that read it
    # at 1 MiB/s cut for them; now it is never dropped.
    account = UnreadAnswers(1000, 500)
    mallory, eve, bob, alice, carol = (
        account.share(f"user:{name}") for name in ("mallory", "eve", "bob", "alice", "carol")
    )
    honest = Held(mallory, 400, on_pace=True)
    eves = Held(eve, 320)
    bobs = [Held(bob, 100, on_pace=True), Held(bob, 90), Held(bob, 90)]
    assert account.used == 1000
    assert alice.refusal(150) is None  # an equal part of four: 250
    alice.charge(150)
    assert honest.size == 400 and eves.size == 0 and account.used == 830
    # Carol's may be up to a fourth (Eve holds nothing now): Mallory is passed over,
    # Bob holds the most after her, and loses his oldest answer behind pace.
    assert carol.refusal(250) is None
    assert [held.size for held in bobs] == [100, 0, 90] and honest.size == 400
    carols = [Held(carol, 100), Held(carol, 150, on_pace=True)]
    # Dave's may be up to a fifth (200): Carol's answer behind pace would not make room
    # enough, and Bob holds no more than that part. Nothing is dropped for nothing.
    dave = account.share("user:dave")
    assert account.answers_to_drop(dave, 200) is None
    refusal = dave.refusal(200)
    assert refusal is not None and refusal.status_code == 503
    assert [held.size for held in carols] == [100, 150] and honest.size == 400
    assert account.used == 990
