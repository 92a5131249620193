"""The OpenTelemetry exporter: observable instruments that say what ``cache.stats()``
says, and a span per load that the loader's own spans nest under
(src/cachelayer/otel.py), read with the SDK's in-memory reader and exporter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cachelayer import Cache, _hooks
from cachelayer.otel import DIRECT, FUNCTION, NAMESPACE, Instrumentation, instrument

from .conftest import FakeClock, make_cache


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("app")
        self.installed: Instrumentation = instrument(self.meter_provider, self.tracer_provider)

    def collect(self) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
        """One collection: ``{instrument: {attributes: data point}}`` (read once: SDKs
        before 1.2x drop a histogram's cumulative points from a second collection)."""
        data = self.reader.get_metrics_data()
        out: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
        if data is None:  # nothing observed
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, {})
                    for point in metric.data.data_points:
                        points[frozenset(point.attributes.items())] = point
        return out

    def loads(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith("cachelayer.")]


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.installed.uninstrument()
    telemetry.meter_provider.shutdown()
    telemetry.tracer_provider.shutdown()
    assert _hooks.load_span is None


@pytest.fixture
def redis_cache(redis_url: str, namespace: str) -> Iterator[Cache]:
    cache = make_cache("redis", redis_url, namespace)
    yield cache
    cache.clear()
    cache.close()


def attrs(namespace: str, function: str) -> frozenset[tuple[str, str]]:
    return frozenset({NAMESPACE: namespace, FUNCTION: function}.items())


def test_counters_match_the_snapshot(otel: Telemetry, redis_cache: Cache, namespace: str) -> None:
    """cachelayer.hits/misses/loads per function and (direct), summing to the totals; the
    load duration histogram counts every load."""
    cache = redis_cache

    @cache.cached(ttl=60)
    def profile(user_id: int) -> int:
        return user_id

    for n in (1, 1, 1, 2):
        profile(n)
    cache.get_or_load("direct", lambda: 1)
    cache.get("direct")
    snap = cache.stats()
    fn = f"{__name__}.{profile.__qualname__}"
    collected = otel.collect()
    for field, name in (("hits", "cachelayer.hits"), ("misses", "cachelayer.misses"),
                        ("loads", "cachelayer.loads"), ("fills", "cachelayer.fills")):  # fmt: skip
        points = collected[name]
        assert points[attrs(namespace, fn)].value == getattr(snap.functions[fn], field), name
        mine = [p.value for a, p in points.items() if (NAMESPACE, namespace) in a]
        assert sum(mine) == getattr(snap, field), name
    assert collected["cachelayer.hits"][attrs(namespace, DIRECT)].value == 1
    durations = collected["cachelayer.load.duration"]
    assert durations[attrs(namespace, fn)].count == 2
    assert durations[attrs(namespace, DIRECT)].count == 1
    written = collected["cachelayer.io"]
    key = frozenset({**dict(attrs(namespace, fn)), "cachelayer.io.direction": "write"}.items())
    assert written[key].value == snap.functions[fn].bytes_written
    breaker = collected["cachelayer.breaker.open"]
    assert breaker[frozenset({NAMESPACE: namespace}.items())].value == 0


def test_a_load_span_holds_the_loaders_spans(
    otel: Telemetry, redis_cache: Cache, namespace: str
) -> None:
    """A miss runs its loader inside ``cachelayer.load <function>``; a hit makes no span."""

    @redis_cache.cached(ttl=60)
    def profile(user_id: int) -> int:
        with otel.tracer.start_as_current_span("db.query"):
            return user_id

    with otel.tracer.start_as_current_span("request") as request:
        profile(1)
        profile(1)
    spans = {s.name: s for s in otel.spans.get_finished_spans()}
    fn = f"{__name__}.{profile.__qualname__}"
    load = spans[f"cachelayer.load {fn}"]
    assert len(otel.loads()) == 1
    assert spans["db.query"].parent is not None
    assert spans["db.query"].parent.span_id == load.context.span_id
    assert load.parent is not None
    assert load.parent.span_id == request.get_span_context().span_id
    assert dict(load.attributes or {}) == {NAMESPACE: namespace, FUNCTION: fn}
    assert load.status.status_code == StatusCode.UNSET


async def test_async_loads_nest_too(otel: Telemetry, redis_url: str, namespace: str) -> None:
    """In asyncio, concurrent loads each get their own span, holding their own child."""
    cache = make_cache("redis", redis_url, namespace)
    try:

        @cache.cached(ttl=60)
        async def profile(user_id: int) -> int:
            with otel.tracer.start_as_current_span(f"db.query {user_id}"):
                await asyncio.sleep(0.01)
                return user_id

        await asyncio.gather(*(profile(n) for n in range(5)))
        spans = otel.spans.get_finished_spans()
        loads = {s.context.span_id: s for s in otel.loads()}
        assert len(loads) == 5
        children = [s for s in spans if s.name.startswith("db.query")]
        assert len(children) == 5
        parents = {c.parent.span_id for c in children if c.parent is not None}
        assert parents == set(loads)
        assert all(s.parent is None for s in loads.values())
    finally:
        await cache.aclear()
        await cache.aclose()


def test_a_failing_loader_marks_its_span(otel: Telemetry, redis_cache: Cache) -> None:
    """The loader's exception is recorded on the span, whose status is ERROR."""

    @redis_cache.cached(ttl=60)
    def broken(n: int) -> int:
        raise LookupError(n)

    with pytest.raises(LookupError):
        broken(1)
    (span,) = otel.loads()
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    durations = otel.collect()["cachelayer.load.duration"]
    assert any(dict(a).get("error.type") == "LookupError" for a in durations)


def test_background_refresh_runs_in_a_span(
    otel: Telemetry, redis_url: str, namespace: str, clock: FakeClock
) -> None:
    """A stale hit's background refresh (a worker thread) loads inside a span too."""
    cache = make_cache("redis", redis_url, namespace, clock=clock, jitter=0)
    try:

        @cache.cached(ttl=10, stale_ttl=60)
        def value(n: int) -> int:
            return n

        value(1)
        clock.advance(11)
        assert value(1) == 1  # stale: served, refreshed in the background
        deadline = time.monotonic() + 10
        while cache.stats().fills < 2:  # the refresh filled: nothing left to land later
            assert time.monotonic() < deadline, "the refresh never filled"
            time.sleep(0.005)
    finally:
        cache.clear()
        cache.close()
    assert cache.stats().refreshes == 1
    fn = f"{__name__}.{value.__qualname__}"
    assert [s.name for s in otel.loads()] == [f"cachelayer.load {fn}"] * 2


def test_uninstrument_turns_it_off(otel: Telemetry, redis_cache: Cache) -> None:
    """After uninstrument() no span is made and the instruments report nothing."""
    otel.installed.uninstrument()
    assert _hooks.load_span is None
    redis_cache.get_or_load("k", lambda: 1)
    assert otel.loads() == []
    assert otel.collect().get("cachelayer.loads", {}) == {}
