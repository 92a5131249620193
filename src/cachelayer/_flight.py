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

    __slots__ = ("error", "event", "raw", "trusted")

    def __init__(self, event: threading.Event | asyncio.Event) -> None:
        self.event = event
        self.raw: bytes | None = None  # envelope bytes of the value to share
        self.error: BaseException | None = None
        self.trusted = False

    def publish(self, raw: bytes, trusted: bool) -> None:
        self.raw = raw
        self.trusted = trusted

    def fail(self, error: BaseException) -> None:
        # A loader's exception is shared; a cancellation or interrupt of the leader is
        # not the followers' outcome, so they load for themselves.
        self.error = error
        self.trusted = isinstance(error, Exception)


class SyncFlights:
    """Single-flight registry for threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def join(self, key: str) -> tuple[Flight, bool]:
        """The flight for ``key`` and whether the caller leads it (else it must wait)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight(threading.Event())
            return flight, True

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

    def join(self, key: str) -> tuple[Flight, bool]:
        slot = (id(asyncio.get_running_loop()), key)
        flight = self._flights.get(slot)
        if flight is not None:
            return flight, False
        flight = self._flights[slot] = Flight(asyncio.Event())
        return flight, True

    def finish(self, key: str, flight: Flight) -> None:
        slot = (id(asyncio.get_running_loop()), key)
        if self._flights.get(slot) is flight:
            del self._flights[slot]
        flight.event.set()


def wait_sync(flight: Flight) -> Any:
    event = flight.event
    assert isinstance(event, threading.Event)
    event.wait()
    return flight
