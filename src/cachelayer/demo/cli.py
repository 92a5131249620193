"""``cachelayer demo``: the story end to end, measured (docs/demo.md).

Builds (once) a database of users with profiles, preferences and orders, serves a Django
API over HTTP on a free loopback port, and drives the same Zipf workload through four
phases: no cache, the story's own caching code, the same code plus ``cache.delete`` on
write (the careful reader), and cachelayer. First it measures the uncached capacity
(closed loop, saturated); every phase is then driven at the same fixed arrival rate, a
share of that capacity (open loop, latencies from the intended send time). The cached
phases are warmed with the same list of hot users, then run unmeasured traffic until
their hit ratio settles, then measured. Prints the tables, then writes a self-contained
HTML report and the raw results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from .._redact import redact_url

PHASES = ("none", "naive", "careful", "cachelayer")
CACHED = ("naive", "careful", "cachelayer")
TITLES = {
    "floor": "framework floor (no DB, no cache)",
    "none": "no cache",
    "naive": "the story's code",
    "careful": "the careful reader",
    "cachelayer": "cachelayer",
}
#: The warm-up list is the hottest users of a sample this many reads long, drawn with
#: a seed of its own (like yesterday's access log: not the traffic that is measured).
WARM_SAMPLE = 200_000
#: Each ramp step offers this many times the previous step's rate.
RAMP_FACTOR = 1.25
RAMP_MAX_STEPS = 24
#: Unmeasured traffic lasts at least this long, and until the hit ratio settles.
SETTLE_WINDOW = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    a = parser.add_argument
    a("--users", type=int, default=100_000, help="users in the database (default 100000)")
    a("--duration", type=float, default=15.0, help="measured seconds per phase (default 15)")
    a(
        "--load",
        type=float,
        default=0.75,
        help="arrival rate as a share of the uncached capacity (default 0.75)",
    )
    a("--rate", type=float, help="arrival rate in requests/s (instead of --load)")
    a("--probe", type=float, default=5.0, help="seconds of the capacity probe (default 5)")
    a(
        "--settle",
        type=float,
        default=30.0,
        help="most unmeasured seconds of traffic before measuring (default 30)",
    )
    a("--warm", type=int, default=8000, help="hot users warmed first; 0: cold (default 8000)")
    a("--warm-concurrency", type=int, default=8, help="loads at once in the warm-up (8)")
    a("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    a("--closed-loop", action="store_true", help="closed-loop clients instead of a fixed rate")
    a("--writes", type=float, default=0.05, help="fraction of PUTs (default 0.05)")
    a("--zipf", type=float, default=1.1, help="Zipf exponent of user ids (default 1.1)")
    a("--seed", type=int, default=1, help="workload random seed (default 1)")
    a("--threads", type=int, default=8, help="server threads per worker (default 8)")
    a("--workers", type=int, help="gunicorn workers (--redis: the core count; else 1)")
    a("--redis", metavar="URL", help="use this Redis for the cached phases")
    a(
        "--database",
        metavar="URL",
        help="postgresql://user@host/db (built there once) instead of the SQLite file",
    )
    a("--data-dir", type=Path, help="where the SQLite database is kept (default ~/.cache)")
    a("--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES))
    a("--ramp", action="store_true", help="raise the arrival rate step by step: capacity")
    a("--ramp-step", type=float, default=4.0, help="measured seconds per ramp step (default 4)")
    a("--p99-ms", type=float, default=100.0, help="the ramp's p99 bound (default 100 ms)")
    a("--out", type=Path, default=Path("cachelayer-demo"), help="report directory")


def _problems(args: argparse.Namespace, phases: list[str]) -> list[str]:
    known = bool(phases) and all(p in PHASES for p in phases)
    workers = args.workers
    return [
        f"{flag} {value!r}: {rule}"
        for flag, value, ok, rule in (
            ("--phases", args.phases, known, "a comma-separated subset of " + ",".join(PHASES)),
            ("--writes", args.writes, 0 <= args.writes < 1, "must be in [0, 1)"),
            ("--users", args.users, args.users >= 1, "must be at least 1"),
            ("--concurrency", args.concurrency, args.concurrency >= 1, "must be at least 1"),
            ("--threads", args.threads, args.threads >= 1, "must be at least 1"),
            ("--duration", args.duration, args.duration > 0, "must be > 0"),
            ("--probe", args.probe, args.probe > 0, "must be > 0"),
            ("--settle", args.settle, args.settle >= 0, "must be >= 0"),
            ("--load", args.load, args.load > 0, "must be > 0"),
            ("--rate", args.rate, args.rate is None or args.rate > 0, "must be > 0"),
            ("--warm", args.warm, args.warm >= 0, "must be >= 0"),
            (
                "--warm-concurrency",
                args.warm_concurrency,
                args.warm_concurrency >= 1,
                "must be at least 1",
            ),
            ("--ramp-step", args.ramp_step, args.ramp_step > 0, "must be > 0"),
            ("--zipf", args.zipf, args.zipf > 0, "must be > 0"),
            ("--workers", workers, workers is None or workers >= 1, "must be at least 1"),
            (
                "--workers",
                workers,
                workers in (None, 1) or bool(args.redis),
                "the memory store lives in one process: several workers need --redis",
            ),
        )
        if not ok
    ]


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    problems = _problems(args, phases)
    if problems:
        for problem in problems:
            console.print(f"[red]{problem}")
        return 2
    if find_spec("matplotlib") is None:
        console.print('[red]cachelayer demo draws its charts with matplotlib: '
                      'pip install "cachelayer[demo]"')  # fmt: skip
        return 2
    unreachable = _check_redis(args.redis) if args.redis else None
    if unreachable:
        console.print(f"[red]--redis {args.redis}: {unreachable}")
        return 2
    phases = [p for p in PHASES if p in phases]  # always in the story's order
    workers = args.workers or ((os.cpu_count() or 1) if args.redis else 1)
    database = _prepare_database(args, console)
    store = args.redis or "memory://"
    run_id = f"cldemo{os.getpid()}x{int(time.time()) % 100000}"
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {
            "users": args.users,
            "loop": "closed" if args.closed_loop else "open",
            "concurrency": args.concurrency,
            "duration": args.duration,
            "load": args.load,
            "writes": args.writes,
            "zipf": args.zipf,
            "seed": args.seed,
            "threads": args.threads,
            "workers": workers,
            "warm": args.warm,
            "warm_sample": WARM_SAMPLE,
            "store": redact_url(store),
            "database": redact_url(database),
        },
        "phases": {},
    }
    from .load import Workload, hottest_users

    workload = Workload(args.users, args.writes, args.zipf, args.seed)
    hot = hottest_users(workload, args.warm, WARM_SAMPLE, args.seed + 1) if args.warm else []
    run = _Run(args, console, database, store, run_id, workload, phases, workers, hot)
    started = time.perf_counter()
    try:
        if args.ramp:
            results["ramp"] = _ramp(run, results)
        else:
            _phases(run, results)
    finally:
        if args.redis:
            _clean_redis(args.redis, run_id)
    results["seconds"] = round(time.perf_counter() - started, 1)
    from . import report

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))  # first: kept
    if not args.ramp:
        report.print_tables(console, results)
    else:
        report.print_ramp(console, results)
    (args.out / "report.html").write_text(report.html(results))
    console.print(
        f"\nReport: {args.out / 'report.html'}   raw results: {args.out / 'results.json'}"
    )
    return 0


@dataclasses.dataclass
class _Run:
    """What every phase of one run shares."""

    args: argparse.Namespace
    console: Any
    database: str
    store: str
    run_id: str
    workload: Any
    phases: list[str]
    workers: int
    hot: list[int]

    def server(self, mode: str) -> Any:
        from .server import Server

        config = {"mode": mode, "database": self.database, "store": self.store}
        return Server({**config, "namespace": self.run_id}, self.args.threads, self.workers)


def _drive(console: Any, label: str, seconds: float, work: Callable[[Any], Any]) -> Any:
    """Run one driver coroutine, ``work(tick)``, under a progress bar of ``seconds``."""
    with _progress(console, label, seconds) as tick:
        return asyncio.run(work(tick))


def _probe(run: _Run, server: Any) -> dict[str, Any]:
    """The uncached capacity: the throughput of ``--concurrency`` closed-loop clients
    (saturated), after a second unmeasured; its own request sequence (seed + 2)."""
    from .load import drive

    args = run.args
    rng = random.Random(args.seed + 2)

    def work(tick: Any) -> Any:
        return drive(server.host, server.port, run.workload, args.concurrency, args.probe, 1.0,
                     tick, rng)  # fmt: skip

    label = f"uncached capacity ({args.concurrency} clients)"
    result = _drive(run.console, label, args.probe + 1.0, work)
    return _summary(result)


def settled(timeline: list[dict[str, float]]) -> bool:
    """Whether the hit ratio has settled: the last ``SETTLE_WINDOW`` samples' mean is
    within two standard errors (and at least 2 points) of the previous window's."""
    w = SETTLE_WINDOW
    if len(timeline) < 2 * w:
        return False
    last, before = timeline[-w:], timeline[-2 * w : -w]

    def mean(points: list[dict[str, float]]) -> tuple[float, float]:
        n = sum(p["requests"] for p in points)
        ratio = sum(p["hit_ratio"] * p["requests"] for p in points) / n if n else 0.0
        return ratio, n

    (h1, n1), (h0, n0) = mean(last), mean(before)
    if not n1 or not n0:
        return True
    error = math.sqrt(h1 * (1 - h1) / n1 + h0 * (1 - h0) / n0)
    return abs(h1 - h0) <= max(0.02, 2 * error)


def _measure(
    run: _Run,
    server: Any,
    label: str,
    rate: float,
    seconds: float,
    *,
    workload: Any = None,
    settle: float = 1.0,
    until_settled: bool = False,
    rng: random.Random | None = None,
) -> Any:
    """One open-loop run at ``rate`` (or closed loop with ``--closed-loop``)."""
    from .load import drive, drive_open

    args = run.args
    most = max(settle, args.settle) if until_settled else settle
    if args.closed_loop:

        def closed(tick: Any) -> Any:
            return drive(server.host, server.port, workload, args.concurrency, seconds,
                         most, tick, rng)  # fmt: skip

        return _drive(run.console, label, most + seconds, closed)

    def open_loop(tick: Any) -> Any:
        return drive_open(
            server.host, server.port, workload, rate, seconds, settle,
            _capped(settled, most) if until_settled else None, tick, rng,
        )  # fmt: skip

    return _drive(run.console, label, most + seconds, open_loop)


def _capped(
    check: Callable[[list[dict[str, float]]], bool], most: float
) -> Callable[[list[dict[str, float]]], bool]:
    """``check``, or true once the timeline covers ``most`` seconds."""
    return lambda timeline: check(timeline) or bool(timeline and timeline[-1]["t"] >= most)


def _warm(run: _Run, server: Any, mode: str) -> dict[str, Any] | None:
    """POST the warm-up list to the server (it warms its own cache), split over the
    workers; a progress bar follows the server's ``warmed`` counter."""
    if not run.hot or mode not in CACHED:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    parts = min(run.workers, len(run.hot))
    chunks = [run.hot[i::parts] for i in range(parts)]
    answers: list[dict[str, Any]] = []
    failures: list[BaseException] = []

    def post(ids: list[int]) -> None:
        body = json.dumps({"ids": ids, "concurrency": run.args.warm_concurrency})
        conn = http.client.HTTPConnection(server.host, server.port, timeout=3600)
        try:
            conn.request("POST", "/_demo/warm", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"/_demo/warm answered {response.status}: {payload[:200]!r}")
            answers.append(json.loads(payload))
        except BaseException as exc:  # reported below, in the main thread
            failures.append(exc)
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=post, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    with Progress(
        f"{TITLES[mode] + ', warm-up':<40}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=run.console,
    ) as progress:  # fmt: skip
        task = progress.add_task("warm", total=len(run.hot))
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(0.5)
            try:
                done = _stats(server)["warmed"]
            except (OSError, ValueError, KeyError):
                continue
            progress.update(task, completed=done)
        # The story's LocMemCache takes only what it keeps: show what was warmed.
        warmed = sum(answer["ids"] for answer in answers)
        progress.update(task, total=warmed or len(run.hot), completed=warmed)
    if failures:
        raise RuntimeError(f"the warm-up failed: {failures[0]}") from failures[0]
    total: dict[str, Any] = {"ids": len(run.hot)}
    for answer in answers:
        for key, value in answer.items():
            if key not in ("ids", "seconds"):
                total[key] = total.get(key, 0) + value
    total["seconds"] = round(time.perf_counter() - started, 3)
    return total


def _stats(server: Any) -> dict[str, int]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/_demo/stats")
        return dict(json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def _phases(run: _Run, results: dict[str, Any]) -> None:
    """The probe and the floor on the uncached server, then every phase at one rate."""
    args, workload = run.args, run.workload
    rate = args.rate or 0.0
    floor_seconds = min(5.0, args.duration)
    with run.server("none") as server:
        if not args.closed_loop and not args.rate:
            probe = _probe(run, server)
            results["probe"] = probe
            rate = round(args.load * probe["rps"], 1)
        results["rate"] = rate
        floor = _measure(run, server, TITLES["floor"], rate, floor_seconds)
        results["phases"]["floor"] = _summary(floor)
        if "none" in run.phases:
            result = _measure(run, server, TITLES["none"], rate, args.duration,
                              workload=workload, settle=SETTLE_WINDOW)  # fmt: skip
            results["phases"]["none"] = _summary(result)
    for mode in run.phases:
        if mode == "none":
            continue
        with run.server(mode) as server:
            warm = _warm(run, server, mode)
            result = _measure(run, server, TITLES[mode], rate, args.duration,
                              workload=workload, settle=2 * SETTLE_WINDOW,
                              until_settled=True)  # fmt: skip
        results["phases"][mode] = {**_summary(result), "warm": warm}


def _ramp(run: _Run, results: dict[str, Any]) -> dict[str, Any]:
    """Per phase: the warm-up and settling of the default run, then the arrival rate
    raised by ``RAMP_FACTOR`` a step, from half the uncached capacity, until two steps in
    a row miss the bound. A phase's capacity is the highest rate it sustained: p99 within
    the bound, no error, and the offered rate served (95% of it answered in the step)."""
    args, workload = run.args, run.workload
    ramp: dict[str, Any] = {"p99_bound_ms": args.p99_ms, "sides": {}}
    with run.server("none") as server:
        probe = _probe(run, server)
    results["probe"] = probe
    start = args.rate or round(0.5 * probe["rps"], 1)
    for mode in run.phases:
        steps = []
        # One request sequence per phase, continued across its steps: replaying it at
        # every step would hand the cached phases the keys they just cached.
        rng = random.Random(workload.seed)
        with run.server(mode) as server:
            warm = _warm(run, server, mode)
            _measure(run, server, f"{TITLES[mode]}, settling", start, 0.001, workload=workload,
                     settle=2 * SETTLE_WINDOW, until_settled=True, rng=rng)  # fmt: skip
            over, rate = 0, start
            for _ in range(RAMP_MAX_STEPS):
                label = f"{TITLES[mode]}, {rate:,.0f} req/s"
                result = _measure(run, server, label, rate, args.ramp_step,
                                  workload=workload, settle=1.0, rng=rng)  # fmt: skip
                step = _summary(result)
                step["sustained"] = _sustained(step, rate, args.p99_ms)
                steps.append(step)
                over = 0 if step["sustained"] else over + 1
                if over == 2:
                    break
                rate = round(rate * RAMP_FACTOR, 1)
        within = [s for s in steps if s["sustained"]]
        best = max(within, key=lambda s: s["rate"]) if within else None
        ramp["sides"][mode] = {"steps": steps, "capacity": best, "warm": warm}
    return ramp


def _sustained(step: dict[str, Any], rate: float, bound: float) -> bool:
    return bool(step["p99_ms"] <= bound and not step["errors"] and step["rps"] >= 0.95 * rate)


class _progress:
    """A rich progress bar for one phase; the context value is the driver's tick."""

    def __init__(self, console: Any, title: str, seconds: float) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            TextColumn("{task.fields[rps]:>8} req/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(title, total=seconds, rps="")
        self.last = (0.0, 0)

    def __enter__(self) -> Any:
        self.progress.start()
        return self.tick

    def tick(self, elapsed: float, requests: int) -> None:
        then, before = self.last
        rate = (requests - before) / (elapsed - then) if elapsed > then and before else 0
        self.last = (elapsed, requests)
        self.progress.update(self.task, completed=elapsed, rps=f"{rate:,.0f}" if rate else "")

    def __exit__(self, *exc: object) -> None:
        self.progress.update(self.task, completed=self.progress.tasks[0].total)
        self.progress.stop()


#: The percentiles the report's latency chart draws (HdrHistogram's "nines" axis).
SPECTRUM = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0)


def _summary(result: Any) -> dict[str, Any]:
    """The table's numbers for one run, plus the timeline and percentiles the report
    draws. Latencies are from each request's intended send time (open loop)."""
    from .load import percentile

    every = sorted(x for v in result.latencies.values() for x in v)
    sent = sorted(result.sent_latencies)
    reads = sorted(result.latencies["read"])
    server = result.server
    ms = 1000.0
    return {
        "rate": result.rate,
        "concurrency": result.concurrency,
        "connections": result.connections,
        "seconds": round(result.seconds, 3),
        "settle_seconds": result.settle_seconds,
        "requests": len(every),
        "reads": len(result.latencies["read"]),
        "writes": len(result.latencies["write"]),
        "rps": round(len(every) / result.seconds, 1),
        **{
            f"{name}_ms": round(percentile(every, q) * ms, 3)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
        },
        "max_ms": round((every[-1] if every else 0) * ms, 3),
        "p99_from_send_ms": round(percentile(sent, 0.99) * ms, 3),
        "read_p50_ms": round(percentile(reads, 0.50) * ms, 3),
        "read_p99_ms": round(percentile(reads, 0.99) * ms, 3),
        "queries_per_request": round(server["queries"] / server["requests"], 3)
        if server.get("requests")
        else 0.0,
        "hit_ratio": round(1 - server["loads"] / server["reads"], 4) if server.get("reads") else 0,
        "cpu_ms": _cpu(server),
        "stale_reads": result.stale,
        "reads_after_write": result.reads_after_write,
        "errors": result.errors,
        "server": server,
        "timeline": result.timeline,
        "spectrum_ms": [[q, round(percentile(every, q) * ms, 3)] for q in SPECTRUM],
        "latencies_us": {k: [int(x * 1e6) for x in v] for k, v in result.latencies.items()},
    }


def _cpu(server: dict[str, int]) -> dict[str, float]:
    """Server CPU ms per request: the mean, and per kind (ping, hit, miss, write)."""
    kinds = ("ping", "hit", "miss", "write")
    total = sum(server.get(f"cpu_us_{k}", 0) for k in kinds)
    count = sum(server.get(f"n_{k}", 0) for k in kinds)
    out = {"mean": round(total / count / 1000, 3) if count else 0.0}
    for k in kinds:
        if server.get(f"n_{k}"):
            out[k] = round(server[f"cpu_us_{k}"] / server[f"n_{k}"] / 1000, 3)
            out[f"{k}_share"] = round(server[f"n_{k}"] / count, 4)
    return out


def _check_redis(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return 'needs redis-py: pip install "cachelayer[redis]"'
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        return f"cannot reach it ({exc})"
    return None


def _clean_redis(url: str, run_id: str) -> None:
    """Delete this run's keys: they start with ``<run id>:``, or ``{<run id>:`` for the
    cluster-slot (hash-tagged) tag keys."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for pattern in (f"{run_id}:*", f"{{{run_id}:*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
    finally:
        client.close()


def _prepare_database(args: argparse.Namespace, console: Any) -> str:
    """The database URL, built first if it holds no complete build of ``--users`` users."""
    from . import dataset

    if args.database:
        scheme = urlsplit(args.database).scheme
        if scheme not in ("postgres", "postgresql"):
            console.print(f"[red]--database {args.database!r}: only postgresql:// URLs")
            raise SystemExit(2)
        _setup_django(args.database)
        if not dataset.is_built(args.users):
            _build(console, args.users, f"PostgreSQL ({redact_url(args.database)})")
        _close_django()
        return str(args.database)
    path = (
        (
            args.data_dir / f"demo-s{dataset.SCHEMA_VERSION}-{args.users}-users.sqlite3"
            if args.data_dir
            else dataset.default_sqlite_path(args.users)
        )
        .expanduser()
        .resolve()
    )
    if path.exists():
        return _sqlite_url(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".building")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    _setup_django(_sqlite_url(partial))
    _build(console, args.users, str(path))
    _close_django()
    os.replace(partial, path)
    for side in ("-wal", "-shm"):
        Path(f"{partial}{side}").unlink(missing_ok=True)
    return _sqlite_url(path)


def _sqlite_url(path: Path) -> str:
    """``sqlite:///abs/path``, with the path quoted (``?``, ``#`` and ``%`` included)."""
    return "sqlite://" + quote(str(path))


def _build(console: Any, users: int, where: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from . import dataset

    console.print(f"Building the demo database once: {users:,} users -> {where}")
    with Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("users", total=users)
        dataset.build(users, lambda n: progress.advance(task, n))


def _setup_django(database: str) -> None:
    import django
    from django.conf import settings

    from . import settings as demo_settings

    if not settings.configured:
        config = {"mode": "none", "database": database, "store": "memory://"}
        names = {n: getattr(demo_settings, n) for n in dir(demo_settings) if n.isupper()}
        names["DATABASES"] = {"default": demo_settings.database_settings(database)}
        names["CACHES"] = demo_settings.cache_settings("none", "memory://", "demo")
        names["INSTALLED_APPS"] = ["cachelayer.demo"]
        names["CONFIG"] = config
        settings.configure(**names)
        django.setup()
    elif settings.DATABASES["default"] != demo_settings.database_settings(database):
        raise RuntimeError("the demo configures Django once per process")


def _close_django() -> None:
    from django.db import connections

    connections.close_all()


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="cachelayer demo")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
