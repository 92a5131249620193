"""``cachelayer demo`` end to end: a small database, a real server, real HTTP, real Redis.

Runs the command in a subprocess, as a user would, with short phases. It pins what the
demo promises: every phase answers without errors at the rate set from the measured
uncached capacity, the cached phases are warmed with the same list, cachelayer serves no
stale read and runs fewer queries than no cache, and the report and JSON are written.
Figures (speed-ups) are not asserted: tests never assert timings. The open loop's
coordinated-omission correction is pinned against a server of the test's own that stalls.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from cachelayer.demo import load
from cachelayer.demo.cli import settled
from cachelayer.demo.load import Versions, Zipf, drive_open, hottest_users, percentile
from tests._postgres import postgres_server

DEMO = [sys.executable, "-m", "cachelayer", "demo"]
SMALL = [
    "--users", "400", "--duration", "2", "--probe", "1", "--settle", "3", "--warm", "50",
    "--concurrency", "4",
]  # fmt: skip


def run_demo(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [*DEMO, *SMALL, "--data-dir", str(tmp_path / "data"), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = (out / "report.html").read_text()
    assert "<svg" in page
    assert "<script" not in page  # one file that opens offline: pictures, no code
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def check_phases(results: dict[str, Any]) -> None:
    phases = results["phases"]
    assert set(phases) == {"floor", "none", "naive", "careful", "cachelayer"}
    # One arrival rate for every phase: 75% of the uncached capacity measured first.
    assert results["rate"] == pytest.approx(0.75 * results["probe"]["rps"], abs=0.1)
    for name, phase in phases.items():
        assert phase["errors"] == 0, name
        assert phase["requests"] > 0, name
        assert phase["rate"] == results["rate"], name
        # The timeline starts at the phase's first request: unmeasured seconds first.
        assert phase["timeline"][0]["measured"] == 0, name
        assert phase["timeline"][-1]["measured"] == 1, name
    assert phases["none"]["hit_ratio"] == 0
    # Both cached phases warmed from the same list before any traffic.
    for name in ("naive", "careful", "cachelayer"):
        warm = phases[name]["warm"]
        assert warm["ids"] == 50, name
        assert warm["loaded"] + warm.get("fresh", 0) == 50, name
        assert warm["failed"] == 0, name
    c = phases["cachelayer"]
    assert c["stale_reads"] == 0
    assert c["writes"] > 0
    assert c["hit_ratio"] > 0
    assert c["queries_per_request"] < phases["none"]["queries_per_request"]
    # The story's code never invalidates: with 400 users, some read after a write is stale.
    assert phases["naive"]["stale_reads"] > 0


def test_demo_memory_store(tmp_path: Path) -> None:
    """The default run (SQLite, memory store): three phases, a floor, no stale cachelayer read."""
    results = run_demo(tmp_path)
    check_phases(results)
    assert results["settings"]["store"] == "memory://"
    # The database is built once: a second run finds it and does not rebuild it.
    built = list((tmp_path / "data").glob("*.sqlite3"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    proc = subprocess.run(
        [*DEMO, *SMALL, "--phases", "cachelayer", "--data-dir", str(tmp_path / "data"),
         "--out", str(tmp_path / "again")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Building" not in proc.stdout
    assert built[0].stat().st_mtime_ns >= stamp


def test_demo_redis_store_cleans_up(tmp_path: Path, redis_url: str) -> None:
    """With --redis the cached phases share that Redis across gunicorn workers (the core
    count by default, as deployed), and the run deletes its own keys."""
    client = redis.Redis.from_url(redis_url)
    try:
        results = run_demo(tmp_path, "--redis", redis_url)
        check_phases(results)
        assert results["settings"]["store"] == redis_url
        workers = os.cpu_count() or 1
        assert results["settings"]["workers"] == workers
        for name, phase in results["phases"].items():
            assert phase["server"]["workers"] == workers, name  # every worker started
        assert list(client.scan_iter(match="*cldemo*")) == []
    finally:
        client.close()


def test_demo_redis_several_workers_share_the_counters(tmp_path: Path, redis_url: str) -> None:
    """--workers 3: the counters add up over the workers, so every request is counted
    once whichever worker served it (requests counted = requests answered)."""
    results = run_demo(tmp_path, "--redis", redis_url, "--workers", "3",
                       "--phases", "cachelayer")  # fmt: skip
    c = results["phases"]["cachelayer"]
    assert results["settings"]["workers"] == 3
    assert c["server"]["workers"] == 3
    assert c["errors"] == 0
    assert c["stale_reads"] == 0
    assert c["warm"]["loaded"] + c["warm"]["fresh"] == 50  # the list, split over workers
    assert c["server"]["requests"] >= 0.9 * c["requests"]


def test_demo_ramp_reports_steps_and_capacity(tmp_path: Path) -> None:
    """--ramp raises the arrival rate per phase, stops after two steps that miss the p99
    bound, and reports the highest rate sustained (none when every step misses)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [*DEMO, "--users", "400", "--ramp", "--ramp-step", "0.5", "--settle", "0.5",
         "--probe", "1", "--warm", "20", "--phases", "none,cachelayer", "--p99-ms", "0.001",
         "--data-dir", str(tmp_path / "data"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    ramp = results["ramp"]
    assert set(ramp["sides"]) == {"none", "cachelayer"}
    start = round(0.5 * results["probe"]["rps"], 1)
    for side in ramp["sides"].values():
        # A 1 µs bound: the first two steps miss it, so the ramp stops there.
        assert [s["rate"] for s in side["steps"]] == [start, round(start * 1.25, 1)]
        assert side["capacity"] is None
        assert all(s["errors"] == 0 for s in side["steps"])
    assert ramp["sides"]["cachelayer"]["warm"]["ids"] == 20
    assert "p99 latency by arrival rate" in (out / "report.html").read_text()


def test_demo_relative_data_dir(tmp_path: Path) -> None:
    """A relative --data-dir is taken from the working directory."""
    proc = subprocess.run(
        [*DEMO, "--users", "200", "--duration", "1", "--probe", "0.5", "--phases", "none",
         "--data-dir", "data", "--out", "out"],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "data").glob("*.sqlite3"))) == 1
    assert (tmp_path / "out" / "results.json").exists()


def test_demo_refuses_bad_flags(tmp_path: Path) -> None:
    """Bad input is a clear error, before any work."""
    proc = subprocess.run(
        [*DEMO, "--phases", "none,bogus", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "bogus" in proc.stdout + proc.stderr
    proc = subprocess.run(
        [*DEMO, "--redis", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot reach" in proc.stdout + proc.stderr
    proc = subprocess.run(
        [*DEMO, "--users", "0", "--duration", "-1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--users 0: must be at least 1" in proc.stdout
    assert "--duration -1.0: must be > 0" in proc.stdout
    proc = subprocess.run(
        [*DEMO, "--workers", "2", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "several workers need --redis" in proc.stdout


def test_versions_floor_is_the_newest_completed_write() -> None:
    """A read must return at least the newest version whose write completed before it."""
    versions = Versions()
    assert versions.floor(7) == 0
    versions.wrote(7, 3)
    versions.wrote(7, 2)  # a slower, older write completing later does not lower the floor
    assert versions.floor(7) == 3
    assert versions.floor(8) == 0


def test_zipf_is_seeded_and_skewed() -> None:
    """The same seed gives the same ids; the hottest id is drawn far more than the median."""
    zipf = Zipf(1000, 1.1, seed=5)
    rng1, rng2 = random.Random(9), random.Random(9)
    assert [zipf.draw(rng1) for _ in range(500)] == [zipf.draw(rng2) for _ in range(500)]
    rng = random.Random(3)
    draws = [zipf.draw(rng) for _ in range(20000)]
    counts = sorted((draws.count(i) for i in set(draws)), reverse=True)
    assert counts[0] > 20 * counts[len(counts) // 2]
    assert all(1 <= i <= 1000 for i in draws)


def test_hottest_users_come_from_a_sample_of_their_own() -> None:
    """The warm-up list: the users drawn most in a sample with another seed, hottest first."""
    workload = load.Workload(1000, 0.05, 1.1, seed=1)
    hot = hottest_users(workload, 20, 5000, seed=2)
    assert len(hot) == len(set(hot)) == 20
    assert hot == hottest_users(workload, 20, 5000, seed=2)
    zipf, rng = Zipf(1000, 1.1, seed=1), random.Random(99)
    draws = [zipf.draw(rng) for _ in range(5000)]
    assert draws.count(hot[0]) > draws.count(hot[-1])  # hottest first, in other draws too


def test_settled_compares_windows_of_the_hit_ratio() -> None:
    """Measuring starts once the hit ratio of the last 3 s is within noise of the 3 s before."""

    def points(*ratios: float) -> list[dict[str, float]]:
        return [{"requests": 200, "hit_ratio": r} for r in ratios]

    assert not settled(points(0.5, 0.6, 0.7))  # too short to tell
    assert not settled(points(0.2, 0.3, 0.4, 0.6, 0.7, 0.8))  # still rising
    assert settled(points(0.79, 0.80, 0.81, 0.80, 0.82, 0.79))
    assert settled(points(0, 0, 0, 0, 0, 0))  # no cache: nothing to wait for


class _StallingServer:
    """An HTTP server of the test's own that answers one request at a time and stalls
    once, for ``stall`` seconds, on the first request it gets after ``after`` seconds."""

    def __init__(self, after: float, stall: float) -> None:
        self.after, self.stall = after, stall
        self.lock = asyncio.Lock()
        self.stalled = False
        self.started = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                async with self.lock:
                    if not self.stalled and loop.time() - self.started >= self.after:
                        self.stalled = True
                        await asyncio.sleep(self.stall)
                stats = b"/_demo/stats" in head
                body = b'{"reads": 0, "loads": 0}' if stats else b'{"ok": true}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the driver closed its connection
        finally:
            writer.close()


def test_open_loop_counts_latency_from_the_intended_send_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that stalls for 1 s: every request due during the stall is late by what
    is left of it, though each waited little once sent (coordinated omission corrected)."""
    monkeypatch.setattr(load, "MAX_CONNECTIONS", 1)  # one connection: requests queue

    async def run() -> load.Result:
        server = _StallingServer(after=0.6, stall=1.0)
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.started = asyncio.get_running_loop().time()
        port = listener.sockets[0].getsockname()[1]
        try:
            result = await drive_open("127.0.0.1", port, None, 100, 2.0, settle=0.2)
            await asyncio.sleep(0.1)  # the handlers see the driver's connections close
            return result
        finally:
            listener.close()
            await listener.wait_closed()

    result = asyncio.run(run())
    intended = sorted(result.latencies["ping"])
    sent = sorted(result.sent_latencies)
    assert result.errors == 0
    assert len(intended) == pytest.approx(200, abs=3)  # every due request, none dropped
    # About 100 requests were due during the stall: late by 0 to 1 s, about 0.5 s each.
    assert sum(x > 0.25 for x in intended) >= 50
    assert percentile(intended, 0.99) > 0.8
    # From their actual send they look fast: only the one stuck request waited long.
    assert sum(x > 0.25 for x in sent) <= 2
    assert percentile(sent, 0.5) < 0.1


@pytest.mark.parametrize("bad", ["mysql://x/y", "sqlite:///tmp/x"])
def test_demo_database_must_be_postgresql(tmp_path: Path, bad: str) -> None:
    """--database takes a postgresql:// URL; anything else is refused by name."""
    proc = subprocess.run(
        [*DEMO, "--database", bad, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert bad in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server (POSTGRES_URL, the local one, or a private cluster)."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def fresh_database(postgres_url: str) -> Iterator[str]:
    """A database of its own on that server, dropped afterwards."""
    name = "cldemo_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_demo_on_postgresql(tmp_path: Path, fresh_database: str) -> None:
    """--database postgresql://: built there once (marked complete), then served from it."""
    results = run_demo(tmp_path, "--database", fresh_database)
    check_phases(results)
    with psycopg.connect(fresh_database) as conn:
        users = conn.execute("SELECT count(*) FROM demo_user").fetchone()
        build = conn.execute("SELECT value FROM demo_meta WHERE name = 'build'").fetchone()
    assert users == (400,)
    assert build is not None
    assert build[0].endswith("-400")
    assert not list((tmp_path / "data").glob("*.sqlite3"))  # no SQLite file was built
