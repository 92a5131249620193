"""cachelayer.Lock: a token-checked lock in the store, on memory and Redis, sync and async.

Races are driven by events and barriers; only expiry on Redis waits for real time (a
blocked acquire that ends when the server drops the key), and the memory store's expiry
is driven by its injected clock.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from cachelayer import Cache, CircuitBreaker, Lock, LockError, StoreUnavailable
from cachelayer._keys import derived_key
from cachelayer._steps import Add, Sleep
from cachelayer.backends import MemoryStore
from cachelayer.backends.redis import RedisStore
from cachelayer.testing import RedisServer, free_port
from tests.conftest import FakeClock

CacheFactory = Callable[..., Cache]


@pytest.fixture
def two_caches(cache_factory: CacheFactory) -> tuple[Cache, Cache]:
    """Two Cache objects on one store: on Redis, two connection pools (two processes)."""
    return cache_factory(), cache_factory()


@pytest.fixture
def dead_cache() -> Iterator[Cache]:
    """A Cache on a Redis URL where nothing listens."""
    url = f"redis://127.0.0.1:{free_port()}/0?socket_timeout=0.5&socket_connect_timeout=0.5"
    cache = Cache(url, breaker=CircuitBreaker(threshold=0))
    yield cache
    cache.close()


# -- the acquire flow, step by step -----------------------------------------------------------


def test_acquire_flow_adds_sleeps_and_retries_until_it_wins(cache: Cache) -> None:
    """The flow yields Add(key, token, timeout), a Sleep of `sleep` after a refusal, then
    Add again, and returns True once the store took the token."""
    lock = cache.lock("flow", timeout=30, sleep=0.25)
    flow = lock._acquire_flow(b"tok", blocking=True, blocking_timeout=None)
    assert next(flow) == Add(lock.key, b"tok", 30)
    assert flow.send(False) == Sleep(0.25)
    assert flow.send(None) == Add(lock.key, b"tok", 30)
    with pytest.raises(StopIteration) as stop:
        flow.send(True)
    assert stop.value.value is True


def test_acquire_flow_stops_at_the_blocking_timeout() -> None:
    """With a blocking_timeout the flow sleeps at most what is left, then gives up."""
    clock = FakeClock(100.0)
    cache = Cache("memory://")
    lock = Lock(cache.engine.runner, "k", sleep=1.0, monotonic=clock)
    flow = lock._acquire_flow(b"tok", blocking=True, blocking_timeout=1.5)
    assert next(flow) == Add("k", b"tok", None)
    assert flow.send(False) == Sleep(1.0)
    clock.advance(1.0)
    assert flow.send(None) == Add("k", b"tok", None)
    assert flow.send(False) == Sleep(0.5)
    clock.advance(0.5)
    assert flow.send(None) == Add("k", b"tok", None)
    with pytest.raises(StopIteration) as stop:
        flow.send(False)
    assert stop.value.value is False
    cache.close()


def test_non_blocking_acquire_flow_tries_once(cache: Cache) -> None:
    """acquire(blocking=False) is one Add: a refusal returns False at once."""
    lock = cache.lock("once")
    flow = lock._acquire_flow(b"tok", blocking=False, blocking_timeout=None)
    assert next(flow) == Add(lock.key, b"tok", None)
    with pytest.raises(StopIteration) as stop:
        flow.send(False)
    assert stop.value.value is False


# -- acquire, release, locked -----------------------------------------------------------------


def test_acquire_release_and_locked(cache: Cache) -> None:
    """A lock is taken once, seen as locked, refused to a second holder, then freed."""
    first, second = cache.lock("job"), cache.lock("job")
    assert first.locked() is False
    assert first.acquire() is True
    assert first.locked() is True
    assert second.acquire(blocking=False) is False
    first.release()
    assert first.locked() is False
    assert second.acquire(blocking=False) is True
    second.release()


def test_lock_key_is_derived_from_the_names_store_key(cache: Cache) -> None:
    """The lock lives at a key derived from the name's store key, not at a caller key:
    a lock named like a cached key (or "lock:" + it) never touches that entry."""
    lock = cache.lock("report:42")
    assert lock.key == derived_key(cache.engine.keys.full("report:42"), "lock")
    cache.set("report:42", "cached")
    cache.set("lock:report:42", "also cached")
    with lock:
        assert cache.store.get(lock.key) is not None
        assert cache.get("report:42") == "cached"
        assert cache.get("lock:report:42") == "also cached"
    assert cache.store.get(lock.key) is None
    assert cache.get("report:42") == "cached"


def test_context_manager_releases_on_error(cache: Cache) -> None:
    """`with lock:` releases the lock when the block raises."""
    lock = cache.lock("job")
    with pytest.raises(KeyError), lock:
        raise KeyError("boom")
    assert lock.locked() is False


def test_release_by_a_non_owner_is_refused(cache: Cache) -> None:
    """A Lock object that does not hold the lock cannot release it; the owner keeps it."""
    owner, other = cache.lock("job"), cache.lock("job")
    assert owner.acquire()
    with pytest.raises(LockError, match="does not hold it"):
        other.release()
    assert other.locked() is True
    owner.release()
    with pytest.raises(LockError, match="does not hold it"):
        owner.release()


def test_a_held_lock_object_is_not_reentrant(cache: Cache) -> None:
    """Acquiring again with the Lock object that holds the lock raises LockError."""
    lock = cache.lock("job")
    assert lock.acquire()
    with pytest.raises(LockError, match="not reentrant"):
        lock.acquire(blocking=False)
    lock.release()


def test_blocking_timeout_gives_up(cache: Cache) -> None:
    """acquire() waits at most blocking_timeout; `with` then raises LockError."""
    owner = cache.lock("job")
    assert owner.acquire()
    waiter = cache.lock("job", blocking_timeout=0.05, sleep=0.01)
    assert waiter.acquire() is False
    assert waiter.acquire(blocking_timeout=0) is False
    with pytest.raises(LockError, match="not obtained"), waiter:
        pytest.fail("the block must not run")
    owner.release()
    assert waiter.acquire() is True
    waiter.release()


def test_invalid_arguments_are_refused(cache: Cache) -> None:
    """Non-positive timeouts, negative blocking timeouts and empty names raise."""
    with pytest.raises(ValueError, match="timeout"):
        cache.lock("x", timeout=0)
    with pytest.raises(ValueError, match="blocking_timeout"):
        cache.lock("x", blocking_timeout=-1)
    with pytest.raises(ValueError, match="sleep"):
        cache.lock("x", sleep=0)
    with pytest.raises(ValueError, match="non-empty"):
        cache.lock("")
    with pytest.raises(TypeError):
        cache.lock(42)  # type: ignore[arg-type]


# -- mutual exclusion -------------------------------------------------------------------------


def test_waiter_gets_the_lock_when_the_owner_releases(cache: Cache) -> None:
    """A blocked acquire() in another thread returns True after the owner's release."""
    owner = cache.lock("job", sleep=0.005)
    assert owner.acquire()
    waiting, got = threading.Event(), threading.Event()

    def wait_for_it() -> None:
        waiter = cache.lock("job", sleep=0.005)
        assert waiter.acquire(blocking=False) is False
        waiting.set()
        assert waiter.acquire(blocking_timeout=10)
        got.set()
        waiter.release()

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    assert waiting.wait(10)
    assert not got.is_set()
    owner.release()
    thread.join(10)
    assert got.is_set()


def test_mutual_exclusion_across_threads(cache: Cache) -> None:
    """Of many threads that start together, never two hold the lock at once, and each gets
    it in turn (a shared read-modify-write under the lock loses no update)."""
    threads_n, rounds = 16, 10
    barrier = threading.Barrier(threads_n)
    inside = 0
    most_inside = 0
    total = 0
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal inside, most_inside, total
        try:
            barrier.wait()
            for _ in range(rounds):
                with cache.lock("counter", timeout=30, sleep=0.001):
                    inside += 1
                    most_inside = max(most_inside, inside)
                    seen = total
                    os.sched_yield()  # let another thread run between read and write
                    total = seen + 1
                    inside -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert most_inside == 1
    assert total == threads_n * rounds


def test_mutual_exclusion_across_two_caches(two_caches: tuple[Cache, Cache]) -> None:
    """Two Cache objects on one store (two processes on one Redis) exclude each other."""
    first, second = two_caches
    a, b = first.lock("shared", timeout=30), second.lock("shared", timeout=30)
    assert a.key == b.key
    assert a.acquire()
    assert b.acquire(blocking=False) is False
    with pytest.raises(LockError):
        b.release()
    a.release()
    assert b.acquire(blocking=False) is True
    assert a.acquire(blocking=False) is False
    b.release()


# -- expiry -----------------------------------------------------------------------------------


def test_timeout_frees_the_lock_on_memory() -> None:
    """A held lock whose timeout ran out is taken by another holder; the old owner's
    release is then refused and does not free the new owner's lock."""
    clock = FakeClock(0.0)
    cache = Cache(MemoryStore(clock=clock))
    owner, other = cache.lock("job", timeout=5), cache.lock("job", timeout=5)
    assert owner.acquire()
    clock.advance(4.9)
    assert other.acquire(blocking=False) is False
    clock.advance(0.2)
    assert other.acquire(blocking=False) is True
    with pytest.raises(LockError, match="expired"):
        owner.release()
    assert other.locked() is True
    other.release()
    cache.close()


def test_timeout_frees_the_lock_on_redis(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> None:
    """On Redis the lock key carries the timeout (PX); once it passes, a blocked waiter
    gets the lock, and the first owner's late release is refused."""
    with Cache(redis_url, namespace=namespace) as cache:
        owner = cache.lock("job", timeout=0.2)
        assert owner.acquire()
        assert 0 < redis_client.pttl(owner.key) <= 200
        waiter = cache.lock("job", timeout=30, sleep=0.02)
        assert waiter.acquire(blocking_timeout=10) is True
        with pytest.raises(LockError, match="expired"):
            owner.release()
        assert waiter.locked() is True
        waiter.release()
        forever = cache.lock("forever")
        with forever:
            assert redis_client.pttl(forever.key) == -1
        cache.clear()


# -- failures: a lock never fails open --------------------------------------------------------


def test_store_down_raises_store_unavailable(dead_cache: Cache) -> None:
    """With the store down, acquire(), locked() and release() raise StoreUnavailable, and
    the Lock object does not hold the lock afterwards."""
    lock = dead_cache.lock("job")
    with pytest.raises(StoreUnavailable):
        lock.acquire()
    with pytest.raises(StoreUnavailable):
        lock.acquire(blocking=False)
    with pytest.raises(StoreUnavailable), lock:
        pytest.fail("the block must not run")
    with pytest.raises(StoreUnavailable):
        lock.locked()
    with pytest.raises(LockError):
        lock.release()


def test_open_breaker_raises_store_unavailable() -> None:
    """An open circuit breaker is StoreUnavailable for a lock too, never a fake success."""
    url = f"redis://127.0.0.1:{free_port()}/0?socket_timeout=0.5&socket_connect_timeout=0.5"
    with Cache(url, breaker=CircuitBreaker(threshold=1, cooldown=60)) as cache:
        with pytest.raises(StoreUnavailable, match="failed"):
            cache.lock("job").acquire()
        with pytest.raises(StoreUnavailable, match="circuit breaker"):
            cache.lock("job").acquire()


async def test_store_down_raises_store_unavailable_async(dead_cache: Cache) -> None:
    """The async face raises StoreUnavailable the same way."""
    lock = dead_cache.lock("job")
    with pytest.raises(StoreUnavailable):
        await lock.aacquire()
    with pytest.raises(StoreUnavailable):
        async with lock:
            pytest.fail("the block must not run")
    with pytest.raises(StoreUnavailable):
        await lock.alocked()
    await dead_cache.aclose()


# -- async ------------------------------------------------------------------------------------


async def test_async_acquire_release_and_locked(acache: Cache) -> None:
    """aacquire/arelease/alocked mirror the sync methods; `async with` holds the lock."""
    first, second = acache.lock("job"), acache.lock("job")
    assert await first.aacquire() is True
    assert await first.alocked() is True
    assert await second.aacquire(blocking=False) is False
    with pytest.raises(LockError, match="does not hold it"):
        await second.arelease()
    await first.arelease()
    async with second:
        assert await first.alocked() is True
    assert await first.alocked() is False
    assert await second.aacquire(blocking_timeout=0) is True
    assert await first.aacquire(blocking_timeout=0.02) is False
    await second.arelease()


async def test_async_mutual_exclusion_across_tasks(acache: Cache) -> None:
    """Many tasks that start together never hold the lock at once and each gets a turn."""
    tasks_n, rounds = 20, 5
    start = asyncio.Event()
    inside = most_inside = total = 0

    async def work() -> None:
        nonlocal inside, most_inside, total
        await start.wait()
        for _ in range(rounds):
            async with acache.lock("counter", timeout=30, sleep=0.001):
                inside += 1
                most_inside = max(most_inside, inside)
                seen = total
                await asyncio.sleep(0)  # let another task run between read and write
                total = seen + 1
                inside -= 1

    tasks = [asyncio.create_task(work()) for _ in range(tasks_n)]
    start.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert most_inside == 1
    assert total == tasks_n * rounds


async def test_async_waiter_gets_the_lock_when_the_owner_releases(acache: Cache) -> None:
    """A task blocked in aacquire() gets the lock once the owner releases it."""
    owner = acache.lock("job")
    assert await owner.aacquire()
    refused = asyncio.Event()
    clock_reads = 0

    def monotonic() -> float:
        # The flow reads its clock once at the start, then after each refused attempt.
        nonlocal clock_reads
        clock_reads += 1
        if clock_reads == 2:
            refused.set()
        return time.monotonic()

    waiter = Lock(acache.engine.runner, owner.key, sleep=0.005, monotonic=monotonic)
    waiting = asyncio.create_task(waiter.aacquire(blocking_timeout=10))
    await asyncio.wait_for(refused.wait(), 10)
    assert not waiting.done()
    await owner.arelease()
    assert await asyncio.wait_for(waiting, 10) is True
    await waiter.arelease()


async def test_a_cancelled_acquire_does_not_leave_the_lock_held(redis_url: str) -> None:
    """An acquire cancelled after its SET NX went out frees what may be its own lock, so
    the lock is not left held by nobody (forever, with no timeout)."""
    cache = Cache(redis_url, namespace="lockcancel" + os.urandom(4).hex())
    first = cache.lock("job")
    assert await first.alocked() is False  # the connection is open: the SET goes out at once
    task = asyncio.create_task(first.aacquire())
    await asyncio.sleep(0)  # the command is written; its reply has not been read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the clean-up runs as a task of its own
        if not await first.alocked():
            break
        await asyncio.sleep(0.01)
    second = cache.lock("job")
    assert await second.aacquire(blocking=False) is True
    await second.arelease()
    await cache.aclose()


def test_a_failed_release_can_be_retried(private_redis: RedisServer) -> None:
    """A release the store could not perform keeps the token: the holder may retry, and
    the retry says why it failed again rather than "not held"."""
    cache = Cache(RedisStore(private_redis.url, socket_timeout=1.0), namespace="lockretry")
    lock = cache.lock("job", timeout=60)
    assert lock.acquire() is True
    private_redis.stop()
    with pytest.raises(StoreUnavailable):
        lock.release()
    with pytest.raises(StoreUnavailable):
        lock.release()
    cache.close()
