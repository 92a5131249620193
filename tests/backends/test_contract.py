"""The store contract (cachelayer.testing_contract) run against every store we ship."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cachelayer.backends import MemoryStore, Store
from cachelayer.backends.redis import RedisStore
from cachelayer.testing_contract import PublisherContract, StoreContract


class TestMemoryStore(StoreContract, PublisherContract):
    """The process-memory store."""

    def make_store(self) -> Store:
        return MemoryStore()


class TestRedisStore(StoreContract, PublisherContract):
    """The Redis store, on the suite's server (generous timeouts: a busy machine)."""

    @pytest.fixture
    def store(self, redis_url: str) -> Iterator[Store]:
        store = RedisStore(redis_url, socket_timeout=2.0)
        yield store
        store.close()
