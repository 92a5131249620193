"""Fixtures for the example's test: a real Redis (REDIS_URL, else a private server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from cachelayer.testing import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis the example's test uses (REDIS_URL, else a private server)."""
    url = os.environ.get("REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()  # fail loudly and early when it is unreachable
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return "ex" + uuid.uuid4().hex[:12]
