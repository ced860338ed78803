"""The check of a Redis store's credentials before any server process opens it: ``serve
--workers N``'s supervisor makes it once, before it forks the workers (server/cli.py),
so that a wrong password or user is refused in one line and status 2, rather than by
every worker as it starts. The refusal reads as the store's open's own
(``versions.server_version``), which a lone ``serve`` meets."""

from __future__ import annotations

import redis
import redis.exceptions

from ..base import StoreMisconfigured
from ..url import StoreOptions, parse_store_url, without_password
from .client import without_maintenance_notifications
from .config import RedisConfig

CHECK_TIMEOUT = 5.0  # seconds to connect, and to be answered


def credentials_refused(where: str, exc: Exception) -> StoreMisconfigured:
    """The refusal of a store whose Redis refused its credentials, named by ``where``
    (its URL, password masked): every open would be refused alike."""
    return StoreMisconfigured(
        f"authentication failed for {where} ({exc}): check the user and password in the store URL"
    )


def check_credentials(url: str) -> None:
    """StoreMisconfigured where Redis refuses the credentials of the store ``url``
    names (ValueError where it names none, or a bad option); nothing on any other
    outcome, an unreachable Redis included: each worker says so as it starts, and is
    restarted. Blocking, with a client of its own closed before it returns: the
    supervisor runs no event loop, and forks right after."""
    config = RedisConfig.from_url(parse_store_url(url), StoreOptions())
    client = redis.Redis.from_url(
        config.url,
        protocol=3,  # the store's own: HELLO 3 with the credentials, as its open sends
        socket_connect_timeout=CHECK_TIMEOUT,
        socket_timeout=CHECK_TIMEOUT,
        **without_maintenance_notifications(),
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise credentials_refused(without_password(config.url), exc) from None
    except redis.exceptions.RedisError:
        return
    finally:
        client.close()
