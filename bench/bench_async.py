"""Async reads under concurrency: raw redis.asyncio, the multiplexing client and cachelayer.

Usage::

    python bench/bench_async.py [--duration S] [--rounds N] [--concurrency 1,10,100,1000]
                                [--variants raw,cl,cldec,...] [--redis-url URL] [--quick]

N coroutines in one event loop each read their own ~300-byte key and decode it with
orjson (cachelayer decodes its own entries), for ``--duration`` seconds per cell (after a
short warm-up that opens connections).
Every round runs every (N, variant) cell, variants in a fresh shuffled order per N (fixed
seed), so drift on a noisy machine reaches every variant alike. Per cell: ops/s, p50/p99
latency of one call as its coroutine sees it, client CPU per op (``process_time`` / ops:
this process only, not the server), and errors (any exception a call raised; the worker
goes on). Then the ratios multiplexer / raw per N, over the rounds' totals.

Variants:
    raw     ``redis.asyncio.Redis.from_url(url)``: the default pool, a connection per
            in-flight call, no timeouts. redis-py 8 caps that pool at 100 connections and
            then raises ``MaxConnectionsError``: at N=1000 most calls fail.
    rawmax  the same with ``max_connections=10_000``: a connection per coroutine.
    raw50   the same with 50 ms socket and connect timeouts (the store's defaults: the
            issue's set-up, where timeouts fire under load).
    mux     ``Multiplexer`` (one connection), 1 s timeouts.
    mux50   ``Multiplexer`` with the store's 50 ms timeouts.
    mux2    ``Multiplexer`` over two connections, 1 s timeouts.
    cl      ``await cache.aget(key)``: a cachelayer Cache on Redis with every default.
    cldec   ``await get_profile(key)``: a decorated ``async def`` hit, same Cache.
    rawmany ``MGET`` of 10 keys + orjson.loads of each (default pool; one op = 10 keys).
    clmany  ``await cache.aget_many(10 keys)`` (one op = 10 keys).
    rawfill a miss that fills: ``GET`` (absent) + ``SET`` of the encoded value, a fresh key
            each op (default pool).
    clfill  ``await cache.aget_or_load(fresh key, loader)``: miss, lease, load, guarded
            fill (three round trips), a fresh key each op.

Redis: ``--redis-url`` or ``REDIS_URL`` when set (only keys under a fresh namespace are
written, and deleted at the end); otherwise a private server started with
:class:`cachelayer.testing.RedisServer`. ``--quick`` is the CI smoke run (a few seconds,
always exits 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio

from cachelayer import Cache
from cachelayer.backends._multiplex import Multiplexer
from cachelayer.testing import RedisServer

#: A user profile as an API would cache it; its orjson encoding is ~300 bytes.
PROFILE: dict[str, Any] = {
    "id": 42,
    "username": "ada.lovelace",
    "name": "Ada Lovelace",
    "email": "ada.lovelace@example.com",
    "created_at": "2024-01-15T09:30:00Z",
    "is_active": True,
    "roles": ["admin", "editor"],
    "locale": "en-GB",
    "timezone": "Europe/London",
    "avatar_url": "https://cdn.example.com/avatars/42.png",
    "follower_count": 1234,
    "plan": "pro",
}
BASELINES = {
    "mux": "raw",
    "mux50": "raw",
    "mux2": "raw",
    "raw50": "raw",
    "rawmax": "raw",
    "cl": "raw",
    "cldec": "raw",
    "clmany": "rawmany",
    "clfill": "rawfill",
}
BASES = {"raw", "rawmany", "rawfill"}

#: Reads (and decodes) the value(s) for the coroutine's key.
Read = Callable[[str], Awaitable[Any]]


@dataclass
class Cell:
    """Totals of one (N, variant) over all rounds."""

    ops: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run_cell(
    read: Read, keys: list[str], warmup: float, duration: float, cell: Cell
) -> None:
    """Run len(keys) coroutines for warmup + duration seconds; add the measured part."""
    stop = False
    measuring = False
    latencies = cell.latencies
    counts = [0, 0]  # ops, errors while measuring

    async def worker(key: str) -> None:
        clock = time.perf_counter
        while not stop:
            started = clock()
            try:
                await read(key)
            except Exception as exc:
                if measuring:
                    counts[1] += 1
                    cell.first_error = cell.first_error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.001)  # an error storm must not starve the loop
                continue
            if measuring:
                latencies.append(clock() - started)
                counts[0] += 1

    tasks = [asyncio.create_task(worker(key)) for key in keys]
    await asyncio.sleep(warmup)
    measuring = True
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.sleep(duration)
    measuring = False
    cell.seconds += time.perf_counter() - wall
    cell.cpu += time.process_time() - cpu
    stop = True
    await asyncio.gather(*tasks)
    cell.ops += counts[0]
    cell.errors += counts[1]


def make_client(
    variant: str, url: str, ns: str, keys: list[str]
) -> tuple[Read, Callable[[], Awaitable[None]]]:
    """The read function of a variant and how to close its client."""
    loads = orjson.loads
    if variant.startswith("cl"):
        cache = Cache(url, namespace=ns + "-cl", jitter=0.0)
        cache.set_many(dict.fromkeys(keys, PROFILE), ttl=3600)
        position = {key: i for i, key in enumerate(keys)}
        fresh = iter(range(10**9))

        @cache.cached(ttl=3600, key="{key}")
        async def get_profile(key: str) -> dict[str, Any]:
            return PROFILE

        async def load() -> dict[str, Any]:
            return PROFILE

        async def close_cache() -> None:
            await cache.aclear()
            await cache.aclose()

        reads: dict[str, Read] = {
            "cl": cache.aget,
            "cldec": get_profile,
            "clmany": lambda key: cache.aget_many(_group(keys, position[key])),
            "clfill": lambda key: cache.aget_or_load(f"fill:{key}:{next(fresh)}", load),
        }
        return reads[variant], close_cache
    if variant.startswith("raw"):
        options: dict[str, Any] = {}
        if variant == "raw50":
            options = {"socket_timeout": 0.05, "socket_connect_timeout": 0.05}
        elif variant == "rawmax":
            options = {"max_connections": 10_000}
        client = redis.asyncio.Redis.from_url(url, **options)
        position = {key: i for i, key in enumerate(keys)}
        counter = iter(range(10**9))
        encoded = orjson.dumps(PROFILE)

        async def read(key: str) -> Any:
            return loads(await client.get(key))

        async def read_many(key: str) -> Any:
            return [loads(v) for v in await client.mget(_group(keys, position[key]))]

        async def miss_fill(key: str) -> Any:
            fresh = f"{ns}:fill:{key}:{next(counter)}"
            await client.get(fresh)
            await client.set(fresh, encoded, px=3_600_000)
            return PROFILE

        chosen = {"rawmany": read_many, "rawfill": miss_fill}.get(variant, read)
        return chosen, client.aclose
    timeout = 0.05 if variant == "mux50" else 1.0
    mux = Multiplexer.from_url(
        url,
        timeout=timeout,
        connect_timeout=timeout,
        connections=2 if variant == "mux2" else 1,
    )

    async def read_mux(key: str) -> Any:
        return loads(await mux.execute("GET", key))

    return read_mux, mux.close


def _group(keys: list[str], start: int) -> list[str]:
    """The 10 keys from ``start`` on (wrapping): a get_many of one op."""
    return [keys[(start + k) % len(keys)] for k in range(10)]


async def bench(url: str, args: argparse.Namespace) -> dict[tuple[int, str], Cell]:
    ns = f"bench-async-{os.getpid()}-{secrets.token_hex(4)}"
    levels: list[int] = args.concurrency
    keys = [f"{ns}:user:{i}" for i in range(max(max(levels), 10))]
    admin = redis.Redis.from_url(url)
    value = orjson.dumps(PROFILE)
    admin.mset(dict.fromkeys(keys, value))
    clients = {variant: make_client(variant, url, ns, keys) for variant in args.variants}
    cells = {(n, variant): Cell() for n in levels for variant in args.variants}
    rng = random.Random(1234)
    try:
        for _ in range(args.rounds):
            for n in levels:
                order = list(args.variants)
                rng.shuffle(order)
                for variant in order:
                    read = clients[variant][0]
                    await run_cell(read, keys[:n], args.warmup, args.duration, cells[n, variant])
    finally:
        for _, close in clients.values():
            await close()
        for start in range(0, len(keys), 1000):
            admin.delete(*keys[start : start + 1000])
        filled = list(admin.scan_iter(match=f"{ns}:fill:*", count=1000))
        for start in range(0, len(filled), 1000):
            admin.delete(*filled[start : start + 1000])
        admin.close()
    return cells


def report(cells: dict[tuple[int, str], Cell], args: argparse.Namespace) -> None:
    print(
        f"# GET + orjson.loads of a {len(orjson.dumps(PROFILE))}-byte value; "
        f"{args.rounds} round(s) x {args.duration:g} s per cell; Python "
        f"{platform.python_version()}, redis-py {redis.__version__}, {os.cpu_count()} CPUs"
    )
    header = f"{'N':>5}  {'variant':<7} {'ops/s':>9} {'p50 µs':>9} {'p99 µs':>9} "
    print(header + f"{'CPU µs/op':>10} {'errors':>7}")
    for (n, variant), cell in cells.items():
        rate = cell.ops / cell.seconds if cell.seconds else 0.0
        cpu = cell.cpu / cell.ops * 1e6 if cell.ops else float("nan")
        print(
            f"{n:>5}  {variant:<7} {rate:>9,.0f} {cell.percentile(0.5) * 1e6:>9,.0f} "
            f"{cell.percentile(0.99) * 1e6:>9,.0f} {cpu:>10.1f} {cell.errors:>7}"
        )
    others = [v for v in args.variants if BASELINES.get(v) in args.variants]
    if others:
        print(
            "\n# ratios variant / its baseline (ops/s: higher is better; p50, p99, CPU/op: lower)"
        )
        header = f"{'N':>5}  {'variant':<7} {'base':<7} {'ops/s':>7} {'p50':>7} {'p99':>7}"
        print(header + f" {'CPU/op':>7}")
        for n in args.concurrency:
            for variant in others:
                base, cell = cells[n, BASELINES[variant]], cells[n, variant]
                print(
                    f"{n:>5}  {variant:<7} {BASELINES[variant]:<7} "
                    f"{_ratio(cell.ops / cell.seconds, base.ops / base.seconds):>7} "
                    f"{_ratio(cell.percentile(0.5), base.percentile(0.5)):>7} "
                    f"{_ratio(cell.percentile(0.99), base.percentile(0.99)):>7} "
                    f"{_ratio(cell.cpu / max(cell.ops, 1), base.cpu / max(base.ops, 1)):>7}"
                )
    for (n, variant), cell in cells.items():
        if cell.first_error:
            print(f"# first error, N={n} {variant}: {cell.first_error[:160]}")


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base and value == value else "n/a"


@contextlib.contextmanager
def redis_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=0.25, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,10,100,1000")
    parser.add_argument("--variants", default="raw,cl,cldec,rawmany,clmany,rawfill,clfill")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--quick", action="store_true", help="CI smoke run (a few seconds)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 0.2, 0.05, 1
        args.concurrency = "1,100"
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - {*BASES, *BASELINES}
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}")
    with redis_url(args.redis_url) as url:
        cells = asyncio.run(bench(url, args))
    report(cells, args)


if __name__ == "__main__":
    main()
