"""What callers see when Redis is stopped or frozen under load: one table, one command.

Usage::

    python bench/bench_faults.py [--healthy S] [--fault S] [--after S] [--coroutines N]
                                 [--threads N] [--quick]

For each fault (Redis stopped, then restarted empty; Redis frozen with SIGSTOP, then
resumed with SIGCONT) and each face (N coroutines in one event loop; N threads), callers
call a cached function over 200 keys for ``--healthy`` seconds, then the fault lasts
``--fault`` seconds, then they go on for ``--after`` seconds. Every Cache setting is the
default (250 ms timeouts, breaker: 5 failures, 5 s cooldown). Per run: calls, calls that
raised (caller-visible errors), loader calls (database load), p99 and max latency of a
call during the fault, and recovery: seconds from the fault's end to the first cache hit.

Each run has a private server (``cachelayer.testing.RedisServer``) that this script
alone stops, freezes and resumes, by its pid; loopback only; every run stops by itself.
``--quick`` is a short smoke run (exits 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachelayer import Cache
from cachelayer.testing import RedisServer

KEYS = 200


@dataclass
class Result:
    calls: int = 0
    raised: int = 0
    loads: int = 0
    fault_latencies: list[float] = field(default_factory=list)
    first_hit_after: float | None = None

    def row(self, fault: str, face: str) -> str:
        lat = sorted(self.fault_latencies) or [float("nan")]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        recovery = "none" if self.first_hit_after is None else f"{self.first_hit_after:.2f} s"
        return (
            f"| {fault} | {face} | {self.calls:,} | {self.raised} | {self.loads:,} | "
            f"{p99:.1f} ms | {lat[-1] * 1000:.1f} ms | {recovery} |"
        )


class Schedule:
    """The phases of one run, and the fault applied and ended on time by a thread."""

    def __init__(self, server: RedisServer, fault: str, args: argparse.Namespace) -> None:
        pid = server.pid
        actions: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "stopped": (server.stop, server.start),
            "frozen": (lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT)),
        }
        self.begin, self.end = actions[fault]
        self.args = args
        self.started = time.monotonic()
        self.fault_ended: float | None = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        time.sleep(self.args.healthy)
        self.begin()
        try:
            time.sleep(self.args.fault)
        finally:
            self.end()
            self.fault_ended = time.monotonic()

    def phase(self) -> str:
        t = time.monotonic() - self.started
        if t < self.args.healthy:
            return "healthy"
        return "fault" if self.fault_ended is None else "after"

    def over(self) -> bool:
        total = self.args.healthy + self.args.fault + self.args.after
        return time.monotonic() - self.started >= total


def record(result: Result, schedule: Schedule, took: float, hit: bool) -> None:
    result.calls += 1
    phase = schedule.phase()
    if phase == "fault":
        result.fault_latencies.append(took)
    elif phase == "after" and hit and result.first_hit_after is None:
        assert schedule.fault_ended is not None
        result.first_hit_after = time.monotonic() - schedule.fault_ended


def run_async(fault: str, args: argparse.Namespace) -> Result:
    result = Result()
    with RedisServer() as server:
        cache = Cache(server.url, namespace="faults" + uuid.uuid4().hex[:6])

        @cache.cached(ttl=300, key="user:{user_id}")
        async def profile(user_id: int) -> dict[str, Any]:
            result.loads += 1
            await asyncio.sleep(0.002)  # the database
            return {"id": user_id}

        async def main() -> None:
            schedule = Schedule(server, fault, args)
            schedule.thread.start()

            async def caller(i: int) -> None:
                j = i
                while not schedule.over():
                    j += 1
                    hits = cache.stats.hits
                    t0 = time.perf_counter()
                    try:
                        await profile(j % KEYS)
                    except Exception:
                        result.raised += 1
                    record(result, schedule, time.perf_counter() - t0, cache.stats.hits > hits)
                    await asyncio.sleep(0.001)

            await asyncio.gather(*(caller(i) for i in range(args.coroutines)))
            schedule.thread.join()
            await cache.aclear()
            await cache.aclose()

        asyncio.run(main())
        cache.close()
    return result


def run_threads(fault: str, args: argparse.Namespace) -> Result:
    result = Result()
    lock = threading.Lock()
    with RedisServer() as server:
        cache = Cache(server.url, namespace="faults" + uuid.uuid4().hex[:6])

        @cache.cached(ttl=300, key="user:{user_id}")
        def profile(user_id: int) -> dict[str, Any]:
            with lock:
                result.loads += 1
            time.sleep(0.002)  # the database
            return {"id": user_id}

        schedule = Schedule(server, fault, args)

        def caller(i: int) -> None:
            j = i
            while not schedule.over():
                j += 1
                hits = cache.stats.hits
                t0 = time.perf_counter()
                try:
                    profile(j % KEYS)
                    failed = False
                except Exception:
                    failed = True
                took = time.perf_counter() - t0
                with lock:
                    result.raised += failed
                    record(result, schedule, took, cache.stats.hits > hits)
                time.sleep(0.001)

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(args.threads)]
        schedule.thread.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        schedule.thread.join()
        cache.clear()
        cache.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--healthy", type=float, default=1.0)
    parser.add_argument("--fault", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=7.0)
    parser.add_argument("--coroutines", type=int, default=100)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.healthy, args.fault, args.after = 0.3, 0.4, 0.6
    print(
        f"# {args.healthy:g} s healthy, {args.fault:g} s of fault, {args.after:g} s after; "
        f"{args.coroutines} coroutines / {args.threads} threads; Cache defaults"
    )
    print(
        "| fault | callers | calls | raised | loader calls | p99 during fault "
        "| max during fault | first hit after the fault |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for fault in ("stopped", "frozen"):
        print(run_async(fault, args).row(fault, f"{args.coroutines} coroutines"), flush=True)
        print(run_threads(fault, args).row(fault, f"{args.threads} threads"), flush=True)


if __name__ == "__main__":
    main()
