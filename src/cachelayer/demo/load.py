"""The load driver: a Zipf workload over HTTP/1.1, open or closed loop, a stale-read check.

**Open loop** (``drive_open``, the default): requests are sent at a fixed arrival rate,
one every ``1 / rate`` seconds, whatever the server does, and each latency is counted
from the request's *intended* send time. A server that stalls for a second therefore
shows a second of latency on every request that should have gone out during the stall,
not on the one request that was stuck: coordinated omission is corrected, as wrk2 and
k6's constant-arrival-rate executor do. Requests go out on a pool of keep-alive
connections that grows as requests wait (up to ``MAX_CONNECTIONS``; past that a request
waits for a free one, and that wait is part of its latency).

**Closed loop** (``drive``): ``concurrency`` clients each send a request as soon as the
previous one answered: the throughput at saturation, used to measure the uncached
capacity that sets the open loop's rate.

A small keep-alive HTTP client over asyncio streams is used instead of an HTTP library:
the driver shares a 2-core machine with the server, and a few dozen lines that write a
request and read a ``Content-Length`` (or chunked) body cost a fraction of a general
client's CPU per request, which leaves the server its core.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import math
import random
import threading
import time
from collections.abc import Callable

import orjson


class Zipf:
    """User ids drawn from a Zipf law: rank ``k`` has weight ``1 / k**s``.

    Ranks are mapped to ids by a seeded shuffle, so the hot users are spread over the
    table rather than being ids 1, 2, 3.
    """

    def __init__(self, users: int, s: float, seed: int) -> None:
        weights = (1.0 / (k**s) for k in range(1, users + 1))
        self.cumulative = list(itertools.accumulate(weights))
        self.ids = list(range(1, users + 1))
        random.Random(seed).shuffle(self.ids)

    def draw(self, rng: random.Random) -> int:
        rank = bisect.bisect_left(self.cumulative, rng.random() * self.cumulative[-1])
        return self.ids[min(rank, len(self.ids) - 1)]


#: Seconds a request may take before it counts as an error (and its connection is closed).
REQUEST_TIMEOUT = 30.0
#: The open loop's connection pool never grows past this; further requests queue.
MAX_CONNECTIONS = 256


class Versions:
    """The newest version of each user whose write has completed (its response received).

    A read sent while ``floor(user)`` is ``v`` must return version ``v`` or newer: one
    that returns less is a stale read.
    """

    def __init__(self) -> None:
        self.completed: dict[int, int] = {}

    def floor(self, user_id: int) -> int:
        return self.completed.get(user_id, 0)

    def wrote(self, user_id: int, version: int) -> None:
        if version > self.completed.get(user_id, 0):
            self.completed[user_id] = version


@dataclasses.dataclass
class Workload:
    users: int
    write_ratio: float = 0.05
    zipf_s: float = 1.1
    seed: int = 1


def hottest_users(workload: Workload, count: int, sample: int, seed: int) -> list[int]:
    """The ``count`` users drawn most often in a sample of ``sample`` reads of the workload,
    drawn with ``seed`` (not the measured sequence's seed), hottest first: the warm-up list
    a team would take from yesterday's access log."""
    zipf = Zipf(workload.users, workload.zipf_s, workload.seed)
    rng = random.Random(seed)
    seen = collections.Counter(zipf.draw(rng) for _ in range(sample))
    return [user_id for user_id, _ in seen.most_common(count)]


@dataclasses.dataclass
class Result:
    """What one run of the driver saw in its measured window.

    ``latencies`` are counted from each request's intended send time in the open loop
    (from its actual send in the closed loop); ``sent_latencies`` from its actual send,
    for comparison: their gap is the queueing an uncorrected driver would hide.
    """

    concurrency: int
    seconds: float
    latencies: dict[str, list[float]]  # "read" / "write" / "ping" -> seconds, in order
    sent_latencies: list[float] = dataclasses.field(default_factory=list)
    rate: float = 0.0  # the open loop's arrival rate (0: closed loop)
    settle_seconds: float = 0.0  # unmeasured traffic before the window
    errors: int = 0
    stale: int = 0
    reads_after_write: int = 0
    connections: int = 0  # the most connections open at once
    timeline: list[dict[str, float]] = dataclasses.field(default_factory=list)
    server: dict[str, int] = dataclasses.field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection to the server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(head + body)
            status, payload, keep = await _read_response(self.reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.close()
            raise
        if not keep:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await reader.read()
        return status, body, False
    return status, body, headers.get("connection") != "close"


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def _put(path: str, body: bytes) -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()


async def server_counters(host: str, port: int) -> dict[str, int]:
    """The server's request, query, read and load counters (``/_demo/stats``)."""
    conn = Connection(host, port)
    try:
        status, body = await conn.request(_get("/_demo/stats"))
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"/_demo/stats answered {status}")
    return dict(orjson.loads(body))


class _Requests:
    """Draws the workload's requests in a fixed order and judges their answers."""

    def __init__(self, workload: Workload | None, rng: random.Random | None) -> None:
        self.workload = workload
        self.zipf = Zipf(workload.users, workload.zipf_s, workload.seed) if workload else None
        self.rng = rng if rng is not None else random.Random(workload.seed if workload else 0)
        self.versions = Versions()
        self.names = itertools.count(1)

    def draw(self) -> tuple[str, int, bytes, bytes]:
        """The next request: ``(kind, user id, head, body)``."""
        if self.zipf is None or self.workload is None:
            return "ping", 0, _get("/ping"), b""
        user_id = self.zipf.draw(self.rng)
        if self.rng.random() < self.workload.write_ratio:
            body = orjson.dumps({"name": f"renamed {next(self.names)}"})
            return "write", user_id, _put(f"/users/{user_id}", body), body
        return "read", user_id, _get(f"/users/{user_id}"), b""

    def judge(
        self, kind: str, user_id: int, floor: int, status: int, payload: bytes
    ) -> tuple[bool, bool]:
        """``(good, stale)`` for one answer; records a completed write's version."""
        try:
            data = orjson.loads(payload) if status == 200 else None
            good = data is not None and (kind == "ping" or data["id"] == user_id)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False, False
        if not good:
            return False, False
        assert data is not None
        if kind == "write":
            self.versions.wrote(user_id, data["version"])
            return True, False
        return True, kind == "read" and bool(floor) and data["version"] < floor


async def _send(conn: Connection, head: bytes, body: bytes) -> tuple[int, bytes]:
    try:
        return await asyncio.wait_for(conn.request(head, body), REQUEST_TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.TimeoutError):
        conn.close()
        return 0, b""


class _Sampler:
    """Once a second: requests answered, latencies of the last second, the server's hit
    ratio; and the server's counters over the measured window."""

    def __init__(self, host: str, port: int, result: Result) -> None:
        self.host, self.port, self.result = host, port, result
        self.answered = 0  # responses (or failures) so far, unmeasured ones included
        self.recent: list[float] = []  # latencies completed since the last sample

    def done(self, latency: float) -> None:
        self.answered += 1
        self.recent.append(latency)

    async def run(
        self,
        start: float,
        window: Callable[[], tuple[float, float]],
        on_sample: Callable[[float, list[dict[str, float]]], None] | None = None,
        tick: Callable[[float, int], None] | None = None,
    ) -> None:
        """Sample until the window's end; ``window()`` gives ``(measure_from, deadline)``
        as they stand (``inf`` while not yet known)."""
        last = first = await server_counters(self.host, self.port)
        measuring = False
        last_t, last_done = time.perf_counter(), 0
        while (now := time.perf_counter()) < window()[1]:
            measure_from, deadline = window()
            step = min(1.0, deadline - now)
            if not measuring and measure_from > now:
                step = min(step, measure_from - now)
            await asyncio.sleep(max(0.0, step))
            try:
                current = await asyncio.wait_for(
                    server_counters(self.host, self.port), REQUEST_TIMEOUT
                )
            except (OSError, RuntimeError, ValueError, asyncio.TimeoutError):
                continue  # a missed sample; the requests count the failures
            now = time.perf_counter()
            reads = current["reads"] - last["reads"]
            loads = current["loads"] - last["loads"]
            recent, self.recent = sorted(self.recent), []
            self.result.timeline.append(
                {
                    "t": round(now - start, 3),
                    "dt": round(now - last_t, 3),
                    "requests": self.answered - last_done,
                    "hit_ratio": round(1 - loads / reads, 4) if reads else 0.0,
                    "p50_ms": round(percentile(recent, 0.5) * 1000, 3),
                    "p99_ms": round(percentile(recent, 0.99) * 1000, 3),
                    "measured": float(measuring),
                }
            )
            last, last_t, last_done = current, now, self.answered
            if on_sample is not None:
                on_sample(now, self.result.timeline)
            if not measuring and now >= window()[0]:
                measuring, first = True, current  # the window's counters start here
            if tick is not None:
                tick(now - start, self.answered)
        self.result.server = {k: last[k] - first.get(k, 0) for k in last}
        self.result.server["workers"] = last.get("workers", 1)  # a level, not a count


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of an ascending list (the nearest rank at or above it)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


#: ``settled(timeline)``: whether the unmeasured traffic may stop and measuring begin.
Settled = Callable[[list[dict[str, float]]], bool]


async def drive_open(
    host: str,
    port: int,
    workload: Workload | None,
    rate: float,
    seconds: float,
    settle: float = 1.0,
    settled: Settled | None = None,
    tick: Callable[[float, int], None] | None = None,
    rng: random.Random | None = None,
) -> Result:
    """Send requests at ``rate`` per second: unmeasured for at least ``settle`` seconds,
    then (once ``settled(timeline)`` is true, checked each second; or at once without
    it) measured for ``seconds``.

    With ``workload=None`` every request is ``GET /ping`` (the framework floor). ``rng``
    draws the requests (default: a new one seeded with the workload's seed).
    """
    requests = _Requests(workload, rng)
    result = Result(0, seconds, {"read": [], "write": [], "ping": []}, rate=rate)
    sampler = _Sampler(host, port, result)
    idle: list[Connection] = []
    opened = 0
    freed = asyncio.Condition()
    start = time.perf_counter()
    bounds = [start + settle if settled is None else math.inf, math.inf]
    if settled is None:
        bounds[1] = bounds[0] + seconds
    earliest = start + settle

    def window() -> tuple[float, float]:
        return bounds[0], bounds[1]

    def on_sample(now: float, timeline: list[dict[str, float]]) -> None:
        ready = bounds[0] == math.inf and now >= earliest
        if ready and settled is not None and settled(timeline):
            bounds[0], bounds[1] = now, now + seconds

    async def connection() -> Connection:
        nonlocal opened
        async with freed:
            while not idle and opened >= MAX_CONNECTIONS:
                await freed.wait()
            if idle:
                return idle.pop()
            opened += 1
            result.connections = max(result.connections, opened)
            return Connection(host, port)

    async def release(conn: Connection) -> None:
        async with freed:
            idle.append(conn)
            freed.notify()

    async def one(intended: float, kind: str, user_id: int, head: bytes, body: bytes) -> None:
        conn = await connection()
        floor = requests.versions.floor(user_id) if kind == "read" else 0
        sent = time.perf_counter()
        status, payload = await _send(conn, head, body)
        done = time.perf_counter()
        await release(conn)
        sampler.done(done - intended)
        measured = bounds[0] <= intended < bounds[1]
        good, stale = requests.judge(kind, user_id, floor, status, payload)
        if not measured:
            return
        if not good:
            result.errors += 1
            return
        if floor:
            result.reads_after_write += 1
            result.stale += stale
        result.latencies[kind].append(done - intended)
        result.sent_latencies.append(done - sent)

    async def schedule() -> None:
        """Start each request at its intended time. The clock is a thread of its own:
        asyncio's timers wake up to a millisecond late (epoll's resolution), which would
        add half a millisecond to every latency; ``time.sleep`` is precise to tens of µs."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        finished = asyncio.Event()

        def launch(intended: float) -> None:
            task = loop.create_task(one(intended, *requests.draw()))
            pending.add(task)
            task.add_done_callback(pending.discard)

        def clock() -> None:
            try:
                for i in itertools.count():
                    intended = start + i / rate
                    if intended >= bounds[1] or stop.is_set():
                        break
                    delay = intended - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    loop.call_soon_threadsafe(launch, intended)
            finally:
                loop.call_soon_threadsafe(finished.set)

        stop = threading.Event()
        thread = threading.Thread(target=clock, name="demo-clock", daemon=True)
        thread.start()
        try:
            await finished.wait()
            while pending:
                await asyncio.gather(*pending)
        finally:
            stop.set()

    async def sample() -> None:
        await sampler.run(start, window, on_sample, tick)

    try:
        await asyncio.gather(schedule(), sample())
    finally:
        for conn in idle:
            conn.close()
    result.settle_seconds = round(bounds[0] - start, 3)
    return result


async def drive(
    host: str,
    port: int,
    workload: Workload | None,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    tick: Callable[[float, int], None] | None = None,
    rng: random.Random | None = None,
) -> Result:
    """Run ``concurrency`` closed-loop clients for ``warmup + seconds``; latencies are
    counted from each request's send (a closed loop sends nothing while it waits)."""
    requests = _Requests(workload, rng)
    result = Result(concurrency, seconds, {"read": [], "write": [], "ping": []})
    sampler = _Sampler(host, port, result)
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds

    async def client() -> None:
        conn = Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                kind, user_id, head, body = requests.draw()
                floor = requests.versions.floor(user_id) if kind == "read" else 0
                sent = time.perf_counter()
                status, payload = await _send(conn, head, body)
                done = time.perf_counter()
                sampler.done(done - sent)
                measured = sent >= measure_from
                good, stale = requests.judge(kind, user_id, floor, status, payload)
                if not good:
                    result.errors += measured
                    if status == 0:
                        await asyncio.sleep(0.05)  # the server is gone or stuck: no spin
                    continue
                if measured:
                    if floor:
                        result.reads_after_write += 1
                        result.stale += stale
                    result.latencies[kind].append(done - sent)
                    result.sent_latencies.append(done - sent)
        finally:
            conn.close()

    async def sample() -> None:
        await sampler.run(start, lambda: (measure_from, deadline), None, tick)

    await asyncio.gather(sample(), *(client() for _ in range(concurrency)))
    result.settle_seconds = warmup
    return result
