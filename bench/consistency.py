"""A randomized consistency checker: no read may return a row older than an invalidation
that had returned before the read started.

Usage::

    python bench/consistency.py [--store memory|redis] [--mode threads|processes]
                                [--readers M] [--writers N] [--reads R]
                                [--write-ratio 0.05] [--rows K] [--seed S]
                                [--redis-url URL] [--async] [--dist zipf|uniform]
                                [--threads-per-process T] [--ttl SECONDS]
                                [--store-lag-ms MS] ...

A real SQLite file (WAL mode, in a temporary directory) holds ``rows(id, version,
payload)``. Readers call ``read_row(row_id)``, decorated with
``@cache.cached(key="row:{row_id}")``; its loader SELECTs the row, then sleeps 0 to
``--load-delay-ms`` to widen the window between the database read and the fill. Writers
run ``UPDATE rows SET version = version + 1`` in a transaction, commit, then call
``read_row.invalidate(row_id)`` (``ainvalidate`` with ``--async``); they pace themselves
so that writes are ``--write-ratio`` of all operations. Every thread has its own SQLite
connection (background refreshes and ``asyncio.to_thread`` workers included).

Each read records (row, version, start, end) and each write (row, new version, begin,
commit returned, invalidation returned), all on ``time.monotonic_ns`` (CLOCK_MONOTONIC,
one clock for every process on Linux). Then:

- a read is STALE when some write ``w`` of its row has ``w.version > read.version`` and
  ``w``'s invalidation returned before the read started. Any stale read exits 1; the
  first few are printed with the write that made them stale, the store calls the read
  made and the read whose load produced the value.
- a read is *behind* (allowed, counted apart) when a newer version had committed before
  the read returned but its invalidation had not returned when the read started: the
  read ran concurrently with that write.

Modes: ``threads`` runs M reader and N writer threads over one Cache (either store);
``processes`` runs M reader processes (``--threads-per-process`` readers each) and N
writer processes, each process with its own Cache, over Redis only (a memory store is
per process). ``--async`` makes the workers asyncio tasks of one loop per process, with
``async def read_row`` (the SELECT runs in ``asyncio.to_thread``) and ``ainvalidate``.
``--store-lag-ms`` holds some store requests and replies (``--store-lag-prob``) for a
random time, as a network hiccup or a thread waiting for the GIL would: it widens the
race windows so that a rare interleaving shows up in a short run.

Redis: ``--redis-url`` or ``REDIS_URL`` when set, else a private server
(:class:`cachelayer.testing.RedisServer`). Keys go under a fresh namespace, deleted at
the end. Exit codes: 0 no stale read; 1 stale reads; 2 the run itself went wrong (a
worker crashed, an impossible version, or store errors that make the result
inconclusive). See docs/consistency-checker.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import contextvars
import itertools
import multiprocessing as mp
import os
import pickle
import random
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from cachelayer import Cache, CircuitBreaker
from cachelayer.backends import MemoryStore
from cachelayer.backends.redis import RedisStore


class Read(NamedTuple):
    row: int
    version: int
    start: int  # ns, before the call
    end: int  # ns, after it returned
    worker: int
    loaded: bool  # this call ran the loader itself
    selected: int  # ns, when the returned value was SELECTed
    loaded_by: int  # the worker whose call loaded it (-1: a background refresh)
    trace: str  # the store calls this read made, with their outcomes


class Write(NamedTuple):
    row: int
    version: int
    begin: int
    committed: int  # ns, after COMMIT returned
    invalidated: int  # ns, after invalidate returned
    worker: int


#: Set in the cached function's body: this call ran the loader itself.
LOADED: contextvars.ContextVar[bool] = contextvars.ContextVar("LOADED", default=False)
#: The worker running in this thread or task (-1: a background refresh).
WORKER: contextvars.ContextVar[int] = contextvars.ContextVar("WORKER", default=-1)
#: The store calls of the read in progress in this thread or task.
TRACE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("TRACE", default=None)


@dataclass(frozen=True)
class Config:
    store: str
    mode: str
    use_async: bool
    readers: int
    writers: int
    threads_per_process: int
    reads: int
    write_ratio: float
    rows: int
    dist: str
    zipf_s: float
    seed: int
    ttl: float
    stale_ttl: float
    early_refresh: float
    refresh_after_write: bool
    load_delay_ms: float
    socket_timeout: float
    lease_wait: float
    store_lag_ms: float
    store_lag_prob: float
    show: int
    db_path: str = ""
    cache_url: str = ""
    namespace: str = ""

    @property
    def reader_workers(self) -> int:
        return self.readers * (self.threads_per_process if self.mode == "processes" else 1)


# -- the database ------------------------------------------------------------------------------


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = NORMAL")  # what is checked is visibility, not fsync
    return conn


def create_db(path: str, rows: int) -> None:
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, version INTEGER, payload TEXT)")
    conn.executemany(
        "INSERT INTO rows VALUES (?, 0, ?)",
        ((i, f"row {i} " + "x" * 64) for i in range(1, rows + 1)),
    )
    conn.close()


# -- the store, observed (and optionally delayed) ----------------------------------------------

#: The store calls the read and write paths make (``clear``, ``close``: not observed).
OBSERVED = frozenset({"get", "get_many", "add", "lease", "fill", "delete", "set", "set_many"})


def outcome(name: str, result: Any) -> str:
    if name == "get":
        return "get:hit" if result is not None else "get:miss"
    if name == "get_many":
        return "get:hit" if result and result[0] is not None else "get:miss"
    if name == "lease":
        return "lease:value" if isinstance(result, bytes) else f"lease:{result}"
    if name in ("add", "fill"):
        return f"{name}:{result}"
    return name


def lag_for(max_ms: float, prob: float) -> Callable[[], float]:
    """Seconds to hold a request or a reply: uniform [0, max_ms) with probability prob."""
    top = max_ms / 1000.0
    if not top:
        return lambda: 0.0
    return lambda: random.random() * top if random.random() < prob else 0.0


class ObservedStore:
    """A store that records each call's outcome in the current read's trace and can hold
    requests and replies (``lag``): the hiccups of a network, a GC pause or a thread
    waiting for the GIL, which widen the windows between a store operation taking effect
    and its caller acting on it. Otherwise it is the wrapped store."""

    def __init__(self, inner: Any, lag: Callable[[], float]) -> None:
        self._inner = inner
        self._lag = lag

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in OBSERVED:
            return attr
        lag = self._lag

        def call(*args: Any) -> Any:
            if pause := lag():
                time.sleep(pause)
            try:
                result = attr(*args)
            except Exception:
                _note(f"{name}:error")
                raise
            if pause := lag():
                time.sleep(pause)
            _note(outcome(name, result))
            return result

        return call

    def asynchronous(self) -> Any:
        return AsyncObservedStore(self._inner.asynchronous(), self._lag)


class AsyncObservedStore:
    """The asyncio face of :class:`ObservedStore`."""

    def __init__(self, inner: Any, lag: Callable[[], float]) -> None:
        self._inner = inner
        self._lag = lag

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in OBSERVED:
            return attr
        lag = self._lag

        async def call(*args: Any) -> Any:
            if pause := lag():
                await asyncio.sleep(pause)
            try:
                result = await attr(*args)
            except Exception:
                _note(f"{name}:error")
                raise
            if pause := lag():
                await asyncio.sleep(pause)
            _note(outcome(name, result))
            return result

        return call


def _note(event: str) -> None:
    trace = TRACE.get()
    if trace is not None:
        trace.append(event)


# -- one process's side: a Cache, the cached read, the write -----------------------------------


class Harness:
    """What a process (or the one process in threads mode) reads and writes through."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        if cfg.store == "redis":
            store: Any = RedisStore(
                cfg.cache_url,
                socket_timeout=cfg.socket_timeout,
                connect_timeout=cfg.socket_timeout,
            )
        else:
            store = MemoryStore()
        self.cache = Cache(
            ObservedStore(store, lag_for(cfg.store_lag_ms, cfg.store_lag_prob)),
            namespace=cfg.namespace,
            ttl=cfg.ttl,
            lease_wait=cfg.lease_wait,
            breaker=CircuitBreaker(),
        )
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.loads = 0  # counted in the loader, outside the cache
        self._delay = cfg.load_delay_ms / 1000.0
        cached = self.cache.cached(
            ttl=cfg.ttl,
            key="row:{row_id}",
            stale_ttl=cfg.stale_ttl,
            early_refresh=cfg.early_refresh,
            refresh_after_write=cfg.refresh_after_write,
        )
        if cfg.use_async:

            async def read_row(row_id: int) -> dict[str, Any]:
                LOADED.set(True)
                row = await asyncio.to_thread(self.select, row_id)
                return {**row, "by": WORKER.get()}

        else:

            def read_row(row_id: int) -> dict[str, Any]:  # type: ignore[misc]
                LOADED.set(True)
                return {**self.select(row_id), "by": WORKER.get()}

        self.read_row: Any = cached(read_row)

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.cfg.db_path)
            with self._lock:
                self._conns.append(conn)
        return conn

    def select(self, row_id: int) -> dict[str, Any]:
        """The load: the row as it is now, and when it was read."""
        found = (
            self.conn()
            .execute("SELECT version, payload FROM rows WHERE id = ?", (row_id,))
            .fetchone()
        )
        selected = time.monotonic_ns()
        with self._lock:
            self.loads += 1
        if self._delay:
            time.sleep(random.random() * self._delay)  # widen the read-to-fill window
        return {"id": row_id, "version": found[0], "payload": found[1], "selected": selected}

    def update(self, row_id: int) -> int:
        """Bump the row's version in a committed transaction; the new version."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute(
                "UPDATE rows SET version = version + 1 WHERE id = ? RETURNING version",
                (row_id,),
            ).fetchall()[0][0]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return int(version)

    def close_db(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


def row_chooser(cfg: Config, wid: int) -> Callable[[], int]:
    rng = random.Random(cfg.seed * 1000 + wid)
    if cfg.dist == "uniform":
        return lambda: rng.randint(1, cfg.rows)
    ids = list(range(1, cfg.rows + 1))
    cum = list(itertools.accumulate(1.0 / (i**cfg.zipf_s) for i in ids))  # row 1: hottest
    return lambda: rng.choices(ids, cum_weights=cum)[0]


# -- workers -------------------------------------------------------------------------------------


class Shared:
    """What a run's workers share: reads done per reader (writers pace on it), and stop."""

    def __init__(self, progress: Any, stop: Any) -> None:
        self.progress = progress
        self.stop = stop  # set once every reader is done


def write_due(cfg: Config, shared: Shared, done: int) -> bool:
    """Is this writer behind its share of the target write ratio?"""
    ratio = cfg.write_ratio / (1.0 - cfg.write_ratio)
    return done * cfg.writers < sum(shared.progress) * ratio + cfg.writers


def _record(
    row: int, value: dict[str, Any], start: int, end: int, wid: int, trace: list[str]
) -> Read:
    return Read(
        row, value["version"], start, end, wid, LOADED.get(), value["selected"], value["by"],
        ",".join(trace),
    )  # fmt: skip


def reader(h: Harness, cfg: Config, wid: int, slot: int, shared: Shared, n: int) -> list[Read]:
    WORKER.set(wid)
    choose, read_row, clock = row_chooser(cfg, wid), h.read_row, time.monotonic_ns
    progress = shared.progress
    out: list[Read] = []
    for i in range(n):
        row = choose()
        LOADED.set(False)
        TRACE.set(trace := [])
        start = clock()
        value = read_row(row)
        end = clock()
        out.append(_record(row, value, start, end, wid, trace))
        progress[slot] = i + 1
    TRACE.set(None)
    return out


def writer(h: Harness, cfg: Config, wid: int, shared: Shared) -> list[Write]:
    WORKER.set(wid)
    choose, clock = row_chooser(cfg, wid), time.monotonic_ns
    out: list[Write] = []
    while not shared.stop.is_set():
        if not write_due(cfg, shared, len(out)):
            time.sleep(0.0005)
            continue
        row = choose()
        begin = clock()
        version = h.update(row)
        committed = clock()
        h.read_row.invalidate(row)
        out.append(Write(row, version, begin, committed, clock(), wid))
    return out


async def areader(
    h: Harness, cfg: Config, wid: int, slot: int, shared: Shared, n: int
) -> list[Read]:
    WORKER.set(wid)
    choose, read_row, clock = row_chooser(cfg, wid), h.read_row, time.monotonic_ns
    progress = shared.progress
    out: list[Read] = []
    for i in range(n):
        row = choose()
        LOADED.set(False)
        TRACE.set(trace := [])
        start = clock()
        value = await read_row(row)
        end = clock()
        out.append(_record(row, value, start, end, wid, trace))
        progress[slot] = i + 1
    TRACE.set(None)
    return out


async def awriter(h: Harness, cfg: Config, wid: int, shared: Shared) -> list[Write]:
    WORKER.set(wid)
    choose, clock = row_chooser(cfg, wid), time.monotonic_ns
    out: list[Write] = []
    while not shared.stop.is_set():
        if not write_due(cfg, shared, len(out)):
            await asyncio.sleep(0.0005)
            continue
        row = choose()
        begin = clock()
        version = await asyncio.to_thread(h.update, row)
        committed = clock()
        await h.read_row.ainvalidate(row)
        out.append(Write(row, version, begin, committed, clock(), wid))
    return out


Readers = Sequence[tuple[int, int, int]]  # (worker id, progress slot, reads)


def run_local(
    cfg: Config,
    readers: Readers,
    writers: Sequence[int],
    shared: Shared,
    owns_stop: bool,
    ready: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Run this process's workers (threads or tasks) to the end: its records and counts."""
    h = Harness(cfg)
    result: dict[str, Any] = {"reads": [], "writes": [], "errors": []}
    try:
        if cfg.use_async:
            asyncio.run(_run_tasks(h, cfg, readers, writers, shared, owns_stop, ready, result))
        else:
            _run_threads(h, cfg, readers, writers, shared, owns_stop, ready, result)
    finally:
        h.close_db()
    result["loads"] = h.loads
    result["stats"] = h.cache.stats.snapshot()
    return result


def _run_threads(
    h: Harness,
    cfg: Config,
    readers: Readers,
    writers: Sequence[int],
    shared: Shared,
    owns_stop: bool,
    ready: Callable[[], None],
    result: dict[str, Any],
) -> None:
    def guarded(fn: Callable[..., list[Any]], key: str, *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                result[key] += fn(*args)
            except BaseException:
                result["errors"].append(traceback.format_exc())
                if owns_stop:
                    shared.stop.set()

        return threading.Thread(target=run)

    rthreads = [guarded(reader, "reads", h, cfg, w, s, shared, n) for w, s, n in readers]
    wthreads = [guarded(writer, "writes", h, cfg, w, shared) for w in writers]
    ready()
    for t in rthreads + wthreads:
        t.start()
    for t in rthreads:
        t.join()
    if owns_stop:
        shared.stop.set()
    for t in wthreads:
        t.join()
    h.cache.close()


async def _run_tasks(
    h: Harness,
    cfg: Config,
    readers: Readers,
    writers: Sequence[int],
    shared: Shared,
    owns_stop: bool,
    ready: Callable[[], None],
    result: dict[str, Any],
) -> None:
    executor = ThreadPoolExecutor(len(readers) + len(writers) + 8, thread_name_prefix="db")
    asyncio.get_running_loop().set_default_executor(executor)
    ready()
    rtasks = [asyncio.create_task(areader(h, cfg, w, s, shared, n)) for w, s, n in readers]
    wtasks = [asyncio.create_task(awriter(h, cfg, w, shared)) for w in writers]
    for done in await asyncio.gather(*rtasks, return_exceptions=True):
        _collect(done, "reads", result)
    if owns_stop:
        shared.stop.set()
    for done in await asyncio.gather(*wtasks, return_exceptions=True):
        _collect(done, "writes", result)
    await h.cache.aclose()


def _collect(done: Any, key: str, result: dict[str, Any]) -> None:
    if isinstance(done, BaseException):
        result["errors"].append("".join(traceback.format_exception(done)))
    else:
        result[key] += done


def process_main(
    cfg: Config,
    readers: Readers,
    writers: Sequence[int],
    progress: Any,
    stop: Any,
    barrier: Any,
    out_path: str,
) -> None:
    """A worker process: set up, wait for the others, run, write its result to a file."""
    try:
        result = run_local(cfg, readers, writers, Shared(progress, stop), False, barrier.wait)
    except BaseException:
        result = {"reads": [], "writes": [], "errors": [traceback.format_exc()]}
        result.update(loads=0, stats={})
        with contextlib.suppress(Exception):
            barrier.abort()
    Path(out_path).write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


# -- running a configuration ---------------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(cfg: Config) -> tuple[list[dict[str, Any]], int, int]:
    """Run every worker; the per-process results, the start (ns) and the elapsed ns."""
    counts = split(cfg.reads, cfg.reader_workers)
    if cfg.mode == "threads":
        readers = [(w, w, counts[w]) for w in range(cfg.readers)]
        writers = [1000 + w for w in range(cfg.writers)]
        shared = Shared([0] * cfg.readers, threading.Event())
        t0 = [0]
        result = run_local(
            cfg, readers, writers, shared, True, lambda: t0.__setitem__(0, time.monotonic_ns())
        )
        return [result], t0[0], time.monotonic_ns() - t0[0]

    ctx = mp.get_context("spawn")
    progress = ctx.Array("q", cfg.reader_workers, lock=False)
    stop = ctx.Event()
    barrier = ctx.Barrier(cfg.readers + cfg.writers + 1)
    per = cfg.threads_per_process
    jobs: list[tuple[Readers, list[int]]] = [
        ([(p * per + i, p * per + i, counts[p * per + i]) for i in range(per)], [])
        for p in range(cfg.readers)
    ]
    jobs += [([], [1000 + w]) for w in range(cfg.writers)]
    procs = []
    for i, (mine, wids) in enumerate(jobs):
        out = Path(cfg.db_path).parent / f"result-{i}.pickle"
        proc = ctx.Process(
            target=process_main, args=(cfg, mine, wids, progress, stop, barrier, str(out))
        )
        proc.start()
        procs.append((proc, out, bool(mine)))
    with contextlib.suppress(Exception):  # a broken barrier: the workers report why
        barrier.wait(timeout=120)
    t0 = time.monotonic_ns()
    for proc, _, is_reader in procs:
        if is_reader:
            proc.join()
    stop.set()
    for proc, _, _ in procs:
        proc.join()
    elapsed = time.monotonic_ns() - t0
    results = []
    for proc, out, _ in procs:
        if out.exists():
            results.append(pickle.loads(out.read_bytes()))  # our own file
        else:
            error = f"worker pid {proc.pid} exited {proc.exitcode} without a result"
            results.append({"reads": [], "writes": [], "loads": 0, "stats": {}, "errors": [error]})
    return results, t0, elapsed


# -- the check -----------------------------------------------------------------------------------


@dataclass
class RowWrites:
    """One row's writes, indexed for "the newest version whose X happened before t"."""

    by_version: dict[int, Write]
    invalidated: list[int]  # sorted times
    newest_invalidated: list[Write]  # prefix maximum by version, in that order
    committed: list[int]
    newest_committed: list[int]
    begun: list[int]
    newest_begun: list[int]

    @classmethod
    def of(cls, writes: list[Write]) -> RowWrites:
        by_inv = sorted(writes, key=lambda w: w.invalidated)
        best: list[Write] = []
        for w in by_inv:
            best.append(w if not best or w.version > best[-1].version else best[-1])
        by_commit = sorted(writes, key=lambda w: w.committed)
        by_begin = sorted(writes, key=lambda w: w.begin)
        return cls(
            {w.version: w for w in writes},
            [w.invalidated for w in by_inv],
            best,
            [w.committed for w in by_commit],
            list(itertools.accumulate((w.version for w in by_commit), max)),
            [w.begin for w in by_begin],
            list(itertools.accumulate((w.version for w in by_begin), max)),
        )


def _before(times: list[int], best: list[Any], t: int) -> Any:
    i = bisect.bisect_left(times, t)  # strictly before t
    return best[i - 1] if i else None


@dataclass
class Verdict:
    stale: list[tuple[Read, Write]]
    impossible: list[tuple[Read, int]]
    behind_versions: Counter[int]
    behind_ms: list[float]


def check(reads: list[Read], writes: list[Write]) -> tuple[Verdict, dict[int, RowWrites]]:
    grouped: dict[int, list[Write]] = defaultdict(list)
    for w in writes:
        grouped[w.row].append(w)
    index = {row: RowWrites.of(ws) for row, ws in grouped.items()}
    empty = RowWrites.of([])
    verdict = Verdict([], [], Counter(), [])
    for r in reads:
        rw = index.get(r.row, empty)
        newest_inv = _before(rw.invalidated, rw.newest_invalidated, r.start)
        if newest_inv is not None and newest_inv.version > r.version:
            verdict.stale.append((r, newest_inv))
        begun = _before(rw.begun, rw.newest_begun, r.end) or 0
        if r.version > begun:  # a version no write had even begun to make
            verdict.impossible.append((r, begun))
        committed = _before(rw.committed, rw.newest_committed, r.end) or 0
        if committed > r.version:
            verdict.behind_versions[committed - r.version] += 1
            superseded = rw.by_version[r.version + 1].committed
            verdict.behind_ms.append((r.end - superseded) / 1e6)
    return verdict, index


# -- reporting -----------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _shape(trace: str) -> str:
    """A trace with runs of repeated calls folded: ``get:miss x12``."""
    calls = trace.split(",") if trace else ["-"]
    return ",".join(
        f"{call} x{n}" if n > 1 else call
        for call, n in ((c, len(list(g))) for c, g in itertools.groupby(calls))
    )


def source(r: Read) -> str:
    """Where a read's value came from, told by the store calls it made."""
    calls = r.trace.split(",") if r.trace else []
    if r.loaded:
        return "its own load"
    if calls == ["get:hit"]:
        return "a cache hit"
    if calls == ["get:miss"]:
        return "a single-flight join (the leader's shared outcome)"
    if calls and calls[-1] == "lease:value":
        return "lease() returned a value filled since the miss"
    if calls and calls[-1] == "get:hit":
        return "a lease wait (a poll found a fill)"
    return "a refresh or an unrecognised path"


def report(cfg: Config, results: list[dict[str, Any]], t0: int, elapsed: int) -> int:
    reads: list[Read] = [r for res in results for r in res["reads"]]
    writes: list[Write] = [w for res in results for w in res["writes"]]
    errors = [e for res in results for e in res["errors"]]
    loads = sum(res["loads"] for res in results)
    stats: Counter[str] = Counter()
    for res in results:
        stats.update(res["stats"])
    verdict, index = check(reads, writes)
    secs = max(elapsed, 1) / 1e9
    ops = max(len(reads) + len(writes), 1)
    lat = [(r.end - r.start) / 1e6 for r in reads]

    print(f"reads                 {len(reads)}  ({len(reads) / secs:,.0f}/s)")
    print(f"writes                {len(writes)}  ({100 * len(writes) / ops:.2f}% of operations)")
    print(f"duration              {secs:.1f} s")
    print(f"STALE READS           {len(verdict.stale)}")
    behind = sum(verdict.behind_versions.values())
    print(f"behind (concurrent)   {behind}  (a newer version had committed; allowed)")
    print(f"loads (in the loader) {loads}  ({sum(r.loaded for r in reads)} by the reading call)")
    print(f"hit ratio             {1 - loads / max(len(reads), 1):.4f}  (1 - loads/reads)")
    print(
        f"read latency          p50 {pct(lat, 0.5):.3f} ms, p99 {pct(lat, 0.99):.2f}, "
        f"p99.9 {pct(lat, 0.999):.2f}, max {max(lat, default=0):.1f}; "
        f"{sum(x > 500 for x in lat)} reads over 500 ms"
    )
    slow = Counter(_shape(r.trace) for r in reads if r.end - r.start > 500_000_000)
    for shape, n in slow.most_common(3):
        print(f"    {n} of them made the store calls {shape}")
    if behind:
        grouped = Counter(min(k, 4) for k in verdict.behind_versions.elements())
        hist = "  ".join(f"{'4+' if k == 4 else k}: {n}" for k, n in sorted(grouped.items()))
        ms = verdict.behind_ms
        print(f"behind by versions    {hist}")
        print(
            f"behind by time        superseded for p50 {pct(ms, 0.5):.2f} ms, "
            f"p90 {pct(ms, 0.9):.2f}, p99 {pct(ms, 0.99):.2f}, max {max(ms):.2f} "
            "when the read returned"
        )
    hits, misses = stats["hits"] + stats["stale_hits"], stats["misses"]
    print(f"cache.stats (summed)  hit ratio {hits / max(hits + misses, 1):.4f}")
    for key, val in sorted(stats.items()):
        if val and key != "hit_ratio_permille":
            print(f"    {key:<20} {val}")

    status = 0
    if verdict.impossible:
        status = 2
        for r, begun in verdict.impossible[: cfg.show]:
            print(f"IMPOSSIBLE: row {r.row} read version {r.version}; newest begun: {begun}")
    if errors:
        status = 2
        for err in errors[:3]:
            print(f"WORKER ERROR:\n{err}", file=sys.stderr)
    if verdict.stale:
        status = 1
        stale = sorted(verdict.stale, key=lambda s: s[0].start)
        print(f"\n{len(stale)} STALE READS; the first {min(cfg.show, len(stale))}:")
        loads_by = {(r.row, r.selected): r for r in reads if r.loaded}
        for r, w in stale[: cfg.show]:
            describe(r, w, index[r.row], loads_by.get((r.row, r.selected)), t0)
        print("stale reads by source: " + ", ".join(
            f"{n} {s}" for s, n in Counter(source(r) for r, _ in stale).most_common()
        ))  # fmt: skip
    if stats["invalidation_errors"] or stats["store_errors"] or stats["short_circuits"]:
        print(
            "NOTE: the store failed during the run (store_errors, invalidation_errors or "
            "short_circuits above); a stale read after a failed invalidation is out of scope"
        )
        status = status or 2
    print(f"RESULT                {['PASS', 'FAIL: stale reads', 'ERROR'][status]}")
    return status


def describe(r: Read, w: Write, rw: RowWrites, loader: Read | None, t0: int) -> None:
    def ms(t: int) -> str:
        return f"{(t - t0) / 1e6:.3f} ms"

    print(
        f"- row {r.row}: worker {r.worker} read version {r.version}, started {ms(r.start)}, "
        f"returned {ms(r.end)}; value from {source(r)}; store calls: {r.trace or '-'}"
    )
    print(
        f"  stale since write of version {w.version} by worker {w.worker}: began {ms(w.begin)}, "
        f"committed {ms(w.committed)}, invalidation returned {ms(w.invalidated)} "
        f"({(r.start - w.invalidated) / 1e3:.0f} us before this read started)"
    )
    by = "a background refresh" if r.loaded_by < 0 else f"worker {r.loaded_by}"
    print(f"  the value was SELECTed at {ms(r.selected)} by {by}", end="")
    if loader is not None and loader is not r:
        print(
            f", in its read started {ms(loader.start)}, returned {ms(loader.end)}, "
            f"store calls: {loader.trace}"
        )
    else:
        print()
    nxt = rw.by_version.get(r.version + 1)
    if nxt is not None and nxt is not w:
        print(
            f"  the next version, {nxt.version}, committed {ms(nxt.committed)}, "
            f"invalidation returned {ms(nxt.invalidated)}"
        )


# -- command line --------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", choices=["memory", "redis"], default="memory")
    p.add_argument("--mode", choices=["threads", "processes"], default="threads")
    p.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="workers are asyncio tasks (async def read_row, ainvalidate)",
    )
    p.add_argument(
        "--readers",
        type=int,
        default=None,
        help="reader threads (threads mode, default 8) or processes (default 4)",
    )
    p.add_argument("--writers", type=int, default=2, help="writer threads or processes")
    p.add_argument(
        "--threads-per-process",
        type=int,
        default=2,
        help="reader threads (tasks with --async) in each reader process",
    )
    p.add_argument("--reads", type=int, default=100_000, help="reads in all")
    p.add_argument(
        "--write-ratio", type=float, default=0.05, help="writes as a share of all operations"
    )
    p.add_argument("--rows", type=int, default=200)
    p.add_argument(
        "--dist",
        choices=["zipf", "uniform"],
        default="zipf",
        help="row choice; zipf: row k has weight 1/k^s",
    )
    p.add_argument("--zipf-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="row choices (default: random)")
    p.add_argument("--ttl", type=float, default=2.0)
    p.add_argument("--stale-ttl", type=float, default=0.0)
    p.add_argument("--early-refresh", type=float, default=1.0, help="XFetch beta; 0: off")
    p.add_argument("--refresh-after-write", action="store_true")
    p.add_argument(
        "--load-delay-ms",
        type=float,
        default=2.0,
        help="the loader sleeps uniform [0, this) ms after its SELECT",
    )
    p.add_argument("--lease-wait", type=float, default=1.0)
    p.add_argument(
        "--socket-timeout",
        type=float,
        default=1.0,
        help="Redis socket and connect timeout (library default 0.05)",
    )
    p.add_argument(
        "--store-lag-ms",
        type=float,
        default=0.0,
        help="hold store requests and, independently, replies for uniform "
        "[0, this) ms (widens race windows)",
    )
    p.add_argument(
        "--store-lag-prob",
        type=float,
        default=0.05,
        help="the share of requests and of replies held (with --store-lag-ms)",
    )
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    p.add_argument("--show", type=int, default=5, help="stale reads printed in full")
    a = p.parse_args(argv)
    if a.mode == "processes" and a.store != "redis":
        p.error("--mode processes needs --store redis: a memory store lives in one process")
    if not 0 <= a.write_ratio < 1:
        p.error("--write-ratio must be in [0, 1)")
    readers = a.readers if a.readers is not None else (8 if a.mode == "threads" else 4)
    if min(readers, a.rows, a.reads, a.threads_per_process) < 1 or a.writers < 0:
        p.error("--readers, --rows, --reads, --threads-per-process >= 1; --writers >= 0")
    return Config(
        store=a.store, mode=a.mode, use_async=a.use_async, readers=readers,
        writers=a.writers, threads_per_process=a.threads_per_process, reads=a.reads,
        write_ratio=a.write_ratio, rows=a.rows, dist=a.dist, zipf_s=a.zipf_s,
        seed=a.seed if a.seed is not None else secrets.randbelow(10**6), ttl=a.ttl,
        stale_ttl=a.stale_ttl, early_refresh=a.early_refresh,
        refresh_after_write=a.refresh_after_write, load_delay_ms=a.load_delay_ms,
        socket_timeout=a.socket_timeout, lease_wait=a.lease_wait,
        store_lag_ms=a.store_lag_ms, store_lag_prob=a.store_lag_prob, show=a.show,
        cache_url=a.redis_url or "",
    )  # fmt: skip


def describe_config(cfg: Config, server_note: str) -> str:
    unit = "tasks" if cfg.use_async else "threads"
    if cfg.mode == "threads":
        workers = f"{cfg.readers} reader + {cfg.writers} writer {unit} in one process"
    else:
        workers = (
            f"{cfg.readers} reader processes x {cfg.threads_per_process} {unit} + "
            f"{cfg.writers} writer processes"
        )
    lag = f"{cfg.store_lag_ms} ms x {cfg.store_lag_prob}" if cfg.store_lag_ms else "off"
    return (
        f"store={cfg.store}{server_note} mode={cfg.mode}{' async' if cfg.use_async else ''}: "
        f"{workers}; reads={cfg.reads} write-ratio={cfg.write_ratio} rows={cfg.rows} "
        f"({cfg.dist}) ttl={cfg.ttl} stale-ttl={cfg.stale_ttl} "
        f"early-refresh={cfg.early_refresh} refresh-after-write={cfg.refresh_after_write} "
        f"load-delay={cfg.load_delay_ms} ms store-lag={lag} seed={cfg.seed}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse(argv)
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cachelayer-check-"))
        server_note = ""
        if cfg.store == "redis" and not cfg.cache_url:
            from cachelayer.testing import RedisServer

            server = stack.enter_context(RedisServer())
            cfg = replace(cfg, cache_url=server.url)
            server_note = " (private server)"
        cfg = replace(
            cfg, db_path=str(Path(tmp) / "rows.db"), namespace="check" + secrets.token_hex(6)
        )
        create_db(cfg.db_path, cfg.rows)
        print(f"consistency check: {describe_config(cfg, server_note)}")
        print(
            f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
            f"{os.cpu_count()} CPUs"
        )
        try:
            results, t0, elapsed = run(cfg)
        finally:
            if cfg.store == "redis":
                with Cache(cfg.cache_url, namespace=cfg.namespace) as cleaner:
                    cleaner.clear()
        return report(cfg, results, t0, elapsed)


if __name__ == "__main__":
    sys.exit(main())
