"""Who sent an HTTP request: ``HttpPeer``, made once per request by the server as the
request comes (request_gate.py ``process_request``), and the one answer every limit
that counts by peer gets: the read allowance its pages are charged to (http_pages.py),
and its share of the HTTP answers not yet taken by their peers (unread_answers.py).

A peer is the token's ``sub`` under auth, else the address the request came from (an
IPv6 peer's /64), as the WebSocket side and the creation rate name peers
(quotas.creator_key). Its token is verified at most once, by whichever asks first: the
handler, which answers 401 for a bad one, or the account of unread answers, which
charges the answer to a request without a valid token (a 401, a console file) to its
address. A request with two ``Authorization`` headers is refused with 400 before
anyone asks (request_gate.py), and counts as having none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from websockets.http11 import Request

from .auth import AccessPolicy, Principal, Unauthorized
from .http_answer import AnsweringConnection
from .quotas import creator_key
from .read_allowance import ReadAllowance


class HttpPeer:
    """One HTTP request's peer: its token verified once, its key computed once, and the
    read allowance its answer's page is charged to once the answer is decided."""

    __slots__ = (
        "_access",
        "_authorization",
        "_failure",
        "_key",
        "_keyed",
        "_principal",
        "_verified",
        "address",
        "gone",
        "page_allowance",
        "reservation",
    )

    def __init__(
        self,
        access: AccessPolicy,
        authorization: str | None,
        address: str | None,
        gone: Callable[[], asyncio.Future[None]] | None = None,
    ) -> None:
        self._access = access
        self._authorization = authorization
        self.address = address
        # A future done once the peer has gone (AnsweringConnection.peer_gone), made
        # only if asked for: a whole history's wait for the debt ends then.
        self.gone = gone
        self._verified = False
        self._principal: Principal | None = None
        self._failure: Unauthorized | None = None
        self._key: str | None = None
        self._keyed = False
        # Set by the handler when its answer is a page (http_pages.py ``as_page``): the
        # page is charged to it once the server has decided the answer
        # (request_gate.py), let out or refused by the account of unread answers: it was
        # read either way.
        self.page_allowance: ReadAllowance | None = None
        # A page's worth charged to the peer's allowance as the request was let through
        # to its read (http_pages.py ``refused_before_read``), given back by
        # :meth:`settle`: requests of one peer in flight at once count each other's.
        self.reservation: tuple[ReadAllowance, int] | None = None

    @classmethod
    def of(
        cls, access: AccessPolicy, request: Request, connection: AnsweringConnection
    ) -> HttpPeer:
        """The peer of ``request``, come on ``connection``."""
        authorization = request.headers.get_all("Authorization")
        return cls(
            access,
            authorization[0] if len(authorization) == 1 else None,
            connection.peer_host,  # not remote_address: the peer may have reset by now
            connection.peer_gone,
        )

    def principal(self) -> Principal | None:
        """As :meth:`AccessPolicy.authenticate_request`: raises :class:`Unauthorized`."""
        if not self._verified:
            try:
                self._principal = self._access.authenticate_request(self._authorization)
            except Unauthorized as exc:
                self._failure = exc
            self._verified = True
        if self._failure is not None:
            raise Unauthorized(*self._failure.args)
        return self._principal

    @property
    def key(self) -> str | None:
        """Whose the request is (quotas.creator_key): ``user:<sub>`` of a valid token,
        else ``addr:<address>``; None when neither is known (not a network peer)."""
        if not self._keyed:
            try:
                principal = self.principal()
            except Unauthorized:
                principal = None
            self._key = creator_key(principal.sub if principal is not None else None, self.address)
            self._keyed = True
        return self._key

    def settle(self, size: int) -> None:
        """The answer decided, ``size`` bytes of a page read (a body, a streamed
        answer's first piece): charged to the allowance the handler named, if it named
        one, and what was charged ahead of the read given back (all of it, for an
        answer that is no page: a 404, a failure)."""
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            allowance, share = reservation
            allowance.refund(share)
        if self.page_allowance is not None:
            self.page_allowance.charge(size)
