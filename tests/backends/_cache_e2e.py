"""A Cache end to end on one store: the mixin the Cluster and Sentinel tests subclass.

The subclass provides a ``make_store`` fixture (a function building a fresh store on the
deployment under test). Each test works in its own namespace and clears it afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cachelayer import Cache, CircuitBreaker
from cachelayer.backends import Store

MakeStore = Callable[[], Store]


class CacheEndToEnd:
    """What a Cache does on the store ``make_store`` builds: hits, tags, many-key reads,
    and one load across two Caches (two processes) through the store's leases."""

    @pytest.fixture
    def caches(self, make_store: MakeStore) -> Iterator[Callable[[], Cache]]:
        """Builds Caches sharing one fresh namespace, each on its own store (a process)."""
        namespace = "e" + uuid.uuid4().hex[:10]
        made: list[Cache] = []

        def build() -> Cache:
            cache = Cache(make_store(), namespace=namespace, breaker=CircuitBreaker(threshold=0))
            made.append(cache)
            return cache

        yield build
        made[0].clear()
        for cache in made:
            cache.close()

    def test_decorated_function_hits(self, caches: Callable[[], Cache]) -> None:
        """A decorated function loads once, then hits."""
        cache = caches()
        loads: list[int] = []

        @cache.cached(ttl=60, key="user:{user_id}")
        def get_user(user_id: int) -> dict[str, int]:
            loads.append(user_id)
            return {"id": user_id}

        assert [get_user(i % 7) for i in range(21)] == [{"id": i % 7} for i in range(21)]
        assert sorted(loads) == list(range(7))
        assert cache.stats.hits == 14

    def test_tags_and_invalidate_tags(self, caches: Callable[[], Cache]) -> None:
        """invalidate_tags drops the entries carrying the tag (value and tag token lie in
        different slots), and only those."""
        cache = caches()
        loads: list[str] = []

        @cache.cached(ttl=60, key="profile:{user_id}:{part}", tags=["user:{user_id}"])
        def profile(user_id: int, part: str) -> str:
            loads.append(f"{user_id}{part}")
            return f"{user_id}-{part}-{len(loads)}"

        first = [profile(1, "a"), profile(1, "b"), profile(2, "a")]
        assert [profile(1, "a"), profile(1, "b"), profile(2, "a")] == first
        assert cache.invalidate_tags("user:1")
        again = [profile(1, "a"), profile(1, "b"), profile(2, "a")]
        assert again[2] == first[2]
        assert again[:2] != first[:2]
        assert loads == ["1a", "1b", "2a", "1a", "1b"]

    def test_get_many(self, caches: Callable[[], Cache]) -> None:
        """get_many reads keys of many slots in one call, gaps left out."""
        cache = caches()
        keys = [f"item:{i}" for i in range(40)]
        for key in keys[::2]:
            cache.set(key, {"k": key}, ttl=60)
        assert cache.get_many([*keys, "absent"]) == {key: {"k": key} for key in keys[::2]}

    def test_two_caches_one_load(self, caches: Callable[[], Cache]) -> None:
        """Two Caches (two processes) missing one key at once: one loads, through the
        store's lease; the other gets the filled value."""
        first, second = caches(), caches()
        loads: list[int] = []
        gate = threading.Barrier(2)
        results: list[Any] = []

        def load() -> dict[str, int]:
            loads.append(1)
            time.sleep(0.3)  # the other caller arrives while this one loads
            return {"id": 42}

        def call(cache: Cache) -> None:
            gate.wait()
            results.append(cache.get_or_load("user:42", load, ttl=60))

        threads = [threading.Thread(target=call, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [{"id": 42}, {"id": 42}]
        assert len(loads) == 1

    async def test_async_face_end_to_end(self, caches: Callable[[], Cache]) -> None:
        """The asyncio face: an async function hits, its tags invalidate, aget_many."""
        cache = caches()
        loads: list[int] = []

        @cache.cached(ttl=60, key="order:{order_id}", tags=["order:{order_id}"])
        async def get_order(order_id: int) -> dict[str, int]:
            loads.append(order_id)
            return {"id": order_id, "n": len(loads)}

        first = [await get_order(i) for i in range(5)]
        assert [await get_order(i) for i in range(5)] == first
        assert await cache.ainvalidate_tags("order:3")
        assert (await get_order(3))["n"] == 6
        assert await cache.aget_many(["x", "y"]) == {}
        await cache.aset("x", 1, ttl=60)
        assert await cache.aget_many(["x", "y"]) == {"x": 1}
        await cache.astore.close()  # this loop's connections; the fixture closes the rest
