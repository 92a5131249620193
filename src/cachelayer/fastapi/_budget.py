"""How many entries the response cache may hold per route, in one process.

Every distinct URL of a cacheable route is a new key, so a client that walks unique
query strings (or path parameters) would otherwise write one entry per request. The
budget remembers, per route, the keys this process stored and until when they live;
a route that holds ``limit`` live keys stores no new one until one of them expires.
Each check is O(1); expired keys are dropped at most once a second per full route,
in one pass over at most ``limit`` keys.

It counts this process's writes only, so the store holds at most ``limit`` entries per
route per process. Nothing is shared between processes, so nothing can race.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["StoreBudget"]


class StoreBudget:
    """At most ``limit`` live stored keys per route template (None: no limit); the
    requests that reach no route share one count."""

    def __init__(self, limit: int | None, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._routes: dict[str | None, dict[str, float]] = {}
        self._next_purge: dict[str | None, float] = {}

    def admit(self, route: str | None, key: str, seconds: float) -> bool:
        """May ``key`` of ``route`` be stored for ``seconds``? If so, it is counted."""
        if self.limit is None:
            return True
        now = self._clock()
        keys = self._routes.setdefault(route, {})
        if key not in keys and len(keys) >= self.limit:
            if now < self._next_purge.get(route, now):
                return False
            self._next_purge[route] = now + 1.0
            for gone in [k for k, until in keys.items() if until <= now]:
                del keys[gone]
            if len(keys) >= self.limit:
                return False
        keys[key] = now + seconds
        return True
