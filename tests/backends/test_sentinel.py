"""The Redis Sentinel store on real local instances: a primary, its replica, 3 sentinels.

Started once for this module (``_topology.start_sentinel_group``) from the redis-server
binary the suite finds (``find_server_binary``; a sentinel is that binary with
``--sentinel`` and a config file), each in a temp dir on a free port, and stopped by their
pids at the end. The failover test, last in the file, kills the primary: the tests after
it (if any ran in the same process) find the promoted replica through the sentinels.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.sentinel import Sentinel

from cachelayer import Cache
from cachelayer.backends import Store, store_from_url
from cachelayer.backends.sentinel import SentinelStore
from cachelayer.errors import ConfigurationError
from cachelayer.testing_contract import PublisherContract, StoreContract

from ._cache_e2e import CacheEndToEnd
from ._topology import HOST, SERVICE, SentinelGroup, wait_for


def _store(url: str) -> SentinelStore:
    # Generous timeouts: these tests pin behaviour, not latency, on a busy machine.
    return SentinelStore(url, socket_timeout=2.0, connect_timeout=2.0)


class TestSentinelStore(StoreContract, PublisherContract):
    """The contract suite on the primary the sentinels name, sync and async faces."""

    @pytest.fixture
    def store(self, group: SentinelGroup) -> Iterator[Store]:
        store = _store(group.url)
        yield store
        store.close()


class TestCacheOnSentinel(CacheEndToEnd):
    """A Cache end to end through the sentinels."""

    @pytest.fixture
    def make_store(self, group: SentinelGroup) -> Callable[[], Store]:
        return lambda: _store(group.url)


def test_urls_build_sentinel_stores(group: SentinelGroup) -> None:
    """redis+sentinel:// URLs build a SentinelStore (via a Cache too); bad ones are refused."""
    store = store_from_url(group.url)
    assert isinstance(store, SentinelStore)
    store.close()
    cache = Cache(group.url + "?socket_timeout=2", namespace="urls")
    cache.set("k", 1, ttl=5)
    assert cache.get("k") == 1
    cache.clear()
    cache.close()
    hosts = group.url.removeprefix("redis+sentinel://").split("/")[0]
    for bad in (
        f"redis+sentinel://{hosts}",  # no service
        f"redis+sentinel://{hosts}/{SERVICE}/x",
        f"redis+sentinel://{hosts}/{SERVICE}?nope=1",
    ):
        with pytest.raises(ConfigurationError):
            store_from_url(bad)


async def test_ready_clients(group: SentinelGroup) -> None:
    """A ready Sentinel master client (and a builder for the asyncio one)."""
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    addresses = [(HOST, s.port) for s in group.sentinels]
    sentinel = Sentinel(addresses, socket_timeout=2)
    client = sentinel.master_for(SERVICE, socket_timeout=2)

    def async_client() -> redis.asyncio.Redis:
        return AsyncSentinel(addresses, socket_timeout=2).master_for(SERVICE, socket_timeout=2)

    cache = Cache(SentinelStore(client=client, async_client=async_client), namespace="ready")
    try:
        cache.set("k", 1, ttl=5)
        assert await cache.aget("k") == 1
        await cache.adelete("k")
        assert cache.get("k") is None
    finally:
        await cache.aclose()
        client.close()
        for watcher in sentinel.sentinels:
            watcher.close()


def test_failover_under_load(group: SentinelGroup) -> None:
    """The primary's process is killed while threads call a cached function: no call
    raises, and hits resume on the promoted replica (figures printed; pytest -s)."""
    old = group.master_address()
    assert old == (HOST, group.primary.port)
    cache = Cache(SentinelStore(group.url), namespace="failover")  # default timeouts
    loads = [0]
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = [0]

    @cache.cached(ttl=60, key="item:{i}")
    def item(i: int) -> int:
        loads[0] += 1
        time.sleep(0.001)  # a quick query
        return i * 2

    def worker(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                assert item(i % 50) == (i % 50) * 2
            except BaseException as exc:  # the figure: calls that raised
                errors.append(exc)
            calls[0] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for("warm hits", lambda: cache.stats.hits > 500)
        killed = time.monotonic()
        os.kill(group.primary.pid, signal.SIGKILL)
        group.primary.stop()  # reaps the process
        time.sleep(0.2)  # calls in flight at the kill finish
        hits_after_kill = cache.stats.hits
        promoted_at = resumed_at = None
        deadline = killed + 30
        while time.monotonic() < deadline and resumed_at is None:
            now = time.monotonic()
            if promoted_at is None:
                with contextlib.suppress(redis.RedisError):
                    if group.master_address() == (HOST, group.replica.port):
                        promoted_at = now
            if cache.stats.hits > hits_after_kill + 100:
                resumed_at = now
            time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    stats = cache.stats
    print(
        f"\nfailover under load (4 threads, default timeouts and breaker): "
        f"calls={calls[0]} raised={len(errors)} loads={loads[0]} "
        f"store_errors={stats.store_errors} short_circuits={stats.short_circuits} "
        f"promoted_after={(promoted_at or float('nan')) - killed:.2f}s "
        f"hits_resumed_after={(resumed_at or float('nan')) - killed:.2f}s"
    )
    cache.clear()
    cache.close()
    assert errors == []
    assert promoted_at is not None, "the sentinels did not promote the replica in 30 s"
    assert resumed_at is not None, "no hits on the promoted replica within 30 s"
