"""ThreadJobs (persistence/threads.py): a job holds its slot from before it is handed to
a thread until it has ended there, once, whether its caller waited for it or gave up;
a caller that gives up on a running job stays until the job ends; one that gives up
while it waits for a slot leaves nothing behind. The jobs here are ordinary blocking
calls that wait for the test to let them end (tests/test_stalled_disks.py stalls real
stores)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.threads import ThreadJobs

WAIT = 5.0  # bounds every wait of the test


@pytest_asyncio.fixture
async def jobs() -> AsyncIterator[ThreadJobs]:
    pool = ThreadJobs(2, "test-jobs")
    yield pool
    await asyncio.to_thread(pool.shutdown, True)


def held(gate: threading.Event, started: threading.Event | None = None) -> str:
    if started is not None:
        started.set()
    assert gate.wait(WAIT)
    return "done"


async def started(job: asyncio.Task[str], flag: threading.Event) -> asyncio.Task[str]:
    assert await asyncio.to_thread(flag.wait, WAIT)
    return job


async def test_a_caller_that_gives_up_on_a_running_job_stays_until_it_ends(
    jobs: ThreadJobs,
) -> None:
    gate, flag = threading.Event(), threading.Event()
    job = await started(asyncio.create_task(jobs.run(held, gate, flag)), flag)
    job.cancel()
    await asyncio.sleep(0.05)
    assert not job.done() and jobs.unfinished == 1  # its thread still runs it
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(job, WAIT)
    assert jobs.unfinished == 0
    assert await asyncio.wait_for(jobs.run(str, 7), WAIT) == "7"


async def test_jobs_beyond_the_threads_wait_for_a_slot_not_in_the_queue(
    jobs: ThreadJobs,
) -> None:
    gate, flags = threading.Event(), [threading.Event(), threading.Event()]
    running = [
        await started(asyncio.create_task(jobs.run(held, gate, flag)), flag) for flag in flags
    ]
    waiting = [asyncio.create_task(jobs.run(held, gate)) for _ in range(10)]
    await asyncio.sleep(0.05)
    assert jobs.unfinished == 2 and jobs._pool._work_queue.qsize() == 0
    for task in waiting[:5]:
        task.cancel()  # given up on before they had a thread: nothing of them is left
    await asyncio.wait(waiting[:5])
    assert jobs.unfinished == 2
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*running, *waiting[5:]), WAIT)
    assert results == ["done"] * 7 and jobs.unfinished == 0


async def test_a_job_that_fails_frees_its_slot(jobs: ThreadJobs) -> None:
    for _ in range(5):  # more than the slots: each failure gave its slot back
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(jobs.run(divmod, 1, 0), WAIT)
    assert jobs.unfinished == 0


async def test_no_job_after_shutdown(jobs: ThreadJobs) -> None:
    jobs.shutdown(wait=True)
    with pytest.raises(StorageError, match="takes no more work"):
        await jobs.run(str, 1)
    assert jobs.unfinished == 0


async def test_a_job_whose_thread_cannot_start_gives_its_slot_back_once(
    jobs: ThreadJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool queues a job before it starts a thread for it; when the thread cannot
    start (out of threads or memory: made to happen here, once), the caller gets
    StorageError and its slot back, and when the queued job's turn comes on a thread
    that frees up, it gives nothing back a second time (it does not run: below)."""
    gate, flag = threading.Event(), threading.Event()
    first = await started(asyncio.create_task(jobs.run(held, gate, flag)), flag)
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        monkeypatch.setattr(threading.Thread, "start", real_start)  # this once
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(StorageError, match="takes no more work"):
        await jobs.run(str, "second")
    gate.set()
    assert await asyncio.wait_for(first, WAIT) == "done"
    results = await asyncio.wait_for(asyncio.gather(*(jobs.run(str, i) for i in range(4))), WAIT)
    assert results == ["0", "1", "2", "3"]
    assert jobs.unfinished == 0
    assert jobs._slots._value == jobs.threads  # every slot free, none twice


# In a process of its own: a job submitted while one runs on the pool's only thread,
# when a second thread cannot start (its stack, 1 GiB, past the address space left:
# RuntimeError "can't start new thread", as at a threads limit); then the first job
# ends, and the pool shuts down once its thread has taken every job queued.
REFUSED_JOB = """
import asyncio, pathlib, resource, sys, threading
from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.threads import ThreadJobs

def address_space() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")

async def main() -> None:
    jobs, gate, running = ThreadJobs(2, "jobs"), threading.Event(), threading.Event()
    first = asyncio.create_task(jobs.run(lambda: running.set() or gate.wait(30)))
    while not running.is_set():
        await asyncio.sleep(0.01)
    threading.stack_size(1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + (256 << 20), -1))
    try:
        await jobs.run(pathlib.Path(sys.argv[1]).write_text, "written")
        print("not refused")
    except StorageError as exc:
        print("refused:", exc)
    gate.set()
    await first
    jobs.shutdown(wait=True)
    print("written" if pathlib.Path(sys.argv[1]).exists() else "not written")

asyncio.run(main())
"""


async def test_a_job_refused_for_want_of_a_thread_never_runs(tmp_path: Path) -> None:
    written = tmp_path / "written"
    finished = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", REFUSED_JOB, str(written)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    told, outcome = finished.stdout.splitlines()
    assert told == "refused: the store takes no more work: can't start new thread"
    assert outcome == "not written" and not written.exists()


async def test_a_job_that_raises_stopiteration_answers_its_caller(jobs: ThreadJobs) -> None:
    """A future refuses StopIteration: the caller gets a RuntimeError instead of
    waiting for ever."""
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        await asyncio.wait_for(jobs.run(next, iter(())), WAIT)
    assert await asyncio.wait_for(jobs.run(str, 1), WAIT) == "1"
