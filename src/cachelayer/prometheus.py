"""Prometheus metrics for every Cache of the process (``pip install "cachelayer[prometheus]"``).

::

    from cachelayer.prometheus import register

    register()          # into prometheus_client's default REGISTRY

or serve them apart from the app's own metrics: :func:`metrics_app` (ASGI),
:func:`wsgi_metrics_app` (WSGI), ``cachelayer.django.metrics_view`` (Django).

:class:`CacheCollector` reads :func:`cachelayer.collect_stats` at each scrape (every open
Cache, summed by namespace): nothing is counted twice and the hot path is not touched.
Series carry ``namespace`` and, for what a cached function does, ``function``
(``module.qualname``); what no decorated function did (``get``, ``set``,
``get_or_load``...) is ``function="(direct)"``, so a sum over ``function`` is the
namespace's total. What the store did (errors by kind, the circuit breaker) and the local
tier carry ``namespace`` only. See docs/observability.md for the list.

Never imported by ``import cachelayer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    make_asgi_app,
    make_wsgi_app,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._metrics import HistogramSnapshot, StatsSnapshot
from ._metrics import collect as collect_stats
from ._stats import COUNTERS

__all__ = [
    "DIRECT",
    "FUNCTION_COUNTERS",
    "CacheCollector",
    "exposition",
    "metrics_app",
    "register",
    "wsgi_metrics_app",
]

#: The ``function`` label of what no decorated function did.
DIRECT = "(direct)"

#: Counters of a cached function: ``(StatsSnapshot field, metric name, help)``. The name
#: is exposed with ``_total``; labels ``namespace``, ``function``.
FUNCTION_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("hits", "cachelayer_hits", "Reads answered from the cache (local tier included)."),
    ("misses", "cachelayer_misses", "Reads the cache could not answer fresh."),
    ("local_hits", "cachelayer_local_hits", "Hits answered by the in-process local tier."),
    ("negative_hits", "cachelayer_negative_hits", "Cached errors raised again."),
    ("stale_hits", "cachelayer_stale_served", "Expired values served while being reloaded."),
    ("stale_on_error", "cachelayer_stale_on_error", "Expired values served: the load failed."),
    ("early_refreshes", "cachelayer_early_refreshes", "Hits that started an early refresh."),
    ("refreshes", "cachelayer_refreshes", "Background refreshes run."),
    ("refresh_errors", "cachelayer_refresh_errors", "Background refreshes that failed."),
    ("loads", "cachelayer_loads", "Loader calls on a miss."),
    ("load_errors", "cachelayer_load_errors", "Loader calls that raised."),
    ("fills", "cachelayer_fills", "Loaded values stored under the lease."),
    ("fills_rejected", "cachelayer_fills_rejected", "Fills refused: a write came first."),
    ("flight_joins", "cachelayer_flight_joins", "Misses that shared a load of this process."),
    ("lease_waits", "cachelayer_lease_waits", "Misses that waited for another's fill."),
    ("lease_timeouts", "cachelayer_lease_timeouts", "Waits that gave up and loaded."),
    ("sets", "cachelayer_sets", "Values written by set/set_many."),
    ("invalidations", "cachelayer_invalidations", "Deletes and tag invalidations."),
    ("decode_errors", "cachelayer_decode_errors", "Stored entries that did not decode."),
    ("oversized", "cachelayer_oversized_values", "Loaded values too large to store."),
    ("bytes_read", "cachelayer_read_bytes", "Bytes of entries read from the store."),
    ("bytes_written", "cachelayer_written_bytes", "Bytes of entries written to the store."),
)

#: Counters of the store's calls: ``(field, name, help)``; label ``namespace``.
STORE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "invalidation_errors",
        "cachelayer_invalidation_errors",
        "Invalidations (or their purges) the store did not confirm.",
    ),
    ("store_busy", "cachelayer_store_busy", "Store calls not sent: the pool was exhausted."),
    (
        "short_circuits",
        "cachelayer_short_circuits",
        "Store calls not attempted: the circuit breaker was open.",
    ),
    ("breaker_opened", "cachelayer_breaker_trips", "Times the circuit breaker opened."),
)

_BREAKER_STATES = ("closed", "half-open", "open")


def _functions(snap: StatsSnapshot) -> list[tuple[str, dict[str, int], HistogramSnapshot]]:
    """``(function, counters, load histogram)`` per decorated function, then
    :data:`DIRECT`: the total less the functions, so the rows add up to the total."""
    rows: list[tuple[str, dict[str, int], HistogramSnapshot]] = []
    rest = {name: getattr(snap, name) for name in COUNTERS}
    counts = list(snap.load_seconds.counts)
    seconds = snap.load_seconds.sum
    for name, fn in sorted(snap.functions.items()):
        figures = {name: getattr(fn, name) for name in COUNTERS}
        rows.append((name, figures, fn.load_seconds))
        for counter, n in figures.items():
            rest[counter] -= n
        counts = [a - b for a, b in zip(counts, fn.load_seconds.counts, strict=True)]
        seconds -= fn.load_seconds.sum
    direct = HistogramSnapshot(snap.load_seconds.bounds, tuple(counts), max(seconds, 0.0))
    rows.append((DIRECT, rest, direct))
    return rows


def _buckets(hist: HistogramSnapshot) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets from per-bucket counts."""
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip((*hist.bounds, float("inf")), hist.counts, strict=True):
        seen += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(seen)))
    return out


class CacheCollector(Collector):
    """A prometheus_client collector of every open Cache of the process.

    Args:
        source: what to report, ``{namespace: StatsSnapshot}``; by default
            :func:`cachelayer.collect_stats`, read at each scrape.
    """

    def __init__(self, source: Callable[[], Mapping[str, StatsSnapshot]] = collect_stats) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        """The metric names, without samples (a registry checks them for clashes)."""
        return list(self._families({}))

    def collect(self) -> Iterable[Metric]:
        """Every family, read from the Caches now."""
        return list(self._families(self._source()))

    def _families(self, figures: Mapping[str, StatsSnapshot]) -> Iterator[Metric]:
        fn_labels = ["namespace", "function"]
        per_function = {ns: _functions(snap) for ns, snap in figures.items()}
        for field, name, doc in FUNCTION_COUNTERS:
            family = CounterMetricFamily(
                name, doc, labels=fn_labels, unit="bytes" if name.endswith("bytes") else ""
            )
            for ns, rows in per_function.items():
                for function, counters, _ in rows:
                    family.add_metric([ns, function], counters[field])
            yield family
        loads = HistogramMetricFamily(
            "cachelayer_load_duration_seconds",
            "Seconds each load and background refresh took, failed ones included.",
            labels=fn_labels,
            unit="seconds",
        )
        for ns, rows in per_function.items():
            for function, _, hist in rows:
                loads.add_metric([ns, function], _buckets(hist), hist.sum)
        yield loads

        ns_only = ["namespace"]
        for field, name, doc in STORE_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=ns_only)
            for ns, snap in figures.items():
                family.add_metric([ns], getattr(snap, field))
            yield family
        errors = CounterMetricFamily(
            "cachelayer_store_errors",
            "Failed store calls by exception class (invalidations included).",
            labels=["namespace", "kind"],
        )
        for ns, snap in figures.items():
            for kind, n in sorted(snap.errors_by_kind.items()):
                errors.add_metric([ns, kind], n)
        yield errors
        opened = GaugeMetricFamily(
            "cachelayer_breaker_open",
            "1 while the circuit breaker is open (store calls skipped), else 0.",
            labels=ns_only,
        )
        state = GaugeMetricFamily(
            "cachelayer_breaker_state",
            "The circuit breaker's state: 1 for the current one (the worst of the "
            "namespace's Caches).",
            labels=["namespace", "state"],
        )
        for ns, snap in figures.items():
            opened.add_metric([ns], 1.0 if snap.breaker == "open" else 0.0)
            for name in _BREAKER_STATES:
                state.add_metric([ns, name], 1.0 if snap.breaker == name else 0.0)
        yield opened
        yield state
        yield from self._local(figures)

    @staticmethod
    def _local(figures: Mapping[str, StatsSnapshot]) -> Iterator[Metric]:
        local = {ns: snap.local for ns, snap in figures.items() if snap.local is not None}
        ns_only = ["namespace"]
        entries = GaugeMetricFamily(
            "cachelayer_local_entries", "Entries held by the local tier.", labels=ns_only
        )
        size = GaugeMetricFamily(
            "cachelayer_local_bytes",
            "Bytes held by the local tier.",
            labels=ns_only,
            unit="bytes",
        )
        evictions = CounterMetricFamily(
            "cachelayer_local_evictions",
            "Entries the local tier dropped to stay within its bounds.",
            labels=ns_only,
        )
        purges = CounterMetricFamily(
            "cachelayer_local_purges",
            "Invalidations received from other processes and applied to the local tier.",
            labels=ns_only,
        )
        lag = HistogramMetricFamily(
            "cachelayer_invalidation_lag_seconds",
            "Seconds from another process's invalidation to its purge here (wall clocks "
            "of two hosts: see docs/observability.md).",
            labels=ns_only,
            unit="seconds",
        )
        for ns, tier in local.items():
            assert tier is not None
            entries.add_metric([ns], tier.entries)
            size.add_metric([ns], tier.bytes)
            evictions.add_metric([ns], tier.evictions)
            purges.add_metric([ns], tier.purges)
            lag.add_metric([ns], _buckets(tier.lag), tier.lag.sum)
        yield from (entries, size, evictions, purges, lag)


def register(registry: CollectorRegistry = REGISTRY) -> CacheCollector:
    """Add a :class:`CacheCollector` to ``registry`` (prometheus_client's default one
    unless told) and return it (``registry.unregister(collector)`` takes it out).

    Raises:
        ValueError: ``registry`` already has these metric names (registered twice).
    """
    collector = CacheCollector()
    registry.register(collector)
    return collector


_own: CollectorRegistry | None = None


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    global _own
    if registry is not None:
        return registry
    if _own is None:
        own = CollectorRegistry(auto_describe=False)
        own.register(CacheCollector())
        _own = own
    return _own


def metrics_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving the metrics of ``registry``; by default, a registry of its own
    holding only cachelayer's (mount it: ``app.mount("/metrics", metrics_app())``)."""
    return make_asgi_app(registry=_registry(registry))


def wsgi_metrics_app(registry: CollectorRegistry | None = None) -> Any:
    """A WSGI app serving the metrics of ``registry`` (by default, cachelayer's only)."""
    return make_wsgi_app(registry=_registry(registry))


def exposition(accept: str = "", registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of one scrape, in the format ``accept`` asks for
    (OpenMetrics or Prometheus text): what a web framework's view returns."""
    encoder, content_type = choose_encoder(accept)
    return encoder(_registry(registry)), content_type
