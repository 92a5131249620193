"""A lock held in the store: token-checked, with an optional expiry, for threads and tasks.

The lock is one store key. Taking it is the store's atomic ``add`` (Redis: ``SET key
token NX PX timeout``) with a random token; releasing it is ``delete_if(key, token)``,
so only its holder can free it, and a holder whose lock expired and was taken by
someone else cannot free the new holder's. It works on every store (``MemoryStore``
locks threads of one process; Redis locks every process that shares the server).

A lock never fails open: a failing store (or an open circuit breaker) makes every call
raise :class:`~cachelayer.StoreUnavailable`, because "I could not check" must never
read as "I hold it". Acquiring is written once, as a flow of ``Add`` and ``Sleep``
steps; the runner's two shells drive it with blocking calls or with ``await``. The module
knows nothing of caching: it gets a runner and a finished store key.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._runner import StoreRunner
from ._steps import Add, DeleteIf, Flow, Get, Sleep
from .errors import LockError

__all__ = ["Lock", "LockError"]

# Clean-up tasks of cancelled acquires, referenced until they finish.
_CLEANUPS: set[asyncio.Future[Any]] = set()


class Lock:
    """A lock named by one store key; one Lock object per holder.

    Make one with :meth:`cachelayer.Cache.lock` (or the Django backend's ``lock``).
    Every thread or task that wants the lock takes its own Lock object for the same
    name: the object remembers the token it holds, so it is not shared between holders
    and is not reentrant.

    Args:
        runner: performs the store steps (the Cache's, through its circuit breaker).
        key: the store key of the lock.
        timeout: seconds after which a held lock frees itself (a crashed holder cannot
            block others forever); ``None``: held until released.
        blocking_timeout: default for :meth:`acquire`: seconds to wait for the lock;
            ``None`` waits as long as it takes.
        sleep: seconds between attempts while waiting.
        monotonic: the clock that measures ``blocking_timeout``; injected by tests.

    Raises:
        ValueError: ``timeout`` or ``sleep`` is not > 0, or ``blocking_timeout`` < 0.
    """

    def __init__(
        self,
        runner: StoreRunner,
        key: str,
        timeout: float | None = None,
        blocking_timeout: float | None = None,
        sleep: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"lock timeout={timeout!r} must be > 0 seconds or None")
        if blocking_timeout is not None and not blocking_timeout >= 0:
            raise ValueError(f"blocking_timeout={blocking_timeout!r} must be >= 0 or None")
        if not sleep > 0:
            raise ValueError(f"lock sleep={sleep!r} must be > 0 seconds")
        self.key = key
        self.timeout = timeout
        self.blocking_timeout = blocking_timeout
        self.sleep = sleep
        self._runner = runner
        self._monotonic = monotonic
        self._token: bytes | None = None
        self._state = threading.Lock()  # guards _token against two threads on one object

    def __repr__(self) -> str:
        held = "held" if self._token is not None else "not held"
        return f"<cachelayer.Lock {self.key!r} {held} by this object>"

    # -- the flows, written once -----------------------------------------------------------

    def _claim(self) -> bytes:
        with self._state:
            if self._token is not None:
                raise LockError(
                    f"lock {self.key!r} is already held by this Lock object: locks are not "
                    "reentrant; give each thread or task its own Lock object"
                )
            token = os.urandom(16).hex().encode()
            self._token = token
            return token

    def _unclaim(self, token: bytes) -> None:
        with self._state:
            if self._token == token:
                self._token = None

    def _restore(self, token: bytes) -> None:
        """A release that failed: this object still holds the lock, so it may retry."""
        with self._state:
            if self._token is None:
                self._token = token

    def _acquire_flow(self, token: bytes, blocking: bool, blocking_timeout: float | None) -> Flow:
        wait = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        deadline = None if wait is None else self._monotonic() + wait
        while True:
            if (yield Add(self.key, token, self.timeout)) is True:
                return True
            if not blocking:
                return False
            pause = self.sleep
            if deadline is not None:
                left = deadline - self._monotonic()
                if left <= 0:
                    return False
                pause = min(pause, left)
            yield Sleep(pause)

    def _release_token(self) -> bytes:
        with self._state:
            token, self._token = self._token, None
        if token is None:
            raise LockError(f"cannot release lock {self.key!r}: this Lock object does not hold it")
        return token

    def _released(self, deleted: bool) -> None:
        if not deleted:
            raise LockError(
                f"cannot release lock {self.key!r}: it expired (timeout={self.timeout}s) "
                "and may be held by another holder now"
            )

    # -- sync ------------------------------------------------------------------------------

    def acquire(self, blocking: bool = True, blocking_timeout: float | None = None) -> bool:
        """Take the lock; wait for it unless ``blocking`` is False.

        Args:
            blocking: wait while another holder has it (False: one attempt).
            blocking_timeout: seconds to wait at most (default: the Lock's own;
                ``None`` there too waits as long as it takes).

        Returns:
            True if this object now holds the lock, False if it was not obtained.

        Raises:
            StoreUnavailable: the store failed or the circuit breaker is open.
            LockError: this object already holds the lock.
        """
        token = self._claim()
        try:
            won = bool(
                self._runner.drive(
                    self._acquire_flow(token, blocking, blocking_timeout), None, True
                )
            )
        except BaseException:
            # The add may have run even though its reply never came (a timeout): free
            # what may be ours, so the lock is not left held by nobody.
            self._runner.call(DeleteIf(self.key, token))
            self._unclaim(token)
            raise
        if not won:
            self._unclaim(token)
        return won

    def release(self) -> None:
        """Free the lock, only if this object still holds it.

        Raises:
            LockError: this object does not hold the lock, or it expired meanwhile (then
                it may belong to another holder, which keeps it).
            StoreUnavailable: the store failed (the lock stays until its timeout).
        """
        token = self._release_token()
        try:
            deleted = self._runner.call(DeleteIf(self.key, token), True)
        except BaseException:
            self._restore(token)
            raise
        self._released(bool(deleted))

    def locked(self) -> bool:
        """Does anyone hold the lock now?

        Raises:
            StoreUnavailable: the store failed or the circuit breaker is open.
        """
        return self._runner.call(Get(self.key), True) is not None

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockError(
                f"lock {self.key!r} not obtained within blocking_timeout={self.blocking_timeout}s"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- async -----------------------------------------------------------------------------

    async def aacquire(self, blocking: bool = True, blocking_timeout: float | None = None) -> bool:
        """:meth:`acquire` for asyncio code (waits with ``asyncio.sleep``)."""
        token = self._claim()
        try:
            flow = self._acquire_flow(token, blocking, blocking_timeout)
            won = bool(await self._runner.adrive(flow, None, True))
        except BaseException:
            # As in acquire; a cancelled caller cannot await, so the clean-up runs as a
            # task of its own (kept referenced until it is done).
            cleanup = asyncio.ensure_future(self._runner.acall(DeleteIf(self.key, token)))
            _CLEANUPS.add(cleanup)
            cleanup.add_done_callback(_CLEANUPS.discard)
            self._unclaim(token)
            raise
        if not won:
            self._unclaim(token)
        return won

    async def arelease(self) -> None:
        """:meth:`release` for asyncio code."""
        token = self._release_token()
        try:
            deleted = await self._runner.acall(DeleteIf(self.key, token), True)
        except BaseException:
            self._restore(token)
            raise
        self._released(bool(deleted))

    async def alocked(self) -> bool:
        """:meth:`locked` for asyncio code."""
        return await self._runner.acall(Get(self.key), True) is not None

    async def __aenter__(self) -> Lock:
        if not await self.aacquire():
            raise LockError(
                f"lock {self.key!r} not obtained within blocking_timeout={self.blocking_timeout}s"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.arelease()
