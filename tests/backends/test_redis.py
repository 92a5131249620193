"""What only the Redis store does: URLs, least-privilege ACL users, unix sockets."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import warnings

import pytest
import redis

from cachelayer import Cache, CircuitBreaker
from cachelayer.backends.redis import RedisStore
from cachelayer.errors import StoreBusy
from cachelayer.testing import RedisServer


def _exercise(cache: Cache) -> None:
    """Every store operation the Cache performs, checked."""
    cache.set("a", {"x": 1})
    assert cache.get("a") == {"x": 1}
    cache.set_many({"b": 2, "c": 3})
    assert cache.get_many(["a", "b", "c"]) == {"a": {"x": 1}, "b": 2, "c": 3}
    assert cache.get_or_load("d", lambda: 4) == 4
    assert cache.get_or_load("d", lambda: 5) == 4
    assert cache.delete("a") is True
    assert cache.delete_many(["b", "c"]) == 2
    assert cache.clear() >= 1
    assert cache.stats.store_errors == 0
    assert cache.stats.invalidation_errors == 0


def test_least_privilege_acl_user(least_privilege_url: str) -> None:
    """A user limited to its namespace's keys and the commands listed in the docs works."""
    url = least_privilege_url
    cache = Cache(url, namespace="shop", breaker=CircuitBreaker(threshold=0))
    _exercise(cache)
    # The same user cannot touch another namespace: the ACL is what contains it.
    other = Cache(url, namespace="bank", breaker=CircuitBreaker(threshold=0))
    other.set("k", 1)
    assert other.stats.store_errors == 1
    cache.close()
    other.close()


def test_unix_socket(tmp_path: object) -> None:
    """unix:// URLs reach a server on a socket file."""
    sock = f"{tmp_path}/redis.sock"
    with RedisServer(args=("--unixsocket", sock, "--unixsocketperm", "700")):
        cache = Cache(f"unix://{sock}", namespace="sock")
        _exercise(cache)
        cache.close()


def test_valkey_scheme_is_redis(redis_url: str) -> None:
    """valkey:// is the same store as redis:// (configuration, not another backend)."""
    store = RedisStore(redis_url.replace("redis://", "valkey://"))
    assert store.url.startswith("redis://")
    cache = Cache(store, namespace="vk")
    cache.set("k", 1)
    assert cache.get("k") == 1
    cache.clear()
    cache.close()


def test_url_query_overrides_timeouts(redis_url: str) -> None:
    """socket_timeout in the URL wins over the default, and defaults are short."""
    default = RedisStore(redis_url)
    tuned = RedisStore(redis_url + "?socket_timeout=1.5")
    assert default._pool.connection_kwargs["socket_timeout"] == 0.25
    assert tuned._pool.connection_kwargs["socket_timeout"] == 1.5
    retry = default._pool.connection_kwargs["retry"]
    assert getattr(retry, "get_retries", lambda: retry._retries)() == 0  # redis-py 5.0: none
    default.close()
    tuned.close()


def test_existing_client_is_used_and_not_closed(redis_url: str) -> None:
    """A caller's own client can back the store and stays open after Cache.close()."""
    client = redis.Redis.from_url(redis_url)
    cache = Cache(RedisStore(client=client), namespace="own")
    cache.set("k", 1)
    assert cache.get("k") == 1
    cache.clear()
    cache.close()
    assert client.ping() is True
    client.close()


def test_forked_child_does_not_share_get_connections(redis_url: str) -> None:
    """After fork, the child opens its own GET connections; the parent's keep working."""
    import os
    import warnings

    store = RedisStore(redis_url, socket_timeout=2.0)
    store.set("forkk", b"parent", 60.0)
    assert store.get("forkk") == b"parent"  # a connection now waits in the idle list
    parent_conn = store.get_connections._idle[-1]
    with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if it used a connection of its own
        code = 1
        try:
            ok = (
                store.get("forkk") == b"parent"
                and store.get_connections._idle[-1] is not parent_conn
            )
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("forkk") == b"parent"
    assert store.get_connections._idle[-1] is parent_conn
    store.delete(["forkk"])
    store.close()
    assert len(store.get_connections._idle) == 0


def test_a_failed_get_disconnects_its_connection(private_redis: RedisServer) -> None:
    """A GET that fails leaves its connection disconnected (no half-read reply is ever
    reused); the next GET on it reconnects."""
    store = RedisStore(private_redis.url, socket_timeout=2.0)
    assert store.get("k") is None
    (conn,) = store.get_connections._idle
    assert conn._sock is not None
    private_redis.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        store.get("k")
    assert list(store.get_connections._idle) == [conn]
    assert conn._sock is None
    private_redis.start()
    assert store.get("k") is None  # the same connection, reconnected
    assert conn._sock is not None
    store.close()


def test_threads_beyond_max_connections_wait_for_one(redis_url: str) -> None:
    """More threads than connections: the extra ones wait for a free connection instead
    of failing, and no more than max_connections GET connections are ever made."""
    store = RedisStore(redis_url, socket_timeout=2.0, max_connections=2, pool_timeout=10.0)
    store.set("waitk", b"v", 60.0)
    barrier = threading.Barrier(16)
    results: list[bytes | None] = []

    def reader() -> None:
        barrier.wait()
        results.extend(store.get("waitk") for _ in range(50))

    threads = [threading.Thread(target=reader) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [b"v"] * 800
    assert store.get_connections._made <= 2
    store.delete(["waitk"])
    store.close()


def test_no_free_connection_in_time_is_store_busy(redis_url: str) -> None:
    """When every connection stays busy past pool_timeout the call raises StoreBusy, and
    a Cache counts it as store_busy: a miss, not a store failure, the breaker closed."""
    store = RedisStore(redis_url, socket_timeout=2.0, max_connections=1, pool_timeout=0.01)
    held = store.get_connections.take()  # the only connection, held by "another thread"
    with pytest.raises(StoreBusy):
        store.get("k")
    cache = Cache(store, namespace="busy", breaker=CircuitBreaker(threshold=1))
    assert cache.get("k", "fallback") == "fallback"
    assert cache.stats.store_busy == 1
    assert cache.stats.store_errors == 0
    assert cache.engine.runner.breaker.state == "closed"
    store.get_connections.give(held)
    cache.close()


def _connections_named(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name") == name)


def _wait_connections(client: redis.Redis, name: str, count: int) -> int:
    """Poll CLIENT LIST until ``count`` connections carry ``name`` (5 s at most)."""
    deadline = time.monotonic() + 5
    while (seen := _connections_named(client, name)) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return seen


def test_async_face_keeps_one_client_per_loop(redis_url: str, redis_client: redis.Redis) -> None:
    """Threads that each run their own event loop get one client each, closed with it."""
    name = "perloop" + uuid.uuid4().hex[:8]
    store = RedisStore(redis_url, socket_timeout=2.0, client_name=name)
    astore = store.asynchronous()
    barrier = threading.Barrier(2)
    seen: list[int] = []
    errors: list[BaseException] = []

    async def work(n: int) -> None:
        barrier.wait()  # both loops now run at once, their calls interleaved
        for i in range(300):
            assert await astore.get(f"{name}:{n}:{i % 7}") is None
        barrier.wait()  # both loops are alive here: one connection each
        if n == 0:
            seen.append(_connections_named(redis_client, name))
        barrier.wait()

    def thread(n: int) -> None:
        try:
            asyncio.run(work(n))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert astore.clients.built == 2  # type: ignore[attr-defined]
    assert seen == [2]
    assert _wait_connections(redis_client, name, 0) == 0  # asyncio.run closed both
    store.close()


def test_async_client_of_an_abandoned_loop_is_released(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A loop closed without shutting down its async generators has its connections
    shut down (without the loop) once another loop uses the store."""
    name = "perloop" + uuid.uuid4().hex[:8]
    store = RedisStore(redis_url, socket_timeout=2.0, client_name=name)
    astore = store.asynchronous()
    loop = asyncio.new_event_loop()
    assert loop.run_until_complete(astore.get(name)) is None
    loop.close()
    assert _connections_named(redis_client, name) == 1
    with warnings.catch_warnings():  # the old transports are collected without their loop
        warnings.simplefilter("ignore", ResourceWarning)
        asyncio.run(astore.get(name))  # builds a client for this loop, releases the old one
        assert _wait_connections(redis_client, name, 0) == 0
        del loop
        gc.collect()
    store.close()


def test_a_closed_store_gives_back_its_get_connection_places(redis_url: str) -> None:
    """close() frees the places of the connections it closes: a store used again after
    close() is not left waiting for connections that no longer exist."""
    store = RedisStore(redis_url, socket_timeout=2.0, max_connections=1, pool_timeout=0.2)
    for _ in range(3):
        assert store.get("reused") is None
        store.close()
    cache = Cache(store, namespace="reuse")
    assert cache.get("k", "fallback") == "fallback"
    assert cache.stats.store_busy == 0
    cache.close()


async def test_async_face_honours_the_keyword_options(redis_url: str) -> None:
    """redis-py keyword options the sync face takes reach the async face too (db,
    keepalive, ...), instead of failing every async call."""
    url = redis_url.rsplit("/", 1)[0]  # no database in the URL: the keyword decides
    store = RedisStore(url, socket_timeout=2.0, db=2, socket_keepalive=True)
    store.set("kwopt", b"in db 2", 60.0)
    assert await store.asynchronous().get("kwopt") == b"in db 2"
    other = RedisStore(url, socket_timeout=2.0, db=3)
    assert await other.asynchronous().get("kwopt") is None
    store.delete(["kwopt"])
    for s in (store, other):
        await s.asynchronous().close()
        s.close()
