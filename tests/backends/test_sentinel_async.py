"""The Sentinel store's asyncio face multiplexes: one connection per event loop to the
primary the sentinels name, followed across a failover, and dropped on READONLY.

A group of its own (primary, replica, 3 sentinels; ``_topology.start_sentinel_group``),
started for this module and stopped by pid: the failover test kills its primary.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import redis

from cachelayer import Cache
from cachelayer.backends._multiplex import Multiplexer
from cachelayer.backends.redis import AsyncRedisStore
from cachelayer.backends.sentinel import SentinelStore

from ._topology import HOST, SentinelGroup


def clients_of(port: int, name: str) -> int:
    """How many connections named ``name`` the server on ``port`` has."""
    admin = redis.Redis(HOST, port)
    try:
        return sum(1 for c in admin.client_list() if c.get("name") == name)
    finally:
        admin.close()


async def test_one_connection_for_many_coroutines(group: SentinelGroup) -> None:
    """200 coroutines share one multiplexed connection to the primary."""
    store = SentinelStore(group.url + "?client_name=mux-test", socket_timeout=2.0)
    face = store.asynchronous()
    assert isinstance(face, AsyncRedisStore)
    cache = Cache(store, namespace="sentinel-mux")
    try:

        async def one(i: int) -> int:
            return int(await cache.aget_or_load(f"k{i % 20}", lambda: i % 20))

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results == [i % 20 for i in range(200)]
        assert clients_of(group.primary.port, "mux-test") == 1
        assert cache.stats().store_errors == 0
    finally:
        await cache.aclear()
        await cache.aclose()
        store.close()


async def test_readonly_drops_the_connection_and_asks_again(group: SentinelGroup) -> None:
    """A connection that hears READONLY (a primary demoted to replica) is dropped: the
    next command asks where the primary is, and goes there."""
    answers = [(HOST, group.replica.port), (HOST, group.primary.port)]
    asked: list[tuple[str, int]] = []

    async def resolve() -> tuple[str, int]:
        address = answers[min(len(asked), len(answers) - 1)]
        asked.append(address)
        return address

    client = Multiplexer(HOST, 1, resolve=resolve, timeout=2.0)
    try:
        with pytest.raises(redis.ReadOnlyError):
            await client.execute("SET", "sentinel-mux:ro", "1")
        assert await client.execute("SET", "sentinel-mux:ro", "1") == b"OK"
        assert asked == answers
        assert client.address == f"{HOST}:{group.primary.port}"
        assert await client.execute("DEL", "sentinel-mux:ro") == 1
    finally:
        await client.close()


async def test_async_failover_under_load(group: SentinelGroup) -> None:
    """The primary is killed while 50 coroutines call a cached function: no call raises,
    and hits resume on the promoted replica through the multiplexed face."""
    cache = Cache(SentinelStore(group.url), namespace="sentinel-mux-failover")
    loads = calls = 0
    errors: list[BaseException] = []

    @cache.cached(ttl=60, key="item:{i}")
    async def item(i: int) -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.001)
        return i * 2

    stop = asyncio.Event()

    async def worker(offset: int) -> None:
        nonlocal calls
        i = offset
        while not stop.is_set():
            try:
                assert await item(i % 50) == (i % 50) * 2
            except BaseException as exc:  # the figure: calls that raised
                errors.append(exc)
            calls += 1
            i += 1
            await asyncio.sleep(0)

    async def until(check: object, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():  # type: ignore[operator]
                return time.monotonic()
            await asyncio.sleep(0.02)
        return None

    workers = [asyncio.create_task(worker(n)) for n in range(50)]
    try:
        assert await until(lambda: cache.stats.hits > 500, 15) is not None
        killed = time.monotonic()
        os.kill(group.primary.pid, signal.SIGKILL)
        await asyncio.to_thread(group.primary.stop)  # reaps the process
        await asyncio.sleep(0.2)
        hits_after_kill = cache.stats.hits
        resumed = await until(lambda: cache.stats.hits > hits_after_kill + 200, 30)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    print(
        f"\nasync failover under load (50 coroutines, multiplexed face): calls={calls} "
        f"raised={len(errors)} loads={loads} store_errors={cache.stats.store_errors} "
        f"hits_resumed_after={(resumed or float('nan')) - killed:.2f}s"
    )
    await cache.aclear()
    await cache.aclose()
    assert errors == []
    assert resumed is not None, "no hits on the promoted replica within 30 s"
    assert group.master_address() == (HOST, group.replica.port)
