"""Fixtures: a real Redis for every test that needs one, and a Cache per store.

``redis_url`` lives in the repository's root conftest.py, shared with examples/: it is
``REDIS_URL`` when set, otherwise one private server per test session (per xdist worker),
stopped by its pid at the end. A missing server is a loud error, never a skip. Every
test works in its own
namespace and deletes its keys afterwards, so parallel runs against one server are safe.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from cachelayer import Cache, CircuitBreaker
from cachelayer.backends import MemoryStore, Store
from cachelayer.backends.redis import RedisStore
from cachelayer.testing import RedisServer

STORES = ["memory", "redis"]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client to inspect what cachelayer wrote."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


class FakeClock:
    """A clock tests move by hand (seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(
    kind: str, redis_url: str, namespace: str, memory: MemoryStore | None = None, **options: object
) -> Cache:
    """A Cache on ``kind``; memory Caches share ``memory`` when given (one process's data)."""
    options.setdefault("breaker", CircuitBreaker(threshold=0))  # no breaker unless asked
    store: Store
    if kind == "redis":
        # Generous timeouts: these tests pin behaviour, not latency, on a busy machine.
        store = RedisStore(redis_url, socket_timeout=2.0, connect_timeout=2.0)
    else:
        store = memory if memory is not None else MemoryStore()
    return Cache(store, namespace=namespace, **options)  # type: ignore[arg-type]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cache_factory(store_kind: str, redis_url: str, namespace: str) -> Iterator[object]:
    """Build Caches on the parametrized store; all are cleared and closed afterwards."""
    made: list[Cache] = []
    memory = MemoryStore()

    def factory(**options: object) -> Cache:
        cache = make_cache(store_kind, redis_url, namespace, memory, **options)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.clear()
        cache.close()


@pytest.fixture
def cache(cache_factory: object) -> Cache:
    """A Cache on each store (memory, redis) in a fresh namespace."""
    return cache_factory()  # type: ignore[operator, no-any-return]


@pytest.fixture
async def acache(store_kind: str, redis_url: str, namespace: str) -> AsyncIterator[Cache]:
    """A Cache used from asyncio, on each store, closed in the test's own loop."""
    cache = make_cache(store_kind, redis_url, namespace)
    yield cache
    await cache.aclear()
    await cache.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis server of this test's own, which the test may stop and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def least_privilege_url(private_redis: RedisServer) -> str:
    """A URL for the Redis user docs/security.md lists: namespace ``shop``'s keys and
    purge channel only, and only the commands cachelayer sends to one Redis server (the
    union of that page's per-feature table; tests/test_acl.py checks they agree)."""
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command(
        "ACL", "SETUSER", "app", "reset", "on", ">app-pw",
        "~shop:*", "~{shop:*", "&{shop:*",
        "+get", "+mget", "+set", "+del", "+unlink", "+scan",
        "+evalsha", "+script|load", "+script|exists",
        "+publish", "+subscribe", "+ping",
    )  # fmt: skip
    admin.close()
    return f"redis://app:app-pw@127.0.0.1:{private_redis.port}/0"
