"""Applying a checked event: the replay check, the invalidation, the mark.

Written once as a generator of steps (:class:`Command`, a redis-py client method call, and
:class:`Apply`, the Cache calls), driven by a sync shell and an asyncio shell
(:func:`drive`, :func:`adrive`), so every transport applies events exactly as the stream
consumer does (``_webhook.py`` drives it for HTTP deliveries).

The mark is made *after* the invalidation: a crash between the two re-applies the event
on its next delivery (harmless: invalidating twice is invalidating), and a mark that
names another delivery means somebody sent the event again (a replay, refused).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreUnavailable
from ._format import Event, seen_key
from ._refused import REASONS, Refused

__all__ = [
    "Apply",
    "ApplyFailed",
    "Command",
    "EventCounters",
    "Step",
    "adrive",
    "apply_flow",
    "drive",
    "mark_ttl_ms",
    "store_failures",
]


@dataclass(frozen=True)
class Command:
    """Call ``client.<method>(*args, **kwargs)`` on a redis-py client (sync or asyncio)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Apply:
    """Invalidate what ``event`` names through the Cache (``delete_many`` then
    ``invalidate_tags``, or their async forms)."""

    event: Event


Step = Command | Apply


class ApplyFailed(Exception):
    """The store failed while an event was applied: retry it later, it is not poison."""


@dataclass
class EventCounters:
    """What a consumer did, since it was made.

    Attributes:
        applied: events applied (each once per delivery that applied it).
        duplicates: deliveries of an entry this group had already applied (a redelivery
            after a crash between the invalidation and the acknowledgement); acknowledged
            without applying again.
        refused: per reason (docs/events.md), events not applied and acknowledged.
        failures: attempts to apply that raised (the store failed, or the event cannot be
            applied: a key the Cache refuses, say).
        dead_lettered: entries moved to the dead-letter stream after too many attempts.
        trimmed: pending entries gone from the stream (trimmed by MAXLEN) before they were
            applied: invalidations lost.
        claimed: entries claimed from consumers idle too long.
    """

    applied: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    failures: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    claimed: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter, or to a refusal reason."""
        with self._lock:
            if name in self.refused:
                self.refused[name] += n
            else:
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        """Every counter as a flat dict (``refused_<reason>`` for the refusals)."""
        with self._lock:
            flat = {
                "applied": self.applied,
                "duplicates": self.duplicates,
                "failures": self.failures,
                "dead_lettered": self.dead_lettered,
                "trimmed": self.trimmed,
                "claimed": self.claimed,
            }
            flat.update({f"refused_{reason}": n for reason, n in self.refused.items()})
        flat["refused"] = sum(self.refused.values())
        return flat


def apply_flow(
    event: Event, prefix: str, delivery: str, seen_ttl_ms: int
) -> Generator[Step, Any, str]:
    """Apply ``event`` unless already applied; returns ``"applied"`` or ``"duplicate"``.

    Args:
        event: a checked event (signature, namespace and time verified).
        prefix: the Cache's key prefix (``shop:v1:``); the mark lives under it.
        delivery: names this delivery of the event (a stream entry id); a mark naming
            the same delivery is a duplicate, one naming another is a replay.
        seen_ttl_ms: how long the mark lives (longer than an event stays acceptable).

    Raises:
        Refused: ``replayed``.
    """
    key = seen_key(prefix, event.id)
    seen = yield Command("get", (key,))
    if seen is not None:
        if seen == delivery.encode():
            return "duplicate"
        raise Refused("replayed")
    yield Apply(event)
    yield Command("set", (key, delivery), {"nx": True, "px": seen_ttl_ms})
    return "applied"


def mark_ttl_ms(window_ms: int) -> int:
    """How long a replay mark lives: longer than an event stays acceptable (its ``ts`` may
    lie a window either side of now), plus a minute for the clocks' skew."""
    return 2 * window_ms + 60_000


def store_failures() -> tuple[type[BaseException], ...]:
    """What a failing store raises (a transport answers "retry later" for these)."""
    import redis

    return (StoreUnavailable, redis.RedisError, OSError)


def apply_sync(cache: Any, event: Event) -> None:
    """Run :class:`Apply` with the Cache's sync methods.

    Raises:
        ApplyFailed: the store failed (the Cache counted an invalidation error or raised
            ``StoreUnavailable``).
        Exception: whatever else the Cache raised (a key it refuses: ``ValueError``).
    """
    before = cache.stats.invalidation_errors
    try:
        if event.keys:
            cache.delete_many(event.keys)
        ok = cache.invalidate_tags(*event.tags) if event.tags else True
    except store_failures() as exc:
        raise ApplyFailed(type(exc).__name__) from exc
    if not ok or cache.stats.invalidation_errors != before:
        raise ApplyFailed("the store failed (counted in invalidation_errors)")


async def apply_async(cache: Any, event: Event) -> None:
    """:func:`apply_sync` with the Cache's async methods."""
    before = cache.stats.invalidation_errors
    try:
        if event.keys:
            await cache.adelete_many(event.keys)
        ok = await cache.ainvalidate_tags(*event.tags) if event.tags else True
    except store_failures() as exc:
        raise ApplyFailed(type(exc).__name__) from exc
    if not ok or cache.stats.invalidation_errors != before:
        raise ApplyFailed("the store failed (counted in invalidation_errors)")


def drive(flow: Generator[Step, Any, Any], client: Any, cache: Any) -> Any:
    """Run ``flow`` with a sync redis-py client and the Cache's sync methods; an error
    of a step is thrown into the flow, which may handle it."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value
        reply = error = None
        try:
            if isinstance(step, Command):
                reply = getattr(client, step.method)(*step.args, **step.kwargs)
            else:
                apply_sync(cache, step.event)
        except Exception as exc:
            error = _as_apply_failure(exc)


async def adrive(flow: Generator[Step, Any, Any], client: Any, cache: Any) -> Any:
    """:func:`drive` with an asyncio redis-py client and the Cache's async methods."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.send(reply) if error is None else flow.throw(error)
        except StopIteration as done:
            return done.value
        reply = error = None
        try:
            if isinstance(step, Command):
                reply = await getattr(client, step.method)(*step.args, **step.kwargs)
            else:
                await apply_async(cache, step.event)
        except Exception as exc:
            error = _as_apply_failure(exc)


def _as_apply_failure(exc: Exception) -> Exception:
    """A store failure of a step (the replay mark's GET or SET included: a lost
    connection, a timeout, a server out of memory) is :class:`ApplyFailed`: retry later.
    Only what is not the store's counts towards an event's dead-lettering."""
    import redis

    transient = (
        StoreUnavailable,
        OSError,
        redis.ConnectionError,
        redis.TimeoutError,
        redis.BusyLoadingError,
        redis.ReadOnlyError,
    )
    out_of_memory = isinstance(exc, redis.ResponseError) and str(exc).startswith("OOM")
    if isinstance(exc, transient) or out_of_memory:
        failure = ApplyFailed(f"{type(exc).__name__}: {exc}")
        failure.__cause__ = exc
        return failure
    return exc  # an answer (NOGROUP, BUSYGROUP...) the flow may handle, or a bug


def now_ms(clock: Callable[[], float] = time.time) -> int:
    """``clock()`` in whole milliseconds."""
    return int(clock() * 1000)
