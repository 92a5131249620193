"""The Django backend with a local tier (OPTIONS "local"): its compare-and-set writes --
add, incr/decr, touch, expire, persist -- and delete_pattern purge other processes'
tiers like set and delete do."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from cachelayer.django import CacheBackend

from .conftest import Factory


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def purges(backend: CacheBackend) -> int:
    local = backend.cache.stats().local
    assert local is not None
    return local.purges


@pytest.fixture
def pair(make_backend: Factory, redis_url: str) -> tuple[CacheBackend, CacheBackend]:
    """Two backends with their own Cache and tier (as two processes have)."""
    options = {"local": {"max_entries": 100}}
    a = make_backend(LOCATION=redis_url, OPTIONS=dict(options))
    b = make_backend(LOCATION=redis_url, OPTIONS=dict(options))
    assert a.cache is not b.cache
    assert a.cache.wait_local(5)
    assert b.cache.wait_local(5)
    return a, b


def held_by(reader: CacheBackend, writer: CacheBackend, key: str, value: object) -> None:
    """``reader`` holds ``key`` in its tier: it has heard every purge ``writer`` sent so
    far, then read the key twice (the second read from the tier)."""
    assert reader.get(key) == value
    hits = reader.cache.stats().local_hits
    assert reader.get(key) == value
    assert reader.cache.stats().local_hits == hits + 1


@pytest.mark.parametrize("store_kind", ["redis"])
def test_compare_and_set_writes_purge_other_tiers(
    pair: tuple[CacheBackend, CacheBackend],
) -> None:
    a, b = pair
    a.set("n", 1)
    assert eventually(lambda: purges(b) >= 1)
    held_by(b, a, "n", 1)
    assert a.incr("n") == 2
    assert eventually(lambda: b.get("n") == 2)
    held_by(b, a, "n", 2)
    assert a.decr("n", 2) == 0
    assert eventually(lambda: b.get("n") == 0)
    held_by(b, a, "n", 0)
    assert a.touch("n", 0)  # a timeout of 0 deletes
    assert eventually(lambda: b.get("n", "gone") == "gone")
    assert a.add("n", "added")
    assert eventually(lambda: b.get("n") == "added")


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_delete_pattern_purges_other_tiers(
    pair: tuple[CacheBackend, CacheBackend],
) -> None:
    a, b = pair
    a.set_many({"user:1": "x", "user:2": "y", "other": "z"})
    assert eventually(lambda: purges(b) >= 1)
    held_by(b, a, "user:1", "x")
    held_by(b, a, "other", "z")
    assert a.delete_pattern("user:*") == 2
    assert eventually(lambda: b.get("user:1") is None)
    await a.aset("user:3", "w")
    assert eventually(lambda: b.get("user:3") == "w")
    held_by(b, a, "user:3", "w")
    assert await a.adelete_pattern("user:*") == 1
    assert eventually(lambda: b.get("user:3") is None)
    assert b.get("other") == "z"
