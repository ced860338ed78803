"""Authentication and authorization: HS256 JWTs (PyJWT), and who may touch which session.

With ``auth_secret`` set, every peer presents a token: ``hello.token`` on a WebSocket
(else the upgrade's ``Authorization: Bearer``), ``Authorization: Bearer`` on the GET
API. A token is an HS256 JWT with ``sub`` (the user) and ``exp``, and optionally
``role`` (``user``, the default, ``agent`` or ``admin``) and ``sid`` (one session).
Only HS256 is accepted: ``alg: none`` and every other algorithm are refused by PyJWT.

The rules (docs/protocol.md, "Auth and limits"):

- ``sid`` narrows a token to that one session, whatever its role.
- ``admin`` may attach to and read any session (within its ``sid``, if any): an admin
  token with ``sid`` is the capability an agent runtime is given for a session of
  another user, or of none.
- ``user`` and ``agent`` alike may attach only to sessions whose ``user_id`` is their
  ``sub``: PROTOCOL.md's restrictions compose, and a ``sid`` only narrows what a role
  reaches, never widens it. A session with no ``user_id`` belongs to nobody: only
  ``admin`` gets in.
- A session created under a token belongs to its ``sub``; ``hello.user_id`` is ignored.
  A ``sid`` token cannot create a new session on ``/api/v1/stream`` (the id is not its
  own), only get-or-create its own ``sid``.

Without a secret there is no :class:`Principal`: the server trusts ``hello.user_id`` and
refuses to bind a non-loopback address unless ``insecure`` is set.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bamboo_session.persistence.base import SessionFilter
from bamboo_session.protocol.frames import Hello
from bamboo_session.protocol.ids import is_valid_session_id
from bamboo_session.protocol.models import SessionMetadata

if TYPE_CHECKING:
    from .config import ServerConfig

ALGORITHMS = ["HS256"]
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least as long as the hash
TOKEN_REQUIRED = "token required"
NOT_BEARER = "the Authorization header is not Bearer <token> (RFC 6750 2.1)"


class Role(enum.StrEnum):
    USER = "user"
    AGENT = "agent"
    ADMIN = "admin"


class Unauthorized(Exception):
    """No token, or a bad one: close 4401, HTTP 401. The message is safe to send."""


class Forbidden(Exception):
    """A valid token that does not reach this session: close 4403, HTTP 403."""


class InsecureConfig(ValueError):
    """A configuration the server refuses to start with."""


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    sub: str
    role: Role = Role.USER
    sid: str | None = None
    # When the token stops being accepted (its exp plus the leeway), seconds since the
    # epoch: a connection it opened is closed then (4401).
    valid_until: float | None = dataclasses.field(default=None, compare=False)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Authenticator:
    """Verifies tokens with one shared secret.

    ``leeway`` (seconds) absorbs clock differences: a token issued a little in the
    future, or expired a little ago, by this server's clock, still passes. ``audience``
    and ``issuer``, when set, must be the token's ``aud`` (one of them, for a list) and
    ``iss``; without ``audience`` a token that names one is refused (RFC 7519 4.1.3).
    ``max_sub_length``, when set, is the most characters a ``sub`` may have: the
    server's limit on a user id (``--max-user-id-length``), which a ``hello`` or the
    Python API is held to as well.
    """

    def __init__(
        self,
        secret: str,
        *,
        leeway: float = 5.0,
        audience: str | None = None,
        issuer: str | None = None,
        max_sub_length: int | None = None,
    ) -> None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise InsecureConfig(
                f"auth_secret must be at least {MIN_SECRET_BYTES} bytes (HS256 key length)"
            )
        # PyJWT is loaded here, not at the top: only a server with auth builds an
        # Authenticator, so one without never loads it (nor the HTTP client its key-set
        # fetcher imports); and at start, not at the first token, where the import stops
        # the event loop (6 to 18 ms measured) and a broken install would fail each
        # connection instead of the start.
        import jwt  # noqa: F401

        self._secret = secret
        self.leeway = leeway
        self.audience = audience
        self.issuer = issuer
        self.max_sub_length = max_sub_length
        required = ["sub", "exp"]
        required += ["aud"] if audience is not None else []
        required += ["iss"] if issuer is not None else []
        self._required = required

    def verify(self, token: str | None, missing: str = TOKEN_REQUIRED) -> Principal:
        """The principal of a valid token; :class:`Unauthorized` for anything else
        (``missing``, its message, when there is no token)."""
        if not token:
            raise Unauthorized(missing)
        import jwt  # loaded by __init__: only its name is looked up here

        try:
            # Expiry is checked below, once exp is known to be a NumericDate: PyJWT
            # reads exp with int(), so a true, a false or a string of digits was
            # "token expired", where any other claim of the wrong type is a bad token.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=ALGORITHMS,
                options={"require": self._required, "verify_exp": False},
                leeway=self.leeway,
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.InvalidTokenError:
            # Forged, malformed, wrong algorithm, missing claims: one answer for all, so a
            # prober learns nothing about which check failed.
            raise Unauthorized("invalid token") from None
        if self.audience is None and "aud" in claims:
            # A token meant for some audience is not meant for a server that names none
            # (RFC 7519 4.1.3); PyJWT would let an empty one ("" or []) through.
            raise Unauthorized("invalid token")
        principal = _principal(claims)
        if self.max_sub_length is not None and len(principal.sub) > self.max_sub_length:
            # A user this server cannot hold: it would own sessions, and key the
            # per-user counts, under an id no hello may give. A bad token, not a bad
            # request: only a new token helps the client (4401, HTTP 401).
            raise Unauthorized("invalid token")
        exp = claims["exp"]
        assert isinstance(exp, int | float)  # _principal checked it
        valid_until = exp + self.leeway
        if valid_until <= time.time():
            raise Unauthorized("token expired")
        return dataclasses.replace(principal, valid_until=valid_until)


def authenticator_for(config: ServerConfig) -> Authenticator | None:
    """The config's token checker; None without ``auth_secret`` (no auth)."""
    if config.auth_secret is None:
        return None
    return Authenticator(
        config.auth_secret,
        leeway=config.auth_leeway,
        audience=config.auth_audience,
        issuer=config.auth_issuer,
        max_sub_length=config.max_user_id_length,
    )


def _numeric_date(value: object) -> bool:
    """RFC 7519's NumericDate: a JSON number, not a string that looks like one, and one
    a clock can read: an integer of 400 digits passes PyJWT's checks, then cannot become
    the float of a connection's deadline (it was a 1011 or HTTP 500 and a traceback)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_text(value: str) -> bool:
    """Whether ``value`` is Unicode text a store can hold: JSON's ``"\\ud800"``, a lone
    UTF-16 surrogate, names no character, and PyJWT's JSON reader lets it through
    (a session created under it failed to store: 1011 and a traceback)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _principal(claims: Mapping[str, object]) -> Principal:
    sub, role, sid = claims.get("sub"), claims.get("role"), claims.get("sid")
    if role is None:  # left out, or null as issuers that write unset claims send it (sid too)
        role = Role.USER
    if not all(_numeric_date(claims[name]) for name in ("exp", "nbf", "iat") if name in claims):
        raise Unauthorized("invalid token")
    if not isinstance(sub, str) or not sub or not _is_text(sub):
        raise Unauthorized("invalid token")
    if role not in tuple(Role):
        raise Unauthorized("invalid token")
    if sid is not None and not is_valid_session_id(sid):
        raise Unauthorized("invalid token")
    assert isinstance(role, str)
    return Principal(sub, Role(role), sid if isinstance(sid, str) else None)


class AccessPolicy:
    """Who a peer is, and what it may reach: the rules above applied to requests.
    Without an authenticator (auth off) everyone is anonymous and may reach anything."""

    def __init__(self, authenticator: Authenticator | None) -> None:
        self.authenticator = authenticator

    @property
    def enabled(self) -> bool:
        return self.authenticator is not None

    def authenticate_hello(self, hello: Hello, authorization: str | None) -> Principal | None:
        """The principal of a connection: ``hello.token``, else the upgrade's bearer
        token; None when auth is off. Raises :class:`Unauthorized`."""
        if self.authenticator is None:
            return None
        token = hello.token or bearer_token(authorization)
        return self.authenticator.verify(token, missing_token(authorization))

    def authenticate_request(self, authorization: str | None) -> Principal | None:
        """The principal of an HTTP request (``Authorization: Bearer``)."""
        if self.authenticator is None:
            return None
        return self.authenticator.verify(bearer_token(authorization), missing_token(authorization))

    @staticmethod
    def connection_user(
        principal: Principal | None, hello: Hello, max_user_id_length: int
    ) -> str | None:
        """Whom a connection counts against in ``max_connections_per_user``: the token's
        ``sub``, else ``hello.user_id``; anonymous connections are not counted. A
        ``user_id`` over ``max_user_id_length`` names nobody, as if absent: it could be
        no session's owner (a hello creating a session with it is refused), and it is
        no key of a per-user count (on Redis, one refreshed while the connection lasts)."""
        if principal is not None:
            return principal.sub
        user_id = hello.user_id
        return user_id if user_id is not None and len(user_id) <= max_user_id_length else None

    @staticmethod
    def listing_filter(principal: Principal | None, filter: SessionFilter) -> SessionFilter:
        """Under auth: only the caller's sessions (any for admin); asking for another
        user's is Forbidden, and a ``sid`` token may not list at all."""
        if principal is None or (principal.is_admin and principal.sid is None):
            return filter
        if principal.sid is not None:
            raise Forbidden("this token is scoped to one session")
        if filter.user_id is not None and filter.user_id != principal.sub:
            raise Forbidden("you may list only your own sessions")
        filter.user_id = principal.sub
        return filter

    @staticmethod
    def check_session(principal: Principal | None, metadata: SessionMetadata) -> None:
        """May this principal read this session? Else :class:`Forbidden`."""
        if principal is not None:
            check_access(principal, metadata)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if it is one."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def missing_token(authorization: str | None) -> str:
    """Why a request with no bearer token has none: no ``Authorization`` header, or one
    that is no bearer credential. RFC 9110 11.4 parts the scheme from the token by spaces
    only, so ``Bearer<TAB>token`` is none, as ``Basic …`` and a bare token are: a 401 or
    4401 that said "token required" to a peer that sent one sent it looking elsewhere."""
    return TOKEN_REQUIRED if authorization is None or not authorization.strip() else NOT_BEARER


# -- rules -------------------------------------------------------------------------


def check_new_session(principal: Principal) -> None:
    """May this principal create a session whose id the server picks?"""
    if principal.sid is not None:
        raise Forbidden("this token is scoped to one session")


def check_session_id_for(principal: Principal, session_id: str) -> None:
    """The part of the rules that needs only the id (checked before get-or-create)."""
    if principal.sid is not None and principal.sid != session_id:
        raise Forbidden("this token is scoped to another session")


def check_access(principal: Principal, metadata: SessionMetadata) -> None:
    """May this principal attach to, or read, this session? Else :class:`Forbidden`."""
    check_session_id_for(principal, metadata.id)
    if principal.is_admin:
        return
    if metadata.user_id is None or metadata.user_id != principal.sub:
        raise Forbidden("not your session")


def access_refusal(principal: Principal) -> Callable[[SessionMetadata], Forbidden | None]:
    """:func:`check_access` for ``principal``, answering its refusal rather than raising
    it: what a session's actor asks at the attach, of the metadata it welcomes with."""

    def refusal(metadata: SessionMetadata) -> Forbidden | None:
        try:
            check_access(principal, metadata)
        except Forbidden as exc:
            return exc
        return None

    return refusal


# -- binding -----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (names other than localhost are not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, auth_secret: str | None, insecure: bool) -> None:
    """Without a secret, refuse a non-loopback address unless ``insecure`` says so."""
    if auth_secret is None and not insecure and not is_loopback(host):
        raise InsecureConfig(
            f"refusing to listen on {host or 'all interfaces'} without auth: set "
            "--auth-secret (BAMBOO_AUTH_SECRET), or pass --insecure to accept anyone"
        )
