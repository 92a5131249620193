"""Fault tests: a Redis that dies, hangs or answers with errors must not fail the API.

Every server here is this test's own (started on a free port, stopped by its pid); the
hanging server is a loopback socket that accepts connections and never replies.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cachelayer import Cache, CircuitBreaker, StoreUnavailable
from cachelayer.backends import MemoryStore
from cachelayer.backends.redis import RedisStore
from cachelayer.testing import RedisServer
from tests.conftest import FakeClock


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A loopback port that accepts TCP connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections complete in the backlog; nobody ever reads them
    yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    sock.close()


def counting_function(cache: Cache) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @cache.cached(ttl=300, key="user:{user_id}")
    def get_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id, "load": len(calls)}

    return get_user, calls


def test_redis_stopped_mid_test_then_back(private_redis: RedisServer) -> None:
    """With Redis stopped, calls answer from the loader; after restart caching resumes."""
    clock = FakeClock()
    cache = Cache(
        RedisStore(private_redis.url, socket_timeout=1.0, connect_timeout=1.0),
        namespace="fault",
        breaker=CircuitBreaker(threshold=3, cooldown=5.0, clock=clock),
    )
    get_user, calls = counting_function(cache)
    assert get_user(1)["id"] == 1
    assert get_user(1)["load"] == 1  # a hit

    private_redis.stop()  # our own server, by its pid
    for _ in range(10):
        assert get_user(1)["id"] == 1  # never raises
    assert len(calls) == 11
    assert cache.get("anything", "fallback") == "fallback"
    cache.set("k", 1)  # not raised
    assert cache.delete("k") is False
    snap = cache.stats.snapshot()
    assert snap["store_errors"] >= 3
    assert snap["breaker_opened"] == 1
    assert snap["short_circuits"] > 0
    assert snap["invalidation_errors"] == 1

    private_redis.start()  # same port
    clock.advance(5.1)  # cooldown over: the next call probes
    loads_before = len(calls)
    results = [get_user(2) for _ in range(5)]
    assert len(calls) - loads_before <= 2  # at most a stale pooled connection's failure
    assert results[-1] == results[-2]  # hits again
    assert cache.engine.runner.breaker.state == "closed"
    cache.close()


def test_hanging_server_costs_one_timeout_then_breaker(blackhole: str) -> None:
    """A server that never answers: loader values are returned; the breaker stops calls."""
    clock = FakeClock()
    cache = Cache(
        RedisStore(blackhole, socket_timeout=0.05, connect_timeout=0.05),
        namespace="hang",
        breaker=CircuitBreaker(threshold=2, cooldown=30.0, clock=clock),
    )
    get_user, calls = counting_function(cache)
    for i in range(20):
        assert get_user(i)["id"] == i
    assert len(calls) == 20
    snap = cache.stats.snapshot()
    assert snap["store_errors"] == 2  # two timeouts opened the breaker ...
    assert snap["short_circuits"] == 18  # ... and the rest never touched the socket
    cache.close()


async def test_hanging_server_async(blackhole: str) -> None:
    """The async path degrades the same way: loader values, no exception, breaker opens."""
    clock = FakeClock()
    cache = Cache(
        RedisStore(blackhole, socket_timeout=0.05, connect_timeout=0.05),
        namespace="hang",
        breaker=CircuitBreaker(threshold=2, cooldown=30.0, clock=clock),
    )
    calls: list[int] = []

    @cache.cached(key="user:{user_id}")
    async def get_user(user_id: int) -> int:
        calls.append(user_id)
        return user_id

    for i in range(5):
        assert await get_user(i) == i
    assert await cache.aget("k", "dflt") == "dflt"
    assert cache.stats.store_errors == 2
    assert cache.stats.short_circuits >= 3
    await cache.aclose()


def test_server_answering_errors(private_redis: RedisServer) -> None:
    """A server that rejects every command (NOPERM) is survived like a dead one."""
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SETUSER", "nobody", "on", ">pw", "~*", "-@all", "+ping")
    url = f"redis://nobody:pw@127.0.0.1:{private_redis.port}/0"
    cache = Cache(url, namespace="err", breaker=CircuitBreaker(threshold=0))
    get_user, calls = counting_function(cache)
    for _ in range(3):
        assert get_user(1)["id"] == 1
    assert len(calls) == 3
    assert cache.stats.store_errors >= 3
    # Grant the commands; caching works again with no restart of anything.
    admin.execute_command("ACL", "SETUSER", "nobody", "+@all")
    get_user(1)
    loads = len(calls)
    get_user(1)
    assert len(calls) == loads
    admin.close()
    cache.close()


def test_on_error_raise_for_plain_calls_only(private_redis: RedisServer) -> None:
    """on_error='raise' makes get/set/delete raise StoreUnavailable; loads still answer."""
    cache = Cache(private_redis.url, namespace="r", on_error="raise", breaker=CircuitBreaker(0))
    get_user, _ = counting_function(cache)
    private_redis.stop()
    with pytest.raises(StoreUnavailable) as info:
        cache.get("k")
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(StoreUnavailable):
        cache.set("k", 1)
    with pytest.raises(StoreUnavailable):
        cache.delete("k")
    assert get_user(3)["id"] == 3
    assert cache.get_or_load("k", lambda: "loaded") == "loaded"
    cache.close()


def test_failed_invalidation_is_a_warning_without_user_data(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed delete is counted apart and logged at WARNING, without the key in it."""
    cache = Cache(private_redis.url, namespace="inv", breaker=CircuitBreaker(0))
    private_redis.stop()
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        assert cache.delete("user:secret-email@example.com") is False
    assert cache.stats.invalidation_errors == 1
    records = [r for r in caplog.records if "INVALIDATION FAILED" in r.getMessage()]
    assert records
    assert records[0].levelno == logging.WARNING
    assert all("secret-email" not in r.getMessage() for r in caplog.records)
    cache.close()


def test_store_error_logs_are_rate_limited(
    blackhole: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A storm of failures logs one warning per interval, not one per call."""
    cache = Cache(
        RedisStore(blackhole, socket_timeout=0.02, connect_timeout=0.02),
        namespace="rl",
        breaker=CircuitBreaker(threshold=0),
    )
    with caplog.at_level(logging.WARNING, logger="cachelayer"):
        for _ in range(5):
            cache.get("k")
    store_logs = [r for r in caplog.records if "store get failed" in r.getMessage()]
    assert len(store_logs) == 1
    assert cache.stats.store_errors == 5
    cache.close()


class BuggyStore(MemoryStore):
    """A store whose get has a bug of our own (a wrong call), not a store failure."""

    def get(self, key: str) -> bytes | None:
        raise TypeError("get() missing 1 required positional argument: 'command_name'")


def test_a_bug_in_our_code_raises_instead_of_failing_open() -> None:
    """A TypeError from our own code is not a store failure: it reaches the caller, is
    not counted as a store error and never opens the breaker (failing open would hide it
    and silently switch the cache off)."""
    cache = Cache(BuggyStore(), breaker=CircuitBreaker(threshold=2))
    for _ in range(5):
        with pytest.raises(TypeError, match="command_name"):
            cache.get("k")
    assert cache.stats.store_errors == 0
    assert cache.engine.runner.breaker.state == "closed"


async def test_a_bug_in_our_code_raises_on_the_async_face_too() -> None:
    """The same through the async face."""
    cache = Cache(BuggyStore(), breaker=CircuitBreaker(threshold=2))
    for _ in range(3):
        with pytest.raises(TypeError):
            await cache.aget("k")
    assert cache.engine.runner.breaker.state == "closed"
    await cache.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_lone_surrogate_key_is_refused_and_never_trips_the_breaker(
    kind: str, redis_url: str
) -> None:
    """A key with no UTF-8 form is bad input: a ValueError naming it, on every store,
    before any store call; many of them leave the breaker closed and the cache on."""
    store = MemoryStore() if kind == "memory" else RedisStore(redis_url, socket_timeout=2.0)
    cache = Cache(store, namespace="surrogate", breaker=CircuitBreaker(threshold=2))
    for _ in range(5):
        with pytest.raises(ValueError, match="lone surrogate"):
            cache.get("user:\ud800")
        with pytest.raises(ValueError, match="lone surrogate"):
            cache.invalidate_tags("tag:\udfff")
    assert cache.stats.store_errors == 0
    assert cache.engine.runner.breaker.state == "closed"
    cache.set("ok", 1)
    assert cache.get("ok") == 1
    cache.clear()
    cache.close()


def test_store_failures_are_still_failed_open(private_redis: RedisServer) -> None:
    """The narrowed catch still covers what a failing Redis raises (redis-py's
    ConnectionError is not an OSError): reads miss and nothing raises."""
    cache = Cache(RedisStore(private_redis.url, socket_timeout=0.5), namespace="narrow")
    private_redis.stop()
    assert cache.get("k", "fallback") == "fallback"
    assert cache.stats.store_errors == 1
    cache.close()


async def test_open_breaker_still_yields_to_the_event_loop(private_redis: RedisServer) -> None:
    """With the breaker open, ``aget`` answers at once but still suspends: a task that
    loops over cache reads does not starve the other tasks of its loop."""
    cache = Cache(
        RedisStore(private_redis.url, socket_timeout=0.5),
        namespace="yields",
        breaker=CircuitBreaker(threshold=1, cooldown=60.0),
    )
    private_redis.stop()
    assert await cache.aget("k", "fallback") == "fallback"  # fails: the breaker opens
    assert cache.engine.runner.breaker.state == "open"
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    for _ in range(200):
        assert await cache.aget("k", "fallback") == "fallback"
    task.cancel()
    assert ticks >= 100
    assert cache.stats.short_circuits == 200
    await cache.aclose()
