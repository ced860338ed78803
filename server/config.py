"""Server configuration: every limit and timeout in one frozen dataclass.

Each field can come from a ``--flag`` of ``bamboo-session serve`` or from the matching
``BAMBOO_*`` environment variable (``BAMBOO_PORT``, ``BAMBOO_DATA_DIR``, ...); flags win.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from .manager_config import SessionManagerConfig

LogFormat = Literal["auto", "json", "console"]
Durability = Literal["fsync", "os"]  # of the JSONL store in ``data_dir``
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # The store: a URL (persistence/url.py), else the JSONL store in ``data_dir`` with
    # ``durability``.
    store: str | None = None
    data_dir: str = "~/.bamboo/sessions"
    durability: Durability = "fsync"
    default_ttl: int | None = None
    cleanup_interval: float = 3600.0
    log_format: LogFormat = "auto"
    log_level: str = "info"
    # Server processes on one port (server/supervisor.py); more than one needs a store
    # that several processes share (redis://).
    workers: int = 1
    # Redis store options (persistence/redis/config.py), set in its URL unless None.
    redis_wait_replicas: int | None = None
    redis_wait_timeout_ms: int | None = None
    # WebSocket limits, set explicitly on websockets.
    # Pending connections the kernel queues for accept (capped by net.core.somaxconn):
    # asyncio's default of 100 makes a reconnect storm wait on SYN retransmits.
    backlog: int = 4096
    max_frame_bytes: int = MIB
    max_queue: int = 16  # incoming frames buffered before websockets stops reading
    write_limit: int = 256 * 1024  # bytes buffered before a send waits for the socket
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    compression: bool = False
    hello_timeout: float = 10.0
    shutdown_grace: float = 5.0
    # Sessions (SessionManagerConfig).
    idle_timeout: float = 300.0
    disconnect_retention: float = 3600.0
    max_sessions: int = 1000
    send_queue_frames: int = 1024
    ring_size: int = 1024
    inbox_limit: int = 4096
    # Request limits.
    max_history_page: int = 1000
    max_events_page: int = 10_000
    max_list_page: int = 1000
    # Auth (server/auth.py): no secret means no auth, which is only allowed on loopback
    # unless ``insecure``. Kept out of repr so that it never reaches a log line.
    auth_secret: str | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False
    allowed_origins: tuple[str, ...] = ()
    # Per-peer limits (server/limits.py); 0 turns a limit off.
    rate_limit: float = 1000.0
    rate_limit_burst: int = 1000
    rate_limit_refusals: int = 100
    max_connections_per_user: int = 100

    def manager_config(self) -> SessionManagerConfig:
        return SessionManagerConfig(
            idle_timeout=self.idle_timeout,
            disconnect_retention=self.disconnect_retention,
            max_sessions=self.max_sessions,
            send_queue_frames=self.send_queue_frames,
            ring_size=self.ring_size,
            inbox_limit=self.inbox_limit,
        )

    def store_url(self) -> str:
        """The store's URL: ``store``, or the JSONL store in ``data_dir``; the
        ``redis_*`` options go into a Redis store's URL (ValueError for another)."""
        if self.store:
            return with_redis_options(self.store, self._redis_options())
        if self._redis_options():
            raise ValueError("--redis-* options need a redis:// store (--store)")
        path = os.path.abspath(os.path.expanduser(self.data_dir))
        query = "" if self.durability == "fsync" else f"?durability={self.durability}"
        return f"jsonl://{urllib.parse.quote(path)}{query}"

    def store_for_logs(self) -> str:
        """The store's URL with any password masked."""
        parts = urllib.parse.urlsplit(self.store_url())
        if parts.password is None:
            return parts.geturl()
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def _redis_options(self) -> dict[str, int]:
        options = {
            "wait_replicas": self.redis_wait_replicas,
            "wait_timeout_ms": self.redis_wait_timeout_ms,
        }
        return {name: value for name, value in options.items() if value is not None}

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Defaults overridden by ``BAMBOO_<FIELD>`` variables."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            variable = f"BAMBOO_{field.name.upper()}"
            raw = environ.get(variable)
            if raw is not None:
                try:
                    changes[field.name] = parse_value(field.name, raw, getattr(cls(), field.name))
                except ValueError as exc:
                    raise ValueError(f"{variable}: {exc}") from None
        return cls(**changes)


def with_redis_options(url: str, options: Mapping[str, int]) -> str:
    """``url`` with ``options`` in its query (they win over the URL's own)."""
    if not options:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "redis":
        raise ValueError(f"--redis-* options need a redis:// store, not {parts.scheme}://")
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query.update({name: str(value) for name, value in options.items()})
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def parse_value(name: str, raw: str, default: object) -> object:
    """``raw`` converted to the type of the field's default, or ValueError."""
    if isinstance(default, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name in _OPTIONAL_STR:
        return raw or None  # only an empty value means none: "none" could be a secret
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if raw.lower() in ("none", "") and name in _OPTIONAL:
            return None
        if isinstance(default, int) or name in _OPTIONAL_INT:
            return int(raw)
        if isinstance(default, float) or name in _OPTIONAL_FLOAT:
            return float(raw)
    except ValueError:
        raise ValueError(f"invalid value {raw!r}") from None
    return raw


_OPTIONAL_INT = frozenset({"default_ttl", "redis_wait_replicas", "redis_wait_timeout_ms"})
_OPTIONAL_FLOAT = frozenset({"ping_interval", "ping_timeout"})
_OPTIONAL_STR = frozenset({"auth_secret", "store"})
_OPTIONAL = _OPTIONAL_INT | _OPTIONAL_FLOAT
