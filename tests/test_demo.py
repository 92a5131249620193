"""``cachelayer demo`` end to end: a small database, a real server, real HTTP, real Redis.

Runs the command in a subprocess, as a user would, with short phases. It pins what the
demo promises: every phase answers without errors, cachelayer serves no stale read and
runs fewer queries than no cache, and the report and JSON are written. Figures (speed-ups)
are not asserted: tests never assert timings.
"""

from __future__ import annotations

import json
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

from cachelayer.demo.load import Versions, Zipf
from tests._postgres import postgres_server

DEMO = [sys.executable, "-m", "cachelayer", "demo"]
SMALL = ["--users", "400", "--duration", "2", "--warmup", "0.5", "--concurrency", "4"]


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
    assert "<svg" in (out / "report.html").read_text()
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def check_phases(results: dict[str, Any]) -> None:
    phases = results["phases"]
    assert set(phases) == {"floor", "none", "naive", "cachelayer"}
    for name, phase in phases.items():
        assert phase["errors"] == 0, name
        assert phase["requests"] > 0, name
    assert phases["none"]["hit_ratio"] == 0
    c = phases["cachelayer"]
    assert c["stale_reads"] == 0
    assert c["writes"] > 0
    assert c["hit_ratio"] > 0
    assert c["queries_per_request"] < phases["none"]["queries_per_request"]


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
    """With --redis both cached phases use that Redis, and the run deletes its own keys."""
    client = redis.Redis.from_url(redis_url)
    try:
        results = run_demo(tmp_path, "--redis", redis_url)
        check_phases(results)
        assert results["settings"]["store"] == redis_url
        assert list(client.scan_iter(match="*cldemo*")) == []
    finally:
        client.close()


def test_demo_ramp_reports_steps_and_capacity(tmp_path: Path) -> None:
    """--ramp steps the clients up per phase, stops after two steps over the p99 bound,
    and reports the best step within it (none when every step is over)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [*DEMO, "--users", "400", "--ramp", "--ramp-step", "0.5", "--warmup", "0.3",
         "--phases", "none,cachelayer", "--p99-ms", "0.001",
         "--data-dir", str(tmp_path / "data"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ramp = json.loads((out / "results.json").read_text())["ramp"]
    assert set(ramp["sides"]) == {"none", "cachelayer"}
    for side in ramp["sides"].values():
        # A 1 µs bound: the first two steps are over it, so the ramp stops there.
        assert [s["concurrency"] for s in side["steps"]] == [1, 2]
        assert side["capacity"] is None
        assert all(s["errors"] == 0 for s in side["steps"])
    assert "Throughput by clients" in (out / "report.html").read_text()


def test_demo_relative_data_dir(tmp_path: Path) -> None:
    """A relative --data-dir is taken from the working directory."""
    proc = subprocess.run(
        [*DEMO, "--users", "200", "--duration", "1", "--warmup", "0.2", "--phases", "none",
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
