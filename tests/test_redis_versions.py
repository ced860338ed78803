"""The redis-py the Redis store needs (persistence/redis/__init__.py): the package's
floor is the first redis-py whose asyncio PubSub subscribes to sharded channels, which
the store uses on Redis 7; an older one, installed against the floor, is refused by
name when the store opens instead of failing every attach."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import redis

from bamboo_session.persistence.redis import REDIS_PY_FLOOR, require_redis_py

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_the_extra_asks_for_the_redis_py_the_store_needs() -> None:
    """redis-py 5.2 to 7.4 have ssubscribe on their synchronous PubSub only: on them,
    against Redis 7, every hello closed 1011 (``'PubSub' object has no attribute
    'ssubscribe'``). The floor is what keeps pip from installing one."""
    pyproject = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["redis"]
    (requirement,) = [r for r in extra if re.match(r"redis\b", r)]
    floor = re.fullmatch(r"redis>=(\d+)\.(\d+)(?:\.\d+)?", requirement)
    assert floor is not None, requirement
    assert (int(floor[1]), int(floor[2])) == REDIS_PY_FLOOR == (8, 0), requirement


@pytest.mark.parametrize("version", ["5.2.1", "7.4.1", "7.99.0"])
def test_an_older_redis_py_is_refused_by_name(version: str) -> None:
    with pytest.raises(ValueError, match=f"needs redis-py 8.0 or later, not {version}"):
        require_redis_py(version)


@pytest.mark.parametrize("version", ["8.0.0", "8.1.0", "9.0.0b1", "unknown"])
def test_the_floor_and_later_are_taken(version: str) -> None:
    require_redis_py(version)


def test_the_installed_redis_py_has_what_the_store_calls() -> None:
    """Fails where this venv's redis-py is older than the floor (a scratch run with
    PYTHONPATH naming one): the check, and the method it stands for."""
    require_redis_py(redis.__version__)
    assert hasattr(redis.asyncio.client.PubSub, "ssubscribe")
