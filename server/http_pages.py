"""The HTTP API's pages, charged to their peer's read allowance (server/read_allowance.py)
as the pages it draws over WebSocket and its replays are: a page of a history (``limit``,
``before``), of a log (``/events``), of the session list, and each page of a whole
history. The peer is the request's one ``HttpPeer`` (http_peer.py): the token's ``sub``
under auth, else the address the request came from (an IPv6 peer's /64), the same peer
whose share of the unread answers the answer is charged to (unread_answers.py).

A request that comes while its peer is in debt is answered at once, before anything is
read from the store: ``429`` (``rate_limited``), with ``Retry-After`` the debt in whole
seconds (at least 1). Not a wait, because that is what an HTTP client handles best:

- Retry layers of production clients honour a 429's ``Retry-After`` (urllib3's
  ``Retry``, ``curl --retry``, Go's retryablehttp, the AWS SDKs, Octokit); a wait looks
  like a slow server instead, and runs into the client's and its proxies' read timeouts
  (and this server's own, 10 s for a request's answer), which are retried at once, or
  reported as failures that say nothing of why.
- A request that waits holds its connection, and its head in the account of requests
  not answered yet (a sixteenth of ``--memory-budget``), from which the oldest are
  dropped to make room: a peer in debt that kept requests waiting would push other
  peers' requests out. A 429 holds nothing once sent.
- A client that waits ``Retry-After`` loses nothing of the rate: the allowance refills
  meanwhile (a second of it is within the default burst).

The same check, once the allowance lets the request through, refuses a page that the
account of unread answers could not take (:func:`refused_before_read`, which says the
order). A page is charged once read (:func:`as_page`, request_gate.py), whether its
answer is let out or refused for the bytes it would hold: a read refused free of
charge could be had again and again, beyond the allowance.

A whole history's later pages come after its status, when a 429 can no longer be sent:
each waits the debt before it is read, as a WebSocket page does (counted with them in
``bamboo_page_wait_seconds_total``), and the answer comes whole, only later. Not for
ever: a debt longer than ``--answer-page-timeout``, the time the peer has for each page,
ends the answer at once, and so does the peer's going (its end of stream sent, with
its request or later, its connection lost) before or while it waits, as a peer too
slow for a page ends it (the client sees the body cut short, http_stream.py).
Waiting out the debt, the answer kept its connection, reading nothing to tell whether
its peer was still there, then read one more page for nobody.
"""

from __future__ import annotations

import asyncio
import functools
import http
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Final

from websockets.http11 import Response

from .http_peer import HttpPeer
from .read_allowance import ReadAllowance
from .responses import StreamedResponse, error_response
from .services import Services

# What a listing is charged for each session it examined, in bytes of a page: about
# what one session's metadata weighs in a listing's answer (400 to 650 bytes), so that
# a listing costs what it would had it answered with every session it looked at.
EXAMINED_SESSION_BYTES: Final = 512


def refused_before_read(services: Services, peer: HttpPeer) -> Response | None:
    """The refusal of a request for a page before anything is read for it, else None
    (the request goes on). Asked once the request is authenticated and its parameters
    checked; the first of these that refuses answers it, and counts it:

    1. the peer's read allowance in debt: 429 ``rate_limited`` with ``Retry-After`` the
       debt (``bamboo_http_rate_limited_total``); first, because no page comes before
       the debt is repaid, whatever else frees up meanwhile;
    2. the account of unread answers full: 503 with ``Retry-After: 1``;
    3. the peer's share of it full: 429 ``rate_limited`` with ``Retry-After: 1``
       (2 and 3 in ``bamboo_answers_refused_total``). For a HEAD too, whose answer
       holds no body: it says what its GET would get, and reads no page for it.

    A request let through has a page's worth (``--max-page-bytes``) charged to its
    peer's allowance at once, given back once its page is charged (``HttpPeer.settle``,
    request_gate.py): 300 requests of one peer sent at once passed this check before
    any page was charged, and drew 289 MiB in 1.2 s where the allowance holds 64 MiB.
    """
    allowance = services.read_allowances.of(peer.key)
    refusal = over_allowance(services, allowance)
    if refusal is None:
        answers = services.unread_answers
        refusal = answers.refusal_when_full(lambda: answers.share(peer.key))
    if refusal is None and allowance is not None:
        peer.reservation = (allowance, allowance.reserve(services.config.max_page_bytes))
    return refusal


def over_allowance(services: Services, allowance: ReadAllowance | None) -> Response | None:
    """The 429 of a peer in debt, else None (the request goes on)."""
    if allowance is None:
        return None
    debt = allowance.debt()
    if debt <= 0:
        return None
    services.metrics.http_rate_limited.inc()
    seconds = max(1, math.ceil(debt))
    message = f"this peer's pages are over its read allowance: retry in {seconds} s"
    return error_response(
        http.HTTPStatus.TOO_MANY_REQUESTS, "rate_limited", message, {"Retry-After": str(seconds)}
    )


def as_page(services: Services, peer: HttpPeer, response: Response) -> Response:
    """``response``, a page for ``peer`` (a 200's body): charged to its allowance once
    the server has decided the answer (request_gate.py), let out or refused by the
    account of unread answers (it would take that peer or the server past their part):
    it was read either way."""
    if response.status_code == http.HTTPStatus.OK:
        peer.page_allowance = services.read_allowances.of(peer.key)
    return response


def charge_examined(services: Services, peer: HttpPeer, examined: int) -> None:
    """A listing's walk over the ``examined`` sessions its filter selected, charged to
    its peer as though each had been sent (:data:`EXAMINED_SESSION_BYTES`), beside its
    page (:func:`as_page`): a listing whose title matches none of a user's 10,000
    sessions answers 268 bytes, and cost the server 85 /healthz (bench/RESULTS.md,
    r478), which a sixteenth of its answer let a peer ask 56 times a second."""
    allowance = services.read_allowances.of(peer.key)
    if allowance is not None and examined > 0:
        allowance.charge(examined * EXAMINED_SESSION_BYTES)


def paced(
    services: Services, peer: HttpPeer, response: StreamedResponse, page_bytes: int
) -> StreamedResponse:
    """A whole history's answer for ``peer``: its first piece (read with the request)
    charged as :func:`as_page` charges a page, and every later one once read; before
    a later page (not the end, which reads no page: an answer is not held back once
    its pages are sent), the answer waits for the peer's debt to be repaid
    (``response.ready``: within ``--answer-page-timeout``, and while the peer is there),
    and only then takes room for it among the unread answers (http_stream.py): a page
    waiting for its peer's debt holds nothing of the account."""
    as_page(services, peer, response)
    allowance = peer.page_allowance
    if allowance is None or response.pieces is None:
        return response
    gone = peer.gone() if peer.gone is not None else None
    page_timeout = services.config.answer_page_timeout
    is_page = functools.partial(_is_page, response.piece_bytes, page_bytes)
    on_wait = services.metrics.page_wait_seconds.inc
    response.ready = functools.partial(_ready, allowance, gone, page_timeout, is_page, on_wait)
    response.pieces = _charged(response.pieces, allowance)
    return response


def _is_page(piece_bytes: Callable[[], int], page_bytes: int) -> bool:
    """Whether the next piece is a page: whether it has room for one (``page_bytes``,
    ``--max-page-bytes``, 1 KiB at least), where the end has room for its ``]}``."""
    return piece_bytes() >= page_bytes


async def _ready(
    allowance: ReadAllowance,
    gone: asyncio.Future[None] | None,
    page_timeout: float,
    is_page: Callable[[], bool],
    on_wait: Callable[[float], None],
) -> str | None:
    """None once the next piece may be read: at once for the end; for a page, once the
    peer's debt is repaid, within ``page_timeout``. Else why the answer ends there
    instead (http_stream.py drops its connection before the last chunk): its peer gone
    first, or its debt longer than what is left of ``page_timeout`` (at once, then:
    nothing it could wait for would repay it in time)."""
    if not is_page():
        return None
    deadline = asyncio.get_running_loop().time() + page_timeout
    if await allowance.repaid(functools.partial(_ends_within, gone, deadline), on_wait):
        return None
    if gone is not None and gone.done():
        return "peer gone"
    return "read allowance in debt past the page timeout"


async def _charged(pieces: AsyncIterator[bytes], allowance: ReadAllowance) -> AsyncIterator[bytes]:
    """``pieces``, each but the first (charged with the answer's head,
    request_gate.py) charged to ``allowance`` as it is read."""
    try:
        first = True
        while True:
            try:
                held = [await anext(pieces)]
            except StopAsyncIteration:
                return
            if not first:
                allowance.charge(len(held[0]))
            first = False
            # Not kept in this frame once handed on: the writer lets a piece go as soon
            # as the transport has its bytes, and a peer that stops reading would
            # otherwise keep it here, uncounted, for as long as it stalls.
            yield held.pop()
    finally:
        if isinstance(pieces, AsyncGenerator):
            await pieces.aclose()


async def _ends_within(gone: asyncio.Future[None] | None, deadline: float, delay: float) -> bool:
    """Waits ``delay`` seconds at most, or none if that would go past ``deadline`` (the
    loop's clock); whether the answer ends instead: past the deadline, or its peer gone
    (``gone`` done) by then."""
    if asyncio.get_running_loop().time() + delay > deadline:
        return True
    if gone is None:
        await asyncio.sleep(delay)
        return False
    await asyncio.wait((gone,), timeout=delay)
    return gone.done()
