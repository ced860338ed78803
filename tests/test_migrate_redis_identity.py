"""migrate refuses one Redis store reached by two users, one allowed INFO and the other
not (persistence/redis/identity.py): the run_id where both read it, else the address
(r338: the two identities never compared equal, and the store was migrated into
itself with exit 0)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence.url import without_password
from tests.redis_server import RedisServer, prefix_for
from tests.test_migrate_cli import make_source
from tests.test_migrate_refusals import run_migrate
from tests.test_redis_acl import acl_user


@pytest.mark.parametrize("direction", ["info allowed to denied", "info denied to allowed"])
async def test_one_redis_store_reached_by_a_user_refused_info_and_one_allowed_it_is_refused(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, direction: str
) -> None:
    """One server, database and prefix, reached by the default user (``INFO`` allowed:
    known by its ``run_id``) and by a user whose ACL refuses ``INFO`` (known by its
    address): the two identities never compare equal, so the store is migrated into
    itself (exit 0, ``skipped 3 already copied``) instead of refused, as
    docs/storage-redis.md and README.md promise "however the URLs spell it"."""
    server = start_redis("redis")
    denied = await acl_user(server, tmp_path, "-info")
    allowed = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)
    await make_source(allowed, sessions=3, events=5)
    source, target = (allowed, denied)
    if direction.startswith("info denied"):
        source, target = target, source
    run = await run_migrate("--from", source, "--to", target)
    assert (run.returncode, run.stdout) == (1, ""), run
    # (named with its password masked: r490)
    assert run.stderr.endswith(f"the same store: {without_password(target)}\n"), run.stderr
