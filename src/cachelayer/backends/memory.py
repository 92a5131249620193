"""The in-process store: an LRU dict of bytes, bounded by entries and by bytes, with TTLs.

Thread-safe (one lock, held for dictionary work only) and usable from asyncio through
:class:`~cachelayer.backends.base.SyncAsAsync`, since no call ever waits on I/O. Each
process has its own copy: invalidations in one process do not reach another (use Redis
for that). It publishes and subscribes within the process
(:class:`~cachelayer.backends.base.Publisher`), so Caches sharing one store -- and a
Cache's local tier, ``Cache("memory://", local=...)`` -- hear each other's purges.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

from ..errors import ConfigurationError
from .base import AsyncStore, Item, SyncAsAsync

__all__ = ["MemoryStore", "MemorySubscription", "compile_glob", "parse_size"]

# Bookkeeping per entry (dict slot, tuple, bytes header), charged against max_bytes so a
# flood of tiny entries cannot exceed the budget by an order of magnitude.
ENTRY_OVERHEAD = 120

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "m": 1000**2, "g": 1000**3,
    "kb": 1024, "mb": 1024**2, "gb": 1024**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Bytes from ``65536``, ``"64MB"`` or ``"1GiB"`` (Redis's units: ``kb`` is 1024, ``k`` 1000).

    Raises:
        ConfigurationError: the text is not a size.
    """
    if isinstance(text, int):
        return text
    match = _SIZE_RE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise ConfigurationError(f"{text!r} is not a size (try 65536, '64MB' or '1GiB')")
    return int(float(match.group(1)) * unit)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression that matches what the Redis glob ``pattern`` matches.

    Redis's rules (``stringmatchlen``): ``*`` any run, ``?`` one character, ``[...]`` a
    class with ranges (``[z-a]`` is ``[a-z]``), ``^`` first negates it, ``\\`` makes the
    next character literal inside and outside classes, ``[]`` matches nothing, and an
    unclosed ``[`` is a class that runs to the end. (Redis compares bytes, this
    characters: ``?`` on a non-ASCII character is the one difference.)
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            i += negate
            members: list[str] = []
            while i < n and pattern[i] != "]":
                if pattern[i] == "\\" and i + 1 < n:
                    i += 1
                    members.append(re.escape(pattern[i]))
                elif i + 2 < n and pattern[i + 1] == "-":
                    lo, hi = sorted((pattern[i], pattern[i + 2]))
                    members.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    i += 2
                else:
                    members.append(re.escape(pattern[i]))
                i += 1
            if members:
                out.append(f"[{'^' if negate else ''}{''.join(members)}]")
            else:
                out.append("." if negate else "(?!)")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class MemoryStore:
    """Process-memory store with LRU eviction.

    Args:
        max_entries: most entries held; the least recently used go first.
        max_bytes: most bytes held (keys + values + a per-entry overhead), or a size string.
        clock: monotonic seconds; inject a fake one to test expiry without sleeping.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int | str = "64MB",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = parse_size(max_bytes)
        if self.max_entries < 1 or self.max_bytes < 1:
            raise ConfigurationError("memory store needs max_entries >= 1 and max_bytes >= 1")
        self._clock = clock
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._async: AsyncStore | None = None
        self._subscriptions: dict[str, list[MemorySubscription]] = {}

    # -- helpers; all run under self._lock ------------------------------------------------

    def _live(self, key: str, now: float) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= now:
            self._drop(key)
            return None
        self._data.move_to_end(key)
        return item[0]

    def _drop(self, key: str) -> bool:
        item = self._data.pop(key, None)
        if item is None:
            return False
        self._bytes -= len(key) + len(item[0]) + ENTRY_OVERHEAD
        return True

    def _put(self, key: str, value: bytes, ttl: float | None, now: float) -> None:
        self._drop(key)
        size = len(key) + len(value) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return  # cannot ever fit; the old value is gone, which is a miss, not stale
        self._data[key] = (value, math.inf if ttl is None else now + ttl)
        self._bytes += size
        data = self._data
        while len(data) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(data)))

    # -- the Store interface --------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, self._clock())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = self._clock()
            return [self._live(k, now) for k in keys]

    def set(self, key: str, value: bytes, ttl: float | None, void: str | None = None) -> None:
        with self._lock:
            self._put(key, value, ttl, self._clock())
            if void is not None:
                self._drop(void)

    def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        with self._lock:
            now = self._clock()
            for key, value, ttl in items:
                self._put(key, value, ttl, now)
            for key in void:
                self._drop(key)

    def delete(self, keys: Sequence[str]) -> int:
        with self._lock:
            now = self._clock()
            existed = 0
            for key in keys:
                item = self._data.get(key)
                if item is not None:
                    existed += item[1] > now
                    self._drop(key)
            return existed

    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        with self._lock:
            now = self._clock()
            if self._live(key, now) is not None:
                return False
            self._put(key, value, ttl, now)
            return True

    def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        with self._lock:
            now = self._clock()
            value = self._live(key, now)
            if value is not None:
                return value
            if self._live(lease, now) is not None:
                return False
            self._put(lease, token, ttl, now)
            return True

    def fill(self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes) -> bool:
        with self._lock:
            now = self._clock()
            if self._live(lease, now) != token:
                return False
            self._put(key, value, ttl, now)
            self._drop(lease)
            return True

    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        with self._lock:
            now = self._clock()
            if self._live(key, now) != expected:
                return False
            if keep_ttl:
                expires = self._data[key][1] if expected is not None else math.inf
                ttl = None if expires == math.inf else expires - now
            self._put(key, value, ttl, now)
            if void is not None:
                self._drop(void)
            return True

    def delete_if(self, key: str, token: bytes) -> bool:
        with self._lock:
            if self._live(key, self._clock()) != token:
                return False
            return self._drop(key)

    def scan(self, pattern: str) -> Iterator[str]:
        match = compile_glob(pattern).fullmatch
        with self._lock:
            now = self._clock()
            keys = [key for key, (_, expires) in self._data.items() if expires > now]
        return (key for key in keys if match(key))

    def clear(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._data if k.startswith((prefix, "{" + prefix))]
            for key in doomed:
                self._drop(key)
            return len(doomed)

    def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def asynchronous(self) -> AsyncStore:
        if self._async is None:
            self._async = _AsyncMemoryStore(self)
        return self._async

    # -- in-process publish/subscribe -------------------------------------------------------

    def publish(self, channel: str, message: bytes) -> int:
        with self._lock:
            subscriptions = list(self._subscriptions.get(channel, ()))
        for subscription in subscriptions:
            subscription.messages.put(message)
        return len(subscriptions)

    def subscribe(self, channel: str) -> MemorySubscription:
        subscription = MemorySubscription(self, channel)
        with self._lock:
            self._subscriptions.setdefault(channel, []).append(subscription)
        return subscription

    def _unsubscribe(self, subscription: MemorySubscription) -> None:
        with self._lock:
            listeners = self._subscriptions.get(subscription.channel, [])
            if subscription in listeners:
                listeners.remove(subscription)
            if not listeners:
                self._subscriptions.pop(subscription.channel, None)

    # -- introspection ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True  # an empty store is still a store (``store or default`` must not skip it)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against ``max_bytes`` now (expired entries count until touched)."""
        return self._bytes


class MemorySubscription:
    """A subscription to one channel of a :class:`MemoryStore` (a queue of its own)."""

    def __init__(self, store: MemoryStore, channel: str) -> None:
        self.store, self.channel = store, channel
        self.messages: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def receive(self, timeout: float) -> bytes | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.store._unsubscribe(self)  # noqa: SLF001 (its own store's bookkeeping)


class _AsyncMemoryStore(SyncAsAsync):
    """The asyncio face of a MemoryStore: the sync calls (none waits on I/O), and
    publishing."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self._memory = store

    async def publish(self, channel: str, message: bytes) -> int:
        return self._memory.publish(channel, message)
