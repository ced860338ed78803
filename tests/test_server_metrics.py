"""What /metrics tells an operator: connections opened, every close the server starts
(handshake refusals included), latency and batch histograms in Prometheus form, the
process's own figures and the store's."""

from __future__ import annotations

import errno
import re
import time
from pathlib import Path

import jwt
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.parser import text_string_to_metric_families

from bamboo_session.persistence.jsonl import deletes
from bamboo_session.protocol.models import Session
from bamboo_session.server.metric_kinds import Histogram, HotCounter
from bamboo_session.server.metrics import BATCH_BUCKETS, LATENCY_BUCKETS
from bamboo_session.server.store_stats import bytes_on_disk
from tests.support import attach, get, open_peer, run_server, token

SECRET = "m" * 32


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(server: object) -> str:
    status, text = await get(server, "/metrics")  # type: ignore[arg-type]
    assert status == 200
    assert isinstance(text, str)
    return text


def test_histogram_renders_cumulative_buckets() -> None:
    histogram = Histogram("h_seconds", "h", (0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(observed)
    (family,) = histogram.collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_seconds_bucket"}
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}
    count = next(s.value for s in family.samples if s.name == "h_seconds_count")
    assert count == 4 and histogram.sum == 3.65


@pytest.mark.parametrize(
    ("buckets", "observed"),
    [
        (BATCH_BUCKETS, (1, 1, 0, 2, 3, 1024, 1025, 1.5, 64)),  # batch sizes: ints
        (LATENCY_BUCKETS, (0.00005, 0.0001, 0.00011, 0.003, 10.0, 11.0, -0.0, 0.25)),
    ],
)
def test_a_histogram_renders_as_a_prometheus_histogram(
    buckets: tuple[float, ...], observed: tuple[float, ...]
) -> None:
    """The same buckets, sum and count as prometheus_client's own Histogram for the
    same observations, the first bucket's bound and the values either side of a bound
    included (observe tells the first bucket apart, and searches ints among ints)."""
    hot, plain = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("h_size", "h", buckets)
    hot.register(histogram)
    reference = ReferenceHistogram("h_size", "h", buckets=buckets, registry=plain)
    for value in observed:
        histogram.observe(value)
        reference.observe(value)
    ours, theirs = samples(generate_latest(hot).decode()), samples(generate_latest(plain).decode())
    theirs.pop(("h_size_created", ()))
    assert ours == theirs


def test_a_hot_counter_renders_as_a_prometheus_counter() -> None:
    """The same samples, by name and type, as prometheus_client's own Counter."""
    hot, plain = CollectorRegistry(), CollectorRegistry()
    counter = HotCounter("c_events", "c")
    hot.register(counter)
    reference = Counter("c_events", "c", registry=plain)
    for amount in (1, 4):
        counter.inc(amount)
        reference.inc(amount)
    ours, theirs = samples(generate_latest(hot).decode()), samples(generate_latest(plain).decode())
    assert ours.keys() == theirs.keys() == {("c_events_total", ()), ("c_events_created", ())}
    assert ours[("c_events_total", ())] == theirs[("c_events_total", ())] == 5
    assert abs(ours[("c_events_created", ())] - time.time()) < 60  # when it was made


async def test_connections_opened_and_handshake_closes_are_counted() -> None:
    async with run_server(hello_timeout=0.3, max_connections_per_user=1) as server:
        async with open_peer(server) as silent:  # 4408
            assert (await silent.closed())[0] == 4408
        async with open_peer(server) as bad:  # 1008
            await bad.send({"type": "ping"})
            assert (await bad.closed())[0] == 1008
        async with open_peer(server, "missing") as missing:  # 4404
            await missing.send({"type": "hello"})
            assert (await missing.closed())[0] == 4404
        async with attach(server, user_id="u") as (_, welcome):
            async with open_peer(server, welcome["session"]["id"]) as second:  # 4429
                await second.send({"type": "hello", "user_id": "u"})
                assert (await second.closed())[0] == 4429
        text = await scrape(server)
    assert value(text, "bamboo_connections_opened_total") == 5
    for code in ("4408", "1008", "4404", "4429"):
        assert value(text, "bamboo_closes_total", code=code) == 1, code


async def test_auth_refusals_are_counted() -> None:
    def make(sub: str, **claims: object) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, SECRET)

    async with run_server(auth_secret=SECRET) as server:
        async with attach(server, "mine", create=True, token=make("alice")):
            pass
        async with open_peer(server, "mine") as stranger:
            await stranger.send({"type": "hello", "token": make("bob")})
            assert (await stranger.closed())[0] == 4403
        async with open_peer(server, "mine") as anonymous:
            await anonymous.send({"type": "hello"})
            assert (await anonymous.closed())[0] == 4401
        text = await scrape(server)
    assert value(text, "bamboo_closes_total", code="4403") == 1
    assert value(text, "bamboo_closes_total", code="4401") == 1


async def test_histograms_process_and_store_figures() -> None:
    async with run_server() as server:
        async with (
            attach(server) as (agent, welcome),
            attach(server, welcome["session"]["id"]) as (
                viewer,
                _,
            ),
        ):
            for i in range(5):
                await agent.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
            for _ in range(5):
                await viewer.recv_type("event")
            text = await scrape(server)
    assert value(text, "bamboo_append_ack_seconds_count") == 5
    assert value(text, "bamboo_append_ack_seconds_bucket", le="+Inf") == 5
    assert value(text, "bamboo_group_commit_events_count") >= 1
    assert value(text, "bamboo_group_commit_events_sum") == 5
    assert value(text, "bamboo_group_commit_seconds_count") >= 1
    assert 1 <= value(text, "bamboo_delivery_lag_seconds_count") <= 5  # one per batch
    assert "# TYPE bamboo_delivery_lag_seconds histogram" in text
    assert value(text, "process_resident_memory_bytes") > 1e6
    assert value(text, "process_cpu_seconds_total") > 0
    assert value(text, "bamboo_sessions_stored") == 1
    assert value(text, "bamboo_store_bytes") > 0


async def test_store_bytes_follow_the_data_directory(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        async with attach(server) as (agent, _):
            await agent.request({"type": "event", "id": 1, "event": token("x" * 50_000)}, "ack")
        text = await scrape(server)
        on_disk = bytes_on_disk("dir", tmp_path)  # the WAL's room ahead included
    reported = value(text, "bamboo_store_bytes")
    assert reported >= 50_000 and abs(reported - on_disk) < on_disk * 0.5 + 65536
    assert re.search(r"^bamboo_sessions_stored 1\.0$", text, re.M)


async def test_store_bytes_of_an_sqlite_store_behind_a_symlink_count_its_wal(
    tmp_path: Path,
) -> None:
    """SQLite writes its WAL and shared memory beside the real file, not beside a
    symlink to it: they are counted there, where they are."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "bamboo.db").symlink_to(tmp_path / "real" / "bamboo.db")
    files = [tmp_path / "real" / f"bamboo.db{suffix}" for suffix in ("", "-wal", "-shm")]
    async with run_server(store=f"sqlite://{tmp_path}/link/bamboo.db") as server:
        async with attach(server) as (agent, _):
            for i in range(3):
                event = token("x" * 100_000)
                await agent.request({"type": "event", "id": i, "event": event}, "ack")
        wal = files[1].stat().st_size  # a WAL is not cut back below 64 MiB: it only grows
        assert wal > 300_000
        reported = value(await scrape(server), "bamboo_store_bytes")
        # Nothing shrinks meanwhile (a checkpoint copies the WAL's pages into the file).
        assert wal <= reported <= sum(path.stat().st_size for path in files)


async def test_a_failed_sync_of_the_store_shows_until_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync, later ones prove nothing: the JSONL store keeps its WAL
    whole, growing, until it is opened again; /metrics says so for an operator."""
    real = deletes.fsync_dir

    def failing_once(path: Path) -> None:
        if Path(path).name == "sessions" and not failed:
            failed.append(path)
            raise OSError(errno.EIO, "injected EIO")
        real(path)

    failed: list[Path] = []
    async with run_server(tmp_path) as server:
        assert value(await scrape(server), "bamboo_store_sync_failed") == 0
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 0
        assert server.storage is not None
        await server.storage.create_session(Session.new("s"))
        monkeypatch.setattr(deletes, "fsync_dir", failing_once)
        await server.storage.delete_session("s")  # acknowledged: its deletion is in the WAL
        assert failed
        # The console's figures too, read with no scrape of /metrics before them.
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 1
        assert value(await scrape(server), "bamboo_store_sync_failed") == 1
    async with run_server(tmp_path) as server:
        assert value(await scrape(server), "bamboo_store_sync_failed") == 0
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 0


async def test_a_store_that_does_not_track_its_syncs_reports_none_failed(
    tmp_path: Path,
) -> None:
    """SQLite (and Redis, memory) report a failed sync as the failed call's error, and
    keep nothing that grows after it: the gauge is there, at 0."""
    async with run_server(store=f"sqlite:///{tmp_path}/bamboo.db") as server:
        assert value(await scrape(server), "bamboo_store_sync_failed") == 0
        assert (await get(server, "/api/v1/stats"))[1]["store_sync_failed"] == 0
