"""How late the event loop runs while server/memory_return.py trims a big heap.

A heap of ``--heap-mib`` 1 MiB blocks freed below one kept (so their pages stay
resident until a trim), a task on the loop that mallocs 64 KiB blocks without pause
(as a busy server's frames do), and a probe sleeping 1 ms that records how late it
wakes, for 2 s. Windows with a trim started at their start (``return_free_memory`` in a
thread, as the server runs it) alternate with windows without, on the same heap:
medians over ``--rounds`` of each window's worst and 99th-percentile lag, and what each
trim took. Then how long the next trims of the same heap take (its free bytes stay
above the bound once trimmed: the server trims again at every look).

    python -m bench.trim_lag --heap-mib 400 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import statistics
import time

import uvloop

from bamboo_session.server import memory_return

WINDOW = 2.0
PROBE_SLEEP = 0.001


def _fill_heap(mib: int) -> bytearray:
    """``mib`` MiB of the heap resident and free, under a block kept above them."""
    raised = bytes(4 << 20)  # an mmapped block freed: the mmap threshold rises past 1 MiB
    del raised
    blocks = [bytearray(1 << 20) for _ in range(mib)]
    kept = bytearray(1 << 20)
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
    del blocks
    return kept


async def _load(stop: asyncio.Event) -> None:
    while not stop.is_set():
        chunk = [bytes(64 * 1024 + i) for i in range(8)]
        del chunk
        await asyncio.sleep(0)


def _timed_trim() -> float:
    started = time.perf_counter()
    memory_return.return_free_memory()
    return time.perf_counter() - started


async def _window(mib: int, trim: bool) -> tuple[float, float, float | None]:
    kept = _fill_heap(mib)
    stop = asyncio.Event()
    load = asyncio.create_task(_load(stop))
    trimming = asyncio.create_task(asyncio.to_thread(_timed_trim)) if trim else None
    lags = []
    end = time.perf_counter() + WINDOW
    while time.perf_counter() < end:
        started = time.perf_counter()
        await asyncio.sleep(PROBE_SLEEP)
        lags.append(time.perf_counter() - started - PROBE_SLEEP)
    stop.set()
    await load
    took = await trimming if trimming is not None else None
    del kept
    ctypes.CDLL(None).malloc_trim(0)  # each window starts from the same heap
    lags.sort()
    return lags[-1], lags[int(len(lags) * 0.99)], took


async def _main(mib: int, rounds: int) -> None:
    worst: dict[bool, list[float]] = {False: [], True: []}
    p99: dict[bool, list[float]] = {False: [], True: []}
    trims = []
    for _ in range(rounds):
        for trim in (False, True):
            high, percentile, took = await _window(mib, trim)
            worst[trim].append(high)
            p99[trim].append(percentile)
            if took is not None:
                trims.append(took)
    for trim in (False, True):
        print(
            f"{'with a trim' if trim else 'no trim':12s} worst lag median "
            f"{statistics.median(worst[trim]) * 1000:.1f} ms (highest "
            f"{max(worst[trim]) * 1000:.1f}), "
            f"p99 median {statistics.median(p99[trim]) * 1000:.1f} ms"
        )
    print("trims took (ms):", " ".join(f"{took * 1000:.1f}" for took in trims))
    print(
        "RATIO worst lag with/without a trim",
        f"{statistics.median(worst[True]) / statistics.median(worst[False]):.2f}",
    )
    kept = _fill_heap(mib)
    again = [_timed_trim() * 1000 for _ in range(3)]
    free = memory_return.free_in_heap() or 0
    print(
        f"the same heap trimmed three times: {' '.join(f'{ms:.1f}' for ms in again)} ms; "
        f"free in heap after: {free >> 20} MiB (the bound: {memory_return.RETURN_ABOVE >> 20})"
    )
    del kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heap-mib", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if memory_return.free_in_heap() is None:
        raise SystemExit("no glibc here: the server trims nothing")
    uvloop.run(_main(args.heap_mib, args.rounds))


if __name__ == "__main__":
    main()
