"""A decorated cache hit in cachelayer against other Python caches, side by side in one run.

Usage::

    python bench/bench_peers.py [--quick] [--rounds N] [--ops N] [--conc-rounds N]
                                [--window S] [--threads N] [--coroutines N] [--hot-key]
                                [--redis-url URL] [--json PATH] [--chart PATH]

Every row reads the same ~300-byte user profile (``bench_get.PROFILE``) through a function
decorated the way each library documents, called with the same argument, pre-warmed, so
every timed call is a hit. Rows, each against the baseline of its section:

- **in-process**: ``functools.lru_cache`` (baseline), cachetools ``@cached(TTLCache)``,
  theine ``@Memoize``, cachebox ``@cached(TTLCache)``, cachelayer on ``memory://``,
  cachelayer's local tier in front of Redis (decorated, and ``cache.get``);
- **in-process, awaited**: ``await`` of an ``async def`` returning an ``lru_cache`` hit
  (the floor), and the decorated ``async def`` of theine, cachebox and cachelayer;
- **Redis**: ``orjson.loads(r.get(k))`` on a plain ``redis.Redis`` (baseline),
  cachelayer on ``redis://``, django-redis, Django's own ``RedisCache`` (``cache.get`` in
  a function: Django has no function decorator), dogpile.cache's redis backend;
- **Redis, awaited** (one event loop): raw ``redis.asyncio`` (baseline), cachelayer,
  aiocache (``RedisCache``), cashews;
- **miss + fill**: cachelayer's decorated miss (a fresh key per call: lease, load,
  guarded fill) against raw GET + ``SET EX`` of the orjson bytes.

Method: every round runs every row once (``--ops`` calls for Redis rows, ten times that
in-process, a quarter for miss + fill) in a fresh shuffled order (fixed seed), GC off
inside each timed batch. The tables give the median per-call time over rounds with p25 and
p75, the ratio of medians to the section's baseline, and "paired": the median over rounds
of the per-round ratio, which cancels drift between rounds on a noisy machine. Compare
ratios, not microseconds, across runs.

Concurrency: the sync rows again with ``--threads`` threads, the awaited rows with
``--coroutines`` coroutines in one event loop, each caller reading a key of its own
(pre-warmed; ``--hot-key``: all read one key) in a loop for ``--window`` seconds; cells in a
shuffled order each round; calls per second (median of rounds), the ratio to the section's
baseline (higher is better), errors, and for Redis rows the commands the server ran per
call (INFO commandstats; exact on a private server), which shows a library that answers
some calls without Redis. The async Redis clients of the baseline, aiocache and cashews get
a pool as large as the coroutine count (redis-py's default pool raises past 100
connections in use; cashews' default is a blocking pool of 10); cachelayer runs with its
defaults.

Peers are the optional extra ``peers`` (``pip install -e '.[peers]'``); a peer that is not
installed is named and its row skipped. Redis: ``--redis-url`` or ``REDIS_URL`` when set;
otherwise a private server (:class:`cachelayer.testing.RedisServer`), stopped at the end.
Every key written is under a fresh per-run prefix and deleted at the end. Before timing,
every row is checked to return the profile; each row's loader runs are counted in the timed
calls (a hit row's should be 0: else the run names the row, and for cachelayer what its
stats counted, such as a store timeout it failed open on). It always exits 0: a loaded
machine must not fail a smoke run. ``--quick`` is a smoke run (well under 40 s).
``--json PATH`` writes the results as JSON; ``--chart PATH`` draws the ratios as a PNG
(matplotlib, imported only then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import gc
import importlib.metadata
import os
import platform
import random
import secrets
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio

from bench_get import PROFILE, atimed, quartiles, timed
from cachelayer import Cache
from cachelayer.testing import RedisServer

USER_ID = 42
TTL = 3600
SEED = 20240601
INSTALL_HINT = "pip install -e '.[peers]'"

# Sections: name -> (what the baseline is, the concurrency face its rows run on).
IN_PROCESS = "in-process"
IN_PROCESS_ASYNC = "in-process, awaited"
REDIS = "Redis"
REDIS_ASYNC = "Redis, awaited"
MISS_FILL = "miss + fill, Redis"
SECTIONS = (IN_PROCESS, IN_PROCESS_ASYNC, REDIS, REDIS_ASYNC, MISS_FILL)
THREADS, COROUTINES = "threads", "coroutines"
FACE = {IN_PROCESS: THREADS, REDIS: THREADS, IN_PROCESS_ASYNC: COROUTINES, REDIS_ASYNC: COROUTINES}
OPS_SCALE = {IN_PROCESS: 10.0, IN_PROCESS_ASYNC: 10.0, REDIS: 1.0, REDIS_ASYNC: 1.0}

#: How often each row's loader ran (a hit row's must stay at its warm-up fill).
LOADS: Counter[str] = Counter()


def loader(name: str) -> dict[str, Any]:
    LOADS[name] += 1
    return dict(PROFILE)


@dataclass
class Row:
    """One measured thing: ``fn(arg)`` (or ``await fn(arg)``) is one cache hit."""

    library: str
    path: str
    section: str
    fn: Callable[[Any], Any]
    arg_for: Callable[[int], Any] = int  # a user id -> fn's argument (a key, for some)
    is_async: bool = False
    baseline: bool = False
    loads_key: str = ""  # the LOADS name of its loader ("" when it has none)
    batch: Callable[[int], Any] | None = None  # overrides the plain hit loop (miss + fill)
    per_op_ns: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)
    store_cmds: list[float] = field(default_factory=list)  # Redis commands per call
    loads: dict[str, int] = field(default_factory=lambda: {"hit": 0, "concurrency": 0})
    errors: int = 0
    first_error: str = ""

    def __post_init__(self) -> None:
        self.arg = self.arg_for(USER_ID)

    @property
    def name(self) -> str:
        return f"{self.library}: {self.path}"

    async def run(self, ops: int) -> float:
        """One timed batch; the ns per call."""
        n = max(1, int(ops * OPS_SCALE.get(self.section, 0.25)))
        if self.batch is not None:
            elapsed = self.batch(n)
            if asyncio.iscoroutine(elapsed):
                elapsed = await elapsed
        elif self.is_async:
            elapsed = await atimed(self._aloop, n)
        else:
            elapsed = timed(self._loop, n)
        return elapsed / n

    def _loop(self, n: int) -> None:
        fn, arg = self.fn, self.arg
        for _ in range(n):
            fn(arg)

    async def _aloop(self, n: int) -> None:
        fn, arg = self.fn, self.arg
        for _ in range(n):
            await fn(arg)


# -- the rows ---------------------------------------------------------------------------------


class Peers:
    """Builds every row over one Redis URL, and cleans up what they wrote."""

    def __init__(self, url: str, coroutines: int) -> None:
        self.url = url
        self.coroutines = coroutines
        self.ns = f"peers-{os.getpid()}-{secrets.token_hex(4)}"
        self.rows: list[Row] = []
        self.skipped: list[str] = []
        self.closers: list[Callable[[], Any]] = []
        self.r = redis.Redis.from_url(url)
        self._fill_counter = 0

    def raw_key(self, user_id: int) -> str:
        return f"{self.ns}:raw:user:{user_id}"

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def skip(self, library: str, package: str, why: str = "is not installed") -> None:
        message = f"{library} {why}: rows skipped (pip install {package}, or {INSTALL_HINT})"
        self.skipped.append(message)
        print(f"bench_peers: {message}", file=sys.stderr)

    async def build(self) -> None:
        self.build_stdlib()
        self.build_cachelayer()
        self.build_cachetools()
        self.build_theine()
        self.build_cachebox()
        self.build_django()
        self.build_dogpile()
        await self.build_async_raw()
        self.build_aiocache()
        await self.build_cashews()
        self.build_miss_fill()
        order = {s: i for i, s in enumerate(SECTIONS)}
        self.rows.sort(key=lambda row: (order[row.section], not row.baseline))

    # -- baselines and cachelayer ---------------------------------------------------------

    def build_stdlib(self) -> None:
        @functools.lru_cache(maxsize=1000)
        def lru_user(user_id: int) -> dict[str, Any]:
            return loader("lru_cache")

        async def lru_floor(user_id: int) -> dict[str, Any]:
            return lru_user(user_id)

        get, loads = self.r.get, orjson.loads

        def raw_get(key: str) -> Any:
            return loads(get(key))  # type: ignore[arg-type]

        self.add(
            Row("functools", "@lru_cache(maxsize=1000)", IN_PROCESS, lru_user, baseline=True,
                loads_key="lru_cache"),
            Row("functools", "await async def returning an @lru_cache hit (floor)",
                IN_PROCESS_ASYNC, lru_floor, is_async=True, baseline=True,
                loads_key="lru_cache"),
            Row("redis-py", "orjson.loads(r.get(k)) (raw GET)", REDIS, raw_get,
                arg_for=self.raw_key, baseline=True),
        )  # fmt: skip

    def build_cachelayer(self) -> None:
        mem = Cache("memory://", namespace=self.ns)
        remote = Cache(self.url, namespace=self.ns)
        local = Cache(self.url, namespace=f"{self.ns}-local", local={"max_entries": 1000})
        if not local.wait_local(10):
            raise SystemExit("bench_peers: cachelayer's local tier did not subscribe in 10 s")
        self.local = local
        self.cachelayer = {"memory://": mem, "redis://": remote, "local tier": local}
        self.closers += [mem.close, remote.aclose, local.aclose]
        rows = []
        for label, cache, section, asection in (
            ("memory://", mem, IN_PROCESS, IN_PROCESS_ASYNC),
            ("local tier", local, IN_PROCESS, IN_PROCESS_ASYNC),
            ("redis://", remote, REDIS, REDIS_ASYNC),
        ):
            name = f"cachelayer {label}"

            @cache.cached(ttl=TTL, key="user:{user_id}")
            def get_user(user_id: int, _name: str = name) -> dict[str, Any]:
                return loader(_name)

            @cache.cached(ttl=TTL, key="auser:{user_id}")
            async def aget_user(user_id: int, _name: str = name + " async") -> dict[str, Any]:
                return loader(_name)

            rows.append(Row("cachelayer", f"{label}: @cache.cached hit", section, get_user,
                            loads_key=name))  # fmt: skip
            rows.append(Row("cachelayer", f"{label}: await @cache.cached hit", asection,
                            aget_user, is_async=True, loads_key=name + " async"))  # fmt: skip
        key = "user:{}".format  # what the decorator builds from its template
        rows.append(Row("cachelayer", "local tier: cache.get(k)", IN_PROCESS, local.get,
                        arg_for=key, loads_key="cachelayer local tier"))  # fmt: skip
        self.add(*rows)

    # -- in-process peers -----------------------------------------------------------------

    def build_cachetools(self) -> None:
        try:
            import cachetools
        except ImportError:
            return self.skip("cachetools", "cachetools")

        # With a lock, as cachetools documents for a cache shared by threads.
        @cachetools.cached(cachetools.TTLCache(maxsize=1000, ttl=TTL), lock=threading.Lock())
        def ct_user(user_id: int) -> dict[str, Any]:
            return loader("cachetools")

        self.add(Row("cachetools", "@cached(TTLCache, lock=Lock())", IN_PROCESS, ct_user,
                     loads_key="cachetools"))  # fmt: skip
        return None

    def build_theine(self) -> None:
        try:
            from theine import Memoize
        except ImportError:
            return self.skip("theine", "theine")
        ttl = datetime.timedelta(seconds=TTL)

        @Memoize(1000, ttl)
        def th_user(user_id: int) -> dict[str, Any]:
            return loader("theine")

        @th_user.key
        def _(user_id: int) -> str:
            return f"user:{user_id}"

        @Memoize(1000, ttl)
        async def ath_user(user_id: int) -> dict[str, Any]:
            return loader("theine async")

        @ath_user.key
        def _(user_id: int) -> str:
            return f"user:{user_id}"

        self.add(
            Row("theine", "@Memoize + key function", IN_PROCESS, th_user, loads_key="theine"),
            Row("theine", "await @Memoize + key function", IN_PROCESS_ASYNC, ath_user,
                is_async=True, loads_key="theine async"),
        )  # fmt: skip
        return None

    def build_cachebox(self) -> None:
        try:
            import cachebox
        except ImportError:
            return self.skip("cachebox", "cachebox")

        # Its defaults: a shallow copy of a dict result on every hit, a stampede lock.
        @cachebox.cached(cachebox.TTLCache(1000, global_ttl=TTL))
        def cb_user(user_id: int) -> dict[str, Any]:
            return loader("cachebox")

        @cachebox.cached(cachebox.TTLCache(1000, global_ttl=TTL))
        async def acb_user(user_id: int) -> dict[str, Any]:
            return loader("cachebox async")

        self.add(
            Row("cachebox", "@cached(TTLCache) (copies the dict)", IN_PROCESS, cb_user,
                loads_key="cachebox"),
            Row("cachebox", "await @cached(TTLCache) (copies the dict)", IN_PROCESS_ASYNC,
                acb_user, is_async=True, loads_key="cachebox async"),
        )  # fmt: skip
        return None

    # -- Redis peers ----------------------------------------------------------------------

    def build_django(self) -> None:
        try:
            import django
            from django.conf import settings
        except ImportError:
            self.skip("Django", "django")
            return self.skip("django-redis", "django-redis", "needs Django, which")
        backends = {"django": "django.core.cache.backends.redis.RedisCache"}
        try:
            import django_redis  # noqa: F401
        except ImportError:
            self.skip("django-redis", "django-redis")
        else:
            backends["django-redis"] = "django_redis.cache.RedisCache"
        caches = {
            alias: {"BACKEND": backend, "LOCATION": self.url, "KEY_PREFIX": self.ns}
            for alias, backend in backends.items()
        }
        caches["default"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
        settings.configure(CACHES=caches, USE_TZ=True)
        django.setup()
        from django.core.cache import caches as django_caches

        self.closers.append(django_caches.close_all)
        paths = {
            "django": ("Django", "backends.redis.RedisCache: cache.get in a function"),
            "django-redis": ("django-redis", "RedisCache: cache.get in a function"),
        }
        for alias in backends:
            cache = django_caches[alias]

            # Django has no decorator for a plain function (cache_page is for views): this
            # is the function one writes instead.
            def dj_user(user_id: int, _cache: Any = cache, _name: str = alias) -> Any:
                key = f"user:{user_id}"
                value = _cache.get(key)
                if value is None:
                    value = loader(_name)
                    _cache.set(key, value, TTL)
                return value

            library, path = paths[alias]
            self.add(Row(library, path, REDIS, dj_user, loads_key=alias))
        return None

    def build_dogpile(self) -> None:
        try:
            from dogpile.cache import make_region
        except ImportError:
            return self.skip("dogpile.cache", "dogpile.cache")
        ns = self.ns
        region = make_region(key_mangler=lambda key: f"{ns}:dogpile:{key}").configure(
            "dogpile.cache.redis",
            expiration_time=TTL,
            arguments={"url": self.url, "redis_expiration_time": TTL + 60},
        )

        @region.cache_on_arguments()
        def dp_user(user_id: int) -> dict[str, Any]:
            return loader("dogpile")

        self.add(Row("dogpile.cache", "@region.cache_on_arguments() (redis backend)", REDIS,
                     dp_user, loads_key="dogpile"))  # fmt: skip
        return None

    async def build_async_raw(self) -> None:
        ar = redis.asyncio.Redis.from_url(self.url, max_connections=self.coroutines)
        self.closers.append(ar.aclose)
        get, loads = ar.get, orjson.loads

        async def araw_get(key: str) -> Any:
            return loads(await get(key))

        self.add(Row("redis.asyncio", "orjson.loads(await r.get(k)) (raw GET)", REDIS_ASYNC,
                     araw_get, arg_for=self.raw_key, is_async=True,
                     baseline=True))  # fmt: skip

    def build_aiocache(self) -> None:
        try:
            import aiocache
        except ImportError:
            return self.skip("aiocache", "aiocache")
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "valkey"):
            return self.skip("aiocache", "aiocache", f"takes host and port, not {parts.scheme}://")

        @aiocache.cached(
            ttl=TTL,
            cache=aiocache.RedisCache,
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(parts.path.strip("/") or 0),
            password=parts.password,
            pool_max_size=self.coroutines,
            namespace=f"{self.ns}:aiocache:",
            key_builder=lambda fn, user_id: f"user:{user_id}",
        )
        async def ac_user(user_id: int) -> dict[str, Any]:
            return loader("aiocache")

        self.closers.append(ac_user.cache.close)  # type: ignore[attr-defined]
        self.add(Row("aiocache", "@cached(cache=RedisCache) (JSON)", REDIS_ASYNC, ac_user,
                     is_async=True, loads_key="aiocache"))  # fmt: skip
        return None

    async def build_cashews(self) -> None:
        try:
            from cashews import Cache as CashewsCache
        except ImportError:
            return self.skip("cashews", "cashews")
        cache = CashewsCache()
        cache.setup(self.url, max_connections=self.coroutines)
        await cache.init()
        self.closers.append(cache.close)

        @cache(ttl=TTL, key=f"{self.ns}:cashews:user:{{user_id}}")
        async def cw_user(user_id: int) -> dict[str, Any]:
            return loader("cashews")

        self.add(Row("cashews", "@cache(ttl, key=...) (redis backend)", REDIS_ASYNC, cw_user,
                     is_async=True, loads_key="cashews"))  # fmt: skip
        return None

    # -- miss + fill ----------------------------------------------------------------------

    def fresh_ids(self, n: int) -> range:
        start = self._fill_counter
        self._fill_counter += n
        return range(start, start + n)

    def build_miss_fill(self) -> None:
        cache = Cache(self.url, namespace=f"{self.ns}-fill")
        self.closers.append(cache.close)
        get, set_, loads, dumps = self.r.get, self.r.set, orjson.loads, orjson.dumps
        prefix = f"{self.ns}:raw:fill:"

        def raw_fill(user_id: int) -> Any:
            key = f"{prefix}{user_id}"
            data = get(key)
            if data is not None:
                return loads(data)  # type: ignore[arg-type]
            value = loader("raw fill")
            set_(key, dumps(value), ex=TTL)
            return value

        @cache.cached(ttl=TTL, key="fill:{user_id}")
        def cl_fill(user_id: int) -> dict[str, Any]:
            return loader("cachelayer fill")

        def batch(fn: Callable[[int], Any]) -> Callable[[int], int]:
            def run(n: int) -> int:
                ids = self.fresh_ids(n)

                def loop(_: int) -> None:
                    for user_id in ids:
                        fn(user_id)

                return timed(loop, n)

            return run

        self.add(
            Row("redis-py", "GET miss + SET EX of the orjson bytes (raw)", MISS_FILL, raw_fill,
                baseline=True, batch=batch(raw_fill)),
            Row("cachelayer", "redis://: @cache.cached miss (lease, load, guarded fill)",
                MISS_FILL, cl_fill, batch=batch(cl_fill)),
        )  # fmt: skip

    # -- checks and cleanup ---------------------------------------------------------------

    async def prepare(self, callers: list[int]) -> None:
        """Warm every hit row for the one-caller id and each concurrent caller's id (fill,
        then a store hit the local tier keeps); check each returns the profile."""
        ids = sorted({USER_ID, *callers})
        with self.r.pipeline(transaction=False) as pipe:
            for user_id in ids:
                pipe.set(self.raw_key(user_id), orjson.dumps(PROFILE), ex=TTL)
            pipe.execute()
        for _ in range(3):
            for row in self.rows:
                if row.section != MISS_FILL:
                    for user_id in ids:
                        await call(row, row.arg_for(user_id))
        wrong = [row.name for row in self.rows if await call(row, row.arg) != PROFILE]
        if wrong:
            raise SystemExit(f"bench_peers: {', '.join(wrong)} did not return the profile")
        for cache in self.cachelayer.values():
            cache.stats.reset()

    def not_hits(self) -> list[str]:
        """Rows whose loader ran in timed calls: those calls were not hits."""
        return [
            f"{row.name}: the loader ran {n} times in the {phase} measurement"
            for row in self.rows
            if row.section != MISS_FILL
            for phase, n in row.loads.items()
            if n
        ]

    def cachelayer_trouble(self) -> list[str]:
        """cachelayer's own count of store trouble, when any (it explains a miss)."""
        names = ("store_errors", "short_circuits", "store_busy", "breaker_opened")
        out = []
        for label, cache in self.cachelayer.items():
            counts = {n: getattr(cache.stats, n, 0) for n in names}
            if any(counts.values()):
                found = ", ".join(f"{n} {v}" for n, v in counts.items() if v)
                out.append(f"cachelayer {label}: {found}")
        return out

    def cleanup(self) -> int:
        """Delete every key this run wrote (each holds its unique prefix)."""
        keys = list(self.r.scan_iter(match=f"*{self.ns}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.r.unlink(*keys[i : i + 1000])
        return len(keys)

    async def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
        self.r.close()


async def call(row: Row, arg: Any) -> Any:
    return await row.fn(arg) if row.is_async else row.fn(arg)


# -- running ----------------------------------------------------------------------------------


async def run_rounds(rows: list[Row], rounds: int, ops: int) -> None:
    for row in rows:  # one warm-up round
        await row.run(max(10, ops // 4))
    order = list(rows)
    shuffle = random.Random(SEED).shuffle
    for i in range(rounds):
        shuffle(order)  # a fresh order each round: no row always follows another
        for row in order:
            loaded = LOADS[row.loads_key]
            row.per_op_ns.append(await row.run(ops))
            row.loads["hit"] += LOADS[row.loads_key] - loaded
        progress(f"hit round {i + 1}/{rounds}")


@dataclass
class Cell:
    """What one concurrency cell did."""

    calls: int = 0
    errors: int = 0
    first_error: str = ""

    def failed(self, exc: Exception) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:200]


def thread_cell(row: Row, args: list[Any], window: float) -> tuple[Cell, float]:
    """A thread per arg calls the hit until a deadline; what they did and the seconds taken."""
    fn = row.fn
    chunk = 20 if row.section == IN_PROCESS else 1
    cells: list[Cell] = []
    barrier = threading.Barrier(len(args) + 1)
    deadline = [0.0]
    clock = time.perf_counter

    def worker(arg: Any) -> None:
        cell = Cell()
        barrier.wait()
        end = deadline[0]
        while clock() < end:
            for _ in range(chunk):
                try:
                    fn(arg)
                except Exception as exc:
                    cell.failed(exc)
            cell.calls += chunk
        cells.append(cell)

    workers = [threading.Thread(target=worker, args=(arg,), daemon=True) for arg in args]
    for w in workers:
        w.start()
    gc.disable()
    try:
        start = clock()
        deadline[0] = start + window
        barrier.wait()
        for w in workers:
            w.join()
        elapsed = clock() - start
    finally:
        gc.enable()
    return merge(cells), elapsed


async def coroutine_cell(row: Row, args: list[Any], window: float) -> tuple[Cell, float]:
    """A task per arg, in this loop, awaits the hit until a deadline."""
    fn = row.fn
    # An in-process hit never waits, so its tasks yield every 50 calls to take turns.
    chunk = 50 if row.section == IN_PROCESS_ASYNC else 0
    go = asyncio.Event()
    deadline = [0.0]
    clock = time.perf_counter

    async def worker(arg: Any) -> Cell:
        cell = Cell()
        await go.wait()
        end = deadline[0]
        while clock() < end:
            for _ in range(chunk or 1):
                try:
                    await fn(arg)
                except Exception as exc:
                    cell.failed(exc)
            cell.calls += chunk or 1
            if chunk:
                await asyncio.sleep(0)
        return cell

    tasks = [asyncio.create_task(worker(arg)) for arg in args]
    await asyncio.sleep(0)  # every task now waits on `go`
    gc.disable()
    try:
        start = clock()
        deadline[0] = start + window
        go.set()
        cells = await asyncio.gather(*tasks)
        elapsed = clock() - start
    finally:
        gc.enable()
    return merge(cells), elapsed


def merge(cells: list[Cell]) -> Cell:
    first = next((c.first_error for c in cells if c.first_error), "")
    return Cell(sum(c.calls for c in cells), sum(c.errors for c in cells), first)


def commands_run(r: redis.Redis) -> int:
    """Commands the server has run so far (INFO commandstats)."""
    return sum(stat["calls"] for stat in r.info("commandstats").values())


async def run_cell(row: Row, callers: dict[str, list[int]], window: float) -> tuple[Cell, float]:
    args = [row.arg_for(user_id) for user_id in callers[FACE[row.section]]]
    if FACE[row.section] == THREADS:
        return thread_cell(row, args, window)
    return await coroutine_cell(row, args, window)


async def run_concurrency(
    rows: list[Row], rounds: int, window: float, callers: dict[str, list[int]], r: redis.Redis
) -> None:
    cells = [row for row in rows if row.section in FACE]
    for row in cells:  # warm-up: pools open their connections (256 take a while)
        await run_cell(row, callers, 0.6 if row.section == REDIS_ASYNC else 0.2)
    order = list(cells)
    shuffle = random.Random(SEED + 1).shuffle
    for i in range(rounds):
        shuffle(order)
        for row in order:
            remote = row.section in (REDIS, REDIS_ASYNC)
            before = commands_run(r) if remote else 0
            loaded = LOADS[row.loads_key]
            cell, elapsed = await run_cell(row, callers, window)
            row.loads["concurrency"] += LOADS[row.loads_key] - loaded
            if remote and cell.calls:  # less the INFO that took `before`
                row.store_cmds.append((commands_run(r) - before - 1) / cell.calls)
            row.calls_per_s.append((cell.calls - cell.errors) / elapsed)
            row.errors += cell.errors
            row.first_error = row.first_error or cell.first_error
        progress(f"concurrency round {i + 1}/{rounds}")


def progress(message: str) -> None:
    print(f"  ... {message}", file=sys.stderr, flush=True)


# -- reporting --------------------------------------------------------------------------------


def baselines(rows: list[Row]) -> dict[str, Row]:
    return {row.section: row for row in rows if row.baseline}


def hit_results(rows: list[Row]) -> list[dict[str, Any]]:
    bases = baselines(rows)
    out = []
    for row in rows:
        base = bases[row.section]
        p25, med, p75 = (q / 1000 for q in quartiles(row.per_op_ns))
        base_med = statistics.median(base.per_op_ns) / 1000
        paired = statistics.median(
            a / b for a, b in zip(row.per_op_ns, base.per_op_ns, strict=True)
        )
        out.append(
            {
                "section": row.section,
                "library": row.library,
                "path": row.path,
                "baseline": row.baseline,
                "median_us": med,
                "p25_us": p25,
                "p75_us": p75,
                "ratio": med / base_med,
                "paired": paired,
                "vs": base.name,
            }
        )
    return out


def concurrency_results(rows: list[Row], threads: int, coroutines: int) -> list[dict[str, Any]]:
    bases = baselines(rows)
    out = []
    for row in rows:
        if not row.calls_per_s:
            continue
        base = bases[row.section]
        p25, med, p75 = quartiles(row.calls_per_s)
        paired = statistics.median(
            a / b if b else 0.0 for a, b in zip(row.calls_per_s, base.calls_per_s, strict=True)
        )
        face = FACE[row.section]
        out.append(
            {
                "section": row.section,
                "face": f"{threads if face == THREADS else coroutines} {face}",
                "library": row.library,
                "path": row.path,
                "baseline": row.baseline,
                "calls_per_s": med,
                "p25": p25,
                "p75": p75,
                "ratio": med / statistics.median(base.calls_per_s),
                "paired": paired,
                "errors": row.errors,
                "loader_runs": row.loads["concurrency"],
                "first_error": row.first_error,
                "redis_cmds_per_call": (
                    statistics.median(row.store_cmds) if row.store_cmds else None
                ),
                "vs": base.name,
            }
        )
    return out


def print_hit_table(results: list[dict[str, Any]]) -> None:
    print("| library | path | median µs per hit | p25-p75 µs | ratio | paired |")
    print("|---|---|---:|---:|---:|---:|")
    section = ""
    for r in results:
        if r["section"] != section:
            section = r["section"]
            print(f"| **{section}** | *vs {r['vs']}* | | | | |")
        ratio = "1.00x (base)" if r["baseline"] else f"{r['ratio']:.2f}x"
        paired = "" if r["baseline"] else f"{r['paired']:.2f}x"
        print(
            f"| {r['library']} | {r['path']} | {r['median_us']:.2f} "
            f"| {r['p25_us']:.2f}-{r['p75_us']:.2f} | {ratio} | {paired} |"
        )


def print_concurrency_table(results: list[dict[str, Any]]) -> None:
    print(
        "| library | path | calls/s (median) | p25-p75 | ratio | paired | errors "
        "| loader runs | Redis cmds/call |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    section = ""
    for r in results:
        if r["section"] != section:
            section = r["section"]
            print(f"| **{section}, {r['face']}** | *vs {r['vs']}* | | | | | | | |")
        ratio = "1.00x (base)" if r["baseline"] else f"{r['ratio']:.2f}x"
        paired = "" if r["baseline"] else f"{r['paired']:.2f}x"
        cmds = r["redis_cmds_per_call"]
        cmds = "" if cmds is None else f"{cmds:.2f}"
        print(
            f"| {r['library']} | {r['path']} | {r['calls_per_s']:,.0f} "
            f"| {r['p25']:,.0f}-{r['p75']:,.0f} | {ratio} | {paired} | {r['errors']} "
            f"| {r['loader_runs']} | {cmds} |"
        )
    for r in results:
        if r["first_error"]:
            print(f"\nfirst error, {r['library']} ({r['face']}): {r['first_error']}")


def versions() -> dict[str, str]:
    names = (
        "cachelayer", "redis", "hiredis", "orjson", "cachetools", "theine", "cachebox",
        "django", "django-redis", "dogpile.cache", "aiocache", "cashews",
    )  # fmt: skip
    found = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def environment(r: redis.Redis, source: str) -> str:
    info = r.info("server")
    server = (
        f"valkey {info['valkey_version']}"
        if "valkey_version" in info
        else f"redis {info.get('redis_version', '?')}"
    )
    packages = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (
        f"python {platform.python_version()} | {os.cpu_count()} CPUs "
        f"{platform.system().lower()} {platform.machine()} | server {server} ({source})\n"
        f"{packages}"
    )


def draw_chart(
    path: str, hits: list[dict[str, Any]], conc: list[dict[str, Any]], title: str
) -> None:
    """Three panels of ratios to each section's baseline (matplotlib imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    remote = (REDIS, REDIS_ASYNC, MISS_FILL)
    panels = [
        ([r for r in hits if r["section"] not in remote], "per-call time of an in-process hit"),
        ([r for r in hits if r["section"] in remote], "per-call time of a Redis hit"),
        (conc, "throughput under concurrency (higher is better)"),
    ]
    heights = [0.24 * (len(rows) + 4) for rows, _ in panels]
    fig, axes = plt.subplots(
        3, 1, figsize=(11, sum(heights) + 1), gridspec_kw={"height_ratios": heights}
    )
    for ax, (rows, heading) in zip(axes, panels, strict=True):
        labels: list[str] = []
        y = 0
        section = ""
        for r in rows:
            group = f"{r['section']}, {r['face']}" if "face" in r else r["section"]
            if group != section:  # a heading row, without a bar
                section = group
                labels.append(group)
                y += 1
            colour = "#888888" if r["baseline"] else "#3b75af"
            if r["library"] == "cachelayer":
                colour = "#d9541e"
            ax.barh(y, r["ratio"], color=colour)
            if "median_us" in r:
                note = f" {r['ratio']:.2f}x  ({r['median_us']:.2f} µs)"
            else:
                note = f" {r['ratio']:.2f}x  ({r['calls_per_s']:,.0f}/s)"
            ax.text(r["ratio"], y, note, va="center", fontsize=7)
            labels.append(f"{r['library']}: {r['path'][:60]}")
            y += 1
        ax.set_yticks(range(len(labels)), labels, fontsize=7.5)
        groups = {f"{r['section']}, {r['face']}" if "face" in r else r["section"] for r in rows}
        for tick in ax.get_yticklabels():
            if tick.get_text() in groups:
                tick.set_fontweight("bold")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlim(min(0.5, *(r["ratio"] / 2 for r in rows)), max(r["ratio"] for r in rows) * 6)
        ax.set_title(f"{heading}: ratio to the section's baseline, log scale", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[tuple[str, str]]:
    url = given or os.environ.get("REDIS_URL")
    if url:
        yield url, "--redis-url" if given else "REDIS_URL"
        return
    with RedisServer() as server:
        yield server.url, "private server"


async def bench(args: argparse.Namespace, url: str, source: str) -> dict[str, Any]:
    peers = Peers(url, args.coroutines)
    load_start = os.getloadavg()
    # Each concurrent caller reads a key of its own (with --hot-key, all read USER_ID's).
    callers = {
        face: [USER_ID if args.hot_key else 1000 + i for i in range(n)]
        for face, n in ((THREADS, args.threads), (COROUTINES, args.coroutines))
    }
    try:
        await peers.build()
        await peers.prepare(callers[THREADS] + callers[COROUTINES])
        env = environment(peers.r, source)
        print(env, file=sys.stderr)
        await run_rounds(peers.rows, args.rounds, args.ops)
        await run_concurrency(peers.rows, args.conc_rounds, args.window, callers, peers.r)
        missed = peers.not_hits()
        trouble = peers.cachelayer_trouble()
        local_share = None
        with contextlib.suppress(AttributeError, ZeroDivisionError):
            stats = peers.local.stats
            local_share = stats.local_hits / stats.hits
    finally:
        await peers.close()
        deleted = peers.cleanup()
    hits = hit_results(peers.rows)
    conc = concurrency_results(peers.rows, args.threads, args.coroutines)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", "bench/bench_peers.py", *sys.argv[1:]]),
        "environment": env,
        "settings": {
            "rounds": args.rounds,
            "ops": args.ops,
            "concurrency_rounds": args.conc_rounds,
            "window_s": args.window,
            "threads": args.threads,
            "coroutines": args.coroutines,
            "hot_key": args.hot_key,
        },
        "hits": hits,
        "concurrency": conc,
        "skipped": peers.skipped,
        "missed_hits": missed,
        "cachelayer_store_trouble": trouble,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "local_hit_share": local_share,
        "deleted_keys": deleted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, well under 40 s")
    parser.add_argument("--rounds", type=int, help="hit rounds (default 120; quick 8)")
    parser.add_argument("--ops", type=int, help="Redis calls per row per round (default 300)")
    parser.add_argument("--conc-rounds", type=int, help="concurrency rounds (default 9)")
    parser.add_argument("--window", type=float, help="seconds per concurrency cell (0.25)")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--coroutines", type=int, default=256)
    parser.add_argument(
        "--hot-key",
        action="store_true",
        help="concurrent callers all read one key (default: a key per caller)",
    )
    parser.add_argument("--redis-url")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--chart", metavar="PATH", help="also draw the ratios as a PNG")
    args = parser.parse_args(argv)
    quick = {"rounds": 8, "ops": 100, "conc_rounds": 1, "window": 0.1}
    full = {"rounds": 120, "ops": 300, "conc_rounds": 9, "window": 0.25}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    started = time.perf_counter()
    with redis_url(args.redis_url) as (url, source):
        results = asyncio.run(bench(args, url, source))
    results["wall_s"] = round(time.perf_counter() - started, 1)

    s = results["settings"]
    print(f"# {results['command']}  ({results['date']})")
    print(results["environment"])
    print(
        f"\nHit cost: {s['rounds']} rounds, each row once per round in a shuffled order "
        f"({s['ops']} calls per Redis row, {s['ops'] * 10} in-process, "
        f"{max(1, s['ops'] // 4)} for miss + fill); median over rounds; ratio of medians "
        "and paired (median of per-round ratios) to the section's baseline.\n"
    )
    print_hit_table(results["hits"])
    print(
        f"\nUnder concurrency: {s['threads']} threads (sync rows) or {s['coroutines']} "
        f"coroutines in one event loop (awaited rows), "
        f"{'all on one key' if s['hot_key'] else 'each caller on a key of its own'}, "
        f"{s['window_s']} s per cell, {s['concurrency_rounds']} rounds in a shuffled order; "
        "calls/s median of rounds; Redis commands the server ran per call.\n"
    )
    print_concurrency_table(results["concurrency"])
    print()
    for message in results["skipped"]:
        print(f"skipped: {message}")
    for line in results["missed_hits"]:
        print(f"NOT ALL HITS: {line}")
    if not results["missed_hits"]:
        print("check: every hit row's loader ran only at warm-up (every timed call was a hit)")
    for line in results["cachelayer_store_trouble"]:
        print(f"store trouble counted by {line} (it fails open: the loader answers)")
    start, end = (
        ", ".join(f"{x:.1f}" for x in results["load_average"][when]) for when in ("start", "end")
    )
    print(f"load average (1, 5, 15 min): {start} at the start; {end} at the end")
    if results["local_hit_share"] is not None:
        print(f"check: cachelayer local tier served {results['local_hit_share']:.1%} of its hits")
    print(f"cleanup: deleted {results['deleted_keys']} keys; wall time {results['wall_s']} s")

    if args.json:
        with open(args.json, "wb") as f:
            f.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if args.chart:
        title = (
            f"cachelayer against other Python caches, {results['date']}, "
            f"{os.cpu_count()} shared CPUs (ratios to a baseline measured in the same run)"
        )
        draw_chart(args.chart, results["hits"], results["concurrency"], title)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
