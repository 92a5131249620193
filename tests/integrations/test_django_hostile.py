"""The Django backend's reads bind a signed entry to its key: a copied entry is absent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from cachelayer import CircuitBreaker
from cachelayer._steps import Get, Set
from cachelayer.django import CacheBackend

SECRET = "django-hostile-secret-0123456789"
MISS = object()


@pytest.fixture
def backend(store_kind: str, redis_url: str, namespace: str) -> Iterator[CacheBackend]:
    """A signing backend on the parametrized store."""
    location = redis_url if store_kind == "redis" else "memory://"
    options = {"namespace": namespace, "signing_key": SECRET, "breaker": CircuitBreaker(0)}
    made = CacheBackend(location, {"TIMEOUT": 60, "OPTIONS": options})
    yield made
    made.clear()
    made.cache.close()


def _copy(backend: CacheBackend, source: str, target: str) -> None:
    """Copy the stored bytes of Django key ``source`` onto Django key ``target``."""
    engine = backend.cache.engine

    def full(key: str) -> str:
        return engine.keys.full(backend._key(key, None))

    raw = engine.call(Get(full(source)), True)
    assert isinstance(raw, bytes)
    engine.call(Set(full(target), raw, None, None), True)


def test_copied_signed_entry_is_absent_for_every_read(backend: CacheBackend) -> None:
    """get, has_key, ttl, incr, touch and add all see a copied signed entry as absent."""
    backend.set("a", 41)
    _copy(backend, "a", "b")
    assert backend.get("b", MISS) is MISS
    assert not backend.has_key("b")
    assert backend.ttl("b") == 0
    assert not backend.touch("b", 30)
    with pytest.raises(ValueError, match="not found"):
        backend.incr("b")
    assert backend.add("b", "mine")
    assert backend.get("b") == "mine"
    assert backend.incr("a") == 42


def test_copied_signed_entry_is_absent_async(backend: CacheBackend) -> None:
    """aget and aadd see it as absent too."""
    backend.set("a", [1, 2])
    _copy(backend, "a", "b")

    async def reads() -> None:
        assert await backend.aget("b", MISS) is MISS
        assert await backend.aadd("b", [3])
        assert await backend.aget("b") == [3]

    asyncio.run(reads())
