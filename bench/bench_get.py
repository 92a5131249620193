"""What a cache hit costs in cachelayer, against raw redis-py, measured in one run.

Usage::

    python bench/bench_get.py [--rounds N] [--ops N] [--redis-url URL] [--quick]
                              [--breakdown] [--pin-cpu N]

Every round runs every variant once (``--ops`` calls each) in a fresh shuffled order
(fixed seed), for ``--rounds`` rounds, all in one process and one event loop, so drift on
a noisy machine reaches every variant alike. Many short rounds beat a few long ones: the
variants of one round run within a fraction of a second of each other. The table shows
the median per-op time over rounds with p25/p75, the ratio of medians to the variant's
baseline (raw redis-py for sync variants, raw redis.asyncio for async ones) and "paired",
the median over rounds of the per-round ratio, which cancels drift between rounds and is
the figure the target check uses. GC is off inside each timed batch.

Redis: ``--redis-url`` or ``REDIS_URL`` when set; otherwise a private server started with
:class:`cachelayer.testing.RedisServer`. On a shared server only keys under a fresh,
unique namespace are written, and they are deleted at the end (nothing is flushed).

``--breakdown`` also times the pieces of a decorated hit in isolation (key building,
envelope decode, breaker, clock, the GET itself, the whole hit over a no-I/O store) to
show where cachelayer's own per-call time goes. ``--pin-cpu N`` pins this process and
the private server to one CPU: on a small VM the round trip otherwise flips between two
speeds as the scheduler moves the processes. ``--quick`` is the CI smoke run (a few
seconds); it still prints the table and exits 0. The 1.10x target is reported, never
enforced: a noisy runner must not fail CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import random
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio

import cachelayer
from cachelayer import Cache
from cachelayer.backends import MemoryStore

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
USER_ID = 42
TTL = 3600

SyncBatch = Callable[[int], int]  # ops -> elapsed ns of the timed part
AsyncBatch = Callable[[int], Awaitable[int]]


def timed(loop: Callable[[int], object], n: int) -> int:
    """Run ``loop(n)`` with GC off; return the elapsed ns."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        loop(n)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


async def atimed(loop: Callable[[int], Awaitable[object]], n: int) -> int:
    """``timed`` for a coroutine loop, awaited in the running event loop."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        await loop(n)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


@dataclass
class Variant:
    """One measured thing: a batch callable and the variant it is compared with."""

    name: str
    section: str
    baseline: str  # name of the baseline variant ("" for a baseline itself)
    sync: SyncBatch | None = None
    async_: AsyncBatch | None = None
    ops_scale: float = 1.0  # miss variants create keys, so they run fewer ops
    per_op_ns: list[float] = field(default_factory=list)

    async def run(self, ops: int) -> float:
        n = max(1, int(ops * self.ops_scale))
        elapsed = self.sync(n) if self.sync is not None else await self.async_(n)  # type: ignore[misc]
        return elapsed / n


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    p25, p50, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return p25, p50, p75


# -- the variants ---------------------------------------------------------------------------


class Bench:
    """Builds every variant over one Redis URL, runs the rounds and cleans up its keys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ns = f"bench-{os.getpid()}-{secrets.token_hex(4)}"
        self.raw_key = f"{self.ns}:raw:user:{USER_ID}"
        self.raw_bytes = orjson.dumps(PROFILE)
        self.r = redis.Redis.from_url(url)  # default options: the baseline client
        self.ar = redis.asyncio.Redis.from_url(url)
        self.cache = Cache(url, namespace=self.ns)
        self.fill_cache = Cache(url, namespace=self.ns)  # miss path: its own stats
        self.mem = Cache("memory://", namespace=self.ns)
        self._counter = 0

        @self.cache.cached(ttl=TTL, key="user:{user_id}")
        def get_user(user_id: int) -> dict[str, Any]:
            return dict(PROFILE)

        @self.cache.cached(ttl=TTL, key="user:{user_id}")
        async def aget_user(user_id: int) -> dict[str, Any]:
            return dict(PROFILE)

        @self.mem.cached(ttl=TTL, key="user:{user_id}")
        def mem_get_user(user_id: int) -> dict[str, Any]:
            return dict(PROFILE)

        self.get_user, self.aget_user, self.mem_get_user = get_user, aget_user, mem_get_user
        self.key = f"user:{USER_ID}"  # what the decorators build, so all hit one entry

    # -- setup and checks ---------------------------------------------------------------

    async def prepare(self) -> None:
        """Write the entries, then check every hit variant returns the profile."""
        self.r.set(self.raw_key, self.raw_bytes, ex=TTL)
        self.get_user(USER_ID)  # miss -> load -> fill
        self.mem_get_user(USER_ID)
        self.envelope = self.cache.store.get(self.get_user.key(USER_ID))
        assert self.envelope is not None, "the decorated fill did not reach Redis"
        self.mem_dict = {self.key: self.raw_bytes}
        checks = {
            "raw": orjson.loads(self.r.get(self.raw_key)),  # type: ignore[arg-type]
            "get": self.cache.get(self.key),
            "decorated": self.get_user(USER_ID),
            "mem get": self.mem.get(self.key),
            "mem decorated": self.mem_get_user(USER_ID),
            "araw": orjson.loads(await self.ar.get(self.raw_key)),  # type: ignore[arg-type]
            "aget": await self.cache.aget(self.key),
            "adecorated": await self.aget_user(USER_ID),
        }
        wrong = [name for name, value in checks.items() if value != PROFILE]
        if wrong:
            raise SystemExit(f"bench_get: {', '.join(wrong)} did not return the profile")
        self.cache.stats.reset()
        self.mem.stats.reset()

    def fresh_keys(self, n: int) -> list[str]:
        self._counter += 1
        return [f"miss:{self._counter}:{i}" for i in range(n)]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.r.unlink(*keys[i : i + 1000])

    def variants(self) -> list[Variant]:
        r, ar, cache, mem = self.r, self.ar, self.cache, self.mem
        loads, raw_key, key = orjson.loads, self.raw_key, self.key
        get_user, aget_user, mem_get_user = self.get_user, self.aget_user, self.mem_get_user
        mem_dict = self.mem_dict
        fill_cache, prefix = self.fill_cache, f"{self.ns}:v1:"

        def raw_get(n: int) -> None:
            get = r.get
            for _ in range(n):
                loads(get(raw_key))

        def cache_get(n: int) -> None:
            get = cache.get
            for _ in range(n):
                get(key)

        def decorated(n: int) -> None:
            for _ in range(n):
                get_user(USER_ID)

        def mem_raw(n: int) -> None:
            for _ in range(n):
                loads(mem_dict[key])

        def mem_get(n: int) -> None:
            get = mem.get
            for _ in range(n):
                get(key)

        def mem_decorated(n: int) -> None:
            for _ in range(n):
                mem_get_user(USER_ID)

        async def araw_get(n: int) -> None:
            get = ar.get
            for _ in range(n):
                loads(await get(raw_key))

        async def acache_get(n: int) -> None:
            get = cache.aget
            for _ in range(n):
                await get(key)

        async def adecorated(n: int) -> None:
            for _ in range(n):
                await aget_user(USER_ID)

        def raw_miss_fill(n: int) -> int:
            keys = [f"{self.ns}:raw:{k}" for k in self.fresh_keys(n)]

            def loop(_: int) -> None:
                get, set_, dumps = r.get, r.set, orjson.dumps
                for k in keys:
                    if get(k) is None:
                        set_(k, dumps(PROFILE), ex=TTL)

            elapsed = timed(loop, n)
            self.delete(keys)
            return elapsed

        def get_or_load(n: int) -> int:
            keys = self.fresh_keys(n)

            def loop(_: int) -> None:
                load = fill_cache.get_or_load
                for k in keys:
                    load(k, lambda: PROFILE, TTL)

            elapsed = timed(loop, n)
            self.delete([prefix + k for k in keys] + [f"{{{prefix}{k}}}:lease" for k in keys])
            return elapsed

        ten = [f"many:{i}" for i in range(10)]
        cache.set_many(dict.fromkeys(ten, PROFILE), TTL)

        def ten_gets(n: int) -> None:
            get = cache.get
            for _ in range(n):
                for k in ten:
                    get(k)

        def get_many(n: int) -> None:
            many = cache.get_many
            for _ in range(n):
                many(ten)

        def sync(loop: Callable[[int], None]) -> SyncBatch:
            return lambda n: timed(loop, n)

        def async_(loop: Callable[[int], Awaitable[None]]) -> AsyncBatch:
            return lambda n: atimed(loop, n)

        redis_sync = "sync, Redis"
        memory = "memory:// (in-process; ratio vs raw redis-py sync)"
        redis_async = "async, Redis (one event loop)"
        miss = "miss + fill, Redis (fresh key per op)"
        many = "10 keys, Redis (one op reads all 10)"
        tbase = "10 x cache.get(k)"
        base, abase, mbase = (
            "raw redis-py: orjson.loads(r.get(k))",
            "raw redis.asyncio: orjson.loads(await r.get(k))",
            "raw redis-py: GET miss + SET orjson bytes",
        )
        return [
            Variant(base, redis_sync, "", sync=sync(raw_get)),
            Variant("cache.get(k)", redis_sync, base, sync=sync(cache_get)),
            Variant("@cache.cached hit: get_user(42)", redis_sync, base, sync=sync(decorated)),
            Variant("dict[k] + orjson.loads (floor)", memory, base, sync=sync(mem_raw)),
            Variant("memory cache.get(k)", memory, base, sync=sync(mem_get)),
            Variant("memory @cache.cached hit", memory, base, sync=sync(mem_decorated)),
            Variant(abase, redis_async, "", async_=async_(araw_get)),
            Variant("await cache.aget(k)", redis_async, abase, async_=async_(acache_get)),
            Variant("await @cache.cached hit", redis_async, abase, async_=async_(adecorated)),
            Variant(tbase, many, "", sync=sync(ten_gets), ops_scale=0.25),
            Variant("cache.get_many(10 keys)", many, tbase, sync=sync(get_many), ops_scale=0.25),
            Variant(mbase, miss, "", sync=raw_miss_fill, ops_scale=0.25),
            Variant("cache.get_or_load(fresh k)", miss, mbase, sync=get_or_load, ops_scale=0.25),
        ]

    # -- cleanup ------------------------------------------------------------------------

    def cleanup(self) -> int:
        """Delete every key this run wrote (they all start with its unique namespace)."""
        count = 0
        for pattern in (f"{self.ns}:*", f"{{{self.ns}:*"):
            keys = list(self.r.scan_iter(match=pattern, count=1000))
            if keys:
                self.delete(keys)
                count += len(keys)
        return count

    async def close(self) -> None:
        await self.cache.aclose()
        self.fill_cache.close()
        self.mem.close()
        await self.ar.aclose()
        self.r.close()


# -- running and reporting ------------------------------------------------------------------


async def run_rounds(variants: list[Variant], rounds: int, ops: int, warmup: int) -> None:
    for _ in range(warmup):
        for v in variants:
            await v.run(max(50, ops // 4))
    for v in variants:
        v.per_op_ns.clear()
    order = list(variants)
    shuffle = random.Random(20240601).shuffle  # fixed seed: the same orders every run
    for _ in range(rounds):
        shuffle(order)  # a fresh order each round, so no variant always follows another
        for v in order:
            v.per_op_ns.append(await v.run(ops))


def paired_ratio(v: Variant, base: Variant) -> float:
    return statistics.median(a / b for a, b in zip(v.per_op_ns, base.per_op_ns, strict=True))


def print_table(variants: list[Variant]) -> dict[str, float]:
    """Print the results; return the ratio of medians of each variant to its baseline."""
    by_name = {v.name: v for v in variants}
    header = f"{'variant':<52} {'median':>8} {'p25':>8} {'p75':>8} {'ratio':>7} {'paired':>7}"
    print(header)
    print(f"{'':<52} {'us/op':>8} {'us/op':>8} {'us/op':>8} {'':>7} {'':>7}".replace("us", "µs"))
    print("-" * len(header))
    ratios: dict[str, float] = {}
    section = ""
    for v in variants:
        if v.section != section:
            section = v.section
            print(f"[{section}]")
        p25, med, p75 = (q / 1000 for q in quartiles(v.per_op_ns))
        if v.baseline:
            base = by_name[v.baseline]
            ratio = med / (statistics.median(base.per_op_ns) / 1000)
            paired = f"{paired_ratio(v, base):.2f}x"
        else:
            ratio, paired = 1.0, "base"
        ratios[v.name] = ratio
        print(f"  {v.name:<50} {med:8.2f} {p25:8.2f} {p75:8.2f} {ratio:6.2f}x {paired:>7}")
    return ratios


def environment(r: redis.Redis, source: str) -> str:
    info = r.info("server")
    server = (
        f"valkey {info['valkey_version']}"
        if "valkey_version" in info
        else f"redis {info.get('redis_version', '?')}"
    )
    try:
        import hiredis

        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "no hiredis (pure-Python parser)"
    return (
        f"python {platform.python_version()} ({sys.implementation.name}) | redis-py "
        f"{redis.__version__} | {parser} | orjson {orjson.__version__} | server {server} "
        f"({source}) | {os.cpu_count()} CPUs, {platform.system().lower()} "
        f"{platform.machine()}\ncachelayer {cachelayer.__version__} from "
        f"{os.path.dirname(cachelayer.__file__)}"
    )


# -- --breakdown: the pieces of a decorated hit, timed alone --------------------------------


class _FixedStore(MemoryStore):
    """A store whose GET answers one envelope at once: the read path with no I/O at all."""

    def __init__(self, envelope: bytes) -> None:
        super().__init__()
        self.envelope = envelope

    def get(self, key: str) -> bytes | None:
        return self.envelope


def breakdown_variants(bench: Bench) -> list[Variant]:
    """Pieces of a decorated Redis hit. Reaches into private attributes on purpose."""
    cache, envelope, r = bench.cache, bench.envelope, bench.r
    stub = Cache(_FixedStore(envelope), namespace=bench.ns)

    @stub.cached(ttl=TTL, key="user:{user_id}")
    def stub_user(user_id: int) -> dict[str, Any]:
        return dict(PROFILE)

    full = bench.get_user.key(USER_ID)
    store_get, raw_get, raw_key = cache.store.get, r.get, bench.raw_key
    decode, key_of = cache.engine.serializer.loads, bench.get_user.key
    breaker, now_ms, stub_get = cache.engine.runner.breaker, cache.engine.now_ms, stub.get
    payload, loads = bench.raw_bytes, orjson.loads
    pool = getattr(cache.store, "_pool", None)

    def breaker_pair() -> None:
        breaker.allow()
        breaker.success()

    def checkout() -> None:
        assert pool is not None
        pool.release(pool.get_connection())

    rows: list[tuple[str, str, Callable[[], object]]] = [
        ("harness", "empty loop + one call (harness overhead)", lambda: None),
        ("redis_py", "GET via redis-py r.get(k) (generic dispatch)", lambda: raw_get(raw_key)),
        ("store", "GET via RedisStore.get(k) (direct send/read)", lambda: store_get(full)),
        ("orjson", "orjson.loads(payload)", lambda: loads(payload)),
        ("envelope", "Serializer.loads(entry): header+orjson", lambda: decode(envelope)),
        ("key", "key: get_user.key(42) (bind + template + prefix)", lambda: key_of(USER_ID)),
        ("breaker", "breaker.allow() + breaker.success()", breaker_pair),
        ("clock", "engine.now_ms() (freshness clock)", now_ms),
        ("stub_get", "no-I/O store: cache.get(k)", lambda: stub_get(bench.key)),
        ("stub_hit", "no-I/O store: decorated hit (all our CPU)", lambda: stub_user(USER_ID)),
    ]
    if pool is not None:
        rows.append(("pool", "redis-py pool get_connection() + release()", checkout))
    variants = []
    for ident, label, body in rows:

        def run(n: int, body: Callable[[], object] = body) -> None:
            for _ in range(n):
                body()

        variants.append(Variant(label, "breakdown", ident, sync=lambda n, run=run: timed(run, n)))
    return variants


def print_breakdown(parts: list[Variant]) -> None:
    """Print each piece, then what the pieces say about a decorated hit's own cost."""
    print(f"{'piece (each timed alone, same rounds)':<52} {'median':>8} {'p25':>8} {'p75':>8}")
    print(f"{'':<52} {'µs/op':>8} {'µs/op':>8} {'µs/op':>8}")
    print("-" * 79)
    med: dict[str, float] = {}
    for v in parts:
        p25, m, p75 = (q / 1000 for q in quartiles(v.per_op_ns))
        med[v.baseline] = m  # in the breakdown, ``baseline`` holds the row's id
        print(f"  {v.name:<50} {m:8.3f} {p25:8.3f} {p75:8.3f}")

    def net(ident: str) -> float:
        return med[ident] - med["harness"]

    whole = net("stub_hit")
    pieces = {
        "key building": net("key"),
        "envelope parsing (beyond orjson.loads)": med["envelope"] - med["orjson"],
        "orjson.loads (raw redis-py pays it too)": net("orjson"),
        "breaker allow + success": net("breaker"),
        "freshness clock": net("clock"),
    }
    rest = whole - sum(pieces.values())
    print(f"our CPU per decorated hit, no I/O: {whole:.2f} µs =")
    for name, value in pieces.items():
        print(f"  {value:6.2f} µs  {name}")
    print(f"  {rest:6.2f} µs  the rest: wrapper + closure, read_through generator and _drive,")
    print("             _call dispatch, _decode, stats counters")
    dispatch = med["redis_py"] - med["store"]
    line = (
        f"the GET itself: RedisStore.get {net('store'):.2f} µs vs redis-py r.get "
        f"{net('redis_py'):.2f} µs (its generic dispatch costs {dispatch:.2f} µs)"
    )
    if "pool" in med:
        line += f"; pool checkout + release alone {net('pool'):.2f} µs"
    print(line)


# -- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_url(given: str | None, cpu: int | None) -> Iterator[tuple[str, str]]:
    """Yield (url, description): the given server, or a private one we start and stop.

    With ``cpu``, this process -- and the private server, never a given one -- is pinned
    to that CPU.
    """
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    pinned = "" if cpu is None else f", client pinned to CPU {cpu}"
    if given:
        yield given, f"given URL{pinned}"
        return
    from cachelayer.testing import RedisServer

    with RedisServer() as server:
        if cpu is not None:
            os.sched_setaffinity(server.pid, {cpu})
            pinned = f", client and server pinned to CPU {cpu}"
        yield server.url, f"private server started by this run{pinned}"


async def main_async(args: argparse.Namespace, url: str, source: str) -> None:
    bench = Bench(url)
    try:
        await bench.prepare()
        print(environment(bench.r, source))
        print(
            f"payload: user-profile dict, {len(bench.raw_bytes)} bytes as orjson "
            f"(raw baseline value); cachelayer entry {len(bench.envelope)} bytes "
            f"(26-byte envelope header + the same JSON)"
        )
        print(
            f"rounds: {args.rounds} x {args.ops} ops per variant (miss+fill: "
            f"{max(1, args.ops // 4)} fresh keys), every variant once per round in a "
            f"shuffled order, {args.warmup} warm-up round, GC off while timing"
        )
        print()
        variants = bench.variants()
        await run_rounds(variants, args.rounds, args.ops, args.warmup)
        ratios = print_table(variants)
        print()
        by_name = {v.name: v for v in variants}
        target_name = "@cache.cached hit: get_user(42)"
        paired = paired_ratio(by_name[target_name], by_name[variants[0].name])
        verdict = "met" if paired <= 1.10 else "NOT met"
        print(
            f"decorated hit / raw: {paired:.2f}x (target <= 1.10x) -- {verdict} "
            f"(median of per-round ratios; ratio of medians {ratios[target_name]:.2f}x)"
        )
        stats = bench.cache.stats.snapshot()
        mem_stats = bench.mem.stats.snapshot()
        misses = stats["misses"] + mem_stats["misses"]
        errors = stats["store_errors"] + stats["short_circuits"]
        print(
            f"hit-path caches: {stats['hits'] + mem_stats['hits']} hits, {misses} misses, "
            f"{errors} store errors/short circuits"
            + ("" if not (misses or errors) else "  <-- WARNING: some timed hits were not hits")
        )
        if args.breakdown:
            print()
            try:
                parts = breakdown_variants(bench)
            except AttributeError as exc:  # it reaches into internals, which may move
                print(f"breakdown unavailable: {exc}")
            else:
                await run_rounds(parts, args.rounds, args.ops, args.warmup)
                print_breakdown(parts)
    finally:
        removed = bench.cleanup()
        await bench.close()
        print(f"cleanup: deleted {removed} keys under namespace {bench.ns!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 200; 20 with --quick)")
    parser.add_argument(
        "--ops", type=int, help="calls per variant per round (default 300; 100 with --quick)"
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="Redis URL")
    parser.add_argument("--quick", action="store_true", help="a few rounds: CI smoke run")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the pieces of a decorated hit"
    )
    parser.add_argument(
        "--pin-cpu",
        type=int,
        metavar="N",
        help="pin this process (and the private server) to CPU N: steadier on small VMs",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (20 if args.quick else 200)
    args.ops = args.ops or (100 if args.quick else 300)
    args.warmup = 1
    if args.rounds < 1 or args.ops < 4:
        parser.error("--rounds must be >= 1 and --ops >= 4")
    if args.pin_cpu is not None and not hasattr(os, "sched_setaffinity"):
        parser.error("--pin-cpu needs os.sched_setaffinity (Linux)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    with redis_url(args.redis_url, args.pin_cpu) as (url, source):
        asyncio.run(main_async(args, url, source))
    print(f"wall time: {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
