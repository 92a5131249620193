"""Stampedes across processes: one load per key, counted outside the cache.

Real processes (spawned), each with many threads, on one Redis: the in-process
single-flight and the store's lease together must let exactly one caller load.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cachelayer import Cache, CircuitBreaker
from cachelayer.backends.redis import RedisStore

PROCESSES = 4


def _cache(url: str, namespace: str) -> Cache:
    store = RedisStore(url, socket_timeout=2.0, connect_timeout=2.0)
    return Cache(store, namespace=namespace, breaker=CircuitBreaker(threshold=0), jitter=0)


def _cold_key_worker(
    url: str, namespace: str, threads: int, start: Any, loads: Any, out: Any
) -> None:
    cache = _cache(url, namespace)

    def load() -> dict[str, int]:
        with loads.get_lock():
            loads.value += 1
        time.sleep(0.3)  # a slow query: the others arrive while it runs
        return {"id": 42}

    gate = threading.Barrier(threads)

    def call(_: int) -> Any:
        gate.wait()
        return cache.get_or_load("user:42", load, ttl=60)

    start.wait()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(call, range(threads)))
    out.put(sum(r == {"id": 42} for r in results))
    cache.close()


def _steady_worker(
    url: str, namespace: str, threads: int, seconds: float, ttl: float, start: Any, loads: Any
) -> None:
    cache = _cache(url, namespace)

    def load() -> int:
        with loads.get_lock():
            loads.value += 1
        time.sleep(0.02)
        return 1

    def hammer(_: int) -> int:
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline and n < 100_000:
            cache.get_or_load("hot", load, ttl=ttl, early_refresh=0)
            n += 1
        return n

    start.wait()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(hammer, range(threads)))
    cache.close()


def _run(target: Any, args: tuple[Any, ...]) -> list[Any]:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    return procs


def test_cold_key_200_callers_4_processes_one_load(redis_url: str, namespace: str) -> None:
    """200 concurrent callers over 4 processes missing one cold key: exactly 1 load."""
    ctx = mp.get_context("spawn")
    start, loads, out = ctx.Barrier(PROCESSES), ctx.Value("i", 0), ctx.Queue()
    procs = _run(_cold_key_worker, (redis_url, namespace, 50, start, loads, out))
    answered = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(answered) == 200  # every caller got the value
    assert loads.value == 1
    _cache(redis_url, namespace).clear()


def test_key_expiring_under_steady_load_loads_once_per_expiry(
    redis_url: str, namespace: str
) -> None:
    """A hot key expiring again and again under 40 callers is loaded once per expiry."""
    ctx = mp.get_context("spawn")
    start, loads = ctx.Barrier(PROCESSES), ctx.Value("i", 0)
    seconds, ttl = 2.0, 0.25
    procs = _run(_steady_worker, (redis_url, namespace, 10, seconds, ttl, start, loads))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    expiries = math.ceil(seconds / ttl) + 1
    assert 1 <= loads.value <= expiries + 2, loads.value  # a stampede would be ~40 per expiry
    _cache(redis_url, namespace).clear()
