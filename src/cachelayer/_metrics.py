"""Metrics: per-function counters, the snapshots users read, and the process's registry.

Each Cache keeps one :class:`~cachelayer._stats.Stats` for its direct calls and the
runner's store events (``base``) and one per decorated function, named
``module.qualname`` (:meth:`Metrics.group`). The hot path increments exactly one of them;
reading sums them. ``cache.stats`` is a :class:`StatsView`: its attributes are the sums
(``cache.stats.hits``), and calling it, ``cache.stats()``, gives a
:class:`StatsSnapshot`, a plain frozen object for tests and dashboards.

A process may hold several Cache objects for one namespace (Django builds a backend per
thread; tests and scripts build their own): :func:`collect` sums the live ones by
namespace, which is what the exporters (``cachelayer.prometheus``, ``cachelayer.otel``)
and the fleet publisher report. See docs/observability.md.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ._stats import COUNTERS, LOAD_BUCKETS, Histogram, Stats, with_ratio

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = [
    "HistogramSnapshot",
    "LocalSnapshot",
    "Metrics",
    "StatsSnapshot",
    "StatsView",
    "collect",
    "live_caches",
]

#: Upper bounds (seconds) of the invalidation-lag histogram: publication to purge.
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Observations per bucket: ``counts[i]`` are at most ``bounds[i]`` seconds, the last
    count is above every bound; ``sum`` is their total in seconds."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @classmethod
    def of(cls, histogram: Histogram) -> HistogramSnapshot:
        return cls(histogram.bounds, tuple(histogram.counts), histogram.sum)

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> HistogramSnapshot:
        return cls(bounds, (0,) * (len(bounds) + 1), 0.0)

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bound of its bucket; ``inf`` above the
        last bound), or None with no observations."""
        total = self.count
        if not total:
            return None
        rank, seen = q * total, 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank and count:
                return bound
        return float("inf")

    def __add__(self, other: HistogramSnapshot) -> HistogramSnapshot:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets do not add up")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.sum + other.sum)

    def as_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


@dataclass(frozen=True)
class LocalSnapshot:
    """The local tier of one Cache (docs/local.md): its size, and the purges it received
    from other processes with their lag (from the sender's return to the drop here)."""

    entries: int
    bytes: int
    evictions: int
    enabled: bool
    purges: int
    lag: HistogramSnapshot

    def __add__(self, other: LocalSnapshot) -> LocalSnapshot:
        return LocalSnapshot(
            self.entries + other.entries,
            self.bytes + other.bytes,
            self.evictions + other.evictions,
            self.enabled and other.enabled,
            self.purges + other.purges,
            self.lag + other.lag,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "bytes": self.bytes,
            "evictions": self.evictions,
            "enabled": self.enabled,
            "purges": self.purges,
            "lag": self.lag.as_dict(),
        }


def _zero_load() -> HistogramSnapshot:
    return HistogramSnapshot.empty(LOAD_BUCKETS)


@dataclass(frozen=True)
class StatsSnapshot:
    """What a Cache (or one cached function) did since it was built or reset.

    The counters are plain ints; ``load_seconds`` is the histogram of load durations
    (background refreshes included). For a whole Cache, ``functions`` holds one snapshot
    per decorated function (``module.qualname``; direct calls and store events are in the
    totals only), ``breaker`` the circuit breaker's state and ``local`` the local tier.
    Snapshots of one namespace add up (``a + b``), as :func:`collect` does.
    """

    hits: int = 0
    misses: int = 0
    local_hits: int = 0
    negative_hits: int = 0
    stale_hits: int = 0
    early_refreshes: int = 0
    refreshes: int = 0
    refresh_errors: int = 0
    loads: int = 0
    load_errors: int = 0
    stale_on_error: int = 0
    fills: int = 0
    fills_rejected: int = 0
    flight_joins: int = 0
    lease_waits: int = 0
    lease_timeouts: int = 0
    sets: int = 0
    invalidations: int = 0
    invalidation_errors: int = 0
    decode_errors: int = 0
    oversized: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    store_errors: int = 0
    store_busy: int = 0
    short_circuits: int = 0
    breaker_opened: int = 0
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    load_seconds: HistogramSnapshot = field(default_factory=_zero_load)
    namespace: str = ""
    breaker: str = "closed"
    local: LocalSnapshot | None = None
    functions: Mapping[str, StatsSnapshot] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: Stats, **extra: Any) -> StatsSnapshot:
        """The snapshot of one counter block."""
        counts: dict[str, Any] = {name: stats.count(name) for name in COUNTERS}
        return cls(
            **counts,
            errors_by_kind=dict(stats.errors_by_kind),
            load_seconds=HistogramSnapshot.of(stats.load_seconds),
            **extra,
        )

    @property
    def hit_ratio(self) -> float:
        """Hits over reads (hits + misses), 0.0 with no reads."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    def __add__(self, other: StatsSnapshot) -> StatsSnapshot:
        counts = {name: getattr(self, name) + getattr(other, name) for name in COUNTERS}
        kinds = dict(self.errors_by_kind)
        for kind, n in other.errors_by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + n
        functions = dict(self.functions)
        for name, snap in other.functions.items():
            functions[name] = functions[name] + snap if name in functions else snap
        local = self.local
        if other.local is not None:
            local = other.local if local is None else local + other.local
        return StatsSnapshot(
            **counts,
            errors_by_kind=kinds,
            load_seconds=self.load_seconds + other.load_seconds,
            namespace=self.namespace or other.namespace,
            breaker=_worse(self.breaker, other.breaker),
            local=local,
            functions=functions,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``hit_ratio`` included)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (HistogramSnapshot, LocalSnapshot)):
                value = value.as_dict()
            elif f.name == "functions":
                value = {name: snap.as_dict() for name, snap in value.items()}
            elif f.name == "errors_by_kind":
                value = dict(value)
            out[f.name] = value
        out["hit_ratio"] = self.hit_ratio
        return out


_BREAKER_ORDER = {"closed": 0, "half-open": 1, "open": 2}


def _worse(a: str, b: str) -> str:
    return a if _BREAKER_ORDER.get(a, 0) >= _BREAKER_ORDER.get(b, 0) else b


class Metrics:
    """The counter blocks of one Cache: ``base`` and one per decorated function."""

    def __init__(self, base: Stats | None = None) -> None:
        self.base = Stats() if base is None else base
        self.groups: dict[str, Stats] = {}
        self._lock = threading.Lock()

    def group(self, name: str) -> Stats:
        """The counters of the function named ``name`` (one block per name: a function
        decorated again under the same name counts in the same block)."""
        with self._lock:
            stats = self.groups.get(name)
            if stats is None:
                stats = self.groups[name] = Stats()
            return stats

    def blocks(self) -> list[Stats]:
        with self._lock:
            return [self.base, *self.groups.values()]

    def functions(self) -> dict[str, StatsSnapshot]:
        with self._lock:
            groups = list(self.groups.items())
        return {name: StatsSnapshot.of(stats) for name, stats in groups}


class StatsView:
    """``cache.stats``: the counters of a whole Cache, summed over its functions.

    ``cache.stats.hits`` reads one sum; ``cache.stats()`` takes a :class:`StatsSnapshot`
    of everything (per function, breaker, local tier); ``cache.stats.snapshot()`` is the
    flat dict of totals it always was; ``cache.stats.reset()`` zeroes every counter.
    """

    def __init__(self, metrics: Metrics, describe: Callable[[], dict[str, Any]]) -> None:
        self._metrics = metrics
        self._describe = describe

    def __getattr__(self, name: str) -> int:
        if name in COUNTERS:
            return sum(stats.count(name) for stats in self._metrics.blocks())
        raise AttributeError(f"Cache.stats has no counter {name!r}")

    def __dir__(self) -> list[str]:
        return [*COUNTERS, "reset", "snapshot"]

    def __call__(self) -> StatsSnapshot:
        functions = self._metrics.functions()
        total = StatsSnapshot.of(self._metrics.base)
        for snap in functions.values():
            total = total + snap
        return StatsSnapshot(
            **{
                f.name: getattr(total, f.name)
                for f in fields(total)
                if f.name not in ("functions", "namespace", "breaker", "local")
            },
            functions=functions,
            **self._describe(),
        )

    def snapshot(self) -> dict[str, int]:
        """The totals as a flat dict, plus ``hit_ratio_permille``."""
        blocks = self._metrics.blocks()
        return with_ratio({name: sum(b.count(name) for b in blocks) for name in COUNTERS})

    def reset(self) -> None:
        """Set every counter of the Cache and of its functions back to 0."""
        for stats in self._metrics.blocks():
            stats.reset()

    def __repr__(self) -> str:
        return f"<cache.stats hits={self.hits} misses={self.misses} loads={self.loads}>"


_live: weakref.WeakSet[Cache] = weakref.WeakSet()
_live_lock = threading.Lock()


def register(cache: Cache) -> None:
    """Count ``cache`` in :func:`collect` for as long as it lives (or until closed)."""
    with _live_lock:
        _live.add(cache)


def unregister(cache: Cache) -> None:
    with _live_lock:
        _live.discard(cache)


def live_caches() -> Iterator[Cache]:
    """The Cache objects of this process that are open."""
    with _live_lock:
        caches = list(_live)
    yield from caches


def collect() -> dict[str, StatsSnapshot]:
    """``{namespace: snapshot}``: every open Cache of this process, summed by namespace
    (several Cache objects of one namespace -- a Django backend per thread, say -- are
    one set of figures)."""
    out: dict[str, StatsSnapshot] = {}
    for cache in live_caches():
        snap = cache.stats()
        ns = snap.namespace
        out[ns] = out[ns] + snap if ns in out else snap
    return out
