"""``cachelayer demo``: the story end to end, measured (docs/demo.md).

Builds (once) a database of users with profiles, preferences and orders, serves a Django
API over HTTP on a free loopback port, and drives the same Zipf workload through three
phases: no cache, the story's own caching code, and cachelayer. Prints a table per
phase, then writes a self-contained HTML report and the raw results as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from .._redact import redact_url

PHASES = ("none", "naive", "cachelayer")
TITLES = {
    "floor": "framework floor (no DB, no cache)",
    "none": "no cache",
    "naive": "the story's code",
    "cachelayer": "cachelayer",
}
RAMP_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's options."""
    a = parser.add_argument
    a("--users", type=int, default=100_000, help="users in the database (default 100000)")
    a("--duration", type=float, default=12.0, help="measured seconds per phase (default 12)")
    a("--warmup", type=float, default=8.0, help="unmeasured seconds first (default 8)")
    a("--concurrency", type=int, default=16, help="concurrent HTTP clients (default 16)")
    a("--writes", type=float, default=0.05, help="fraction of PUTs (default 0.05)")
    a("--zipf", type=float, default=1.1, help="Zipf exponent of user ids (default 1.1)")
    a("--seed", type=int, default=1, help="workload random seed (default 1)")
    a("--threads", type=int, default=8, help="server threads (default 8)")
    a("--redis", metavar="URL", help="use this Redis for both cached phases")
    a(
        "--database",
        metavar="URL",
        help="postgresql://user@host/db (built there once) instead of the SQLite file",
    )
    a("--data-dir", type=Path, help="where the SQLite database is kept (default ~/.cache)")
    a("--phases", default=",".join(PHASES), help="comma-separated subset of none,naive,cachelayer")
    a("--ramp", action="store_true", help="raise concurrency step by step; report capacity")
    a("--ramp-step", type=float, default=4.0, help="seconds per ramp step (default 4)")
    a("--p99-ms", type=float, default=100.0, help="the ramp's p99 bound (default 100 ms)")
    a("--out", type=Path, default=Path("cachelayer-demo"), help="report directory")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    known = bool(phases) and all(p in PHASES for p in phases)
    problems = [
        f"{flag} {value!r}: {rule}"
        for flag, value, ok, rule in (
            ("--phases", args.phases, known, "a comma-separated subset of none,naive,cachelayer"),
            ("--writes", args.writes, 0 <= args.writes < 1, "must be in [0, 1)"),
            ("--users", args.users, args.users >= 1, "must be at least 1"),
            ("--concurrency", args.concurrency, args.concurrency >= 1, "must be at least 1"),
            ("--threads", args.threads, args.threads >= 1, "must be at least 1"),
            ("--duration", args.duration, args.duration > 0, "must be > 0"),
            ("--warmup", args.warmup, args.warmup >= 0, "must be >= 0"),
            ("--ramp-step", args.ramp_step, args.ramp_step > 0, "must be > 0"),
            ("--zipf", args.zipf, args.zipf > 0, "must be > 0"),
        )
        if not ok
    ]
    if problems:
        for problem in problems:
            console.print(f"[red]{problem}")
        return 2
    unreachable = _check_redis(args.redis) if args.redis else None
    if unreachable:
        console.print(f"[red]--redis {args.redis}: {unreachable}")
        return 2
    database = _prepare_database(args, console)
    store = args.redis or "memory://"
    run_id = f"cldemo{os.getpid()}x{int(time.time()) % 100000}"
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {
            "users": args.users,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "writes": args.writes,
            "zipf": args.zipf,
            "seed": args.seed,
            "threads": args.threads,
            "store": redact_url(store),
            "database": redact_url(database),
        },
        "phases": {},
    }
    from .load import Workload

    workload = Workload(args.users, args.writes, args.zipf, args.seed)
    run = _Run(args, console, database, store, run_id, workload, phases)
    try:
        if args.ramp:
            results["ramp"] = _ramp(run)
        else:
            _phases(run, results)
    finally:
        if args.redis:
            _clean_redis(args.redis, run_id)
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


def _measure(
    console: Any,
    label: str,
    server: Any,
    workload: Any,
    clients: int,
    seconds: float,
    warmup: float,
    rng: random.Random | None = None,
) -> Any:
    """One run of the load driver against ``server``, with a progress bar."""
    from .load import drive

    with _progress(console, label, warmup + seconds) as tick:
        return asyncio.run(
            drive(server.host, server.port, workload, clients, seconds, warmup, tick, rng)
        )


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

    def server(self, mode: str) -> Any:
        from .server import Server

        config = {"mode": mode, "database": self.database, "store": self.store}
        return Server({**config, "namespace": self.run_id}, self.args.threads)


def _phases(run: _Run, results: dict[str, Any]) -> None:
    args, console, workload = run.args, run.console, run.workload
    for index, mode in enumerate(run.phases):
        with run.server(mode) as server:
            if index == 0:
                floor = _measure(
                    console, TITLES["floor"], server, None, args.concurrency,
                    min(5.0, args.duration), 0.5,
                )  # fmt: skip
                results["phases"]["floor"] = _summary(floor)
            result = _measure(
                console, TITLES[mode], server, workload, args.concurrency, args.duration,
                args.warmup,
            )  # fmt: skip
        results["phases"][mode] = _summary(result)


def _ramp(run: _Run) -> dict[str, Any]:
    """For each phase: a warm-up, then 1, 2, 4, ... clients until p99 exceeds the bound
    twice in a row; the capacity is the best throughput of a step within the bound."""
    args, console, workload = run.args, run.console, run.workload
    ramp: dict[str, Any] = {"p99_bound_ms": args.p99_ms, "sides": {}}
    for mode in run.phases:
        steps = []
        # One request sequence per phase, continued across its steps: replaying it at
        # every step would hand the cached phases the keys they just cached.
        rng = random.Random(workload.seed)
        with run.server(mode) as server:
            # One warm-up per phase at the run's concurrency, then short settles per step.
            label = f"{TITLES[mode]}, warm-up"
            _measure(console, label, server, workload, args.concurrency, args.warmup, 0.0, rng)
            over = 0
            for level in RAMP_LEVELS:
                label = f"{TITLES[mode]}, {level} clients"
                result = _measure(
                    console, label, server, workload, level, args.ramp_step, 0.5, rng
                )
                step = _summary(result)
                steps.append(step)
                over = over + 1 if step["p99_ms"] > args.p99_ms else 0
                if over == 2:
                    break
        within = [s for s in steps if s["p99_ms"] <= args.p99_ms and not s["errors"]]
        best = max(within, key=lambda s: s["rps"]) if within else None
        ramp["sides"][mode] = {"steps": steps, "capacity": best}
    return ramp


class _progress:
    """A rich progress bar for one phase; the context value is the driver's tick."""

    def __init__(self, console: Any, title: str, seconds: float) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            TextColumn("{task.fields[rps]:>8} req/s"),
            TimeRemainingColumn(),
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


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(result: Any) -> dict[str, Any]:
    """The table's numbers for one run, plus the CDF and timeline the report draws."""
    every = sorted(x for v in result.latencies.values() for x in v)
    reads = sorted(result.latencies["read"])
    server = result.server
    ms = 1000.0
    return {
        "concurrency": result.concurrency,
        "seconds": round(result.seconds, 3),
        "requests": len(every),
        "reads": len(result.latencies["read"]),
        "writes": len(result.latencies["write"]),
        "rps": round(len(every) / result.seconds, 1),
        "p50_ms": round(_percentile(every, 0.50) * ms, 3),
        "p95_ms": round(_percentile(every, 0.95) * ms, 3),
        "p99_ms": round(_percentile(every, 0.99) * ms, 3),
        "max_ms": round((every[-1] if every else 0) * ms, 3),
        "read_p50_ms": round(_percentile(reads, 0.50) * ms, 3),
        "read_p99_ms": round(_percentile(reads, 0.99) * ms, 3),
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
        "cdf_ms": [round(_percentile(every, i / 200) * ms, 3) for i in range(201)],
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
