"""What the store checks of the Redis it opens on, before it takes a write: that Redis
keeps what it acknowledges (``check_persistence``; durability.py reads the same
settings again while the store runs), that it is a primary (``refuse_replica``), and
that it runs ``WAIT`` for a store that waits for replicas (``refuse_unwaitable``)."""

from __future__ import annotations

import logging

import redis.exceptions
from redis.asyncio import Redis

from ..base import StoreMisconfigured
from .config import RedisConfig
from .pool import read
from .scripts import unreachable

log = logging.getLogger(__name__)

# What check_persistence reads of Redis's CONFIG: whether a write it acknowledged is
# on disk (the first two, and the third, which skips the fsync while a snapshot or a
# rewrite runs even with appendfsync always), and what a restart comes back to if not.
NO_FSYNC_ON_REWRITE = "no-appendfsync-on-rewrite"
PERSISTENCE_SETTINGS = ("appendonly", "appendfsync", NO_FSYNC_ON_REWRITE, "save")


async def check_persistence(client: Redis, config: RedisConfig) -> bool:
    """Refuses a writable store on a Redis that may acknowledge a write a restart loses
    (StoreMisconfigured), unless the URL has ``accept_lossy=true``, when it logs a
    warning: no append-only file (``appendonly no``: a restart goes back to the last
    snapshot, or to nothing without snapshots), or one not fsynced before each reply
    (``appendfsync everysec`` or ``no``, or ``no-appendfsync-on-rewrite yes``, which
    skips the fsync while a snapshot or a rewrite runs: a crash of the machine loses
    the last writes). Acknowledged events would be lost; on such a Redis the store
    changes every epoch at a restart (generation.py), so that clients reload rather
    than resume onto a log cut short (docs/storage-redis.md, Durability). A read-only store writes
    nothing and is opened. Returns whether Redis may lose what it acknowledged: True
    too where Redis refuses to say (a managed Redis may rename or disable CONFIG, or
    an ACL deny it), when the store opens all the same, and says at INFO that it could
    not check, so that the operator knows to. A store on a Redis that may lose writes
    changes every session's epoch when Redis restarts (generation.py)."""
    settings = await read_persistence(client)
    if settings is None:
        log.info(
            "could not check that Redis keeps the writes it acknowledged (CONFIG GET "
            "refused): it should run with appendonly yes and appendfsync always; "
            "taken as one that may lose them, so a restart of Redis changes every "
            "session's epoch"
        )
        return True
    if "appendonly" not in settings or "appendfsync" not in settings:
        return True  # a Redis that does not say: taken as lossy, as it cannot be refused
    danger = persistence_danger(settings)
    if danger is not None:
        if not (config.accept_lossy or config.read_only):
            raise StoreMisconfigured(f"{danger}, or add accept_lossy=true to the store URL")
        log.warning("%s", danger)
    return danger is not None


async def read_persistence(client: Redis) -> dict[str, str] | None:
    """Redis's persistence settings (``PERSISTENCE_SETTINGS``) as it runs now; None
    where it refuses ``CONFIG GET`` (renamed, disabled, or denied by an ACL)."""
    settings: dict[str, str] = {}
    try:
        for name in PERSISTENCE_SETTINGS:
            # One name per CONFIG GET: Redis before 7.0 refuses several in one call,
            # which would read as CONFIG refused.
            said = await read(client, "CONFIG GET", name)
            settings.update({_text(key): _text(value) for key, value in said.items()})
    except redis.exceptions.ResponseError:
        return None
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    return settings


def persistence_danger(settings: dict[str, str]) -> str | None:
    """What in ``settings`` may lose writes Redis acknowledged, said for an operator
    (what a restart then loses, what to set); None if nothing does. Settings missing
    from what CONFIG GET answered (a Redis that does not know them) count as unsafe.
    It does not say that lost seqs go to other events under the same epoch: a store
    that opens on such a Redis (``accept_lossy=true``) or sees it turn so marks the run
    lossy, and its restart changes every epoch (generation.py)."""
    appendonly, appendfsync = settings.get("appendonly"), settings.get("appendfsync")
    if appendonly is None or appendfsync is None:
        return (
            "Redis may lose writes it acknowledged (CONFIG GET says no appendonly or appendfsync)"
        )
    if appendonly != "yes" or appendfsync != "always":
        return (
            f"Redis may lose writes it acknowledged (appendonly {appendonly}, appendfsync "
            f"{appendfsync}): "
            f"{_what_a_restart_loses(appendonly, settings.get('save'))}; "
            "set appendonly yes and appendfsync always"
        )
    if settings.get(NO_FSYNC_ON_REWRITE) == "yes":
        return (
            f"Redis may lose writes it acknowledged ({NO_FSYNC_ON_REWRITE} yes): while "
            "it takes a snapshot or rewrites its append-only file it fsyncs nothing, so "
            f"{_what_a_restart_loses('yes', None)}; set {NO_FSYNC_ON_REWRITE} no"
        )
    return None


async def refuse_replica(client: Redis, config: RedisConfig) -> None:
    """Refuses a writable store on a replica (StoreMisconfigured): a read-only one
    (``replica-read-only yes``, the default) opens and then fails every write, and a
    writable one keeps writes that never reach its primary and that its next sync
    drops. A read-only store (``migrate`` reading from it, ``ls``) is opened. Where
    INFO is refused, nothing is said: the first write tells."""
    if config.read_only:
        return
    try:
        info = await read(client, "INFO", "replication")
    except redis.exceptions.ResponseError:
        return
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc
    if _text(info.get("role")) == "slave":  # what INFO calls a replica, still in 7.x
        primary = f"{_text(info.get('master_host'))}:{_text(info.get('master_port'))}"
        raise StoreMisconfigured(
            f"Redis is a replica of {primary}: a writable store needs a primary (a "
            "replica refuses writes, or loses them at its next sync); point the store "
            "URL at the primary"
        )


async def refuse_unwaitable(client: Redis, config: RedisConfig) -> None:
    """Refuses a writable store with ``wait_replicas`` whose user Redis refuses
    ``WAIT`` (an ACL): every write would be made on the primary and then left in doubt,
    its publisher closed 1011 again at each resend."""
    if config.read_only or not config.wait_replicas:
        return
    try:
        await client.execute_command("WAIT", 0, 0)
    except redis.exceptions.ResponseError as exc:
        raise StoreMisconfigured(
            f"wait_replicas={config.wait_replicas} needs the WAIT command, which Redis "
            f"refuses this store's user ({exc}); allow it (ACL +wait) or drop wait_replicas"
        ) from exc
    except redis.exceptions.RedisError as exc:
        raise unreachable(exc) from exc


def _what_a_restart_loses(appendonly: str, save: str | None) -> str:
    if save == "" and appendonly != "yes":  # neither a log nor snapshots: nothing survives
        return "a restart of Redis loses every session (it takes no snapshots either)"
    if appendonly == "yes":
        return "a crash of the machine loses the last writes"
    return "a restart of Redis goes back to its last snapshot"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
