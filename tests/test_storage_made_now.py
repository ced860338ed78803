"""The storage contract's ``create_session(..., made_now=True)`` on every backend of
tests/storage_backends.py: a session made at the store's clock some time before the
store makes it (as the server's is, before the replacement of an expired one) gets
its activity, and its TTL's start, at the instant the store makes it. (Without
``made_now``, a local store keeps the creator's times, as tests make expired sessions;
Redis keeps them within a second of its clock.)"""

from __future__ import annotations

from datetime import timedelta

from bamboo_session.persistence import Storage
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.persistence.redis.clock import SLOW_ROUND_TRIP
from bamboo_session.protocol.models import Session
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)

EARLIER = timedelta(seconds=30)  # how long before the store makes it the session was made


async def test_a_session_made_now_takes_the_stores_instant(store: Storage) -> None:
    before = store.now()
    await store.create_session(Session.new("s", ttl=10, now=before - EARLIER), made_now=True)
    meta = await store.get_metadata("s")
    assert meta is not None and not meta.is_expired(store.now())
    # Redis's clock here is a reading of its TIME carried on by this process: off by up
    # to a reading's round trip (a CI run saw it 1.6 ms ahead of the script's TIME).
    if isinstance(store, RedisStorage):
        before -= timedelta(seconds=SLOW_ROUND_TRIP)
    assert meta.updated_at >= before and meta.last_activity_at >= before
    assert meta.expires_at is not None and meta.expires_at >= before + timedelta(seconds=10)
