"""Test-suite settings and shared fixtures.

Under CI, hypothesis runs derandomized, so a submission's CI run is reproducible and a
rare example found by chance cannot block a landing; local runs keep exploring new
examples. Neither holds an example to a deadline. The run's soft open-file limit is
raised toward its hard one (to 65,536 at most), as ``serve`` raises its own: tests that
hold thousands of sockets at once (2,000 idle peers in
tests/test_server_writer_on_demand_process.py) would otherwise meet a soft limit of
1,024 where the machine allows more. ``redis_server`` is one real redis-server for the
whole run (tests/redis_server.py); without the binary its tests are skipped, and the run
ends with one line saying how to install it. ``browser`` is the browser tests' Chromium,
which saves screenshots of a failed test's pages. The slowest modules of a recorded run
(tests/durations.txt) are collected first, so xdist starts them first.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings

from tests import forks
from tests.redis_server import INSTALL_HINT, RedisServer, available, start_redis_server

# The atheris harnesses are scripts of `make fuzz`, never tests (tests/fuzz/harness.py).
collect_ignore = ["fuzz"]


OPEN_FILES_WANTED = 65_536


def pytest_configure(config: pytest.Config) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# No deadline per example and no health check of the time examples take to make:
# Hypothesis's defaults (200 ms an example, 1 s for a few examples' data) are timed
# assertions of speed, which a test process sharing a loaded core can miss (a codec
# round trip did, once, under load); speed is measured in bench/.
UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("local", **UNTIMED)
settings.register_profile("ci", derandomize=True, database=None, **UNTIMED)
settings.load_profile("ci" if os.environ.get("CI") else "local")


# -- order: the slowest modules first ---------------------------------------------


def _recorded_module_seconds() -> dict[str, float]:
    from tests.record_durations import DURATIONS_FILE

    seconds: dict[str, float] = {}
    if DURATIONS_FILE.exists():
        for line in DURATIONS_FILE.read_text().splitlines():
            if line and not line.startswith("#"):
                value, module = line.split(maxsplit=1)
                seconds[module] = float(value)
    return seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of tests/durations.txt first, the slowest first; the others after
    them in their usual order, and each module's tests in theirs (its module fixtures
    are set up once). Under worksteal each process takes an equal share of this list,
    in order, and an idle one steals the end of the longest queue: a long module that
    came last in alphabetical order (tests/test_storage_model.py, 2 to 3 minutes of
    the run) could start when the other process had nothing left to take, and the run
    waited for it alone. Started first, the long ones overlap the many short ones."""
    seconds = _recorded_module_seconds()
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::", 1)[0], 0.0))


# -- redis-server (tests/redis_server.py) -------------------------------------------


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[str], RedisServer]]:
    """Start redis-servers of this test's own (to kill, restart, or replicate), each in
    ``tmp_path / name``; all stopped by pid at the end."""
    if not available():
        pytest.skip(INSTALL_HINT)
    started: list[RedisServer] = []

    def start(name: str) -> RedisServer:
        server = start_redis_server(tmp_path / name)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs (/dev/shm), another file system than ``tmp_path``'s."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no /dev/shm on a file system of its own")
    directory = Path(tempfile.mkdtemp(prefix="bamboo-test-", dir=shm))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not available():
        pytest.skip(INSTALL_HINT)
    server = start_redis_server(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield server
    finally:
        server.stop()


# -- crash tests' children (tests/forks.py) ------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fork_server_stopped() -> Iterator[None]:
    """The fork server of a module's crash tests, if they started it, stopped by pid at
    the module's end: its children are waited for, and their CPU counted, then."""
    yield
    forks.stop()


# -- browser tests (tests/browser.py) ------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keeps each phase's report on the test item, so fixtures can see a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Any]:
    """One headless Chromium per test process, for every browser test module (whose
    tests share the session's event loop: ``pytestmark =
    pytest.mark.asyncio(loop_scope="session")``). One per module cost a launch and a
    close each, some 3 s, and more where xdist split a module between its processes."""
    from bench.chromium import browser_missing, launch

    missing = browser_missing()
    if missing is not None:
        pytest.skip(missing)
    async with launch() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="session")
async def browser(request: pytest.FixtureRequest, chromium: Any) -> AsyncIterator[Any]:
    """The process's Chromium for one test: every context (``browser.new_page()`` makes
    one) the test opened is closed after it, with screenshots of its pages saved as
    artifacts when the test failed."""
    from tests.browser import save_screenshots

    before = set(chromium.contexts)
    yield chromium
    opened = [context for context in chromium.contexts if context not in before]
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for path in await save_screenshots(opened, request.node.name):
            print(f"screenshot: {path}")
    for context in opened:
        await context.close()


@pytest.fixture(scope="module")
def app_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A static server for a blank page: an application's origin, not the server's
    (the browser client's tests load bamboo.js from there)."""
    from tests.browser import static_server

    root = tmp_path_factory.mktemp("app")
    (root / "index.html").write_text("<!doctype html><title>app</title>")
    with static_server(root) as url:
        yield url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line for each kind of test skipped for want of a binary, saying how to
    install it."""
    from bench.chromium import INSTALL_HINT as BROWSER_HINT

    skipped = [str(report.longrepr) for report in terminalreporter.stats.get("skipped", [])]
    if any(INSTALL_HINT in text for text in skipped):
        terminalreporter.write_line(f"Redis tests skipped: {INSTALL_HINT}")
    if any(BROWSER_HINT in text for text in skipped):
        terminalreporter.write_line(f"browser tests skipped: {BROWSER_HINT}")
