"""Warming many keys at once, with bounded concurrency: the runs behind ``fn.warm`` and
``cache.warm`` (and their async twins).

Every deploy, flush and failover starts cold. A warm-up loads a list of keys before the
traffic does: each key is one ``_readpath.warm`` flow (skip it if fresh, else load and
fill under its lease), run ``concurrency`` at a time, on a thread pool for sync loaders
or as tasks for async ones. Nothing a loader raises stops the run: it is counted. The
result says what happened to each key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ._readpath import BUSY, FAILED_LOAD, FRESH_HIT, LOADED, SUPERSEDED, UNAVAILABLE
from ._runner import StoreRunner
from ._steps import Flow
from .errors import ConfigurationError

__all__ = ["Progress", "WarmResult", "run_async", "run_sync"]

#: ``progress(done, total)``, called after each key.
Progress = Callable[[int, int], object]
#: One key to warm: a function that builds its flow, and its loader.
Job = tuple[Callable[[], Flow], Callable[[], Any]]


@dataclass
class WarmResult:
    """What a warm-up did, key by key.

    Attributes:
        loaded: keys loaded and filled.
        fresh: keys that already held a fresh value (nothing loaded).
        busy: keys another caller was loading (their lease was taken): left to it.
        superseded: keys loaded, but a write or invalidation came first: not filled.
        failed: keys whose loader raised (the errors are not raised; see ``errors``).
        unavailable: keys not warmed because the store failed.
        seconds: how long the run took.
        errors: the first few loader exceptions, for a look.
    """

    loaded: int = 0
    fresh: int = 0
    busy: int = 0
    superseded: int = 0
    failed: int = 0
    unavailable: int = 0
    seconds: float = 0.0
    errors: list[BaseException] = field(default_factory=list)

    @property
    def total(self) -> int:
        """How many keys the run went through."""
        return (
            self.loaded + self.fresh + self.busy + self.superseded + self.failed
        ) + self.unavailable

    def count(self, outcome: str) -> None:
        """Record one key's outcome (a ``_readpath`` outcome name)."""
        attribute = _ATTRIBUTES[outcome]
        setattr(self, attribute, getattr(self, attribute) + 1)


_ATTRIBUTES = {
    LOADED: "loaded",
    FRESH_HIT: "fresh",
    BUSY: "busy",
    SUPERSEDED: "superseded",
    FAILED_LOAD: "failed",
    UNAVAILABLE: "unavailable",
}
_KEPT_ERRORS = 5


def check_concurrency(concurrency: int) -> int:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigurationError(f"concurrency={concurrency!r} must be an int >= 1")
    return concurrency


def _recording(loader: Callable[[], Any], result: WarmResult) -> Callable[[], Any]:
    """The loader, keeping its first few exceptions for the result (the flow counts them)."""

    def load() -> Any:
        try:
            return loader()
        except Exception as exc:
            if len(result.errors) < _KEPT_ERRORS:
                result.errors.append(exc)
            raise

    return load


def run_sync(
    runner: StoreRunner, jobs: Sequence[Job], concurrency: int, progress: Progress | None
) -> WarmResult:
    """Warm every job on a pool of ``concurrency`` threads; blocks until all are done."""
    check_concurrency(concurrency)
    result, started, total = WarmResult(), time.perf_counter(), len(jobs)

    def one(job: Job) -> str:
        outcome: str = runner.drive(job[0](), _recording(job[1], result))
        return outcome

    if jobs:
        with ThreadPoolExecutor(min(concurrency, total), "cachelayer-warm") as pool:
            for done, outcome in enumerate(pool.map(one, jobs), 1):
                result.count(outcome)
                if progress is not None:
                    progress(done, total)
    result.seconds = time.perf_counter() - started
    return result


async def run_async(
    runner: StoreRunner, jobs: Sequence[Job], concurrency: int, progress: Progress | None
) -> WarmResult:
    """Warm every job, ``concurrency`` at a time, as tasks of the running loop; a loader
    may be sync or return an awaitable."""
    check_concurrency(concurrency)
    result, started, total = WarmResult(), time.perf_counter(), len(jobs)
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(job: Job) -> None:
        nonlocal done
        async with gate:
            recorded = _recording(job[1], result)

            async def load() -> Any:
                value = recorded()
                if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
                    try:
                        value = await value
                    except Exception as exc:
                        if len(result.errors) < _KEPT_ERRORS:
                            result.errors.append(exc)
                        raise
                return value

            outcome = await runner.adrive(job[0](), load)
        result.count(outcome)
        done += 1
        if progress is not None:
            progress(done, total)

    await asyncio.gather(*(one(job) for job in jobs))
    result.seconds = time.perf_counter() - started
    return result


def as_args(calls: Iterable[Any]) -> list[tuple[Any, ...]]:
    """Each item of ``calls`` as positional arguments: a tuple is the arguments of one
    call, anything else is the one argument of a call."""
    return [c if isinstance(c, tuple) else (c,) for c in calls]
