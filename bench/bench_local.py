"""The local tier, measured: hit cost against in-process peers, admission against plain
LRU on traces, and coherence across processes.

Usage::

    python bench/bench_local.py [hit] [admission] [coherence] [--quick]
                                [--redis-url URL] [--processes N] [--writes N]
                                [--window S] [--json]

With no section named, all three run. Redis: ``--redis-url`` or ``REDIS_URL`` when set;
otherwise a private server (:class:`cachelayer.testing.RedisServer`).

- **hit**: a decorated hit served by the local tier (sync and awaited), ``cache.get``
  from the tier, and for reference ``functools.lru_cache`` and cachetools' ``@cached``
  (if installed), a decorated Redis hit without the tier, each the median of rounds.
- **admission**: hit ratio of the tier's S3-FIFO against plain LRU of the same size on a
  Zipf trace (s=0.99) and on a scan-heavy one (the Zipf trace with long runs of
  one-hit keys mixed in). No I/O.
- **coherence**: ``--processes`` reader processes (spawned; one reads with ``aget`` in
  an event loop) read one key through their local tiers in a loop while this process
  writes ``--writes`` new versions. For each write, the time from ``set`` returning to
  the moment no reader serves an older version (p50/p99/max); reads that start more
  than ``--window`` seconds after a newer write returned and still see an older value
  are stale reads. The exit status is 1 if there was any (tests/test_local_redis.py
  runs this section).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cachelayer import Cache
from cachelayer._local import S3Fifo, _Slot
from cachelayer.testing import RedisServer

PROFILE = {
    "id": 42,
    "username": "ada.lovelace",
    "name": "Ada Lovelace",
    "email": "ada.lovelace@example.com",
    "roles": ["admin", "editor"],
    "plan": "pro",
}


@contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    url = given or os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


# -- hit cost --------------------------------------------------------------------------


def per_op_ns(fn: Callable[[], object], ops: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(ops):
            fn()
        times.append((time.perf_counter_ns() - start) / ops)
    return statistics.median(times)


def bench_hit(url: str, quick: bool) -> dict[str, float]:
    ops, rounds = (2000, 5) if quick else (20000, 15)
    ns = f"bl-{uuid.uuid4().hex[:8]}"
    local = Cache(url, namespace=ns, local={"max_entries": 1000})
    plain = Cache(url, namespace=ns + "p")
    assert local.wait_local(5)

    @local.cached(ttl=3600, key="user:{user_id}")
    def get_user(user_id: int) -> dict[str, Any]:
        return PROFILE

    @local.cached(ttl=3600, key="auser:{user_id}")
    async def aget_user(user_id: int) -> dict[str, Any]:
        return PROFILE

    @plain.cached(ttl=3600, key="user:{user_id}")
    def redis_user(user_id: int) -> dict[str, Any]:
        return PROFILE

    @functools.lru_cache(maxsize=1000)
    def lru_user(user_id: int) -> dict[str, Any]:
        return PROFILE

    results: dict[str, float] = {}
    for _ in range(3):  # fill, then a store hit that the tier keeps
        get_user(42)
        redis_user(42)
        local.get("k") if local.get("k") is not None else local.set("k", PROFILE, 3600)
    results["@cache.cached hit, local tier"] = per_op_ns(lambda: get_user(42), ops, rounds)
    results["cache.get(k), local tier"] = per_op_ns(lambda: local.get("k"), ops, rounds)

    async def awaited() -> float:
        for _ in range(3):
            await aget_user(42)
        times = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(ops):
                await aget_user(42)
            times.append((time.perf_counter_ns() - start) / ops)
        return statistics.median(times)

    results["await @cache.cached hit, local tier"] = asyncio.run(awaited())
    results["functools.lru_cache hit"] = per_op_ns(lambda: lru_user(42), ops, rounds)
    try:
        import cachetools

        @cachetools.cached(cachetools.TTLCache(maxsize=1000, ttl=3600))
        def ct_user(user_id: int) -> dict[str, Any]:
            return PROFILE

        ct_user(42)
        results["cachetools @cached(TTLCache) hit"] = per_op_ns(lambda: ct_user(42), ops, rounds)
    except ImportError:
        print("(cachetools not installed: pip install cachetools to compare)")
    results["@cache.cached hit, Redis only"] = per_op_ns(
        lambda: redis_user(42), max(100, ops // 20), rounds
    )
    hits = local.stats.local_hits
    local.clear()
    plain.clear()
    local.close()
    plain.close()
    print("\n[hit cost] median of rounds, ns per call")
    base = results["functools.lru_cache hit"]
    for name, value in results.items():
        print(f"  {name:<40} {value:10.0f} ns   {value / base:6.1f}x lru_cache")
    print(f"  (local hits counted: {hits})")
    return results


# -- admission -------------------------------------------------------------------------


def zipf_trace(n: int, keys: int, s: float, rng: random.Random) -> list[int]:
    weights = [1.0 / (i + 1) ** s for i in range(keys)]
    return rng.choices(range(keys), weights=weights, k=n)


def scan_trace(n: int, keys: int, rng: random.Random) -> list[int]:
    """The Zipf trace with one-hit scans (runs of never-repeated keys) mixed in."""
    base = zipf_trace(n, keys, 0.99, rng)
    out: list[int] = []
    fresh = keys
    for i, key in enumerate(base):
        out.append(key)
        if i % 1000 == 0:  # a scan of 500 keys nobody reads again
            out.extend(range(fresh, fresh + 500))
            fresh += 500
    return out


def lru_hit_ratio(trace: list[int], size: int) -> float:
    data: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in trace:
        if key in data:
            hits += 1
            data.move_to_end(key)
        else:
            data[key] = None
            if len(data) > size:
                data.popitem(last=False)
    return hits / len(trace)


def s3fifo_hit_ratio(trace: list[int], size: int) -> float:
    fifo = S3Fifo(size, 1 << 62)
    hits = 0
    for key in trace:
        skey = str(key)
        if fifo.get(skey) is not None:
            hits += 1
        else:
            fifo.put(_Slot(skey, None, 0.0, 1, ()))
    return hits / len(trace)


def bench_admission(quick: bool) -> dict[str, dict[str, float]]:
    n = 100_000 if quick else 1_000_000
    keys = 100_000
    rng = random.Random(7)
    traces = {
        "zipf s=0.99": zipf_trace(n, keys, 0.99, rng),
        "zipf + scans": scan_trace(n, keys, rng),
    }
    results: dict[str, dict[str, float]] = {}
    print(f"\n[admission] hit ratio, {n} requests over {keys} keys (+ scans)")
    print(f"  {'trace':<14} {'size':>6} {'LRU':>8} {'S3-FIFO':>8}")
    for name, trace in traces.items():
        for size in (1000, 10_000):
            lru = lru_hit_ratio(trace, size)
            s3 = s3fifo_hit_ratio(trace, size)
            results[f"{name} @{size}"] = {"lru": lru, "s3fifo": s3}
            print(f"  {name:<14} {size:>6} {lru:8.1%} {s3:8.1%}")
    return results


# -- coherence -------------------------------------------------------------------------


def reader(
    url: str, namespace: str, use_async: bool, busy: float, ready: Any, stop: Any, out: Any
) -> None:
    """A reader process: read the key in a loop (100 reads, then ``busy`` seconds idle);
    report the latest start time of a read that returned each version (monotonic clock,
    shared by the processes of a host)."""
    cache = Cache(url, namespace=namespace, local={"max_entries": 100, "max_ttl": 30})
    assert cache.wait_local(10)
    last: dict[int, float] = {}
    clock = time.monotonic

    def record(started: float, value: Any) -> None:
        if value is not None:
            last[value] = started

    if use_async:

        async def loop() -> None:
            ready.set()
            while not stop.is_set():
                for _ in range(100):
                    started = clock()
                    record(started, await cache.aget("k"))
                await asyncio.sleep(busy)

        asyncio.run(loop())
    else:
        ready.set()
        while not stop.is_set():
            for _ in range(100):
                started = clock()
                record(started, cache.get("k"))
            time.sleep(busy)
    out.put((last, cache.stats.local_hits, cache.stats.hits))
    cache.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_coherence(
    url: str, processes: int, writes: int, window: float, busy: float
) -> dict[str, Any]:
    namespace = f"coh-{uuid.uuid4().hex[:8]}"
    writer = Cache(url, namespace=namespace, publish_invalidations=True)
    writer.set("k", 0, 3600)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(processes)]
    procs = [
        ctx.Process(target=reader, args=(url, namespace, i == 1, busy, readies[i], stop, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for r in readies:
        assert r.wait(30), "a reader did not start"
    time.sleep(0.2)
    returned: dict[int, float] = {}
    rng = random.Random(1)
    for version in range(1, writes + 1):
        writer.set("k", version, 3600)
        returned[version] = time.monotonic()
        time.sleep(rng.uniform(0.005, 0.02))
    time.sleep(max(0.2, window))
    stop.set()
    reports = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    writer.clear()
    writer.close()
    # For each write: when did the last read of an older version start (any process)?
    delays: list[float] = []
    stale = 0
    for version, at in returned.items():
        latest_old = max(
            (t for last, _, _ in reports for v, t in last.items() if v < version),
            default=0.0,
        )
        delays.append(max(0.0, latest_old - at))
        stale += latest_old > at + window
    local_hits = sum(r[1] for r in reports)
    hits = sum(r[2] for r in reports)
    result = {
        "processes": processes,
        "writes": writes,
        "p50_ms": percentile(delays, 0.5) * 1000,
        "p99_ms": percentile(delays, 0.99) * 1000,
        "max_ms": max(delays) * 1000,
        "stale_after_window": stale,
        "window_s": window,
        "idle_s": busy,
        "local_hit_share": local_hits / hits if hits else 0.0,
    }
    print(
        f"\n[coherence] {processes} reader processes (1 async; {busy * 1000:g} ms idle per "
        f"100 reads), {writes} writes: from set() "
        f"returning to no process serving an older value: p50 {result['p50_ms']:.2f} ms, "
        f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms; "
        f"stale reads after {window} s: {stale}; "
        f"{result['local_hit_share']:.0%} of reader hits served locally"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", choices=["hit", "admission", "coherence", []])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--redis-url")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--writes", type=int, default=None)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument(
        "--idle",
        type=float,
        default=0.001,
        help="seconds each reader idles after 100 reads (0: CPU-bound readers)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    sections = args.sections or ["hit", "admission", "coherence"]
    results: dict[str, Any] = {}
    print(f"python {sys.version.split()[0]} | {os.cpu_count()} CPUs")
    with redis_url(args.redis_url) as url:
        if "hit" in sections:
            results["hit"] = bench_hit(url, args.quick)
        if "admission" in sections:
            results["admission"] = bench_admission(args.quick)
        if "coherence" in sections:
            writes = args.writes or (50 if args.quick else 500)
            results["coherence"] = bench_coherence(
                url, args.processes, writes, args.window, args.idle
            )
    if args.json:
        print(json.dumps(results))
    return 1 if results.get("coherence", {}).get("stale_after_window") else 0


if __name__ == "__main__":
    sys.exit(main())
