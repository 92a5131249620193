"""Counters a Cache keeps, and a logger that does not flood on a hot failure path."""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

__all__ = ["COUNTERS", "LOAD_BUCKETS", "Histogram", "RateLimitedLog", "Stats", "with_ratio"]


#: The event counters every :class:`Stats` holds, in the order snapshots list them.
COUNTERS = (
    "hits",
    "misses",
    "local_hits",
    "negative_hits",
    "stale_hits",
    "early_refreshes",
    "refreshes",
    "refresh_errors",
    "loads",
    "load_errors",
    "stale_on_error",
    "fills",
    "fills_rejected",
    "flight_joins",
    "lease_waits",
    "lease_timeouts",
    "sets",
    "invalidations",
    "invalidation_errors",
    "decode_errors",
    "oversized",
    "bytes_read",
    "bytes_written",
    "store_errors",
    "store_busy",
    "short_circuits",
    "breaker_opened",
)

#: Upper bounds (seconds) of the load-duration histogram's buckets (Prometheus' defaults).
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def with_ratio(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` plus ``hit_ratio_permille``: hits per 1000 reads (0 with no reads)."""
    reads = counts["hits"] + counts["misses"]
    counts["hit_ratio_permille"] = (1000 * counts["hits"] // reads) if reads else 0
    return counts


class Histogram:
    """Counts of observations per bucket (``counts[i]``: at most ``bounds[i]``; the last
    one: above every bound) and their sum. Observing is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0


class Stats:
    """The counters of one cached function, or of a Cache's direct calls.

    A Cache keeps one for its own calls (``get``, ``set``, ``get_or_load``, the runner's
    store errors) and one per decorated function (``Cache.stats`` sums them; see
    ``_metrics.py``). Increments are plain ``+=`` under the GIL: cheap on the hot path, and
    at worst an increment lost to a thread switch, which a counter for monitoring can
    afford.
    """

    __slots__ = (*COUNTERS, "errors_by_kind", "load_seconds")

    hits: int
    misses: int
    local_hits: int
    negative_hits: int
    stale_hits: int
    early_refreshes: int
    refreshes: int
    refresh_errors: int
    loads: int
    load_errors: int
    stale_on_error: int
    fills: int
    fills_rejected: int
    flight_joins: int
    lease_waits: int
    lease_timeouts: int
    sets: int
    invalidations: int
    invalidation_errors: int
    decode_errors: int
    oversized: int
    bytes_read: int
    bytes_written: int
    store_errors: int
    store_busy: int
    short_circuits: int
    breaker_opened: int
    #: store errors by exception class name (``"TimeoutError"``, ``"ConnectionError"``)
    errors_by_kind: dict[str, int]
    #: seconds each load (and background refresh) took, failed ones included
    load_seconds: Histogram

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.errors_by_kind = {}
        self.load_seconds = Histogram(LOAD_BUCKETS)

    def count(self, name: str) -> int:
        """A counter's value. ``hits`` includes ``local_hits``: a local hit increments
        only ``local_hits`` (one increment on the fastest path), so the raw ``hits``
        attribute counts the hits the store answered."""
        if name == "hits":
            return self.hits + self.local_hits
        value: int = getattr(self, name)
        return value

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict, plus ``hit_ratio`` as a per-mille int (0 with no reads)."""
        return with_ratio({name: self.count(name) for name in COUNTERS})

    def reset(self) -> None:
        """Set every counter back to 0."""
        self.__init__()  # type: ignore[misc]


class RateLimitedLog:
    """Logs one message per kind per ``interval`` seconds, counting the ones it held back.

    Callers keep cache keys and values out of messages: they may hold user data.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            held = self._held.pop(kind, 0)
        if held:
            msg += " (%d similar messages suppressed in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)
