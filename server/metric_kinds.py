"""The collectors of server/metrics.py that are not prometheus_client's, each for one
event loop's thread (no lock).

Histograms on the hot path are :class:`Histogram`, not prometheus_client's: an
observation there takes a lock and costs about 2 µs, which at tens of thousands of
events a second is a few percent of a core; here it is a comparison (a bisect past the
first bucket) and an increment. They are exposed as ordinary Prometheus histograms
(``_bucket{le=…}``, ``_sum``, ``_count``), so ``histogram_quantile()`` graphs them as
they are. The counter bumped once per append (``bamboo_events_appended``) is likewise a
:class:`HotCounter`: an addition, exposed as prometheus_client exposes a counter
(``_total``, ``_created``). A count another object keeps (the store's) is a
:class:`CounterOf`, read at each scrape.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

_bisect_left = bisect.bisect_left  # one global read an observe, not two (four an append)


class Histogram(Collector):
    """A histogram for one event loop's hot path: ``observe`` is not thread-safe, and
    needs no lock since only the loop's thread calls it (and renders it)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(float(b) for b in buckets)  # as rendered
        # As given, for the search: an int (a batch's size) compared with ints, not
        # floats, costs less (no mixed comparison) and gives the same answer.
        self._search = tuple(buckets)
        self._first = self._search[0]
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bucket told by one comparison, without bisect's call and its four:
        # where a lone event's batch of one lands, and a fast commit (the same index).
        index = 0 if value <= self._first else _bisect_left(self._search, value)
        self.counts[index] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.sum
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class HotCounter(Collector):
    """A counter for one event loop's hot path, as :class:`Histogram` is a histogram:
    ``inc`` is an addition, with no lock, since only the loop's thread calls it."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            self.name, self.documentation, value=self.value, created=self.created
        )


class CounterOf(HotCounter):
    """A counter whose count another object keeps (a store's), read at each scrape
    through the function given to ``set_function``: 0 until one is given."""

    def __init__(self, name: str, documentation: str) -> None:
        super().__init__(name, documentation)
        self._read: Callable[[], float] = lambda: 0

    def set_function(self, read: Callable[[], float]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        self.value = self._read()
        return super().collect()
