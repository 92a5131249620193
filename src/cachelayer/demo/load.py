"""The load driver: closed-loop HTTP/1.1 clients, a Zipf workload, a stale-read check.

A small keep-alive HTTP client over asyncio streams is used instead of an HTTP library:
the driver shares a 2-core machine with the server, and a few dozen lines that write a
request and read ``Content-Length`` (or chunked) bodies cost a fraction of a general
client's CPU per request, which leaves the server its core.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import itertools
import random
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


@dataclasses.dataclass
class Result:
    """What one run of the driver saw, from the end of its warm-up to its deadline."""

    concurrency: int
    seconds: float
    latencies: dict[str, list[float]]  # "read" / "write" / "ping" -> seconds, in order
    errors: int = 0
    stale: int = 0
    reads_after_write: int = 0
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
    """Run ``concurrency`` closed-loop clients for ``warmup + seconds``.

    With ``workload=None`` every request is ``GET /ping`` (the framework floor).
    ``tick(elapsed, requests)`` is called about once a second. ``rng`` draws the
    requests (default: a new one seeded with the workload's seed); pass one to go on
    with a sequence across runs instead of replaying it.
    """
    zipf = Zipf(workload.users, workload.zipf_s, workload.seed) if workload else None
    if rng is None:
        rng = random.Random(workload.seed if workload else 0)
    versions = Versions()
    result = Result(concurrency, seconds, {"read": [], "write": [], "ping": []})
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds
    counter = itertools.count(1)
    answered = [0]  # responses (or failures) so far, warm-up included

    async def client() -> None:
        conn = Connection(host, port)
        try:
            while (sent := time.perf_counter()) < deadline:
                kind, head, body, floor, user_id = "ping", _get("/ping"), b"", 0, 0
                if zipf is not None and workload is not None:
                    user_id = zipf.draw(rng)
                    if rng.random() < workload.write_ratio:
                        body = orjson.dumps({"name": f"renamed {next(counter)}"})
                        kind, head = "write", _put(f"/users/{user_id}", body)
                    else:
                        kind, head = "read", _get(f"/users/{user_id}")
                        floor = versions.floor(user_id)
                    sent = time.perf_counter()
                try:
                    status, payload = await asyncio.wait_for(
                        conn.request(head, body), REQUEST_TIMEOUT
                    )
                except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.TimeoutError):
                    conn.close()
                    status, payload = 0, b""
                done = time.perf_counter()
                answered[0] += 1
                measured = sent >= measure_from
                data = None
                try:
                    data = orjson.loads(payload) if status == 200 else None
                    good = data is not None and (kind == "ping" or data["id"] == user_id)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    good = False
                if not good:
                    result.errors += measured
                    if status == 0:
                        await asyncio.sleep(0.05)  # the server is gone or stuck: no spin
                    continue
                assert data is not None
                if kind == "write":
                    versions.wrote(user_id, data["version"])
                elif kind == "read" and measured and floor:
                    result.reads_after_write += 1
                    result.stale += data["version"] < floor
                if measured:
                    result.latencies[kind].append(done - sent)
        finally:
            conn.close()

    async def sample() -> None:
        """Every second (warm-up included, ``t`` < 0 there): requests answered and the
        server's hit ratio; and the server's counters over the measured window."""
        last = first = await server_counters(host, port)
        measuring = False
        last_t, last_done = time.perf_counter(), 0
        while (now := time.perf_counter()) < deadline:
            step = min(1.0, deadline - now)
            if not measuring:
                step = min(step, measure_from - now)
            await asyncio.sleep(max(0.0, step))
            try:
                current = await asyncio.wait_for(server_counters(host, port), REQUEST_TIMEOUT)
            except (OSError, RuntimeError, ValueError, asyncio.TimeoutError):
                continue  # a missed sample; the clients count the failures
            now = time.perf_counter()
            if not measuring and now >= measure_from:
                measuring, first = True, current
            reads = current["reads"] - last["reads"]
            loads = current["loads"] - last["loads"]
            result.timeline.append(
                {
                    "t": round(now - measure_from, 3),
                    "dt": round(now - last_t, 3),
                    "requests": answered[0] - last_done,
                    "hit_ratio": (1 - loads / reads) if reads else 0.0,
                }
            )
            last, last_t, last_done = current, now, answered[0]
            if tick is not None:
                tick(now - start, answered[0])
        result.server = {k: last[k] - first[k] for k in last}

    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
    await asyncio.gather(sample(), *tasks)
    return result
