"""Counters a Cache keeps, and a logger that does not flood on a hot failure path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["RateLimitedLog", "Stats"]


class Stats:
    """Event counters of one Cache (read them with :meth:`snapshot`).

    Increments are plain ``+=`` under the GIL: cheap on the hot path, and at worst an
    increment lost to a thread switch, which a counter for monitoring can afford.
    """

    __slots__ = (
        "breaker_opened",
        "decode_errors",
        "early_refreshes",
        "fills",
        "fills_rejected",
        "flight_joins",
        "hits",
        "invalidation_errors",
        "lease_timeouts",
        "lease_waits",
        "load_errors",
        "loads",
        "local_hits",
        "misses",
        "negative_hits",
        "oversized",
        "refresh_errors",
        "refreshes",
        "sets",
        "short_circuits",
        "stale_hits",
        "stale_on_error",
        "store_busy",
        "store_errors",
    )

    breaker_opened: int
    decode_errors: int
    early_refreshes: int
    fills: int
    fills_rejected: int
    flight_joins: int
    hits: int
    invalidation_errors: int
    lease_timeouts: int
    lease_waits: int
    load_errors: int
    loads: int
    local_hits: int
    misses: int
    negative_hits: int
    oversized: int
    refresh_errors: int
    refreshes: int
    sets: int
    short_circuits: int
    stale_hits: int
    stale_on_error: int
    store_busy: int
    store_errors: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict, plus ``hit_ratio`` as a per-mille int (0 with no reads)."""
        counts: dict[str, int] = {name: getattr(self, name) for name in self.__slots__}
        reads = counts["hits"] + counts["misses"]
        counts["hit_ratio_permille"] = (1000 * counts["hits"] // reads) if reads else 0
        return counts

    def reset(self) -> None:
        """Set every counter back to 0."""
        self.__init__()  # type: ignore[misc]


class RateLimitedLog:
    """Logs one message per kind per ``interval`` seconds, counting the ones it held back.

    Callers keep cache keys and values out of messages: they may hold user data.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            held = self._held.pop(kind, 0)
        if held:
            msg += " (%d similar messages suppressed in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)
