"""The load matrix: many concurrent callers against a healthy Redis, with the defaults.

A cache that switches itself off under load fails exactly when it is needed. Each cell
runs N coroutines in one event loop (or N threads) for a bounded time, every caller
reading keys that are present, through a Cache built with the default timeouts and
circuit breaker, and asserts: every read a hit, no store error, the breaker never
opened, no call short-circuited, nothing raised. The same again with another process
burning a core (a loaded machine). Loopback only; every cell stops by itself.

Nothing here asserts a time: throughput and latency are bench/bench_async.py's job.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cachelayer import Cache
from cachelayer.testing import RedisServer

SECONDS = 0.6  # per cell: long enough for thousands of calls, short enough for CI
KEYS = 64


@dataclass
class Tally:
    """What the callers of one cell saw."""

    calls: int = 0
    misses: int = 0
    raised: list[BaseException] = field(default_factory=list)

    def check(self, cache: Cache) -> None:
        stats = cache.stats
        assert self.raised == []
        assert self.calls > 0
        assert self.misses == 0, f"{self.misses} of {self.calls} reads of present keys missed"
        assert stats.store_errors == 0
        assert stats.breaker_opened == 0
        assert stats.short_circuits == 0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private server for the matrix: nothing else's load lands on it."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def cache(server: RedisServer) -> Iterator[Cache]:
    """A Cache with every default (50 ms timeouts, the default breaker), keys filled."""
    cache = Cache(server.url, namespace="load" + uuid.uuid4().hex[:8], jitter=0.0)
    cache.set_many({f"user:{i}": {"id": i, "name": "x" * 200} for i in range(KEYS)}, ttl=600)
    yield cache
    cache.clear()
    cache.close()


@pytest.fixture
def busy_core() -> Iterator[None]:
    """Another process burning a core for the test's duration (stopped by its pid)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


def coroutines(cache: Cache, n: int, many: bool = False) -> Tally:
    """``n`` coroutines in one loop, each reading keys through ``aget`` (or
    ``aget_many`` of 10 keys) until the cell's time is up."""
    tally = Tally()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.time() + SECONDS

        async def caller(i: int) -> None:
            j = i
            while True:  # at least one call each, however late the caller starts
                j += 1
                try:
                    if many:
                        names = [f"user:{(j + k) % KEYS}" for k in range(10)]
                        found = await cache.aget_many(names)
                        tally.misses += 10 - len(found)
                    else:
                        value = await cache.aget(f"user:{j % KEYS}")
                        tally.misses += value is None
                except Exception as exc:
                    tally.raised.append(exc)
                tally.calls += 1
                if loop.time() >= stop:
                    return

        await asyncio.gather(*(caller(i) for i in range(n)))
        await cache.aclose()

    asyncio.run(main())
    return tally


def threads(cache: Cache, n: int) -> Tally:
    """``n`` threads, each reading keys through ``get`` until the cell's time is up."""
    tally = Tally()
    lock = threading.Lock()
    start = threading.Barrier(n)

    def caller(i: int) -> None:
        start.wait()
        stop = time.monotonic() + SECONDS
        calls = misses = 0
        j = i
        while True:  # at least one call each
            j += 1
            try:
                misses += cache.get(f"user:{j % KEYS}") is None
            except Exception as exc:
                with lock:
                    tally.raised.append(exc)
            calls += 1
            if time.monotonic() >= stop:
                break
        with lock:
            tally.calls += calls
            tally.misses += misses

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return tally


@pytest.mark.parametrize("n", [1, 10, 100, 1000])
def test_coroutines_keep_the_cache_on(cache: Cache, n: int) -> None:
    """1 to 1,000 coroutines in one loop: every read hits, no store error, no trip."""
    coroutines(cache, n).check(cache)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_coroutines_get_many_keep_the_cache_on(cache: Cache, n: int) -> None:
    """The same with get_many of 10 keys per call."""
    coroutines(cache, n, many=True).check(cache)


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_threads_keep_the_cache_on(cache: Cache, n: int) -> None:
    """1 to 256 threads on the sync face: every read hits, no store error, no trip."""
    threads(cache, n).check(cache)


@pytest.mark.usefixtures("busy_core")
@pytest.mark.parametrize("n", [100, 1000])
def test_coroutines_on_a_loaded_machine(cache: Cache, n: int) -> None:
    """With another process burning a core, a busy event loop is not a sick Redis."""
    coroutines(cache, n).check(cache)


@pytest.mark.usefixtures("busy_core")
@pytest.mark.parametrize("n", [64, 256])
def test_threads_on_a_loaded_machine(cache: Cache, n: int) -> None:
    """The same for threads."""
    threads(cache, n).check(cache)
