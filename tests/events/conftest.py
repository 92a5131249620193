"""Fixtures of the event tests: keys, a Cache on the suite's Redis in a fresh namespace,
and clean-up of every stream and mark the test made."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest
import redis

from cachelayer import Cache
from cachelayer.events import Signer, StreamConsumer, Verifier, stream_for
from tests.conftest import make_cache

SECRET = secrets.token_bytes(32)
OLD_SECRET = secrets.token_bytes(32)


@pytest.fixture
def signer() -> Signer:
    return Signer("k2", SECRET)


@pytest.fixture
def verifier() -> Verifier:
    """Accepts the current key and the one being rotated out."""
    return Verifier({"k2": SECRET, "k1": OLD_SECRET})


@pytest.fixture
def events_cache(
    redis_url: str, namespace: str, redis_client: redis.Redis
) -> Iterator[Callable[..., Cache]]:
    """Build Caches on the suite's Redis in this test's namespace; afterwards every one
    is closed and the namespace's keys, streams and marks are deleted."""
    made: list[Cache] = []

    def factory(**options: object) -> Cache:
        cache = make_cache("redis", redis_url, namespace, **options)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()
    left = [*redis_client.scan_iter(f"{namespace}:*"), *redis_client.scan_iter(f"{{{namespace}:*")]
    if left:
        redis_client.delete(*left)
    assert not redis_client.exists(stream_for(namespace))


@pytest.fixture
def consumers() -> Iterator[Callable[..., StreamConsumer]]:
    """Build consumers (short reads, so that stop() is quick); all closed afterwards."""
    made: list[StreamConsumer] = []

    def factory(cache: Cache, verifier: Verifier, **options: object) -> StreamConsumer:
        options.setdefault("group", "g")
        options.setdefault("block", 0.05)
        consumer = StreamConsumer(cache, verifier, **options)  # type: ignore[arg-type]
        made.append(consumer)
        return consumer

    yield factory
    for consumer in made:
        consumer.close()
