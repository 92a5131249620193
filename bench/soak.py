"""Soak: several processes under mixed load against one Redis for a bounded time.

Usage::

    python bench/soak.py [--processes 4] [--threads 4] [--minutes 5] [--quick]
                         [--redis-url URL]

Each process runs ``--threads`` threads of mixed calls on one Cache (all processes share
one namespace): 70 % reads of a decorated function with tags over 5,000 rows (a hot
tenth takes most of them), 8 % writes (``invalidate`` of a row, or ``invalidate_tags``
of a group), 10 % ``get_many`` of 20 rows, 2 % ``get_or_load`` of a key never used before
(a keyspace that only grows: tables keyed by key must not), 10 % a named lock (taken,
held briefly, released; 20 names shared by every process).

Printed at the end:

- throughput per 10 s window, summed over the processes (calls per second by kind,
  the hit ratio, calls that raised);
- each process's RSS (``VmRSS`` of /proc/self/status) at its start, after the first
  window (warmed up), and at the end;
- the size of internal tables at the end, per process: the single-flight tables (sync
  and asyncio), background refreshes pending, and in Redis, the leases and locks left.

Verdict: RSS growth from the first window to the end within ``--max-growth-mib`` (8 MiB
by default) per process, no call raised, tables empty at rest. Without ``--redis-url``
(or ``REDIS_URL``) it starts its own server (``cachelayer.testing.RedisServer``) and stops
it at the end. ``--quick`` is a 20 s run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import threading
import time
import uuid
from typing import Any

import redis

from cachelayer import Cache
from cachelayer.testing import RedisServer

ROWS = 5000
GROUPS = 50
WINDOW = 10.0
KINDS = ("read", "write", "get_many", "new_key", "lock")


def rss_kib() -> int:
    """This process's resident set size (VmRSS), in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def worker(index: int, url: str, namespace: str, threads: int, seconds: float, out: Any) -> None:
    """One process: ``threads`` threads of mixed calls for ``seconds``; puts its figures
    on ``out``."""
    rss = {"start": rss_kib()}
    cache = Cache(url, namespace=namespace)
    started = time.monotonic()
    windows = int(seconds // WINDOW) + 1
    counts = [dict.fromkeys((*KINDS, "raised"), 0) for _ in range(windows)]
    hits = [0] * windows
    misses = [0] * windows
    rss_at = [0] * windows  # VmRSS at each window's end
    errors: dict[str, int] = {}  # "<kind>: <exception type>" -> calls that raised
    stop = threading.Event()
    lock = threading.Lock()

    @cache.cached(ttl=60, key="row:{i}", tags=["grp:{g}"])
    def row(i: int, g: int) -> dict[str, int]:
        return {"id": i, "group": g, "at": int(time.time())}

    def pick(rng: random.Random) -> int:
        return rng.randrange(ROWS // 10) if rng.random() < 0.8 else rng.randrange(ROWS)

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        local = dict.fromkeys((*KINDS, "raised"), 0)
        window = 0
        while not stop.is_set():
            roll = rng.random()
            kind = "read"
            try:
                if roll < 0.70:
                    i = pick(rng)
                    row(i, i % GROUPS)
                elif roll < 0.78:
                    kind = "write"
                    i = pick(rng)
                    if rng.random() < 0.8:
                        row.invalidate(i, i % GROUPS)
                    else:
                        cache.invalidate_tags(f"grp:{i % GROUPS}")
                elif roll < 0.88:
                    kind = "get_many"
                    cache.get_many([f"row:{pick(rng)}" for _ in range(20)])
                elif roll < 0.90:
                    kind = "new_key"
                    cache.get_or_load(f"once:{uuid.uuid4().hex}", lambda: 1, ttl=5)
                else:
                    kind = "lock"
                    held = cache.lock(f"job:{rng.randrange(20)}", timeout=5)
                    if held.acquire(blocking_timeout=0.05):
                        held.release()
                local[kind] += 1
            except Exception as exc:
                local["raised"] += 1
                with lock:
                    name = f"{kind}: {type(exc).__name__}"
                    errors[name] = errors.get(name, 0) + 1
            now_window = min(windows - 1, int((time.monotonic() - started) // WINDOW))
            if now_window != window:
                flush(window, local)
                window = now_window
        flush(window, local)

    def flush(window: int, local: dict[str, int]) -> None:
        with lock:
            for name, value in local.items():
                counts[window][name] += value
                local[name] = 0

    def sampler() -> None:
        # hits and misses per window (the Cache's counters, read at each boundary)
        window, last = 0, cache.stats.snapshot()
        while not stop.wait(WINDOW - (time.monotonic() - started) % WINDOW):
            now = cache.stats.snapshot()
            if window < windows:
                hits[window] = now["hits"] - last["hits"]
                misses[window] = now["misses"] - last["misses"]
                rss_at[window] = rss_kib()
            if window == 0:
                rss["warm"] = rss_kib()
            window, last = window + 1, now
        now = cache.stats.snapshot()
        if window < windows:
            hits[window] = now["hits"] - last["hits"]
            misses[window] = now["misses"] - last["misses"]
            rss_at[window] = rss_kib()

    pool = [threading.Thread(target=caller, args=(index * 1000 + n,)) for n in range(threads)]
    pool.append(threading.Thread(target=sampler))
    for thread in pool:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join(30)
    elapsed = time.monotonic() - started
    time.sleep(0.5)  # background refreshes settle
    runner = cache.engine.runner
    tables = {
        "flights": len(runner._flights._flights),
        "async_flights": len(runner._aflights._flights),
        "refresh_pending": _pending(runner.refresher),
    }
    rss["end"] = rss_kib()
    rss.setdefault("warm", rss["start"])
    cache.close()
    out.put(
        {
            "index": index,
            "elapsed": elapsed,
            "counts": counts,
            "hits": hits,
            "misses": misses,
            "rss": rss,
            "rss_at": rss_at,
            "errors": errors,
            "tables": tables,
        }
    )


def _pending(refresher: Any) -> int:
    """Background refreshes running or queued (the refresher's own set of keys)."""
    return len(refresher._running)


def leftovers(url: str, namespace: str) -> dict[str, int]:
    """Leases and locks of ``namespace`` still in Redis (leases expire by lease_ttl,
    locks on release or by their timeout)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{{{namespace}:*", count=1000)]
    finally:
        client.close()
    return {
        "leases": sum(k.endswith(":lease") for k in keys),
        "locks": sum(k.endswith(":lock") for k in keys),
    }


def report(results: list[dict[str, Any]], url: str, namespace: str, growth_mib: float) -> bool:
    windows = max(len(r["counts"]) for r in results)
    print(f"\nthroughput per {WINDOW:.0f} s window, {len(results)} processes (calls/s)\n")
    print(
        "| window | reads | writes | get_many | new keys | locks | all | hit ratio | raised "
        "| RSS (MiB, mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    raised_total = 0
    elapsed = max(r["elapsed"] for r in results)
    for w in range(windows):
        span = min(WINDOW, elapsed - w * WINDOW)
        if span <= 0.5:
            continue
        sums = {k: sum(r["counts"][w][k] for r in results) for k in (*KINDS, "raised")}
        hits = sum(r["hits"][w] for r in results)
        misses = sum(r["misses"][w] for r in results)
        raised_total += sums["raised"]
        rates = " | ".join(f"{sums[k] / span:,.0f}" for k in KINDS)
        total = sum(sums[k] for k in KINDS) / span
        ratio = hits / max(1, hits + misses)
        rss_mib = sum(r["rss_at"][w] for r in results) / len(results) / 1024
        print(
            f"| {w * WINDOW:.0f}-{w * WINDOW + span:.0f} s | {rates} | {total:,.0f} | "
            f"{ratio:.3f} | {sums['raised']} | {rss_mib:.1f} |"
        )
    errors: dict[str, int] = {}
    for r in results:
        for name, count in r["errors"].items():
            errors[name] = errors.get(name, 0) + count
    if errors:
        print("\ncalls that raised: " + ", ".join(f"{n} x{c}" for n, c in sorted(errors.items())))
    print("\nRSS per process (MiB)\n")
    print("| process | start | after first window | end | growth since first window |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for r in sorted(results, key=lambda r: r["index"]):
        rss = {k: v / 1024 for k, v in r["rss"].items()}
        growth = rss["end"] - rss["warm"]
        worst = max(worst, growth)
        print(
            f"| {r['index']} | {rss['start']:.1f} | {rss['warm']:.1f} | {rss['end']:.1f} | "
            f"{growth:+.1f} |"
        )
    print("\ninternal tables at the end, per process\n")
    print("| process | single-flight (sync) | single-flight (asyncio) | refreshes pending |")
    print("|---|---|---|---|")
    busy = 0
    for r in sorted(results, key=lambda r: r["index"]):
        t = r["tables"]
        busy += t["flights"] + t["async_flights"]
        print(f"| {r['index']} | {t['flights']} | {t['async_flights']} | {t['refresh_pending']} |")
    left = leftovers(url, namespace)
    print(f"\nin Redis at the end: {left['leases']} leases, {left['locks']} locks")
    ok = worst <= growth_mib and raised_total == 0 and busy == 0 and left["locks"] == 0
    print(
        f"\nverdict: {'OK' if ok else 'CHECK'} (largest RSS growth since the first window "
        f"{worst:+.1f} MiB, bound {growth_mib} MiB; {raised_total} calls raised)"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4, help="threads per process")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="a 20 s run")
    parser.add_argument("--max-growth-mib", type=float, default=8.0)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.minutes * 60
    server = None if args.redis_url else RedisServer().start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    namespace = "soak" + uuid.uuid4().hex[:8]
    print(
        f"soak: {args.processes} processes x {args.threads} threads, {seconds:.0f} s, "
        f"namespace {namespace}, {url}"
    )
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [
        context.Process(target=worker, args=(n, url, namespace, args.threads, seconds, out))
        for n in range(args.processes)
    ]
    try:
        for proc in procs:
            proc.start()
        results = [out.get(timeout=seconds + 120) for _ in procs]
        for proc in procs:
            proc.join(30)
        report(results, url, namespace, args.max_growth_mib)
        Cache(url, namespace=namespace).clear()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
