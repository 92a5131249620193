"""Warm-up: ``fn.warm``/``fn.awarm`` and ``cache.warm``/``cache.awarm`` load many keys
ahead of traffic, with bounded concurrency, under leases, counting what happened."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from cachelayer import Cache, WarmResult
from cachelayer._engine import lease_key


def test_warm_loads_then_skips_what_is_fresh(cache: Cache) -> None:
    """A first warm loads every key; the calls then hit; a second warm loads nothing."""
    calls: list[int] = []

    @cache.cached(ttl=300, key="user:{user_id}")
    def profile(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    done: list[tuple[int, int]] = []
    result = profile.warm(range(20), concurrency=4, progress=lambda d, t: done.append((d, t)))
    assert (result.loaded, result.fresh, result.failed, result.total) == (20, 0, 0, 20)
    assert sorted(calls) == list(range(20))
    assert done == [(i, 20) for i in range(1, 21)]
    assert [profile(i) for i in range(20)] == [{"id": i} for i in range(20)]
    assert len(calls) == 20  # all hits
    again = profile.warm(range(20))
    assert (again.loaded, again.fresh) == (0, 20)


def test_warm_takes_tuples_as_positional_arguments(cache: Cache) -> None:
    """A tuple is one call's positional arguments."""

    @cache.cached(ttl=300, key="greet:{name}:{lang}")
    def greet(name: str, lang: str) -> str:
        return f"{lang}:{name}"

    assert greet.warm([("ada", "en"), ("bob", "fr")]).loaded == 2
    assert cache.get("greet:ada:en") == "en:ada"


def test_warm_never_runs_more_loads_than_its_concurrency(cache: Cache) -> None:
    """At most ``concurrency`` loads are in flight at once."""
    lock = threading.Lock()
    in_flight, most = 0, 0
    three_in = threading.Event()
    release = threading.Event()

    @cache.cached(ttl=300, key="slow:{i}")
    def slow(i: int) -> int:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
            if in_flight == 3:
                three_in.set()
        release.wait(10)
        with lock:
            in_flight -= 1
        return i

    result: list[WarmResult] = []
    runner = threading.Thread(target=lambda: result.append(slow.warm(range(12), concurrency=3)))
    runner.start()
    assert three_in.wait(10)
    release.set()
    runner.join()
    assert most == 3
    assert result[0].loaded == 12


def test_warm_leaves_a_key_another_caller_is_loading(cache: Cache) -> None:
    """A key whose lease is held elsewhere is counted busy and not loaded."""
    calls: list[int] = []

    @cache.cached(ttl=300, key="item:{i}")
    def item(i: int) -> int:
        calls.append(i)
        return i

    cache.store.add(lease_key(item.key(1)), b"someone-else", 30.0)
    result = item.warm([0, 1, 2])
    assert (result.loaded, result.busy) == (2, 1)
    assert sorted(calls) == [0, 2]


def test_warm_never_overwrites_a_newer_write(cache: Cache) -> None:
    """A write that lands while the warm-up loads wins: the load is not filled."""

    @cache.cached(ttl=300, key="row:{i}")
    def row(i: int) -> str:
        cache.set("row:1", "written meanwhile")  # a writer, during the load
        return "loaded before the write"

    result = row.warm([1])
    assert (result.loaded, result.superseded) == (0, 1)
    assert cache.get("row:1") == "written meanwhile"


def test_warm_counts_failures_and_goes_on(cache: Cache) -> None:
    """A loader that raises is counted (its error kept), not raised; the rest load."""

    @cache.cached(ttl=300, key="n:{i}")
    def flaky(i: int) -> int:
        if i % 2:
            raise LookupError(f"no row {i}")
        return i

    result = flaky.warm(range(6))
    assert (result.loaded, result.failed) == (3, 3)
    assert all(isinstance(e, LookupError) for e in result.errors)


async def test_awarm_of_an_async_function(acache: Cache) -> None:
    """awarm runs an async function's loads as tasks, at most ``concurrency`` at once."""
    in_flight, most = 0, 0

    @acache.cached(ttl=300, key="a:{i}")
    async def fetch(i: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        if i == 7:
            raise KeyError(i)
        return i * 10

    result = await fetch.awarm(range(10), concurrency=4)
    assert (result.loaded, result.failed) == (9, 1)
    assert most <= 4
    assert await fetch(3) == 30
    with pytest.raises(TypeError, match="awarm"):
        fetch.warm([1])


async def test_awarm_of_a_sync_function_runs_loads_off_the_loop(acache: Cache) -> None:
    """awarm of a def runs its loads on threads, so the event loop keeps running."""

    @acache.cached(ttl=300, key="s:{i}")
    def compute(i: int) -> int:
        return i + 1

    assert (await compute.awarm(range(5))).loaded == 5
    assert await acache.aget("s:4") == 5


def test_cache_warm_with_a_mapping_of_loaders(cache: Cache) -> None:
    """cache.warm takes {key: loader}; fresh keys are skipped."""
    cache.set("k0", "already")
    result = cache.warm({f"k{i}": (lambda i=i: i) for i in range(4)}, ttl=60)
    assert (result.loaded, result.fresh) == (3, 1)
    assert cache.get_many([f"k{i}" for i in range(4)]) == {
        "k0": "already",
        "k1": 1,
        "k2": 2,
        "k3": 3,
    }


async def test_cache_awarm_with_async_loaders(acache: Cache) -> None:
    """cache.awarm takes (key, loader) pairs; loaders may be async."""

    async def load(value: Any) -> Any:
        await asyncio.sleep(0)
        return value

    result = await acache.awarm([(f"x{i}", lambda i=i: load(i)) for i in range(5)], ttl=60)
    assert result.loaded == 5
    assert await acache.aget("x3") == 3


def test_warm_with_the_store_down_counts_unavailable() -> None:
    """With the store unreachable nothing is warmed, nothing raises."""
    cache = Cache("redis://127.0.0.1:1/0")

    @cache.cached(ttl=60, key="d:{i}")
    def d(i: int) -> int:
        return i

    result = d.warm(range(3))
    assert result.unavailable == 3
    cache.close()


def test_a_failed_warm_load_gives_its_lease_back(cache: Cache) -> None:
    """From review: a warm-up whose loader failed kept the key's lease, so the next warm
    counted it busy and real callers waited lease_wait for a load nobody was doing."""
    attempts: list[int] = []

    @cache.cached(ttl=60, key="w:{i}")
    def flaky(i: int) -> int:
        attempts.append(i)
        if len(attempts) == 1:
            raise RuntimeError("boom")
        return i

    first = flaky.warm([1])
    assert first.failed == 1
    assert len(first.errors) == 1
    again = flaky.warm([1])
    assert (again.busy, again.loaded) == (0, 1)
