"""bench/consistency.py: its check flags stale reads, and small runs find none.

The runs are tiny smoke runs (seconds); the full runs and their figures are in
docs/consistency-checker.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

CHECKER = Path(__file__).resolve().parents[1] / "bench" / "consistency.py"


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consistency_checker", CHECKER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _read(checker: ModuleType, version: int, start: int, end: int) -> object:
    return checker.Read(1, version, start, end, 0, False, 0, 0, "get:hit")


def test_check_flags_a_read_that_started_after_a_newer_invalidation(checker: ModuleType) -> None:
    """Rows start at version 0. After the write of v1, a read of v0 that started after its
    invalidation returned is stale; one that started before is only behind; a read of v1
    is neither, nor is a read of v0 that ended before the write began."""
    write = checker.Write(row=1, version=1, begin=100, committed=110, invalidated=120, worker=9)
    reads = [
        _read(checker, 0, 121, 130),  # stale
        _read(checker, 0, 115, 130),  # behind: concurrent with the write
        _read(checker, 1, 121, 130),  # current
        _read(checker, 0, 50, 60),  # before the write
    ]
    verdict, _ = checker.check(reads, [write])
    assert [(r.start, w.version) for r, w in verdict.stale] == [(121, 1)]
    assert sum(verdict.behind_versions.values()) == 2
    assert not verdict.impossible


def test_check_flags_a_version_no_write_had_begun(checker: ModuleType) -> None:
    """A version newer than any begun write means the checker's records are wrong."""
    verdict, _ = checker.check([_read(checker, 1, 10, 20)], [])
    assert len(verdict.impossible) == 1


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(CHECKER), "--seed", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STALE READS           0\n" in done.stdout
    return done.stdout


@pytest.mark.parametrize("flavour", [[], ["--async"]], ids=["threads", "async"])
def test_small_memory_run_has_no_stale_reads(flavour: list[str]) -> None:
    """Memory store, 6 readers and 2 writers in one process: no stale read."""
    _run("--reads", "3000", "--readers", "6", *flavour)


def test_small_redis_processes_run_has_no_stale_reads(redis_url: str) -> None:
    """Redis, 2 reader processes of 2 threads and 1 writer process: no stale read."""
    out = _run(
        "--store", "redis", "--mode", "processes", "--redis-url", redis_url,
        "--readers", "2", "--writers", "1", "--reads", "3000",
    )  # fmt: skip
    assert "writes " in out
