"""Races, driven step by step with events: stale fills, single-flight, lease waits.

Each test forces one interleaving (a loader blocks on an event until the test has done
its write) and asserts the outcome, on both stores, sync and async. A second Cache on the
same store stands in for another process: it has its own single-flight registry and only
the store's leases in common with the first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from cachelayer import MISSING, Cache

WAIT = 10.0  # upper bound for any event wait; a test that hits it has failed


def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition another thread makes true."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


async def yield_until(predicate: Callable[[], bool], what: str) -> None:
    """Let other tasks run until a condition holds (bounded)."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


class BlockingLoader:
    """A loader that reads the 'database' then blocks until released."""

    def __init__(self, db: dict[str, Any], key: str) -> None:
        self.db, self.key = db, key
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        value = self.db[self.key]  # the read happens before the write below
        self.entered.set()
        assert self.release.wait(WAIT)
        return value


@pytest.fixture
def pool() -> Any:
    with ThreadPoolExecutor(64) as executor:
        yield executor


# -- the stale-set race: reader misses, writer commits and invalidates, reader fills ------


@pytest.mark.parametrize("write", ["invalidate", "set", "delete_many"])
def test_fill_after_invalidation_is_refused(cache: Cache, pool: Any, write: str) -> None:
    """A fill that started before a write/invalidation never lands after it."""
    db = {"user:1": "v1"}
    loader = BlockingLoader(db, "user:1")
    reader: Future[Any] = pool.submit(cache.get_or_load, "user:1", loader)
    assert loader.entered.wait(WAIT)
    db["user:1"] = "v2"  # the writer commits ...
    if write == "invalidate":  # ... and invalidates, or writes through
        cache.invalidate("user:1")
    elif write == "set":
        cache.set("user:1", "v2")
    else:
        cache.delete_many(["user:1"])
    loader.release.set()
    assert reader.result(WAIT) == "v1"  # the reader's own answer predates the write
    assert cache.get("user:1", MISSING) in (MISSING, "v2")
    assert cache.get_or_load("user:1", lambda: db["user:1"]) == "v2"
    assert cache.stats.fills_rejected == 1


def test_fill_after_tag_invalidation_is_not_served(cache: Cache, pool: Any) -> None:
    """An entry computed before its tag was invalidated is a miss, even if it landed."""
    db = {"user:1": "v1"}
    loader = BlockingLoader(db, "user:1")
    reader = pool.submit(cache.get_or_load, "profile:1", loader, tags=["user:1"])
    assert loader.entered.wait(WAIT)
    db["user:1"] = "v2"
    assert cache.invalidate_tags("user:1") is True
    loader.release.set()
    assert reader.result(WAIT) == "v1"
    assert cache.get("profile:1", MISSING) is MISSING
    assert cache.get_or_load("profile:1", lambda: db["user:1"], tags=["user:1"]) == "v2"
    assert cache.get("profile:1") == "v2"


async def test_async_fill_after_invalidation_is_refused(acache: Cache) -> None:
    """The async shell refuses the stale fill the same way."""
    db = {"k": "v1"}
    entered, release = asyncio.Event(), asyncio.Event()

    async def loader() -> str:
        value = db["k"]
        entered.set()
        await release.wait()
        return value

    reader = asyncio.ensure_future(acache.aget_or_load("k", loader))
    await asyncio.wait_for(entered.wait(), WAIT)
    db["k"] = "v2"
    await acache.ainvalidate("k")
    release.set()
    assert await reader == "v1"
    assert await acache.aget("k", MISSING) is MISSING
    assert await acache.aget_or_load("k", lambda: db["k"]) == "v2"


# -- single-flight in one process ------------------------------------------------------------


def test_threads_share_one_load(cache: Cache, pool: Any) -> None:
    """N threads missing one key make one loader call and all get its value."""
    n = 40
    release = threading.Event()
    calls: list[int] = []

    def load() -> dict[str, int]:
        calls.append(1)
        assert release.wait(WAIT)
        return {"id": 1}

    futures = [pool.submit(cache.get_or_load, "hot", load) for _ in range(n)]
    until(lambda: cache.stats.misses == n, "every caller to miss")
    release.set()
    results = [f.result(WAIT) for f in futures]
    assert calls == [1]
    assert all(r == {"id": 1} for r in results)
    assert len({id(r) for r in results}) == n  # each caller got its own copy
    assert cache.stats.flight_joins == n - 1


def test_threads_share_the_loader_exception(cache: Cache, pool: Any) -> None:
    """Followers get the leader's exception; the loader still ran once."""
    n = 10
    release = threading.Event()
    calls: list[int] = []

    def load() -> None:
        calls.append(1)
        assert release.wait(WAIT)
        raise LookupError("db says no")

    futures = [pool.submit(cache.get_or_load, "bad", load) for _ in range(n)]
    until(lambda: cache.stats.misses == n, "every caller to miss")
    release.set()
    for future in futures:
        with pytest.raises(LookupError, match="db says no"):
            future.result(WAIT)
    assert calls == [1]


def test_followers_do_not_take_a_refused_fill(cache: Cache, pool: Any) -> None:
    """If the leader's fill was refused (an invalidation raced it), followers load anew."""
    db = {"k": "v1"}
    loader = BlockingLoader(db, "k")
    leader = pool.submit(cache.get_or_load, "k", loader)
    assert loader.entered.wait(WAIT)
    follower = pool.submit(cache.get_or_load, "k", lambda: db["k"])
    until(lambda: followers(cache) == 1, "the follower to join the leader's flight")
    db["k"] = "v2"
    cache.invalidate("k")  # the follower started before this returned, but ...
    loader.release.set()
    assert leader.result(WAIT) == "v1"
    assert follower.result(WAIT) == "v2"  # ... it reads for itself rather than share v1
    assert cache.get("k") == "v2"


async def test_tasks_share_one_load(acache: Cache) -> None:
    """N asyncio tasks missing one key make one loader call."""
    n = 50
    release = asyncio.Event()
    calls: list[int] = []

    async def load() -> list[int]:
        calls.append(1)
        await release.wait()
        return [1, 2]

    tasks = [asyncio.ensure_future(acache.aget_or_load("hot", load)) for _ in range(n)]
    await yield_until(lambda: acache.stats.misses >= n, "misses")
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == [1]
    assert all(r == [1, 2] for r in results)
    assert acache.stats.flight_joins == n - 1


async def test_cancelled_leader_does_not_fail_followers(acache: Cache) -> None:
    """A follower of a leader whose task is cancelled loads for itself."""
    entered = asyncio.Event()

    async def slow() -> str:
        entered.set()
        await asyncio.sleep(WAIT)
        return "never"

    leader = asyncio.ensure_future(acache.aget_or_load("k", slow))
    await entered.wait()
    follower = asyncio.ensure_future(acache.aget_or_load("k", lambda: "own"))
    await yield_until(lambda: acache.stats.misses >= 2, "misses")
    leader.cancel()
    assert await follower == "own"


# -- other processes: the lease holder loads, the others wait for its fill -----------------


def test_other_process_waits_for_the_lease_holder(
    cache_factory: Any, pool: Any, store_kind: str
) -> None:
    """A miss in 'another process' waits for the lease holder's fill instead of loading."""
    a = cache_factory()
    b = cache_factory()  # same store and namespace, its own in-process state
    db = {"k": "v1"}
    loader = BlockingLoader(db, "k")
    first = pool.submit(a.get_or_load, "k", loader)
    assert loader.entered.wait(WAIT)
    b_calls: list[int] = []
    second = pool.submit(b.get_or_load, "k", lambda: b_calls.append(1) or "b's own")
    until(lambda: b.stats.misses == 1, "b to miss")
    loader.release.set()
    assert first.result(WAIT) == "v1"
    assert second.result(WAIT) == "v1"
    assert b_calls == []
    assert b.stats.lease_waits == 1


def test_wait_is_bounded_then_loads_without_filling(cache_factory: Any, pool: Any) -> None:
    """If the holder does not fill within lease_wait, the waiter loads but does not fill."""
    a = cache_factory()
    b = cache_factory(lease_wait=0.05)
    loader = BlockingLoader({"k": "a's value"}, "k")
    first = pool.submit(a.get_or_load, "k", loader)
    assert loader.entered.wait(WAIT)
    assert b.get_or_load("k", lambda: "b's value") == "b's value"
    assert b.stats.lease_timeouts == 1
    assert b.get("k", MISSING) is MISSING  # b did not fill
    loader.release.set()
    assert first.result(WAIT) == "a's value"
    assert b.get("k") == "a's value"  # the lease holder's fill landed


def test_crashed_lease_holder_blocks_nobody_past_lease_expiry(cache_factory: Any) -> None:
    """A lease whose holder died expires; then the next miss fills again."""
    cache = cache_factory(lease_ttl=0.2, lease_wait=0.0)
    full = cache.engine.keys.full("k")
    from cachelayer._engine import lease_key

    cache.store.add(lease_key(full), b"dead-holder", 0.2)  # a holder that crashed
    assert cache.get_or_load("k", lambda: 1) == 1
    assert cache.get("k", MISSING) is MISSING  # not filled while the dead lease lives
    until(lambda: cache.store.get(lease_key(full)) is None, "the dead lease to expire")
    assert cache.get_or_load("k", lambda: 2) == 2
    assert cache.get("k") == 2


async def test_async_waits_for_the_lease_holder(
    store_kind: str, redis_url: str, namespace: str
) -> None:
    """The async shell waits for another process's fill the same way."""
    from cachelayer.backends import MemoryStore
    from tests.conftest import make_cache

    memory = MemoryStore()
    a = make_cache(store_kind, redis_url, namespace, memory)
    b = make_cache(store_kind, redis_url, namespace, memory)
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        entered.set()
        await release.wait()
        return "a's"

    first = asyncio.ensure_future(a.aget_or_load("k", slow))
    await entered.wait()
    second = asyncio.ensure_future(b.aget_or_load("k", lambda: "b's"))
    await yield_until(lambda: b.stats.misses >= 1, "misses")
    release.set()
    assert await first == "a's"
    assert await second == "a's"
    assert b.stats.lease_waits == 1
    await a.aclear()
    await a.aclose()
    await b.aclose()


def test_late_follower_does_not_share_a_value_invalidated_before_it_started(pool: Any) -> None:
    """A follower that joins after the leader's fill took effect (and after an
    invalidation of that value returned) reads for itself instead of sharing."""
    from cachelayer import CircuitBreaker
    from cachelayer.backends import MemoryStore

    class SlowReplyStore(MemoryStore):
        """fill() takes effect at once but its reply is held until released."""

        def __init__(self) -> None:
            super().__init__()
            self.filled = threading.Event()
            self.reply = threading.Event()

        def fill(self, *args: Any) -> bool:
            done = super().fill(*args)
            self.filled.set()
            assert self.reply.wait(WAIT)
            return done

    store = SlowReplyStore()
    cache = Cache(store, breaker=CircuitBreaker(threshold=0))
    db = {"k": "v1"}
    leader = pool.submit(cache.get_or_load, "k", lambda: db["k"])
    assert store.filled.wait(WAIT)  # the leader's fill of v1 is in the store
    db["k"] = "v2"
    cache.invalidate("k")  # ... and has been invalidated; this returned
    follower = pool.submit(cache.get_or_load, "k", lambda: db["k"])
    until(lambda: cache.stats.misses == 2, "the follower to miss and join")
    store.reply.set()
    assert leader.result(WAIT) == "v1"
    assert follower.result(WAIT) == "v2"
    cache.close()


def test_follower_does_not_share_a_load_whose_tag_was_invalidated_before_it_started(
    cache: Cache, pool: Any
) -> None:
    """A caller that starts after a tag invalidation returned, and joins a load begun
    before it, reads for itself: the leader's value predates the invalidation."""
    db = {"user:1": "v1"}
    loader = BlockingLoader(db, "user:1")
    leader = pool.submit(cache.get_or_load, "profile:1", loader, tags=["user:1"])
    assert loader.entered.wait(WAIT)  # the leader has read v1
    db["user:1"] = "v2"
    assert cache.invalidate_tags("user:1") is True  # the write is done and invalidated
    follower = pool.submit(cache.get_or_load, "profile:1", lambda: db["user:1"], tags=["user:1"])
    until(lambda: followers(cache) == 1, "the follower to join the leader's flight")
    loader.release.set()
    assert leader.result(WAIT) == "v1"
    assert follower.result(WAIT) == "v2"


def followers(cache: Cache) -> int:
    """Callers waiting in this cache's flights now (threads)."""
    flights = cache.engine.runner._flights._flights.values()
    return sum(flight.followers for flight in flights)


class NotFound(Exception):
    pass


@pytest.mark.parametrize("write", ["tag", "key"])
def test_follower_does_not_share_a_cached_error_a_write_made_obsolete(
    cache: Cache, pool: Any, write: str
) -> None:
    """A "not found" cached by the leader is not handed to a follower that started after
    the row was created and invalidated: the follower reads for itself."""
    db: dict[str, str] = {}
    read, release = threading.Event(), threading.Event()

    def slow_find() -> str:
        found = db.get("user:1")  # the read happens before the create below
        read.set()
        assert release.wait(WAIT)
        if found is None:
            raise NotFound("user:1")
        return found

    def get(loader: Callable[[], str]) -> Any:
        return cache.get_or_load("profile:1", loader, tags=["user:1"], cache_errors={NotFound: 30})

    leader = pool.submit(get, slow_find)
    assert read.wait(WAIT)
    db["user:1"] = "Ada"  # the create commits, then invalidates
    if write == "tag":
        assert cache.invalidate_tags("user:1") is True
    else:
        cache.delete("profile:1")
    follower = pool.submit(get, lambda: db["user:1"])
    until(lambda: followers(cache) == 1, "the follower to join the leader's flight")
    release.set()
    with pytest.raises(NotFound):
        leader.result(WAIT)
    assert follower.result(WAIT) == "Ada"


def test_tagged_waiter_takes_over_when_a_tag_moves_after_the_holders_fill(
    cache_factory: Any, pool: Any
) -> None:
    """A waiter for a tagged key whose holder filled a value a write has since made
    obsolete takes the free lease and loads, instead of polling out its lease_wait
    (the demo saw 1 s stalls on hot profiles)."""
    a = cache_factory()
    b = cache_factory(lease_wait=60.0)  # far longer than this test may take
    db = {"user:1": "v1"}
    loader = BlockingLoader(db, "user:1")
    first = pool.submit(a.get_or_load, "profile:1", loader, tags=["user:1"])
    assert loader.entered.wait(WAIT)  # a holds the lease and has read v1
    second = pool.submit(b.get_or_load, "profile:1", lambda: db["user:1"], tags=["user:1"])
    until(lambda: b.stats.misses == 1, "b to miss and wait for a's fill")
    db["user:1"] = "v2"
    assert b.invalidate_tags("user:1") is True  # a's coming fill is obsolete already
    loader.release.set()
    assert first.result(WAIT) == "v1"
    assert second.result(WAIT) == "v2"
    assert b.stats.lease_timeouts == 0
    assert b.stats.fills == 1  # b loaded under the lease it took over, and filled


def test_waiter_takes_over_when_the_holders_lease_is_voided(cache_factory: Any, pool: Any) -> None:
    """An invalidation voids the holder's lease: the waiter loads and fills at once
    instead of polling out its whole lease_wait."""
    a = cache_factory()
    b = cache_factory(lease_wait=60.0)  # far longer than this test may take
    db = {"k": "v1"}
    loader = BlockingLoader(db, "k")
    first = pool.submit(a.get_or_load, "k", loader)
    assert loader.entered.wait(WAIT)
    second = pool.submit(b.get_or_load, "k", lambda: db["k"])
    until(lambda: b.stats.misses == 1, "b to miss and wait")
    db["k"] = "v2"
    b.invalidate("k")  # voids a's lease
    assert second.result(WAIT) == "v2"
    assert b.get("k") == "v2"  # b filled
    loader.release.set()
    assert first.result(WAIT) == "v1"
    assert a.get("k") == "v2"  # a's fill was refused
