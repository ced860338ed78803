"""Which ``Origin`` may open a WebSocket, and which ``Host`` the server answers to.

Without auth (the default) the server trusts whoever reaches it, which is safe only if
nobody but the developer's own programs can. A web page the developer visits can reach
a local server too: it may open a WebSocket to it (cross-site WebSocket hijacking: the
browser sends the page's ``Origin``), or rebind its own host name to 127.0.0.1 and read
the HTTP API as a same-origin page (DNS rebinding: the browser sends the page's
``Host``). So without auth, and unless the operator widens them:

- ``Host`` must name a loopback address (``localhost``, ``*.localhost``, 127.0.0.0/8,
  ``[::1]``) or the address the server is bound to; bound to every interface, any IP
  address passes (a rebinding page always sends its own name). A request without
  ``Host`` (HTTP/1.0) is not a browser's and passes.
- ``Origin`` must be absent (not a browser) or name a loopback host.

``allowed_hosts`` and ``allowed_origins`` add entries (``*`` allows any). With auth,
tokens are not sent by browsers on their own, so by default any ``Host`` and ``Origin``
pass; lists given still apply, on top of the loopback ones.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from .auth import is_loopback

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})
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


def is_malformed_authority(value: str) -> bool:
    """Whether a ``Host`` value (or an absolute-form target's authority) is not ``host``
    or ``host:port`` (RFC 9110 7.2, RFC 3986 3.2.2 and 3.2.3): a port of anything but
    digits, or over 65535, which no TCP connection could have reached; an IPv6 address
    out of its brackets, or anything after them but a port. Only the host part was
    checked: ``127.0.0.1:8000evil`` passed as loopback. An empty port (``host:``) is
    allowed, as RFC 3986 3.2.3 does: it means the scheme's default, as no port does."""
    value = value.strip(" \t")
    if value.startswith("["):
        closing = value.find("]")
        if closing < 0:
            return True
        rest = value[closing + 1 :]
        if not rest:
            return False
        colon, port = rest[:1], rest[1:]
        if colon != ":":
            return True
    else:
        # A name or an IPv4 address has no colon: the first one starts the port.
        port = value.partition(":")[2]
    if not port:
        return False
    # isdigit alone takes "²", which a header (read as Latin-1) may hold.
    if not (port.isascii() and port.isdigit()):
        return True
    return len(port.lstrip("0")) > 5 or int(port) > _HIGHEST_PORT


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
    return origin.strip().rstrip("/").lower()


class RequestGuard:
    """The Origin and Host rules of one server (see the module docstring)."""

    def __init__(
        self,
        bound_host: str,
        auth_enabled: bool,
        allowed_origins: tuple[str, ...] = (),
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.bound_host = bound_host.strip().lower()
        self.auth_enabled = auth_enabled
        self.origins = frozenset(_normalized_origin(o) for o in allowed_origins if o.strip())
        self.hosts = frozenset(h.strip().lower() for h in allowed_hosts if h.strip())
        self.any_origin = "*" in self.origins or (auth_enabled and not self.origins)
        self.any_host = "*" in self.hosts or (auth_enabled and not self.hosts)

    def host_allowed(self, host_header: str | None) -> bool:
        if self.any_host or host_header is None:
            return True
        value = host_header.strip().lower()
        host = _split_host(value)
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
