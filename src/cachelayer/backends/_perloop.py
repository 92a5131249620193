"""One resource per live event loop: :class:`PerLoop`.

An asyncio connection belongs to the event loop that opened it. A store shared by
threads that each run a loop of their own (``asyncio.run`` per thread, Django's
``async_to_sync``, a test suite's loop per test) needs one connection object per loop,
built on first use there and released when that loop ends. ``PerLoop`` keeps that map
and knows nothing of what it holds: a factory builds a resource, ``aclose`` closes it in
its own loop, ``discard`` releases it without one.

How an entry ends:

- Its loop shuts down its async generators (``asyncio.run`` and ``asyncio.Runner`` do,
  just before closing the loop): the resource is closed properly, in that loop. Each
  entry holds a suspended async generator registered with its loop for exactly this.
- :meth:`PerLoop.close`: the calling loop's resource is closed properly. Other loops
  that are still open keep theirs (another thread may be using it right now; it ends
  with its loop); those of loops already closed or gone are discarded.
- Its loop was closed without that shutdown, or garbage-collected (the map holds the
  loop by a weak reference): the resource is discarded, at the loop's collection or at
  the next resource built. (A resource that refers to its loop, as asyncio streams do,
  keeps the loop alive: such a loop ends by being closed, not by being collected.)
- More than ``max_loops`` loops at once: the least recently built entry is discarded.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_MAX_LOOPS", "PerLoop"]

T = TypeVar("T")

#: Entries kept at most by default. A process rarely runs more than a few loops at
#: once; past the bound the least recently built entry is discarded (a call still in
#: flight on it then fails, as a store error).
DEFAULT_MAX_LOOPS = 32

# Set while an entry's generator is closed from outside its loop: it must not await.
_outside_loop = threading.local()


class _Entry(Generic[T]):
    __slots__ = ("__weakref__", "loop", "reaper", "resource", "token")

    def __init__(self, resource: T) -> None:
        self.resource = resource
        self.loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self.reaper: AsyncGenerator[None, None] | None = None
        # Popped by whoever ends the entry: list.pop is atomic, so exactly one does.
        self.token = [True]

    def claim(self) -> bool:
        try:
            return self.token.pop()
        except IndexError:
            return False


def _end_outside_loop(reaper: AsyncGenerator[None, None] | None) -> None:
    """Run a suspended reaper's ``finally`` synchronously (it then discards, never awaits)."""
    if reaper is None:
        return
    closing = reaper.aclose()
    _outside_loop.active = True
    try:
        closing.send(None)
    except StopIteration:
        pass
    except RuntimeError:
        pass  # already being closed in its own loop, which then closes the resource
    else:  # pragma: no cover - the finally never awaits on this path
        closing.close()
    finally:
        _outside_loop.active = False


def _finalize(reaper: AsyncGenerator[None, None]) -> None:
    """The asyncgen finalizer of every reaper: a reaper collected while suspended (its
    PerLoop was dropped unclosed) discards its resource. Not the loop's own finalizer,
    which would keep the loop alive through the reaper."""
    _end_outside_loop(reaper)


class PerLoop(Generic[T]):
    """One resource per live event loop, built by ``factory`` on first use in a loop.

    Args:
        factory: builds a resource; called inside the loop that will use it.
        aclose: closes a resource properly; awaited in the resource's own loop.
        discard: releases a resource whose loop is gone or elsewhere (closes its
            sockets without the loop if it can); must not raise. Default: drop it.
        max_loops: most entries kept (:data:`DEFAULT_MAX_LOOPS`).

    Thread-safe. :meth:`get` is a dictionary lookup when the loop has its resource.
    """

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        aclose: Callable[[T], Awaitable[None]],
        discard: Callable[[T], None] | None = None,
        max_loops: int = DEFAULT_MAX_LOOPS,
    ) -> None:
        if max_loops < 1:
            raise ValueError("PerLoop needs max_loops >= 1")
        self._factory = factory
        self._aclose = aclose
        self._discard = discard
        self.max_loops = max_loops
        #: Resources built so far (one per loop that used this map, unless discarded).
        self.built = 0
        self._entries: dict[int, _Entry[T]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Resources held now for loops that are alive and not closed."""
        return sum(1 for entry in list(self._entries.values()) if _live(entry))

    def get(self) -> T:
        """The running loop's resource, built now if it has none.

        Raises:
            RuntimeError: no event loop is running in this thread.
        """
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry.token and entry.loop is not None and entry.loop() is loop:
            return entry.resource
        return self._build(loop)

    def _build(self, loop: asyncio.AbstractEventLoop) -> T:
        entry = _Entry(self._factory())
        self.built += 1
        entry_ref = weakref.ref(entry)
        entry.loop = weakref.ref(loop, lambda _: self._loop_gone(entry_ref))
        entry.reaper = self._reaper(entry)
        _start(entry.reaper)
        with self._lock:
            kept: dict[int, _Entry[T]] = {}
            ended: list[_Entry[T]] = []
            for key, other in self._entries.items():
                if _live(other):
                    kept[key] = other
                else:
                    ended.append(other)
            while len(kept) >= self.max_loops:  # oldest first: dicts keep insertion order
                ended.append(kept.pop(next(iter(kept))))
            kept[id(loop)] = entry
            self._entries = kept  # readers in get() see the old map or the new one
        for other in ended:
            self._end_elsewhere(other)
        return entry.resource

    def _loop_gone(self, entry_ref: weakref.ref[_Entry[T]]) -> None:
        # A weakref callback, run by the garbage collector in any thread, possibly
        # while this thread holds self._lock: it must not take the lock.
        entry = entry_ref()
        if entry is not None:
            self._end_elsewhere(entry)

    def _end_elsewhere(self, entry: _Entry[T]) -> None:
        _end_outside_loop(entry.reaper)
        if entry.claim():  # the reaper never started (no asyncgen hooks): discard here
            self._discard_resource(entry.resource)

    def _discard_resource(self, resource: T) -> None:
        if self._discard is not None:
            self._discard(resource)

    async def _reaper(self, entry: _Entry[T]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if entry.claim():
                if getattr(_outside_loop, "active", False):
                    self._discard_resource(entry.resource)
                else:
                    await self._aclose(entry.resource)

    async def close(self) -> None:
        """Close the running loop's resource properly, and discard those of loops that
        are closed or gone. Open loops elsewhere keep theirs: another thread may be in
        the middle of a call on it, and it ends with its loop.

        The map stays usable: a later :meth:`get` in this loop builds a new resource.
        """
        loop = asyncio.get_running_loop()
        mine: _Entry[T] | None = None
        with self._lock:
            kept: dict[int, _Entry[T]] = {}
            ended: list[_Entry[T]] = []
            for key, entry in self._entries.items():
                if entry.loop is not None and entry.loop() is loop:
                    mine = entry
                elif _live(entry):
                    kept[key] = entry
                else:
                    ended.append(entry)
            self._entries = kept
        for entry in ended:
            self._end_elsewhere(entry)
        if mine is not None and mine.reaper is not None:
            await mine.reaper.aclose()


def _live(entry: _Entry[Any]) -> bool:
    """The entry is unclaimed and its loop alive and open."""
    loop = entry.loop() if entry.loop is not None else None
    return bool(entry.token) and loop is not None and not loop.is_closed()


def _start(reaper: AsyncGenerator[None, None]) -> None:
    """Run ``reaper`` to its ``yield`` under the running loop's ``firstiter`` hook, which
    registers it (weakly) for the loop's ``shutdown_asyncgens``, with :func:`_finalize`
    as its finalizer."""
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=_finalize)
    try:
        reaper.asend(None).send(None)
    except StopIteration:
        pass
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
