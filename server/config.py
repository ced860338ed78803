"""Server configuration: every limit and timeout in one frozen dataclass, each value
checked when the config is made (type and range).

A field comes from a ``--flag`` of ``bamboo-session serve``, a ``BAMBOO_*`` environment
variable, or a key of a TOML file (``--config``); flags win over the environment, which
wins over the file, which wins over the defaults. server/settings.py reads those
sources, all through :func:`parse_text` / :func:`check_setting` here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

from bamboo_session.persistence.url import without_password
from bamboo_session.protocol.frames import MAX_BATCH_ITEMS

from .manager_config import DEFAULT_MAX_PARKED_AT_STOP, DEFAULT_READ_SLOTS, SessionManagerConfig
from .store_options import with_durability, with_redis_options

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error"]
Durability = Literal["fsync", "os"]  # of the JSONL store in ``data_dir``, or ``store``'s
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    # The store: a URL (persistence/url.py), else JSONL in ``data_dir``, ``durability``.
    store: str | None = None
    data_dir: str = "~/.bamboo/sessions"
    # None: not said, so fsync unless a --store URL says otherwise; said (fsync too),
    # a URL that says another is refused (store_options.with_durability).
    durability: Durability | None = None
    default_ttl: int | None = None
    cleanup_interval: float = 3600.0
    log_format: LogFormat = "auto"
    log_level: LogLevel = "info"
    # Processes on one port (server/supervisor.py); more than one needs a shared store.
    workers: int = 1
    # Redis store options (persistence/redis/config.py), set in its URL unless None.
    redis_wait_replicas: int | None = None
    redis_wait_timeout_ms: int | None = None
    # WebSocket limits, set explicitly on websockets. Connections the kernel queues for
    # accept (net.core.somaxconn caps it): asyncio's 100 has reconnect storms wait on SYNs.
    backlog: int = 4096
    max_frame_bytes: int = MIB
    # Incoming frames websockets buffers before it stops reading (not in the memory
    # budget, so few: at max_frame_bytes each, 4 MiB a connection at most).
    max_queue: int = 4
    # ... and the bytes those frames may hold, inflated, beyond a first of any size:
    # publish frames are small, a 1 MiB frame waits alone.
    max_queue_bytes: int = 256 * 1024
    write_limit: int = 256 * 1024  # bytes buffered before a send waits for the socket
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    # A resuming connection's time to take each page of its replay (up to 256 KiB of
    # events, or one larger event, held in its socket's buffer meanwhile); else it is
    # closed with 4429.
    replay_page_timeout: float = 20.0
    # An HTTP answer streamed in pages (the whole history of GET /api/v1/sessions/{id})
    # has this long for its peer to take each page (up to --max-page-bytes, held in the
    # server meanwhile), and each page this long at most to wait for its peer's read
    # allowance; else its connection is dropped.
    answer_page_timeout: float = 20.0
    # The part of what HTTP answers not yet taken may hold (a quarter of memory_budget)
    # that one peer's may hold (server/unread_answers.py).
    answer_peer_share: float = 0.25
    # The part of memory_budget that the replay pages of one peer's connections may
    # hold at once (server/replay_shares.py); past it, its next pages wait their turn.
    replay_peer_share: float = 0.25
    # The part of memory_budget that the replay pages of all peers may hold together
    # (server/replay_shares.py), a peer's first page apart; the rest is live traffic's.
    replay_total_share: float = 0.5
    # A page read from the store (history, events, a replay's page), its wait for one
    # of the page-read slots included, and an HTTP API request's store reads, are
    # abandoned after this long: a store that hangs would keep every slot. Below
    # websockets' open_timeout (10 s), within which an HTTP request must be answered.
    store_read_timeout: float = 5.0
    # Pages read from the store at once, over all connections and the HTTP API (the
    # pages of whole histories in at most half of them): more wait their turn, within
    # store_read_timeout (server/pages.py).
    read_slots: int = DEFAULT_READ_SLOTS
    compression: bool = False
    hello_timeout: float = 10.0
    shutdown_grace: float = 5.0
    store_close_timeout: float = 30.0  # (server/stop_bounds.py)
    max_parked_at_stop: int = DEFAULT_MAX_PARKED_AT_STOP  # (manager_config.py: why)
    # Sessions (SessionManagerConfig).
    idle_timeout: float = 300.0
    disconnect_retention: float = 3600.0
    max_sessions: int = 1000
    send_queue_frames: int = 1024
    send_queue_bytes: int = 8 * MIB
    ring_size: int = 1024
    ring_bytes: int = 1 * MIB
    inbox_limit: int = 4096
    inbox_bytes: int = 8 * MIB
    memory_budget: int = 256 * MIB
    # New sessions (server/quotas.py).
    max_sessions_per_user: int = 1000
    session_create_rate: float = 20.0
    session_create_burst: int = 1000
    max_title_length: int = 1024
    max_user_id_length: int = 256
    max_extra_bytes: int = 64 * 1024
    # What one session's log may hold in the store (0: no cap), and what the sessions
    # of one user may hold together, closed ones too until they are deleted (0: no
    # cap): what a user may keep on disk (persistence/base.py).
    max_session_bytes: int = 256 * MIB
    max_user_bytes: int = 4096 * MIB
    # Sessions the store keeps, whoever owns them, closed and expired ones too until
    # they go (0: no cap): neither the per-user count (not closed ones, users with an
    # id) nor the byte caps (logs only) bound the metadata of sessions left behind, in
    # the JSONL store's memory index and on disk: some 6 and 12 KiB each at most of
    # what a peer sets (a title of 1,024 four-byte characters).
    max_stored_sessions: int = 1_000_000
    # Sessions one user keeps in the store, closed and expired ones too until they go
    # (0: no cap; server/quotas.py): without it one user could create and close
    # sessions until the store-wide cap above refused everyone's.
    max_stored_sessions_per_user: int = 10_000
    # Request limits.
    max_history_page: int = 1000
    max_events_page: int = 10_000
    max_list_page: int = 1000
    max_page_bytes: int = 1 * MIB
    # The batch publish extension (docs/protocol.md): off, the server is a plain
    # version 1 server (no "batch" in welcome, a batch frame is bad_request).
    batch_frames: bool = True
    max_batch_items: int = 1000
    # Auth (server/auth.py): no secret means no auth, which is only allowed on loopback
    # unless ``insecure``. Kept out of repr so that it never reaches a log line.
    auth_secret: str | None = dataclasses.field(default=None, repr=False)
    auth_leeway: float = 5.0
    auth_audience: str | None = None
    auth_issuer: str | None = None
    insecure: bool = False
    # Without auth, only loopback Origins and Hosts (server/origins.py); these add more.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Per-peer limits (server/limits.py); 0 turns a limit off.
    rate_limit: float = 1000.0
    rate_limit_burst: int = 1000
    rate_limit_refusals: int = 100
    # Bytes of frames read per second per connection: past it, reading waits.
    rate_limit_bytes: int = 2 * MIB
    rate_limit_bytes_burst: int = 4 * MIB
    max_connections_per_user: int = 100
    # Connections open at once, upgraded or not (limits.connection_cap; 0: no cap):
    # idle sockets would otherwise take every descriptor the store needs, and memory
    # the budget does not count. None: half the open-file limit, at most 10,000.
    max_connections: int | None = None
    # Connections attached to one session at once (manager_config.py; 0: no cap).
    max_session_connections: int = 256

    def manager_config(self) -> SessionManagerConfig:
        """The manager's settings: each of its fields is this config's of that name."""
        fields = dataclasses.fields(SessionManagerConfig)
        return SessionManagerConfig(**{field.name: getattr(self, field.name) for field in fields})

    def store_url(self) -> str:
        """The store's URL: ``store``, or the JSONL store in ``data_dir``; the
        ``redis_*`` options go into a Redis store's URL (ValueError for another)."""
        if self.store:
            store = with_durability(self.store, self.durability)
            return with_redis_options(store, self._redis_options())
        if self._redis_options():
            raise ValueError("--redis-* options need a redis:// store (--store)")
        path = os.path.abspath(os.path.expanduser(self.data_dir))
        query = "" if self.durability in (None, "fsync") else f"?durability={self.durability}"
        return f"jsonl://{urllib.parse.quote(path)}{query}"

    def store_for_logs(self) -> str:
        """The store's URL with any password masked, else as it is served: an operator
        may copy it into ``--store`` (a round trip through urlsplit wrote
        ``jsonl:///var/b`` as ``jsonl:/var/b``, which ``--store`` refuses)."""
        return without_password(self.store_url())

    def _redis_options(self) -> dict[str, int]:
        options = {
            "wait_replicas": self.redis_wait_replicas,
            "wait_timeout_ms": self.redis_wait_timeout_ms,
        }
        return {name: value for name, value in options.items() if value is not None}

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            try:
                check_setting(field.name, getattr(self, field.name))
            except ValueError as exc:
                raise ValueError(f"{field.name}: {exc}") from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Defaults overridden by ``BAMBOO_<FIELD>`` variables."""
        from .settings import settings_from_env

        return cls(**settings_from_env(os.environ if environ is None else environ))


# -- what each field takes ------------------------------------------------------------

_HINTS: dict[str, Any] = typing.get_type_hints(ServerConfig)
FIELD_NAMES = tuple(field.name for field in dataclasses.fields(ServerConfig))

# Below 4 KiB, a frame's envelope (1,019 bytes with the longest request id) and an
# error quoting a cut value with that id (about 2 KiB) leave an event no room.
MIN_FRAME_BYTES = 4096

# Inclusive bounds of the numbers, else >= 0. Times are seconds, sizes bytes; 0 turns
# off what the help of the flag says it turns off.
_BOUNDS: dict[str, tuple[float, float | None]] = {
    "port": (0, 65535),
    "workers": (1, 256),
    "redis_wait_replicas": (0, None),
    "redis_wait_timeout_ms": (1, None),
    # 100 years: past the year 9999, every create failed 1011 (OverflowError; r372).
    "default_ttl": (1, 100 * 365 * 86400),
    "cleanup_interval": (0.001, None),
    "backlog": (1, None),
    "max_frame_bytes": (MIN_FRAME_BYTES, None),
    "max_queue": (1, None),
    "max_queue_bytes": (1024, None),
    "write_limit": (1024, None),
    "ping_interval": (0.001, None),
    "ping_timeout": (0.001, None),
    "hello_timeout": (0.001, None),
    "replay_page_timeout": (0.001, None),
    "answer_page_timeout": (0.001, None),
    "answer_peer_share": (0.001, 1),
    "replay_peer_share": (0.001, 1),
    "replay_total_share": (0.001, 1),
    "store_read_timeout": (0.001, None),
    "store_close_timeout": (0.001, None),
    # At least 2, so that whole histories, which take at most half, always leave one to
    # other pages; at most 256: each page being read is decoded in memory, outside
    # --memory-budget, several times its bytes (up to --max-page-bytes).
    "read_slots": (2, 256),
    "idle_timeout": (0.001, None),
    # 0 would retire a session spawned for a hello before the hello is handled, again
    # and again until the read deadline (SessionManagerConfig refuses it).
    "disconnect_retention": (0.001, None),
    "max_sessions": (1, None),
    "send_queue_frames": (2, None),
    "send_queue_bytes": (1024, None),
    "inbox_limit": (1, None),
    "inbox_bytes": (1024, None),
    "rate_limit_burst": (1, None),
    "rate_limit_refusals": (1, None),
    "rate_limit_bytes_burst": (1, None),
    "session_create_burst": (1, None),
    "max_title_length": (1, None),
    "max_user_id_length": (1, None),
    "max_history_page": (1, None),
    "max_events_page": (1, None),
    "max_list_page": (1, None),
    "max_page_bytes": (1024, None),
    "max_batch_items": (1, MAX_BATCH_ITEMS),
}


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(hint, False)``. (A ``Literal[…] | None``
    is a ``typing.Union``, not a ``types.UnionType``.)"""
    is_union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    if is_union and type(None) in hint.__args__:
        (inner,) = (arg for arg in hint.__args__ if arg is not type(None))
        return inner, True
    return hint, False


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "a comma-separated list"
    )


def choices(name: str) -> tuple[str, ...] | None:
    """The values a field may take, as text, when they are a fixed few: ``none`` too for
    one that may be none (``--durability none``, as BAMBOO_DURABILITY=none says)."""
    hint, optional = _optional(_HINTS[name])
    if typing.get_origin(hint) is not Literal:
        return None
    return (*typing.get_args(hint), "none") if optional else typing.get_args(hint)


def check_setting(name: str, value: object) -> None:
    """ValueError, saying what is expected, unless ``value`` fits the field ``name``."""
    hint, optional = _optional(_HINTS[name])
    if value is None:
        if not optional:
            raise ValueError(f"expected {_describe(hint)}, not none")
        return
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"expected {_describe(hint)}, not {value!r}")
        return
    if hint == tuple[str, ...]:
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return
    kind = type(value)
    if hint is float and kind is int:
        kind = float
    if kind is not hint:
        raise ValueError(f"expected {_describe(hint)}, not {value!r}")
    if hint in (int, float):
        _check_bounds(name, value)  # type: ignore[arg-type]


def _check_bounds(name: str, number: float) -> None:
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, not {number!r}")
    low, high = _BOUNDS.get(name, (0, None))
    if number < low or (high is not None and number > high):
        # .15g: a high bound whole (3153600000), not 3.1536e+09
        span = f"between {low:g} and {high:.15g}" if high is not None else f"at least {low:g}"
        raise ValueError(f"must be {span}, not {number:g}")


def parse_text(name: str, raw: str) -> object:
    """A field's value from text (a flag or an environment variable), checked."""
    hint, optional = _optional(_HINTS[name])
    value: object
    if optional and (raw == "" or (raw.lower() == "none" and hint is not str)):
        value = None  # for a string only "" means none: "none" could be a secret
    elif hint is bool:
        value = _boolean(raw)
    elif hint == tuple[str, ...]:
        value = tuple(part.strip() for part in raw.split(",") if part.strip())
    elif hint is int:
        value = _number(raw, int)
    elif hint is float:
        value = _number(raw, float)
    else:
        value = raw
    check_setting(name, value)
    return value


def parse_toml_value(name: str, value: object) -> object:
    """A field's value from a TOML file, checked: TOML's own types, a list or a
    comma-separated string for a list, "none" (or "" for a string) for none."""
    hint, optional = _optional(_HINTS[name])
    # TOML has no null: "none" for a number, "" for a string ("none" may be a secret).
    none = value == "" or (hint is not str and str(value).lower() == "none")
    if optional and isinstance(value, str) and none:
        return None
    if hint == tuple[str, ...]:
        if isinstance(value, str):
            return parse_text(name, value)
        if isinstance(value, list):
            value = tuple(value)
    check_setting(name, value)
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, not {raw!r}")


def _number(raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"expected {_describe(kind)}, not {raw!r}") from None
