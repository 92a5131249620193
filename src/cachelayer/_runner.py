"""Running store steps: guarded calls (breaker, counting, logging) and the two shells.

``StoreRunner.drive`` runs a read-path flow (``_readpath``) with blocking calls and
``adrive`` with ``await``. They are the only I/O-flavoured code of the read path: each
turns the steps a flow yields into store calls, loader calls, sleeps, single-flight waits
and background refreshes, and holds no policy. ``call``/``acall`` are the only places
that touch the store: a failure becomes :data:`FAILED` (or ``StoreUnavailable`` when the
caller asked for errors), feeds the circuit breaker and is counted and logged.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._breaker import CircuitBreaker
from ._flight import UNTRUSTED, AsyncFlights, SyncFlights, wait_sync
from ._refresh import Refresher
from ._stats import RateLimitedLog, Stats
from ._steps import (
    FAILED,
    LEAD,
    LOAD,
    Flow,
    JoinFlight,
    KeepLocal,
    Publish,
    Refresh,
    Sleep,
    StoreStep,
)
from .backends import AsyncStore, Store
from .errors import StoreBusy, StoreUnavailable

if TYPE_CHECKING:
    from ._local import LocalTier

__all__ = ["StoreRunner", "store_failures"]

log = logging.getLogger("cachelayer.cache")


def store_failures(store: object) -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the store failed" for ``store``: OS-level errors
    (connections, timeouts) and the store's own ``failures`` (redis-py's ``RedisError``
    for the Redis store). Anything else -- a ``TypeError`` from our own code, say -- is a
    bug and raises: failing open must never hide it."""
    extra: tuple[type[BaseException], ...] = getattr(store, "failures", ())
    return (OSError, asyncio.TimeoutError, StoreBusy, *extra)


class StoreRunner:
    """Executes store steps for one Cache: its store, breaker, flights and refresher."""

    def __init__(
        self,
        store: Store,
        breaker: CircuitBreaker,
        stats: Stats,
        refresh_workers: int,
    ) -> None:
        self.store = store
        self._astore: AsyncStore | None = None
        self.breaker = breaker
        self.stats = stats
        self._log = RateLimitedLog(log)
        self._flights = SyncFlights()
        self._aflights = AsyncFlights()
        self.refresher = Refresher(refresh_workers)
        self.failures = store_failures(store)
        self._afailures: tuple[type[BaseException], ...] | None = None
        # A CircuitBreaker subclass written before failures counted per incident may
        # override failure() without its `since` parameter.
        self._incidents = "since" in inspect.signature(breaker.failure).parameters
        #: the local tier that KeepLocal steps offer entries to (set by the Engine)
        self.local: LocalTier | None = None

    def call(self, step: StoreStep, raising: bool = False, invalidating: bool = False) -> Any:
        """Run one store step with a blocking call; a store failure gives :data:`FAILED`
        (or ``StoreUnavailable`` with ``raising``), feeds the breaker and is counted."""
        breaker = self.breaker
        if not breaker.allow():
            return self._skipped(step.name, raising, invalidating)
        epoch = breaker.epoch
        try:
            result = step.run(self.store)
        except self.failures as exc:
            return self._failed(step.name, exc, raising, invalidating, epoch)
        self.breaker.success()
        return result

    def get(self, key: str) -> Any:
        """``call(Get(key))`` without building the step: the decorator's hit path."""
        breaker = self.breaker
        if not breaker.allow():
            return self._skipped("get", False, False)
        epoch = breaker.epoch
        try:
            result = self.store.get(key)
        except self.failures as exc:
            return self._failed("get", exc, False, False, epoch)
        breaker.success()
        return result

    async def aget(self, key: str) -> Any:
        """``acall(Get(key))`` without building the step: the decorator's hit path."""
        breaker = self.breaker
        if not breaker.allow():
            await asyncio.sleep(0)  # still a suspension point (see acall)
            return self._skipped("get", False, False)
        epoch = breaker.epoch
        try:
            result = await self.astore.get(key)
        except self.afailures as exc:
            return self._failed("get", exc, False, False, epoch)
        breaker.success()
        return result

    async def acall(
        self, step: StoreStep, raising: bool = False, invalidating: bool = False
    ) -> Any:
        """``call`` for asyncio code."""
        breaker = self.breaker
        if not breaker.allow():
            # Still a suspension point: a task that loops over cache reads while the
            # breaker is open must not starve the other tasks of its loop.
            await asyncio.sleep(0)
            return self._skipped(step.name, raising, invalidating)
        epoch = breaker.epoch
        try:
            result = await step.arun(self.astore)
        except self.afailures as exc:
            return self._failed(step.name, exc, raising, invalidating, epoch)
        self.breaker.success()
        return result

    def _skipped(self, method: str, raising: bool, invalidating: bool) -> Any:
        self.stats.short_circuits += 1
        if invalidating:
            self._invalidation_failed(method, "circuit breaker open")
        if raising:
            raise StoreUnavailable(f"store {method} not attempted: the circuit breaker is open")
        return FAILED

    def _failed(
        self,
        method: str,
        exc: BaseException,
        raising: bool,
        invalidating: bool,
        epoch: int | None = None,
    ) -> Any:
        if isinstance(exc, StoreBusy):
            # This process's own congestion, not the server's health: the breaker is
            # left alone, and the call fails open like any other.
            self.stats.store_busy += 1
            if invalidating:
                self._invalidation_failed(method, "the store was busy")
            if raising:
                raise StoreUnavailable(f"store {method} not sent: {exc}") from exc
            return FAILED
        kinds = self.stats.errors_by_kind
        kind = type(exc).__name__
        kinds[kind] = kinds.get(kind, 0) + 1
        if self.breaker.failure(epoch) if self._incidents else self.breaker.failure():
            self.stats.breaker_opened += 1
            log.warning(
                "cachelayer: circuit breaker opened after %d consecutive store failures; "
                "no store calls for %.1f s",
                self.breaker.threshold,
                self.breaker.cooldown,
            )
        if invalidating:
            self._invalidation_failed(method, f"{type(exc).__name__}: {exc}")
        else:
            self.stats.store_errors += 1
            self._log.log(
                logging.WARNING,
                "store",
                "cachelayer: store %s failed (%s: %s)%s",
                method,
                type(exc).__name__,
                exc,
                "" if raising else "; continuing without the cache",
            )
        if raising:
            raise StoreUnavailable(f"store {method} failed: {type(exc).__name__}: {exc}") from exc
        return FAILED

    def _invalidation_failed(self, method: str, reason: str) -> None:
        self.stats.invalidation_errors += 1
        self._log.log(
            logging.WARNING,
            "invalidation",
            "cachelayer: INVALIDATION FAILED (store %s: %s); the old value may be served "
            "until its TTL ends",
            method,
            reason,
        )

    @property
    def afailures(self) -> tuple[type[BaseException], ...]:
        """What the async face raises when the store fails (its own ``failures``)."""
        if self._afailures is None:
            self._afailures = (*self.failures, *store_failures(self.astore))
        return self._afailures

    @property
    def astore(self) -> AsyncStore:
        """The asyncio face of the store (built on first use)."""
        if self._astore is None:
            self._astore = self.store.asynchronous()
        return self._astore

    # -- the read path's shells ------------------------------------------------------------

    def drive(self, flow: Flow, loader: Callable[[], Any] | None, raising: bool = False) -> Any:
        """Run a flow with blocking calls (the sync shell)."""
        flight = None
        flight_key = ""
        local = self.local
        since = local.seq if local is not None else 0  # before the flow's first read
        try:
            op = next(flow)
            while True:
                if isinstance(op, StoreStep):
                    if flight is not None and op.outcome:
                        flight.cutoff = flight.followers
                    result = self.call(op, raising)
                elif op is LOAD:
                    assert loader is not None
                    try:
                        result = loader()
                    except Exception as exc:
                        op = flow.throw(exc)
                        continue
                elif isinstance(op, JoinFlight):
                    joined, follower = self._flights.join(op.key)
                    if follower < 0:
                        flight, flight_key, result = joined, op.key, LEAD
                    else:
                        result = wait_sync(joined, follower)
                elif isinstance(op, Publish):
                    if flight is not None:
                        flight.publish(op.raw, op.trusted)
                    result = None
                elif isinstance(op, Sleep):
                    time.sleep(op.seconds)
                    result = None
                elif isinstance(op, KeepLocal):
                    if local is not None:
                        local.keep_entry(op.key, op.entry, op.now_ms, since)
                    result = None
                else:
                    assert isinstance(op, Refresh)
                    self.refresher.submit(op.key, functools.partial(self.drive, op.flow, loader))
                    result = None
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            if flight is not None:
                flight.fail(exc)
            raise
        finally:
            if flight is not None:
                self._flights.finish(flight_key, flight)

    async def adrive(
        self, flow: Flow, loader: Callable[[], Any] | None, raising: bool = False
    ) -> Any:
        """Run a flow with ``await`` (the async shell)."""
        flight = None
        flight_key = ""
        local = self.local
        since = local.seq if local is not None else 0  # before the flow's first read
        try:
            op = next(flow)
            while True:
                if isinstance(op, StoreStep):
                    if flight is not None and op.outcome:
                        flight.cutoff = flight.followers
                    result = await self.acall(op, raising)
                elif op is LOAD:
                    assert loader is not None
                    try:
                        result = loader()
                        if inspect.isawaitable(result):
                            result = await result
                    except Exception as exc:
                        op = flow.throw(exc)
                        continue
                elif isinstance(op, JoinFlight):
                    joined, follower = self._aflights.join(op.key)
                    if follower < 0:
                        flight, flight_key, result = joined, op.key, LEAD
                    else:
                        await joined.event.wait()  # type: ignore[misc]
                        result = joined if joined.trusted_by(follower) else UNTRUSTED
                elif isinstance(op, Publish):
                    if flight is not None:
                        flight.publish(op.raw, op.trusted)
                    result = None
                elif isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
                    result = None
                elif isinstance(op, KeepLocal):
                    if local is not None:
                        local.keep_entry(op.key, op.entry, op.now_ms, since)
                    result = None
                else:
                    assert isinstance(op, Refresh)
                    self.refresher.spawn(op.key, functools.partial(self.adrive, op.flow, loader))
                    result = None
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value
        except BaseException as exc:
            if flight is not None:
                flight.fail(exc)
            raise
        finally:
            if flight is not None:
                self._aflights.finish(flight_key, flight)

    def close(self) -> None:
        """Finish background refreshes, then close the sync face's connections."""
        self.refresher.close()
        self.store.close()

    async def aclose(self) -> None:
        """Cancel this loop's background refreshes, then close both faces' connections."""
        await self.refresher.aclose()
        if self._astore is not None:
            await self._astore.close()
        self.store.close()
