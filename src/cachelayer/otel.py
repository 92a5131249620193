"""OpenTelemetry metrics and load spans (``pip install "cachelayer[otel]"``).

::

    from cachelayer.otel import instrument

    instrument()     # the global MeterProvider and TracerProvider, or pass your own

Metrics are observable instruments read from :func:`cachelayer.collect_stats` when the
SDK collects (every open Cache, summed by namespace): ``cachelayer.hits``,
``cachelayer.misses``, ``cachelayer.loads``... with the attributes
``cachelayer.namespace`` and ``cachelayer.function`` (``module.qualname``, or
``(direct)`` for what no decorated function did, so a sum over functions is the total).
Each load -- a miss's or a background refresh's -- runs in a span,
``cachelayer.load <function>``, current while the loader runs (its own spans nest under
it), and is recorded in the ``cachelayer.load.duration`` histogram. See
docs/observability.md for the list.

Never imported by ``import cachelayer``; until :func:`instrument` is called the read
path does not see OpenTelemetry at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, TracerProvider

from . import __version__, _hooks
from ._metrics import StatsSnapshot
from ._metrics import collect as collect_stats
from ._stats import COUNTERS, LOAD_BUCKETS

__all__ = ["DIRECT", "Instrumentation", "instrument"]

#: ``cachelayer.function`` of what no decorated function did (``get_or_load``, ``set``).
DIRECT = "(direct)"
NAMESPACE = "cachelayer.namespace"
FUNCTION = "cachelayer.function"

#: Counters of a cached function: ``(StatsSnapshot field, name, unit, description)``.
FUNCTION_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("hits", "cachelayer.hits", "{hit}", "Reads answered from the cache (local tier included)"),
    ("misses", "cachelayer.misses", "{miss}", "Reads the cache could not answer fresh"),
    ("local_hits", "cachelayer.local.hits", "{hit}", "Hits answered by the local tier"),
    ("negative_hits", "cachelayer.negative_hits", "{hit}", "Cached errors raised again"),
    ("stale_hits", "cachelayer.stale_served", "{value}", "Expired values served"),
    (
        "stale_on_error",
        "cachelayer.stale_on_error",
        "{value}",
        "Expired values served: load failed",
    ),
    ("early_refreshes", "cachelayer.early_refreshes", "{refresh}", "Early refreshes started"),
    ("refreshes", "cachelayer.refreshes", "{refresh}", "Background refreshes run"),
    ("refresh_errors", "cachelayer.refresh_errors", "{refresh}", "Background refreshes failed"),
    ("loads", "cachelayer.loads", "{load}", "Loader calls on a miss"),
    ("load_errors", "cachelayer.load_errors", "{load}", "Loader calls that raised"),
    ("fills", "cachelayer.fills", "{fill}", "Loaded values stored under the lease"),
    ("fills_rejected", "cachelayer.fills_rejected", "{fill}", "Fills refused: a write came first"),
    ("flight_joins", "cachelayer.flight_joins", "{call}", "Misses that shared a running load"),
    ("lease_waits", "cachelayer.lease.waits", "{wait}", "Misses that waited for another's fill"),
    ("lease_timeouts", "cachelayer.lease.timeouts", "{wait}", "Waits that gave up and loaded"),
    ("sets", "cachelayer.sets", "{write}", "Values written by set/set_many"),
    ("invalidations", "cachelayer.invalidations", "{invalidation}", "Deletes and tag bumps"),
    ("decode_errors", "cachelayer.decode_errors", "{entry}", "Stored entries that did not decode"),
    ("oversized", "cachelayer.oversized_values", "{value}", "Loaded values too large to store"),
)

#: Counters of the store's calls (attribute ``cachelayer.namespace`` only).
STORE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    (
        "invalidation_errors",
        "cachelayer.invalidation_errors",
        "{invalidation}",
        "Invalidations (or their purges) the store did not confirm",
    ),
    ("store_busy", "cachelayer.store.busy", "{call}", "Store calls not sent: pool exhausted"),
    ("short_circuits", "cachelayer.short_circuits", "{call}", "Store calls skipped: breaker open"),
    ("breaker_opened", "cachelayer.breaker.trips", "{trip}", "Times the circuit breaker opened"),
)


def _rows(snap: StatsSnapshot) -> list[tuple[str, Mapping[str, int]]]:
    """``(function, counters)`` per decorated function, then :data:`DIRECT` (the total
    less the functions)."""
    rest = {name: getattr(snap, name) for name in COUNTERS}
    rows: list[tuple[str, Mapping[str, int]]] = []
    for function, fn in sorted(snap.functions.items()):
        figures = {name: getattr(fn, name) for name in COUNTERS}
        for name, n in figures.items():
            rest[name] -= n
        rows.append((function, figures))
    rows.append((DIRECT, rest))
    return rows


class _LoadSpan:
    """The span (and the duration record) around one load: current while the loader
    runs; an exception from the loader marks it as an error."""

    __slots__ = ("_attributes", "_owner", "_span", "_started", "_token")

    def __init__(self, owner: Instrumentation, function: str, namespace: str) -> None:
        self._owner = owner
        self._attributes = {NAMESPACE: namespace, FUNCTION: function or DIRECT}

    def __enter__(self) -> _LoadSpan:
        attributes = self._attributes
        self._span = self._owner.tracer.start_span(
            f"cachelayer.load {attributes[FUNCTION]}",
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        self._token = context.attach(trace.set_span_in_context(self._span))
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        took = time.perf_counter() - self._started
        span = self._span
        attributes: dict[str, str] = dict(self._attributes)
        try:
            if isinstance(exc, Exception):  # not a cancellation or a closed flow
                attributes["error.type"] = type(exc).__qualname__
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            self._owner.durations.record(took, attributes)
        finally:
            context.detach(self._token)
            span.end()


class Instrumentation:
    """What :func:`instrument` installed; :meth:`uninstrument` takes it out."""

    def __init__(self, meter_provider: MeterProvider, tracer_provider: TracerProvider) -> None:
        self.tracer: Tracer = tracer_provider.get_tracer("cachelayer", __version__)
        meter = meter_provider.get_meter("cachelayer", __version__)
        self.active = True
        histogram: dict[str, Any] = {
            "unit": "s",
            "description": "Seconds each load and background refresh took, failed ones included",
        }
        try:  # the same buckets as cachelayer's own histogram (and Prometheus' defaults)
            self.durations: Histogram = meter.create_histogram(
                "cachelayer.load.duration",
                explicit_bucket_boundaries_advisory=list(LOAD_BUCKETS),
                **histogram,
            )
        except TypeError:  # an SDK without bucket advice: its default buckets, or a View's
            self.durations = meter.create_histogram("cachelayer.load.duration", **histogram)
        for field, name, unit, doc in FUNCTION_COUNTERS:
            meter.create_observable_counter(
                name, [self._per_function(field)], unit=unit, description=doc
            )
        meter.create_observable_counter(
            "cachelayer.io", [self._io], unit="By", description="Bytes of entries read/written"
        )
        for field, name, unit, doc in STORE_COUNTERS:
            meter.create_observable_counter(
                name, [self._per_namespace(field)], unit=unit, description=doc
            )
        meter.create_observable_counter(
            "cachelayer.store.errors",
            [self._errors],
            unit="{error}",
            description="Failed store calls by exception class (invalidations included)",
        )
        meter.create_observable_gauge(
            "cachelayer.breaker.open",
            [self._breaker],
            unit="1",
            description="1 while the circuit breaker is open (store calls skipped), else 0",
        )
        meter.create_observable_up_down_counter(
            "cachelayer.local.entries",
            [self._local("entries")],
            unit="{entry}",
            description="Entries held by the local tier",
        )
        meter.create_observable_up_down_counter(
            "cachelayer.local.size",
            [self._local("bytes")],
            unit="By",
            description="Bytes held by the local tier",
        )
        meter.create_observable_counter(
            "cachelayer.local.evictions",
            [self._local("evictions")],
            unit="{entry}",
            description="Entries the local tier dropped to stay within its bounds",
        )
        meter.create_observable_counter(
            "cachelayer.local.purges",
            [self._local("purges")],
            unit="{purge}",
            description="Invalidations received from other processes and applied here",
        )

    def load_span(self, function: str, namespace: str) -> _LoadSpan:
        """The read path's hook (``_hooks.load_span``)."""
        return _LoadSpan(self, function, namespace)

    def uninstrument(self) -> None:
        """Stop the spans and the observations (the instruments stay registered with the
        provider, reporting nothing)."""
        self.active = False
        if _hooks.load_span == self.load_span:
            _hooks.load_span = None

    # -- callbacks -------------------------------------------------------------------------

    def _figures(self) -> Mapping[str, StatsSnapshot]:
        return collect_stats() if self.active else {}

    def _per_function(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(counters[field], {NAMESPACE: ns, FUNCTION: function})
                for ns, snap in self._figures().items()
                for function, counters in _rows(snap)
            ]

        return observe

    def _io(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for ns, snap in self._figures().items():
            for function, counters in _rows(snap):
                for direction, field in (("read", "bytes_read"), ("write", "bytes_written")):
                    attributes = {
                        NAMESPACE: ns,
                        FUNCTION: function,
                        "cachelayer.io.direction": direction,
                    }
                    out.append(Observation(counters[field], attributes))
        return out

    def _per_namespace(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(getattr(snap, field), {NAMESPACE: ns})
                for ns, snap in self._figures().items()
            ]

        return observe

    def _errors(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {NAMESPACE: ns, "error.type": kind})
            for ns, snap in self._figures().items()
            for kind, n in sorted(snap.errors_by_kind.items())
        ]

    def _breaker(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(1 if snap.breaker == "open" else 0, {NAMESPACE: ns})
            for ns, snap in self._figures().items()
        ]

    def _local(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(getattr(snap.local, field), {NAMESPACE: ns})
                for ns, snap in self._figures().items()
                if snap.local is not None
            ]

        return observe


def instrument(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Report every Cache of the process to OpenTelemetry: observable instruments on
    ``meter_provider``, a span per load on ``tracer_provider`` (the global providers
    unless given). Call it once at start-up; a second call replaces the first (whose
    instruments then report nothing).

    Returns:
        The :class:`Instrumentation`; ``uninstrument()`` turns it off.
    """
    global _current
    if _current is not None:
        _current.uninstrument()
    installed = Instrumentation(
        meter_provider or metrics.get_meter_provider(),
        tracer_provider or trace.get_tracer_provider(),
    )
    _hooks.load_span = installed.load_span
    _current = installed
    return installed


_current: Instrumentation | None = None
