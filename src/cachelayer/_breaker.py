"""A circuit breaker: after N consecutive store failures, stop calling the store for a while.

Closed: every call goes to the store. After ``threshold`` consecutive failures it opens:
for ``cooldown`` seconds no call is attempted, so a dead Redis costs a comparison instead
of a timeout. Then it is half-open: one caller probes the store; success closes the
breaker, failure opens it for another cooldown. A probe that never reports back (its task
was cancelled) is given up after one cooldown, so the breaker cannot stick open.

Failures count per incident, not per caller: a call that was already in flight when
another failure was counted does not count again (``failure(since=epoch)``). A stall of
the server fails every call in flight at once -- a hundred coroutines sharing one
connection, or sixty-four threads -- and that is one sign of a sick server, not a
hundred; a server that keeps failing fails the calls made after each failure too, and
those count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Counts consecutive failures and gates calls.

    Args:
        threshold: consecutive failures that open the breaker; 0 disables it.
        cooldown: seconds the breaker stays open before one probe is let through.
        clock: monotonic seconds (injected by tests to move time).
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 0 or cooldown < 0:
            raise ValueError("breaker threshold and cooldown must be >= 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0  # 0.0 while closed
        self._probe_until = 0.0  # a probe is out until then
        self.opened = 0  # times the breaker opened, for stats
        #: moves on at each counted failure; a caller reads it before its call
        self.epoch = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        if not self._open_until:
            return "closed"
        return "open" if self._clock() < self._open_until else "half-open"

    def allow(self) -> bool:
        """May a call go to the store now? (Lets exactly one probe through when half-open.)"""
        if not self._open_until:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        with self._lock:
            if now < self._probe_until:
                return False
            self._probe_until = now + max(self.cooldown, 0.001)
            return True

    def success(self) -> None:
        """Record a call that worked: closes the breaker."""
        if self._failures or self._open_until:
            with self._lock:
                self._failures = 0
                self._open_until = 0.0
                self._probe_until = 0.0

    def failure(self, since: int | None = None) -> bool:
        """Record a failed call; return True if this failure opened the breaker.

        Args:
            since: the ``epoch`` read when the call started; the failure is not counted
                if another one was counted meanwhile (the same incident).
        """
        if not self.threshold:
            return False
        with self._lock:
            if since is not None and since != self.epoch:
                return False
            self.epoch += 1
            self._failures += 1
            probing = self._open_until != 0.0
            if probing or self._failures >= self.threshold:
                self._open_until = self._clock() + self.cooldown
                self._probe_until = 0.0
                self.opened += 1
                return True
            return False
