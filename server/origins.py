"""Which ``Origin`` may open a WebSocket, and which ``Host`` the server answers to.

Without auth (the default) the server trusts whoever reaches it, which is safe only if
nobody but the developer's own programs can. A web page the developer visits can reach
a local server too: it may open a WebSocket to it (cross-site WebSocket hijacking: the
browser sends the page's ``Origin``), or rebind its own host name to 127.0.0.1 and read
the HTTP API as a same-origin page (DNS rebinding: the browser sends the page's
``Host``). So without auth, and unless the operator widens them:

- ``Host`` must name a loopback address (``localhost``, ``*.localhost``, 127.0.0.0/8,
  ``[::1]``) or the address the server is bound to; bound to every interface, any IP
  address passes (a rebinding page always sends its own name). An HTTP/1.0 request
  without ``Host`` is not a browser's and passes; an HTTP/1.1 one is malformed (400).
- ``Origin`` must be absent (not a browser) or name a loopback host.

A name with the trailing dot of a fully qualified one (``localhost.``) is checked as
the name without it, in ``Host``, ``Origin`` and the lists alike.

``allowed_hosts`` and ``allowed_origins`` add entries (``*`` allows any). With auth,
tokens are not sent by browsers on their own, so by default any ``Host`` and ``Origin``
pass; lists given still apply, on top of the loopback ones.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from .auth import is_loopback

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
# Host values whose verdict a guard keeps (RequestGuard.host_allowed): a header line is
# at most 8 KiB, so the kept ones hold at most 512 KiB.
HOST_VERDICTS = 64
MALFORMED_AUTHORITY = (
    "the Host header (or the request target's host) is not host or host:port, a port "
    "being digits up to 65535 and an IPv6 address in brackets (RFC 9110 7.2, RFC 3986 3.2)"
)


def _split_host(value: str) -> str:
    """The host name of a ``Host`` header value (``host``, ``host:port``, ``[v6]:port``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _host_and_authority(value: str) -> tuple[str, str]:
    """A ``Host`` value (or an origin's authority) as the checks compare it: its host
    name, and the whole value, lowercased, the host written without the trailing dot of
    a fully qualified name. ``localhost.`` names the same host as ``localhost`` (the
    root of DNS, RFC 1034 3.1), so it passes or fails as that name does. One dot only:
    ``localhost..`` names nothing, and stays as it is."""
    value = value.strip().lower()
    host = _split_host(value)
    port = value[len(host) :]
    if len(host) > 1 and host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    return host, host + port


NO_HOST = "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)"
USERINFO = (
    "the Host header (or the request target's authority) has userinfo (name@ before the "
    "host): a request names no user there (RFC 9110 4.2.4)"
)
BAD_HOST = (
    "the Host header (or the request target) has no host name before its port, or one "
    "with other characters than letters, digits, -._~!$&'()*+,;= and %XX (RFC 3986 3.2.2)"
)
BAD_IP_LITERAL = (
    "a host in brackets must be an IPv6 address without a zone id (%25...): a zone names "
    "an interface of the client's own host (RFC 3986 3.2.2, RFC 9110 4.2.1)"
)
# RFC 3986 3.2.2 reg-name: unreserved, sub-delims and pct-encoded characters.
_REG_NAME = re.compile(r"(?:[-._~!$&'()*+,;=A-Za-z0-9]|%[0-9A-Fa-f]{2})*")


def is_malformed_authority(value: str) -> bool:
    """Whether a ``Host`` value (or an absolute-form target's authority) is not
    ``host`` or ``host:port`` (:func:`authority_fault` says why)."""
    return authority_fault(value) is not None


def host_fault(value: str | None, protocol: str) -> str | None:
    """Why a request's ``Host`` header (``value``, None if it has none) is refused
    whatever the host checks allow, None if it is not: RFC 9112 3.2 has a server answer
    400 to an HTTP/1.1 request without one (an HTTP/1.0 request may lack it), and to an
    invalid one (:func:`authority_fault`)."""
    if value is None:
        return None if protocol == "HTTP/1.0" else NO_HOST
    return authority_fault(value)


def authority_fault(value: str) -> str | None:
    """Why a ``Host`` value (or an absolute-form target's authority) is not ``host`` or
    ``host:port`` (RFC 9110 7.2, RFC 3986 3.2), None if it is; an empty one is allowed
    (RFC 9112 3.2: the target had no authority). Only the host part was checked by the
    guard, and loosely: ``127.0.0.1:8000evil`` passed as loopback, and with any host
    allowed ``user@127.0.0.1``, ``a b`` or ``[v1.x]`` were served. Refused: userinfo;
    a host name of other characters than RFC 3986's reg-name, or none before a port;
    in brackets, anything but an IPv6 address (an IPvFuture, which no version defines,
    or a zone id); a port of anything but digits, or over 65535, which no TCP
    connection could have reached; an IPv6 address out of its brackets. An empty port
    (``host:``) is allowed, as RFC 3986 3.2.3 does: the scheme's default, as no port."""
    value = value.strip(" \t")
    if not value:
        return None
    if "@" in value:
        return USERINFO
    if value.startswith("["):
        closing = value.find("]")
        if closing < 0:
            return MALFORMED_AUTHORITY
        host, rest = value[1:closing], value[closing + 1 :]
        if rest[:1] not in ("", ":"):
            return MALFORMED_AUTHORITY
        port = rest[1:]
    else:
        # A name or an IPv4 address has no colon: the first one starts the port.
        host, _, port = value.partition(":")
    # isdigit alone takes "²", which a header (read as Latin-1) may hold.
    if port and not (port.isascii() and port.isdigit()):
        return MALFORMED_AUTHORITY
    # int() raises past 4,300 digits, leading zeros counted: it is given those after.
    digits = port.lstrip("0")
    if len(digits) > 5 or (digits and int(digits) > _HIGHEST_PORT):
        return MALFORMED_AUTHORITY
    if value.startswith("["):
        return None if _is_ipv6_address(host) else BAD_IP_LITERAL
    return None if host and _REG_NAME.fullmatch(host) else BAD_HOST


def _is_ipv6_address(text: str) -> bool:
    """Whether ``text`` is an IPv6 address alone: Python takes a zone id after ``%``."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return "%" not in text


_HIGHEST_PORT = 65535


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _is_loopback_name(host: str) -> bool:
    return is_loopback(host) or host.endswith(".localhost")


def _normalized_origin(origin: str) -> str:
    scheme, separator, authority = origin.strip().rstrip("/").lower().partition("://")
    if not separator:
        return scheme  # "null", or not a URL at all
    return scheme + separator + _host_and_authority(authority)[1]


class RequestGuard:
    """The Origin and Host rules of one server (see the module docstring)."""

    def __init__(
        self,
        bound_host: str,
        auth_enabled: bool,
        allowed_origins: tuple[str, ...] = (),
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.bound_host = _host_and_authority(bound_host)[0]
        self.auth_enabled = auth_enabled
        self.origins = frozenset(_normalized_origin(o) for o in allowed_origins if o.strip())
        self.hosts = frozenset(_host_and_authority(h)[1] for h in allowed_hosts if h.strip())
        self.any_origin = "*" in self.origins or (auth_enabled and not self.origins)
        self.any_host = "*" in self.hosts or (auth_enabled and not self.hosts)
        self._host_verdicts: dict[str, bool] = {}

    def host_allowed(self, host_header: str | None) -> bool:
        if self.any_host or host_header is None:
            return True
        # Every request's Host is judged, and a server's clients send one or a few: the
        # verdict is kept, for HOST_VERDICTS values at most (each within a header line).
        verdicts = self._host_verdicts
        verdict = verdicts.get(host_header)
        if verdict is None:
            verdict = self._judge_host(host_header)
            if len(verdicts) >= HOST_VERDICTS:
                verdicts.clear()
            verdicts[host_header] = verdict
        return verdict

    def _judge_host(self, host_header: str) -> bool:
        host, value = _host_and_authority(host_header)
        if value in self.hosts or host in self.hosts or _is_loopback_name(host):
            return True
        bound = self.bound_host
        if bound in _WILDCARDS:
            return _is_ip(host)
        return host.strip("[]") == bound.strip("[]")

    def origin_allowed(self, origin: str | None) -> bool:
        if self.any_origin or origin is None:
            return True
        normalized = _normalized_origin(origin)
        if normalized in self.origins:
            return True
        try:
            parts = urllib.parse.urlsplit(normalized)
        except ValueError:  # "http://[::1": a malformed bracketed host is no origin of ours
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (a sandboxed page, a file), or not a URL at all
        return _is_loopback_name(parts.hostname)
