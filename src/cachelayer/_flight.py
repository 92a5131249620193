"""In-process single-flight: concurrent misses of one key in one process share one load.

The first caller to miss a key leads; callers that miss it while the leader loads wait
for the leader's outcome instead of loading too. Threads wait on a ``threading.Event``,
asyncio tasks on an ``asyncio.Event`` of their own loop; the two registries are apart
because a thread cannot await an asyncio event (a sync and an async caller of the same
key each lead, and the store's lease then decides between them as between processes).

Whether followers may use the outcome is the read path's decision (``trusted``): see
``_readpath.read_through``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["AsyncFlights", "Flight", "SyncFlights"]


class Flight:
    """One load in progress; followers read its outcome once ``event`` is set."""

    __slots__ = ("cutoff", "error", "event", "followers", "raw", "trusted")

    def __init__(self, event: threading.Event | asyncio.Event) -> None:
        self.event = event
        self.raw: bytes | None = None  # envelope bytes of the value to share
        self.error: BaseException | None = None
        self.trusted = False
        self.followers = 0  # followers that joined so far, numbered from 0
        # Followers numbered below this joined before the store step the published value
        # rests on took effect; later ones may have started after an invalidation that
        # followed that step, so they must read for themselves.
        self.cutoff = 0

    def trusted_by(self, follower: int) -> bool:
        """May the follower numbered ``follower`` use this outcome?"""
        if not self.trusted:
            return False
        if self.raw is None:  # an exception that stored nothing: shared with every follower
            return self.error is not None
        return follower < self.cutoff

    def publish(self, raw: bytes, trusted: bool) -> None:
        self.raw = raw
        self.trusted = trusted

    def fail(self, error: BaseException) -> None:
        # A loader's exception is shared; a cancellation or interrupt of the leader is
        # not the followers' outcome, so they load for themselves.
        # A cached error was published as its negative entry, with its own trust.
        self.error = error
        if self.raw is None:
            self.trusted = isinstance(error, Exception)


class SyncFlights:
    """Single-flight registry for threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def join(self, key: str) -> tuple[Flight, int]:
        """The flight for ``key`` and the caller's follower number (-1: it leads)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                flight.followers += 1
                return flight, flight.followers - 1
            flight = self._flights[key] = Flight(threading.Event())
            return flight, -1

    def finish(self, key: str, flight: Flight) -> None:
        """Close the flight to new followers and wake the waiting ones."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.event.set()


class AsyncFlights:
    """Single-flight registry for asyncio tasks, per event loop."""

    def __init__(self) -> None:
        self._flights: dict[tuple[int, str], Flight] = {}

    def join(self, key: str) -> tuple[Flight, int]:
        slot = (id(asyncio.get_running_loop()), key)
        flight = self._flights.get(slot)
        if flight is not None:
            flight.followers += 1
            return flight, flight.followers - 1
        flight = self._flights[slot] = Flight(asyncio.Event())
        return flight, -1

    def finish(self, key: str, flight: Flight) -> None:
        slot = (id(asyncio.get_running_loop()), key)
        if self._flights.get(slot) is flight:
            del self._flights[slot]
        flight.event.set()


#: What a follower gets when it may not use the leader's outcome.
UNTRUSTED = Flight(threading.Event())


def wait_sync(flight: Flight, follower: int) -> Any:
    event = flight.event
    assert isinstance(event, threading.Event)
    event.wait()
    return flight if flight.trusted_by(follower) else UNTRUSTED
