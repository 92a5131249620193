"""Faults under load: Redis stopped or frozen in the middle of a steady run.

Many callers (coroutines in one loop, or threads) call a cached function for a bounded
time while a fault is applied to this test's own Redis (stopped or SIGSTOP-frozen by its
pid, then restarted or resumed). What the callers must see: every call returns the right
value (the loader answers while the cache is out), no call raises, no call hangs (each is
bounded by the store's timeout, then by the open breaker), and cache hits resume on their
own once the fault ends. The breaker's cooldown is shortened so recovery fits in the test;
the default (5 s) is documented in docs/failure.md.

The only time asserted is a liveness bound far above the timeout (a call that takes
seconds has hung); the figures themselves are bench/ and docs/failure.md's business.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cachelayer import Cache, CircuitBreaker
from cachelayer.testing import RedisServer

HEALTHY, FAULT, AFTER = 0.4, 0.6, 2.0  # seconds of each phase
TOTAL = HEALTHY + FAULT + AFTER
HUNG = 2.0  # a call slower than this has hung (the timeout is 0.25 s)


@dataclass
class Run:
    """What the callers saw, by phase."""

    calls: list[int] = field(default_factory=lambda: [0, 0, 0])
    wrong: int = 0
    raised: list[BaseException] = field(default_factory=list)
    slowest: float = 0.0
    hits_after: int = 0

    def check(self, cache: Cache) -> None:
        assert self.raised == []
        assert self.wrong == 0
        assert all(self.calls), f"a phase made no calls: {self.calls}"
        assert self.slowest < HUNG, f"a call took {self.slowest:.2f} s"
        assert self.hits_after > 0, "cache hits did not resume after the fault"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def cache(server: RedisServer) -> Iterator[Cache]:
    cache = Cache(
        server.url,
        namespace="fault" + uuid.uuid4().hex[:8],
        breaker=CircuitBreaker(threshold=5, cooldown=0.3),
    )
    yield cache
    cache.close()


def stop_and_restart(server: RedisServer) -> tuple[Callable[[], None], Callable[[], None]]:
    return server.stop, server.start


def freeze_and_resume(server: RedisServer) -> tuple[Callable[[], None], Callable[[], None]]:
    pid = server.pid
    return (lambda: os.kill(pid, signal.SIGSTOP)), (lambda: os.kill(pid, signal.SIGCONT))


FAULTS = {"stopped": stop_and_restart, "frozen": freeze_and_resume}


def phase_of(started: float) -> int:
    elapsed = time.monotonic() - started
    return 0 if elapsed < HEALTHY else 1 if elapsed < HEALTHY + FAULT else 2


def conduct(server: RedisServer, fault: str, started: float) -> None:
    """Apply the fault for its phase, then end it (runs beside the callers)."""
    begin, end = FAULTS[fault](server)
    time.sleep(HEALTHY)
    begin()
    try:
        time.sleep(FAULT)
    finally:
        end()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_coroutines_ride_out_the_fault(server: RedisServer, cache: Cache, fault: str) -> None:
    """100 coroutines calling a cached async function: no error, no hang, hits resume."""
    run = Run()

    @cache.cached(ttl=60, key="user:{user_id}")
    async def profile(user_id: int) -> dict[str, Any]:
        return {"id": user_id}

    async def main() -> None:
        started = time.monotonic()
        conductor = asyncio.get_running_loop().run_in_executor(
            None, conduct, server, fault, started
        )

        async def caller(i: int) -> None:
            while time.monotonic() - started < TOTAL:
                phase = phase_of(started)
                hits = cache.stats.hits
                t0 = time.monotonic()
                try:
                    value = await profile(i % 20)
                except Exception as exc:
                    run.raised.append(exc)
                    continue
                run.slowest = max(run.slowest, time.monotonic() - t0)
                run.wrong += value != {"id": i % 20}
                run.calls[phase] += 1
                if phase == 2 and cache.stats.hits > hits:
                    run.hits_after += 1
                await asyncio.sleep(0.001)

        await asyncio.gather(*(caller(i) for i in range(100)))
        await conductor
        await cache.aclear()
        await cache.aclose()

    asyncio.run(main())
    run.check(cache)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_threads_ride_out_the_fault(server: RedisServer, cache: Cache, fault: str) -> None:
    """32 threads calling a cached function: no error, no hang, hits resume."""
    run = Run()
    lock = threading.Lock()

    @cache.cached(ttl=60, key="user:{user_id}")
    def profile(user_id: int) -> dict[str, Any]:
        return {"id": user_id}

    started = time.monotonic()

    def caller(i: int) -> None:
        while time.monotonic() - started < TOTAL:
            phase = phase_of(started)
            hits = cache.stats.hits
            t0 = time.monotonic()
            try:
                value = profile(i % 20)
            except Exception as exc:
                with lock:
                    run.raised.append(exc)
                continue
            took = time.monotonic() - t0
            with lock:
                run.slowest = max(run.slowest, took)
                run.wrong += value != {"id": i % 20}
                run.calls[phase] += 1
                if phase == 2 and cache.stats.hits > hits:
                    run.hits_after += 1
            time.sleep(0.001)

    conductor = threading.Thread(target=conduct, args=(server, fault, started))
    workers = [threading.Thread(target=caller, args=(i,)) for i in range(32)]
    conductor.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    conductor.join()
    cache.clear()
    run.check(cache)
