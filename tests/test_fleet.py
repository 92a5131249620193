"""The fleet publisher: each process's snapshot and the index, written through the
Cache's store, bounded, failing open (src/cachelayer/_fleet.py)."""

from __future__ import annotations

import gc
import os
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
import redis

from cachelayer import Cache, StatsSnapshot
from cachelayer import _fleet as fleet
from cachelayer.backends import MemoryStore
from cachelayer.backends.redis import RedisStore
from cachelayer.errors import ConfigurationError
from cachelayer.testing import RedisServer

from .conftest import make_cache

MEMBER = f"{socket.gethostname()}:{os.getpid()}"


def drop_fleet_keys(client: redis.Redis, namespace: str) -> None:
    """Delete the namespace's fleet keys (``cache.clear()`` leaves them: not values)."""
    keys = list(client.scan_iter(match=fleet.index_key(namespace) + "*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def fleet_keys(redis_client: redis.Redis, namespace: str) -> Iterator[None]:
    yield
    drop_fleet_keys(redis_client, namespace)


def test_compact_rates_come_from_the_previous_snapshot() -> None:
    """Rates are the counters' change over the time since the previous snapshot; a
    counter that went down (a reset) counts from zero."""
    first = StatsSnapshot(hits=10, misses=5, loads=5, namespace="ns")
    one = fleet.compact(first, host="h", pid=1, started=100.0, interval=10.0, now=110.0)
    assert one["rates"]["hits"] == pytest.approx(1.0)  # 10 hits over 10 s since start
    assert one["totals"]["misses"] == 5
    assert (one["host"], one["pid"], one["format"]) == ("h", 1, fleet.FORMAT)
    second = StatsSnapshot(hits=30, misses=5, loads=2, namespace="ns")
    two = fleet.compact(
        second, host="h", pid=1, started=100.0, interval=10.0, now=115.0, previous=one
    )
    assert two["rates"]["hits"] == pytest.approx(4.0)  # 20 more in 5 s
    assert two["rates"]["misses"] == 0.0
    assert two["rates"]["loads"] == pytest.approx(0.4)  # reset: 2 counted from zero
    assert two["elapsed"] == pytest.approx(5.0)


def test_compact_lists_the_busiest_functions_and_sums_the_rest() -> None:
    """At most max_functions by name (most reads first); the rest sum into (other), so
    the functions still add up."""
    functions = {f"m.f{i}": StatsSnapshot(hits=i, misses=1, loads=1) for i in range(6)}
    snap = StatsSnapshot(hits=15, misses=6, loads=6, functions=functions)
    doc = fleet.compact(
        snap, host="h", pid=1, started=0.0, interval=10.0, now=10.0, max_functions=3
    )
    assert list(doc["functions"]) == ["m.f5", "m.f4", "m.f3", fleet.OTHER]
    assert doc["functions"][fleet.OTHER]["hits"] == 0 + 1 + 2
    assert doc["functions_omitted"] == 3
    assert sum(fn["hits"] for fn in doc["functions"].values()) == snap.hits
    assert doc["functions"]["m.f5"]["rates"]["hits"] == pytest.approx(0.5)


def test_publishes_snapshot_and_index_to_redis(
    redis_url: str, namespace: str, redis_client: redis.Redis, fleet_keys: None
) -> None:
    """publish_stats: the snapshot at {ns:}fleet:<host>:<pid> expiring after three
    intervals, and this process in the index."""
    cache = make_cache("redis", redis_url, namespace, publish_stats=60)
    try:

        @cache.cached(ttl=60)
        def double(n: int) -> int:
            return 2 * n

        for n in (1, 1, 2):
            double(n)
        publisher = fleet._publishers[namespace][0]
        assert publisher.publish_once()
        doc = orjson.loads(redis_client.get(fleet.snapshot_key(namespace, MEMBER)))
        name = f"{__name__}.{double.__qualname__}"
        assert doc["functions"][name]["hits"] == 1
        assert doc["functions"][name]["misses"] == 2
        assert doc["totals"]["hits"] == cache.stats().hits
        assert doc["namespace"] == namespace
        assert 170_000 < redis_client.pttl(fleet.snapshot_key(namespace, MEMBER)) <= 180_000
        index = orjson.loads(redis_client.get(fleet.index_key(namespace)))
        assert MEMBER in index
    finally:
        cache.clear()
        cache.close()
    # Closing the last Cache of the namespace stops the publisher and removes the snapshot.
    assert namespace not in fleet._publishers
    assert redis_client.get(fleet.snapshot_key(namespace, MEMBER)) is None


def test_index_drops_expired_members(
    redis_url: str, namespace: str, redis_client: redis.Redis, fleet_keys: None
) -> None:
    """A member whose entry expired (a process that died) leaves the index at the next
    update; live members stay."""
    now = 1_700_000_000.0
    index = fleet.index_key(namespace)
    redis_client.set(index, orjson.dumps({"gone:1": int(now * 1000) - 1, "alive:2": 2**53}))
    store = RedisStore(redis_url)
    cache = Cache(store, namespace=namespace)
    try:
        publisher = fleet.FleetPublisher(
            namespace, 10.0, cache.engine.call, host="h", pid=3, clock=lambda: now
        )
        assert publisher.publish_once()
        members = orjson.loads(redis_client.get(index))
        assert set(members) == {"alive:2", "h:3"}
        assert members["h:3"] == int(now * 1000) + int(10.0 * fleet.INDEX_ROUNDS * 1000)
    finally:
        cache.close()


def test_two_caches_of_a_namespace_share_one_publisher(
    redis_url: str, namespace: str, fleet_keys: None
) -> None:
    """One publisher per namespace per process: it reports both Caches summed and stops
    with the last of them."""
    first = make_cache("redis", redis_url, namespace, publish_stats=60)
    second = make_cache("redis", redis_url, namespace, publish_stats=30)
    try:
        first.set("k", 1)
        second.get("k")
        publisher, callers = fleet._publishers[namespace]
        assert len(callers) == 2
        assert publisher.interval == 60  # the first Cache's
        first.close()
        assert fleet._publishers[namespace][0] is publisher
        assert publisher.publish_once()  # through the second Cache's store now
    finally:
        first.close()
        second.clear()
        second.close()
    assert namespace not in fleet._publishers


def test_a_cache_dropped_without_close_leaves_the_publisher(namespace: str) -> None:
    """A Cache that is garbage-collected without close() is taken out of the fleet."""
    cache = Cache(MemoryStore(), namespace=namespace, publish_stats=60)
    assert namespace in fleet._publishers
    del cache
    # (A publishing round under way holds the process's Caches for a moment: collect
    # again until it is over.)
    deadline = time.monotonic() + 5
    while namespace in fleet._publishers and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert namespace not in fleet._publishers


def test_a_dead_store_never_raises_from_the_publisher(namespace: str) -> None:
    """The Redis goes away: rounds are skipped and counted, nothing raises (in the thread
    either: pytest fails a test whose thread raised), and close() returns."""
    with RedisServer() as server:
        store = RedisStore(server.url, socket_timeout=0.2, connect_timeout=0.2)
        cache = Cache(store, namespace=namespace, publish_stats=0.05)
        publisher = fleet._publishers[namespace][0]
        cache.set("k", 1)
        admin = redis.Redis.from_url(server.url)
        admin.delete(*admin.keys("*"))
        admin.close()
    # The server is stopped.
    assert publisher.publish_once() is False
    assert publisher.skipped >= 1
    cache.get("k")
    cache.close()
    assert namespace not in fleet._publishers


@pytest.mark.parametrize("option", [0, -1, float("nan"), "10"])
def test_bad_publish_stats_is_refused(option: object) -> None:
    """publish_stats is True, False or seconds > 0."""
    with pytest.raises(ConfigurationError, match="publish_stats"):
        Cache(publish_stats=option)  # type: ignore[arg-type]


def test_off_by_default() -> None:
    """Without publish_stats no publisher runs."""
    cache = Cache(namespace="t-off-by-default")
    assert "t-off-by-default" not in fleet._publishers
    cache.close()
