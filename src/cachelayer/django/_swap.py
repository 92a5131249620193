"""The two stores with one more atomic step: ``swap``, a compare-and-set.

Django's ``add``, ``incr``/``decr`` and ``touch`` are read-modify-writes of one key. A
value in the store is an envelope (codec, timestamps, maybe a signature), so neither
Redis's ``INCRBY`` nor ``EXPIRE`` can do them: the backend decodes the value, computes the
new envelope, and writes it only if the key still holds the bytes it read. That
conditional write is ``swap``; the backend retries when it loses a race.

The :class:`~cachelayer.backends.base.Store` protocol has no such step yet, so this module
adds it to the memory and Redis stores in subclasses, which the Django backend builds
from ``LOCATION``. Everything else about the stores is unchanged, but for one thing:
the backend's Cache is shared by all threads of the process, so the asyncio face of the
Redis store is kept per thread (:class:`_PerThreadAsync`). An asyncio Redis client
belongs to the event loop that opened it, and threads that run event loops of their own
(``async_to_sync``, a second server loop) must not swap the client under each other.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, cast

from ..backends.base import AsyncStore, SyncAsAsync
from ..backends.memory import MemoryStore
from ..backends.redis import AsyncRedisStore, RedisStore, _ms

__all__ = ["SwapMemoryStore", "SwapRedisStore"]

# KEYS[1] value key, KEYS[2] key to void (its lease; may equal KEYS[1]'s own, unused);
# ARGV[1] "1" if the key must be absent, else ARGV[2] is the value it must hold;
# ARGV[3] new value; ARGV[4] ttl ms: "0" none, "-1" keep the key's current expiry
# (KEEPTTL: Redis >= 6.0). Only GET, SET and DEL: the documented least-privilege ACL.
_SWAP = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then return 0 end
if ARGV[4] == '-1' then redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
elseif ARGV[4] == '0' then redis.call('SET', KEYS[1], ARGV[3])
else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1
"""


def _swap_args(
    key: str,
    expected: bytes | None,
    value: bytes,
    ttl: float | None,
    void: str | None,
    keep_ttl: bool,
) -> dict[str, Any]:
    return {
        "keys": [key, void or key],
        "args": [
            "1" if expected is None else "0",
            expected or b"",
            value,
            -1 if keep_ttl else _ms(ttl),
        ],
    }


class SwapMemoryStore(MemoryStore):
    """:class:`MemoryStore` with ``swap``, run under the store's own lock."""

    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        """Atomically: if ``key`` holds ``expected`` (``None``: is absent), store ``value``
        for ``ttl`` seconds (or keep the current expiry) and delete ``void``."""
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

    def asynchronous(self) -> AsyncStore:
        if self._async is None:
            self._async = _SwapSyncAsAsync(self)
        return self._async


class _SwapSyncAsAsync(SyncAsAsync):
    """The async face of :class:`SwapMemoryStore` (no I/O: calls the sync method)."""

    def __init__(self, store: SwapMemoryStore) -> None:
        super().__init__(store)
        self._swap_store = store

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        return self._swap_store.swap(key, expected, value, ttl, void, keep_ttl)


class SwapRedisStore(RedisStore):
    """:class:`RedisStore` with ``swap``, one Lua script touching the key and its lease
    (one cluster slot)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._swap = self.client.register_script(_SWAP)
        self._per_thread_lock = threading.Lock()

    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        """See :meth:`SwapMemoryStore.swap`."""
        return bool(self._swap(**_swap_args(key, expected, value, ttl, void, keep_ttl)))

    _per_thread: AsyncStore | None = None

    def asynchronous(self) -> AsyncStore:
        with self._per_thread_lock:
            if self._per_thread is None:
                url, options = self.url, self._options
                self._per_thread = cast(
                    AsyncStore, _PerThreadAsync(lambda: _AsyncSwapRedisStore(url, options))
                )
            return self._per_thread


class _PerThreadAsync:
    """An async store that is one ``make()`` per thread: each thread runs at most one
    event loop at a time, and its store follows that loop (``AsyncRedisStore``)."""

    def __init__(self, make: Callable[[], AsyncStore]) -> None:
        self._make = make
        self._local = threading.local()

    def _store(self) -> AsyncStore:
        store: AsyncStore | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._make()
        return store

    def __getattr__(self, name: str) -> Any:
        # get, set, swap, close, ...: the calling thread's own store's method
        return getattr(self._store(), name)


class _AsyncSwapRedisStore(AsyncRedisStore):
    """The asyncio face of :class:`SwapRedisStore`; the script is registered per client
    (a client belongs to one event loop)."""

    _swap_client: Any = None

    def _for_loop(self) -> Any:
        client = super()._for_loop()
        if self._swap_client is not client:
            self._swap = client.register_script(_SWAP)
            self._swap_client = client
        return client

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        self._for_loop()
        return bool(await self._swap(**_swap_args(key, expected, value, ttl, void, keep_ttl)))
