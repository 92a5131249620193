"""The fault matrix: what callers see when the store, the loader or the clocks go wrong
under load. One table, one command.

Usage::

    python bench/bench_faults.py [--healthy S] [--fault S] [--after S] [--coroutines N]
                                 [--threads N] [--cooldown S] [--only FAULT ...] [--quick]

For each fault and each face (``--coroutines`` coroutines in one event loop; ``--threads``
threads), callers call a cached function over 200 keys, each caller picking a key at
random per call, for ``--healthy`` seconds, then the fault lasts ``--fault`` seconds, then
they go on for ``--after`` seconds. Meanwhile a writer bumps a random key's version in the
"database" and invalidates it, 50 times a second. Every Cache setting is the default
(250 ms timeouts, breaker: 5 failures, 5 s cooldown) unless the fault's row says
otherwise. The faults (``--only`` takes these names):

- ``none``: no fault, the baseline.
- ``stopped``: Redis stopped (connections refused), then restarted empty.
- ``frozen``: Redis frozen with SIGSTOP (connections hang), then resumed with SIGCONT.
- ``slow-50ms``, ``slow-400ms``: every reply 50 ms / 400 ms late, through a delaying
  relay on loopback (``tests/_relay.py``); the Cache talks through it in every phase.
- ``oom``: ``maxmemory 1`` with ``noeviction``: writes fail with OOM, reads work.
- ``maxclients``: other clients hold every slot (``maxclients`` lowered to them), and the
  Cache's connections are killed (``CLIENT KILL``) so it must reconnect and is refused.
- ``corrupt``: the cache's keys overwritten, every 20 ms, with garbage: random bytes,
  truncated envelopes, an unknown format version, unknown flags.
- ``skew``: two Caches on one Redis and namespace, half the callers each (``ttl=20``):
  one's clock jumps 30 s ahead, the other's 30 s behind.
- ``loader-slow``: each load takes 200 ms instead of 2 ms.
- ``loader-raises``: every load raises ``DatabaseDown``. ``loader-raises-sie``: the same
  with ``ttl=0.5, stale_if_error=60``; ``loader-raises-neg``: with
  ``cache_errors={DatabaseDown: 1}`` (negative caching).

Columns: calls; calls that raised (caller-visible errors: for a store fault the target is
0; for a raising loader, the calls that had to load); loader calls during the fault (the
database load); p99 latency of the calls that ended during the fault; recovery: seconds
from the fault's end to the first cache hit after the last store error or raised call
("none": no hit after it); stale reads: reads that returned a version older than one whose
write and invalidation had returned before the read started, with, in brackets, those
not explained by a failed invalidation (the documented risk: docs/failure.md); failed
invalidations.

Each run has a private server (``cachelayer.testing.RedisServer``) that this script
alone stops, freezes, resumes and reconfigures, by its pid or its own connection;
loopback only; every run stops by itself. ``--quick`` is a short smoke run (each fault
on one face, about 25 s; exits 0). cachelayer's warnings are silenced unless ``--log``.
tests/test_load_faults.py drives the same runs, shortened, and asserts on them.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cachelayer import Cache, CircuitBreaker
from cachelayer.testing import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._relay import DelayingRelay  # the repository is on sys.path now

KEYS = 200
WRITE_EVERY = 0.02  # seconds between the writer's writes
LOAD_DELAY = 0.002  # a load's time (the database)
SLOW_LOAD = 0.2  # a load's time during loader-slow
SKEW = 30.0  # seconds each skewed clock is off during skew
SKEW_TTL = 20.0  # below 2 * SKEW, so the skew shows
HOLDERS = 4  # other clients holding the slots during maxclients
SETTLE = 0.1  # seconds after the fault's end within which a call may still see it
# Each caller draws its keys from its own random.Random(CALLER_SEED + i). Not a fixed walk
# (caller i reading i+1, i+2, ...): callers that meet on a miss share its load, return
# together and, walking the same order, meet again on the next key, for good. 100
# coroutines then end up as one convoy reading one key at a time; after ``corrupt``
# (nearly every entry garbage) it repairs one key per load and reaches a repaired key
# only a lap (200 loads, over 1 s) later: no hit in a short recovery phase.
CALLER_SEED = 1000
ADMIN, HOLDER = "fault-admin", "fault-holder"

Action = Callable[[], object]


class DatabaseDown(Exception):
    """The loader's failure during loader-raises."""


class Clock:
    """Wall-clock seconds plus an offset the skew fault moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Database:
    """Rows ``{"id": k, "v": version}``; a write bumps the version, then invalidates."""

    def __init__(self, keys: int) -> None:
        self.versions = [0] * keys
        #: per key, when the write of each version (1, 2, ...) and its invalidation returned
        self.done: list[list[float]] = [[] for _ in range(keys)]
        self.delay = LOAD_DELAY
        self.failing = False

    def read(self, k: int) -> dict[str, int]:
        if self.failing:
            raise DatabaseDown(f"row {k}: the database is down")
        return {"id": k, "v": self.versions[k]}


@dataclass
class Rig:
    """What a fault acts on."""

    server: RedisServer
    admin: redis.Redis
    relay: DelayingRelay | None
    db: Database
    clocks: list[Clock]
    keys: list[str]  # the store keys of the cached function's 200 entries


def nothing(rig: Rig) -> tuple[Action, Action]:
    return (lambda: None), (lambda: None)


def stop(rig: Rig) -> tuple[Action, Action]:
    return rig.server.stop, rig.server.start


def freeze(rig: Rig) -> tuple[Action, Action]:
    pid = rig.server.pid
    return (lambda: os.kill(pid, signal.SIGSTOP)), (lambda: os.kill(pid, signal.SIGCONT))


def slow(seconds: float) -> Callable[[Rig], tuple[Action, Action]]:
    def apply(rig: Rig) -> tuple[Action, Action]:
        relay = rig.relay
        assert relay is not None

        def begin() -> None:
            relay.delay = seconds

        def end() -> None:
            relay.delay = 0.0

        return begin, end

    return apply


def out_of_memory(rig: Rig) -> tuple[Action, Action]:
    def begin() -> None:
        rig.admin.config_set("maxmemory-policy", "noeviction")
        rig.admin.config_set("maxmemory", 1)

    return begin, lambda: rig.admin.config_set("maxmemory", 0)


def max_clients(rig: Rig) -> tuple[Action, Action]:
    holders: list[redis.Redis] = []
    server = rig.server

    def begin() -> None:
        for _ in range(HOLDERS):
            holder = redis.Redis(server.host, server.port, client_name=HOLDER)
            holder.ping()
            holders.append(holder)
        rig.admin.config_set("maxclients", HOLDERS + 1)
        for client in rig.admin.client_list():
            if client["name"] not in (ADMIN, HOLDER):
                with contextlib.suppress(redis.ResponseError):  # gone already
                    rig.admin.client_kill_filter(_id=client["id"])

    def end() -> None:
        rig.admin.config_set("maxclients", 10000)
        for holder in holders:
            holder.close()

    return begin, end


def garble(raw: bytes | str | None, rng: random.Random) -> bytes:
    """Bytes that must not decode: never a valid envelope, whatever ``raw`` was."""
    kind = rng.randrange(5)
    if not isinstance(raw, bytes) or len(raw) < 27 or kind == 0:
        return rng.randbytes(rng.randrange(40))
    if kind == 1:  # truncated: a JSON object cut anywhere is not JSON
        return raw[: rng.randrange(len(raw))]
    if kind == 2:  # an unknown format version
        return raw[:2] + b"\x09" + raw[3:]
    if kind == 3:  # unknown flags
        return raw[:4] + b"\xe0" + raw[5:]
    return raw[:26] + b"\xff" + rng.randbytes(rng.randrange(40))  # payload not JSON


def corrupt(rig: Rig) -> tuple[Action, Action]:
    done = threading.Event()
    admin = rig.admin

    def overwrite() -> None:
        rng = random.Random(7)
        while not done.wait(0.02):
            keys = rng.sample(rig.keys, 50)
            with contextlib.suppress(redis.RedisError):
                raws = admin.mget(keys)
                pipe = admin.pipeline(transaction=False)
                for key, raw in zip(keys, raws, strict=True):
                    pipe.set(key, garble(raw, rng))
                pipe.execute()

    thread = threading.Thread(target=overwrite, name="corrupter")

    def end() -> None:
        done.set()
        thread.join()

    return thread.start, end


def skew(rig: Rig) -> tuple[Action, Action]:
    ahead, behind = rig.clocks

    def begin() -> None:
        ahead.offset, behind.offset = SKEW, -SKEW

    def end() -> None:
        ahead.offset = behind.offset = 0.0

    return begin, end


def loader_slow(rig: Rig) -> tuple[Action, Action]:
    def begin() -> None:
        rig.db.delay = SLOW_LOAD

    def end() -> None:
        rig.db.delay = LOAD_DELAY

    return begin, end


def loader_raises(rig: Rig) -> tuple[Action, Action]:
    def begin() -> None:
        rig.db.failing = True

    def end() -> None:
        rig.db.failing = False

    return begin, end


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: what is done, and how the Cache is set up for it."""

    apply: Callable[[Rig], tuple[Action, Action]]
    store: bool = True  # a store fault: callers must see no error
    relay: bool = False  # the Cache talks through a DelayingRelay
    ttl: float = 300.0
    options: Mapping[str, Any] = field(default_factory=dict)  # more cached() arguments
    caches: int = 1


FAULTS: dict[str, Fault] = {
    "none": Fault(nothing),
    "stopped": Fault(stop),
    "frozen": Fault(freeze),
    "slow-50ms": Fault(slow(0.05), relay=True),
    "slow-400ms": Fault(slow(0.4), relay=True),
    "oom": Fault(out_of_memory),
    "maxclients": Fault(max_clients),
    "corrupt": Fault(corrupt),
    "skew": Fault(skew, ttl=SKEW_TTL, caches=2),
    "loader-slow": Fault(loader_slow, store=False),
    "loader-raises": Fault(loader_raises, store=False),
    "loader-raises-sie": Fault(
        loader_raises, store=False, ttl=0.5, options={"stale_if_error": 60}
    ),
    "loader-raises-neg": Fault(
        loader_raises, store=False, options={"cache_errors": {DatabaseDown: 1.0}}
    ),
}


@dataclass
class Config:
    healthy: float = 1.0
    fault: float = 2.0
    after: float = 7.0
    coroutines: int = 100
    threads: int = 32
    cooldown: float | None = None  # the breaker's; None: the default (5 s)


class Timeline:
    """The phases of one run; the conductor thread applies and ends the fault on time."""

    def __init__(self, cfg: Config, begin: Action, end: Action) -> None:
        self.cfg = cfg
        self.begin, self.end = begin, end
        self.started = time.monotonic()
        self.fault_started: float | None = None
        self.fault_ended: float | None = None
        self.thread = threading.Thread(target=self._conduct, name="conductor")

    def _conduct(self) -> None:
        time.sleep(self.cfg.healthy)
        self.fault_started = time.monotonic()
        self.begin()
        try:
            time.sleep(self.cfg.fault)
        finally:
            self.end()
            self.fault_ended = time.monotonic()

    def phase(self, t: float) -> int:
        """0 healthy, 1 fault, 2 after: the phase at monotonic time ``t``."""
        if self.fault_started is None or t < self.fault_started:
            return 0
        return 1 if self.fault_ended is None or t < self.fault_ended else 2

    def over(self) -> bool:
        cfg = self.cfg
        return time.monotonic() - self.started >= cfg.healthy + cfg.fault + cfg.after


@dataclass
class Result:
    """What the callers saw."""

    calls: list[int] = field(default_factory=lambda: [0, 0, 0])  # by phase
    raised: int = 0
    raised_by_phase: list[int] = field(default_factory=lambda: [0, 0, 0])  # of the start
    raised_late: int = 0  # raised in calls that began over SETTLE s after the fault ended
    errors: Counter[str] = field(default_factory=Counter)  # raised, by exception type
    wrong: int = 0
    stale: int = 0
    unexplained: int = 0  # stale reads of a key with no failed invalidation
    loads: list[int] = field(default_factory=lambda: [0, 0, 0])  # by phase
    fault_latencies: list[float] = field(default_factory=list)
    slowest: float = 0.0
    hits_after: list[float] = field(default_factory=list)  # when hits after the fault ended
    last_bad: float = 0.0  # when a call last raised or saw a store error, after the fault began
    failed_invalidations: int = 0
    failed_keys: set[int] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=dict)  # the caches' counters, summed
    recovery: float | None = None

    def p99(self) -> float:
        lat = sorted(self.fault_latencies)
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")

    def finish(self, timeline: Timeline, caches: list[Cache]) -> None:
        assert timeline.fault_ended is not None
        since = max(timeline.fault_ended, self.last_bad)
        hits = sorted(self.hits_after)
        i = bisect.bisect_right(hits, since)
        self.recovery = hits[i] - timeline.fault_ended if i < len(hits) else None
        self.stats = {}
        for cache in caches:
            for name, count in cache.stats.snapshot().items():
                self.stats[name] = self.stats.get(name, 0) + count

    def row(self, fault: str, face: str) -> str:
        recovery = "none" if self.recovery is None else f"{self.recovery:.2f} s"
        return (
            f"| {fault} | {face} | {sum(self.calls):,} | {self.raised:,} | "
            f"{self.loads[1]:,} | {self.p99() * 1000:.1f} ms | {recovery} | "
            f"{self.stale:,} ({self.unexplained}) | {self.failed_invalidations} |"
        )


HEADER = (
    "| fault | callers | calls | raised | loader calls during fault | p99 during fault "
    "| recovery | stale reads (unexplained) | failed invalidations |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


class Probe:
    """Records every call; shared by the callers of both faces (thread-safe)."""

    def __init__(self, db: Database, timeline: Timeline, caches: list[Cache]) -> None:
        self.db = db
        self.timeline = timeline
        self.caches = caches
        self.result = Result()
        self.lock = threading.Lock()
        # Per Cache, its counters as the last call to end saw them. A call's own hit cannot
        # be told from the counters (a before/after difference over a call also counts
        # every concurrent caller's hits: with 100 callers, nearly every call): a call that
        # sees ``hits`` above what the previous call to end saw records a hit at its end.
        self._hits_seen = [0] * len(caches)
        self._bad_seen = [0] * len(caches)

    def load(self) -> None:
        phase = self.timeline.phase(time.monotonic())
        with self.lock:
            self.result.loads[phase] += 1

    def call(self, cache: Cache, k: int, value: Any, exc: BaseException | None, t0: float) -> None:
        t1 = time.monotonic()
        stats = cache.stats
        hits = stats.hits
        bad = stats.store_errors + stats.short_circuits + stats.store_busy
        c = self.caches.index(cache)
        timeline, r = self.timeline, self.result
        phase = timeline.phase(t1)
        with self.lock:
            r.calls[phase] += 1
            r.slowest = max(r.slowest, t1 - t0)
            if phase == 1:
                r.fault_latencies.append(t1 - t0)
            if bad > self._bad_seen[c]:
                self._bad_seen[c] = bad
                if phase:
                    r.last_bad = max(r.last_bad, t1)
            if hits > self._hits_seen[c]:
                self._hits_seen[c] = hits
                if phase == 2:
                    r.hits_after.append(t1)
            if exc is not None:
                r.raised += 1
                r.raised_by_phase[timeline.phase(t0)] += 1
                ended = timeline.fault_ended
                r.raised_late += ended is not None and t0 > ended + SETTLE
                r.errors[type(exc).__name__] += 1
                if phase:
                    r.last_bad = max(r.last_bad, t1)
                return
            if not (isinstance(value, dict) and value.get("id") == k):
                r.wrong += 1
                return
            version = value.get("v")
            if not isinstance(version, int) or version > self.db.versions[k]:
                r.wrong += 1
            elif version < bisect.bisect_right(self.db.done[k], t0):
                r.stale += 1
                r.unexplained += k not in r.failed_keys

    def invalidated(self, k: int, failed: bool) -> None:
        with self.lock:
            if failed:
                self.result.failed_invalidations += 1
                self.result.failed_keys.add(k)
        self.db.done[k].append(time.monotonic())


class Run:
    """One fault on one face: the server, the relay, the Caches and their function."""

    def __init__(self, name: str, cfg: Config) -> None:
        self.name, self.fault, self.cfg = name, FAULTS[name], cfg

    def rig(self, server: RedisServer, stack: contextlib.ExitStack) -> tuple[Rig, str]:
        admin = redis.Redis(server.host, server.port, client_name=ADMIN)
        stack.callback(admin.close)
        relay = stack.enter_context(DelayingRelay(server.port)) if self.fault.relay else None
        clocks = [Clock() for _ in range(self.fault.caches)]
        url = server.url if relay is None else relay.url
        return Rig(server, admin, relay, Database(KEYS), clocks, []), url

    def caches(self, rig: Rig, url: str) -> list[Cache]:
        namespace = "faults" + uuid.uuid4().hex[:6]
        breaker = self.cfg.cooldown
        return [
            Cache(
                url,
                namespace=namespace,
                clock=clock,
                breaker=None if breaker is None else CircuitBreaker(cooldown=breaker),
            )
            for clock in rig.clocks
        ]

    def decorate(self, cache: Cache, loader: Callable[[int], Any]) -> Any:
        return cache.cached(ttl=self.fault.ttl, key="user:{user_id}", **self.fault.options)(loader)

    def run(self, face: str) -> Result:
        with RedisServer() as server, contextlib.ExitStack() as stack:
            rig, url = self.rig(server, stack)
            caches = self.caches(rig, url)
            try:
                return (self._coroutines if face == "coroutines" else self._threads)(rig, caches)
            finally:
                for cache in caches:
                    cache.close()

    def _coroutines(self, rig: Rig, caches: list[Cache]) -> Result:
        db = rig.db
        probe: Probe

        def function(cache: Cache) -> Any:
            async def profile(user_id: int) -> dict[str, int]:
                probe.load()
                row = db.read(user_id)
                await asyncio.sleep(db.delay)
                return row

            return self.decorate(cache, profile)

        functions = [function(cache) for cache in caches]
        rig.keys = [functions[0].key(k) for k in range(KEYS)]
        begin, end = self.fault.apply(rig)
        timeline = Timeline(self.cfg, begin, end)
        probe = Probe(db, timeline, caches)

        async def caller(i: int) -> None:
            cache, profile = caches[i % len(caches)], functions[i % len(caches)]
            keys = random.Random(CALLER_SEED + i)  # see CALLER_SEED: never a fixed walk
            while not timeline.over():
                k = keys.randrange(KEYS)
                t0 = time.monotonic()
                value: Any = None
                exc: BaseException | None = None
                try:
                    value = await profile(k)
                except Exception as e:
                    exc = e
                probe.call(cache, k, value, exc, t0)
                await asyncio.sleep(0.001)

        async def writer() -> None:
            rng = random.Random(1)
            cache, profile = caches[0], functions[0]
            while not timeline.over():
                k = rng.randrange(KEYS)
                db.versions[k] += 1
                before = cache.stats.invalidation_errors
                await profile.ainvalidate(k)
                probe.invalidated(k, cache.stats.invalidation_errors > before)
                await asyncio.sleep(WRITE_EVERY)

        async def main() -> None:
            timeline.thread.start()
            try:
                await asyncio.gather(writer(), *(caller(i) for i in range(self.cfg.coroutines)))
            finally:
                await asyncio.to_thread(timeline.thread.join)
                for cache in caches:
                    await cache.aclose()

        asyncio.run(main())
        probe.result.finish(timeline, caches)
        return probe.result

    def _threads(self, rig: Rig, caches: list[Cache]) -> Result:
        db = rig.db
        probe: Probe

        def function(cache: Cache) -> Any:
            def profile(user_id: int) -> dict[str, int]:
                probe.load()
                row = db.read(user_id)
                time.sleep(db.delay)
                return row

            return self.decorate(cache, profile)

        functions = [function(cache) for cache in caches]
        rig.keys = [functions[0].key(k) for k in range(KEYS)]
        begin, end = self.fault.apply(rig)
        timeline = Timeline(self.cfg, begin, end)
        probe = Probe(db, timeline, caches)

        def caller(i: int) -> None:
            cache, profile = caches[i % len(caches)], functions[i % len(caches)]
            keys = random.Random(CALLER_SEED + i)  # see CALLER_SEED: never a fixed walk
            while not timeline.over():
                k = keys.randrange(KEYS)
                t0 = time.monotonic()
                value: Any = None
                exc: BaseException | None = None
                try:
                    value = profile(k)
                except Exception as e:
                    exc = e
                probe.call(cache, k, value, exc, t0)
                time.sleep(0.001)

        def writer() -> None:
            rng = random.Random(1)
            cache, profile = caches[0], functions[0]
            while not timeline.over():
                k = rng.randrange(KEYS)
                db.versions[k] += 1
                before = cache.stats.invalidation_errors
                profile.invalidate(k)
                probe.invalidated(k, cache.stats.invalidation_errors > before)
                time.sleep(WRITE_EVERY)

        workers = [threading.Thread(target=caller, args=(i,)) for i in range(self.cfg.threads)]
        workers.append(threading.Thread(target=writer))
        timeline.thread.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        timeline.thread.join()
        probe.result.finish(timeline, caches)
        return probe.result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--healthy", type=float, default=1.0)
    parser.add_argument("--fault", type=float, default=2.0)
    parser.add_argument("--after", type=float, default=7.0)
    parser.add_argument("--coroutines", type=int, default=100)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--cooldown", type=float, default=None, help="the breaker's")
    parser.add_argument("--only", nargs="+", choices=list(FAULTS), default=list(FAULTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--log", action="store_true", help="show cachelayer's warnings")
    args = parser.parse_args()
    if not args.log:  # the table, not the (rate-limited) warnings every fault causes
        logging.getLogger("cachelayer").setLevel(logging.ERROR)
    cfg = Config(args.healthy, args.fault, args.after, args.coroutines, args.threads)
    cfg.cooldown = args.cooldown
    faces = [("coroutines", cfg.coroutines), ("threads", cfg.threads)]
    if args.quick:  # every fault once, the faces in turn
        cfg = Config(0.3, 0.4, 0.8, 20, 8, cooldown=0.2)
        faces = [("coroutines", cfg.coroutines), ("threads", cfg.threads)]
    cooldown = "5 s (default)" if cfg.cooldown is None else f"{cfg.cooldown:g} s"
    print(
        f"# {cfg.healthy:g} s healthy, {cfg.fault:g} s of fault, {cfg.after:g} s after; "
        f"{KEYS} keys, a write every {WRITE_EVERY * 1000:g} ms; "
        f"{cfg.coroutines} coroutines / {cfg.threads} threads; breaker cooldown {cooldown}"
    )
    print(HEADER, flush=True)
    for i, name in enumerate(args.only):
        for face, n in faces[i % 2 : i % 2 + 1] if args.quick else faces:
            result = Run(name, cfg).run(face)
            print(result.row(name, f"{n} {face}"), flush=True)


if __name__ == "__main__":
    main()
