"""The Prometheus exporter: a scrape, parsed with prometheus_client's own parser, says what
``cache.stats()`` says (src/cachelayer/prometheus.py)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cachelayer import Cache, CircuitBreaker, StatsSnapshot
from cachelayer.backends.redis import RedisStore
from cachelayer.prometheus import (
    DIRECT,
    FUNCTION_COUNTERS,
    CacheCollector,
    exposition,
    metrics_app,
    register,
    wsgi_metrics_app,
)
from cachelayer.testing import RedisServer

from .conftest import make_cache

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str | None = None) -> Samples:
    """Every sample of a scrape: ``{(name, labels): value}``."""
    if text is None:
        text = exposition()[0].decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def redis_cache(redis_url: str, namespace: str) -> Iterator[Cache]:
    cache = make_cache("redis", redis_url, namespace)
    yield cache
    cache.clear()
    cache.close()


def test_scrape_matches_the_snapshot(redis_cache: Cache, namespace: str) -> None:
    """Per function, (direct) and their sums: every counter as cache.stats() has it; the
    load histogram's cumulative buckets from its per-bucket counts."""
    cache = redis_cache

    @cache.cached(ttl=60)
    def profile(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @cache.cached(ttl=60)
    def slow(n: int) -> int:
        time.sleep(0.03)
        return n

    for n in (1, 1, 2):
        profile(n)
    slow(1)
    slow(1)
    cache.set("direct", 1)
    cache.get("direct")
    cache.get("absent")
    cache.delete("direct")

    snap = cache.stats()
    samples = scrape()
    names = {f"{__name__}.{f.__qualname__}" for f in (profile, slow)}
    assert set(snap.functions) == names
    for field, metric, _ in FUNCTION_COUNTERS:
        name = f"{metric}_total"
        for fn in names:
            assert value(samples, name, namespace=namespace, function=fn) == getattr(
                snap.functions[fn], field
            ), (name, fn)
        assert total(samples, name, namespace=namespace) == getattr(snap, field), name
    assert value(samples, "cachelayer_hits_total", namespace=namespace, function=DIRECT) == 1
    assert value(samples, "cachelayer_sets_total", namespace=namespace, function=DIRECT) == 1

    slow_name = f"{__name__}.{slow.__qualname__}"
    hist = snap.functions[slow_name].load_seconds
    labels = {"namespace": namespace, "function": slow_name}
    assert value(samples, "cachelayer_load_duration_seconds_count", **labels) == 1
    assert value(samples, "cachelayer_load_duration_seconds_sum", **labels) == pytest.approx(
        hist.sum
    )
    for i, bound in enumerate(hist.bounds):
        cumulative = sum(hist.counts[: i + 1])
        assert (
            value(samples, "cachelayer_load_duration_seconds_bucket", le=repr(bound), **labels)
            == cumulative
        )
    assert value(samples, "cachelayer_load_duration_seconds_bucket", le="+Inf", **labels) == 1
    assert (
        total(samples, "cachelayer_load_duration_seconds_count", namespace=namespace)
        == snap.load_seconds.count
        == 3
    )
    assert value(samples, "cachelayer_breaker_open", namespace=namespace) == 0
    assert value(samples, "cachelayer_breaker_state", namespace=namespace, state="closed") == 1


def test_caches_of_a_namespace_are_one_set_of_series(redis_url: str, namespace: str) -> None:
    """Two Cache objects of one namespace (a Django backend per thread, say): summed."""
    first = make_cache("redis", redis_url, namespace)
    second = make_cache("redis", redis_url, namespace)
    try:
        first.set("k", 1)
        first.get("k")
        second.get("k")
        samples = scrape()
        assert value(samples, "cachelayer_hits_total", namespace=namespace, function=DIRECT) == 2
    finally:
        first.clear()
        first.close()
        second.close()
    assert ("cachelayer_hits_total", frozenset({("namespace", namespace), ("function", DIRECT)})) \
        not in scrape()  # fmt: skip


def test_store_errors_by_kind_and_the_breaker(namespace: str) -> None:
    """A dead server: errors by exception class, breaker trips, open state."""
    with RedisServer() as server:
        store = RedisStore(server.url, socket_timeout=0.2, connect_timeout=0.2)
        cache = Cache(store, namespace=namespace, breaker=CircuitBreaker(threshold=2))
    try:
        for n in range(4):
            cache.get(f"k{n}")
        snap = cache.stats()
        samples = scrape()
        kinds = {
            dict(labels)["kind"]: v
            for (name, labels), v in samples.items()
            if name == "cachelayer_store_errors_total" and ("namespace", namespace) in labels
        }
        assert kinds == snap.errors_by_kind
        assert sum(kinds.values()) >= 2
        assert value(samples, "cachelayer_breaker_trips_total", namespace=namespace) == 1
        assert value(samples, "cachelayer_short_circuits_total", namespace=namespace) == (
            snap.short_circuits
        )
        assert value(samples, "cachelayer_breaker_open", namespace=namespace) == 1
        assert value(samples, "cachelayer_breaker_state", namespace=namespace, state="open") == 1
    finally:
        cache.close()


def test_local_tier_and_invalidation_lag(redis_url: str, namespace: str) -> None:
    """A local tier: entries, and the purges received from another Cache with their lag."""
    reader = make_cache("redis", redis_url, namespace, local={"max_entries": 100})
    writer = make_cache("redis", redis_url, namespace, publish_invalidations=True)
    try:
        reader.set("k", 1)
        assert reader.get("k") == 1
        writer.delete("k")
        deadline = time.monotonic() + 10
        while reader.stats().local.purges < 1:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the purge never arrived"
            time.sleep(0.01)
        local = reader.stats().local
        assert local is not None
        samples = scrape()
        assert value(samples, "cachelayer_local_purges_total", namespace=namespace) == (
            local.purges
        )
        assert value(samples, "cachelayer_local_entries", namespace=namespace) == local.entries
        assert value(samples, "cachelayer_invalidation_lag_seconds_count", namespace=namespace) \
            == local.lag.count >= 1  # fmt: skip
    finally:
        reader.clear()
        reader.close()
        writer.close()


def test_direct_is_total_less_functions() -> None:
    """The collector on a given snapshot: (direct) is what the functions leave of the
    total, histogram buckets included."""
    fn = StatsSnapshot(hits=3, misses=1, loads=1)
    total_snap = StatsSnapshot(hits=5, misses=4, loads=2, functions={"m.f": fn}, namespace="n")
    collector = CacheCollector(lambda: {"n": total_snap})
    registry = CollectorRegistry()
    registry.register(collector)
    samples = scrape(_render(registry))
    assert value(samples, "cachelayer_hits_total", namespace="n", function=DIRECT) == 2
    assert value(samples, "cachelayer_misses_total", namespace="n", function=DIRECT) == 3
    count = "cachelayer_load_duration_seconds_count"
    assert value(samples, count, namespace="n", function="m.f") == 0


def _render(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_register_once_per_registry(redis_cache: Cache, namespace: str) -> None:
    """register() adds the collector to a registry; twice is refused by prometheus_client."""
    registry = CollectorRegistry()
    collector = register(registry)
    redis_cache.get("absent")
    assert value(scrape(_render(registry)), "cachelayer_misses_total", namespace=namespace,
                 function=DIRECT) == 1  # fmt: skip
    with pytest.raises(ValueError, match="Duplicated"):
        register(registry)
    registry.unregister(collector)


async def test_asgi_app(redis_url: str, namespace: str) -> None:
    """metrics_app() serves the scrape over ASGI."""
    cache = make_cache("redis", redis_url, namespace)
    try:
        await cache.aget("absent")
        transport = httpx.ASGITransport(app=metrics_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = scrape(response.text)
        assert value(samples, "cachelayer_misses_total", namespace=namespace, function=DIRECT) \
            == 1  # fmt: skip
    finally:
        await cache.aclear()
        await cache.aclose()


def test_wsgi_app(redis_cache: Cache, namespace: str) -> None:
    """wsgi_metrics_app() serves the scrape over WSGI."""
    redis_cache.get("absent")
    status: list[Any] = []
    body = b"".join(
        wsgi_metrics_app()(
            {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/metrics",
                "QUERY_STRING": "",
                "wsgi.input": io.BytesIO(),
                "SERVER_NAME": "test",
                "SERVER_PORT": "80",
                "wsgi.url_scheme": "http",
            },
            lambda s, headers: status.append(s),
        )
    )
    assert status == ["200 OK"]
    samples = scrape(body.decode())
    assert value(samples, "cachelayer_misses_total", namespace=namespace, function=DIRECT) == 1
