"""Metrics: per-function counters summed into the Cache's, snapshots, and the process-wide
sum over Cache objects, threads and event loops (docs/observability.md)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

import cachelayer
from cachelayer import Cache, CircuitBreaker, StatsSnapshot, collect_stats
from cachelayer.backends.redis import RedisStore
from cachelayer.testing import RedisServer

from .conftest import make_cache


def test_functions_count_apart_and_sum_into_the_cache(cache: Cache) -> None:
    calls = {"a": 0, "b": 0}

    @cache.cached(ttl=60)
    def profile(user_id: int) -> dict[str, int]:
        calls["a"] += 1
        return {"id": user_id}

    @cache.cached(ttl=60)
    def orders(user_id: int) -> list[int]:
        calls["b"] += 1
        return [user_id]

    for _ in range(3):
        profile(1)
    orders(1)
    orders(2)
    cache.set("direct", 1)
    cache.get("direct")
    cache.get("absent")

    snap = cache.stats()
    assert isinstance(snap, StatsSnapshot)
    a = snap.functions[f"{__name__}.{profile.__qualname__}"]
    b = snap.functions[f"{__name__}.{orders.__qualname__}"]
    assert (a.hits, a.misses, a.loads, a.fills) == (2, 1, 1, 1)
    assert (b.hits, b.misses, b.loads) == (0, 2, 2)
    # The totals: both functions plus the direct get/set.
    assert snap.hits == 3
    assert snap.misses == 4
    assert snap.loads == 3
    assert snap.sets == 1
    assert cache.stats.hits == 3
    assert cache.stats.loads == 3
    assert snap.hit_ratio == pytest.approx(3 / 7)
    assert snap.namespace == cache.engine.keys.namespace
    assert snap.breaker == "closed"
    assert snap.bytes_written > 0
    assert snap.bytes_read > 0
    # Every load is in the duration histogram.
    assert a.load_seconds.count == 1
    assert b.load_seconds.count == 2
    assert snap.load_seconds.count == 3
    assert snap.as_dict()["functions"][f"{__name__}.{profile.__qualname__}"]["hits"] == 2
    assert cache.stats.snapshot()["hits"] == 3

    cache.stats.reset()
    assert cache.stats().hits == 0
    assert cache.stats().functions[f"{__name__}.{profile.__qualname__}"] == StatsSnapshot()


def test_load_errors_and_invalidations_are_counted(cache: Cache) -> None:
    @cache.cached(ttl=60, tags=["user:{user_id}"])
    def failing(user_id: int) -> int:
        raise LookupError(user_id)

    for _ in range(2):
        with pytest.raises(LookupError):
            failing(7)
    failing.invalidate(7)
    cache.invalidate_tags("user:7")
    cache.delete("x")
    fn = cache.stats().functions[f"{__name__}.{failing.__qualname__}"]
    assert (fn.loads, fn.load_errors, fn.load_seconds.count) == (2, 2, 2)
    assert fn.invalidations == 1
    assert cache.stats().invalidations == 3


def test_threads_and_loops_count_in_one_block(redis_url: str, namespace: str) -> None:
    """One decorated function called from 8 threads and 2 event loops: one set of
    figures, exact."""
    cache = make_cache("redis", redis_url, namespace)

    @cache.cached(ttl=60)
    def square(n: int) -> int:
        return n * n

    @cache.cached(ttl=60)
    async def cube(n: int) -> int:
        return n**3

    def threaded() -> None:
        for i in range(50):
            square(i % 10)

    def loop() -> None:
        async def main() -> None:
            await asyncio.gather(*(cube(i % 10) for i in range(100)))
            await cache.aclose()

        asyncio.run(main())

    workers = [threading.Thread(target=threaded) for _ in range(8)]
    workers += [threading.Thread(target=loop) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    snap = cache.stats()
    sq = snap.functions[f"{__name__}.{square.__qualname__}"]
    cu = snap.functions[f"{__name__}.{cube.__qualname__}"]
    assert sq.hits + sq.misses == 400
    assert cu.hits + cu.misses == 200
    assert snap.hits + snap.misses == 600
    cache.clear()
    cache.close()


def test_collect_sums_the_caches_of_a_namespace(redis_url: str) -> None:
    ns = f"m{uuid.uuid4().hex[:8]}"
    first = make_cache("redis", redis_url, ns)
    second = make_cache("redis", redis_url, ns)
    try:
        first.set("k", 1)
        first.get("k")
        second.get("k")
        second.get("nope")
        total = collect_stats()[ns]
        assert (total.hits, total.misses, total.sets) == (2, 1, 1)
        assert first.stats().hits == 1  # each Cache still has its own figures
    finally:
        first.clear()
        first.close()
        second.close()
    assert ns not in collect_stats()  # closed Caches leave the process's figures


def test_store_errors_by_kind_and_breaker_state(namespace: str) -> None:
    """A dead server: errors counted by kind, breaker trips and state in the snapshot."""
    with RedisServer() as server:
        store = RedisStore(server.url, socket_timeout=0.5, connect_timeout=0.5)
        cache = Cache(store, namespace=namespace, breaker=CircuitBreaker(threshold=2))
        cache.set("k", 1)
        server.stop()
        for _ in range(3):
            assert cache.get_or_load("k", lambda: 2) == 2
        snap = cache.stats()
        cache.close()
    assert snap.store_errors >= 2
    assert sum(snap.errors_by_kind.values()) == snap.store_errors
    assert "ConnectionError" in snap.errors_by_kind
    assert snap.breaker_opened == 1
    assert snap.breaker == "open"
    assert snap.short_circuits >= 1


def _purges_reach(cache: Cache, count: int) -> cachelayer.LocalSnapshot:
    for _ in range(500):
        local = cache.stats().local
        assert local is not None
        if local.purges >= count:
            return local
        threading.Event().wait(0.01)
    raise AssertionError(f"{count} purges never arrived")


def test_local_tier_purges_and_their_lag(redis_url: str, namespace: str) -> None:
    writer = Cache(redis_url, namespace=namespace, local={"max_entries": 100})
    reader = Cache(redis_url, namespace=namespace, local={"max_entries": 100})
    try:
        assert writer.wait_local()
        assert reader.wait_local()
        writer.set("k", 1)
        _purges_reach(reader, 1)
        assert reader.get("k") == 1
        assert reader.get("k") == 1
        assert reader.stats().local_hits == 1
        writer.set("k", 2)
        local = _purges_reach(reader, 2)
        assert local.purges == 2
        assert local.lag.count == 2
        assert local.entries == 0
        assert local.lag.quantile(0.99) is not None
        assert local.enabled
        assert writer.stats().local is not None
        assert writer.stats().local.purges == 0
    finally:
        writer.clear()
        writer.close()
        reader.close()


def test_histogram_snapshot_arithmetic() -> None:
    a = cachelayer.HistogramSnapshot((0.1, 1.0), (1, 2, 0), 1.1)
    b = cachelayer.HistogramSnapshot((0.1, 1.0), (0, 1, 1), 3.0)
    both = a + b
    assert both.counts == (1, 3, 1)
    assert both.count == 5
    assert both.sum == pytest.approx(4.1)
    assert both.quantile(0.5) == 1.0
    assert both.quantile(1.0) == float("inf")
    assert cachelayer.HistogramSnapshot.empty((1.0,)).quantile(0.5) is None
    with pytest.raises(ValueError, match="different buckets"):
        a + cachelayer.HistogramSnapshot((0.5,), (0, 0), 0.0)
    with pytest.raises(AttributeError, match="no counter 'hitz'"):
        _ = Cache("memory://").stats.hitz
