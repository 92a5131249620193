"""The Redis store (and Redis-compatible servers: Valkey, KeyDB, Dragonfly) via redis-py.

One connection pool per face (sync, async), short timeouts suited to a cache and no
client-side retries: a cache that waits on a sick server costs more than the query it
saves, and the Cache's circuit breaker decides when to try again. ``GET``, the one
command on the hot path, is sent on a pooled connection directly rather than through
redis-py's generic dispatch, and on a connection kept in a small lock-free free list
rather than checked in and out of redis-py's pool each time: together those are most of
redis-py's per-call cost (bench/bench_get.py).
Guarded writes are Lua scripts, each touching one key and its lease (one cluster slot).
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .base import AsyncStore, Item

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = ["AsyncRedisStore", "RedisStore"]

DEFAULT_SOCKET_TIMEOUT = 0.05
DEFAULT_CONNECT_TIMEOUT = 0.05

# KEYS[1] value key, KEYS[2] lease; ARGV[1] token, ARGV[2] value, ARGV[3] ttl ms (0: none)
_FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS[1] value key, KEYS[2] lease; ARGV[1] token, ARGV[2] lease ttl ms
_LEASE = """
local v = redis.call('GET', KEYS[1])
if v then return v end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS[1] value key, KEYS[2] key to void; ARGV[1] value, ARGV[2] ttl ms (0: none)
_SET_VOID = """
if ARGV[2] == '0' then redis.call('SET', KEYS[1], ARGV[1])
else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('DEL', KEYS[2])
return 1
"""
_SCHEMES = {"redis", "rediss", "unix", "valkey", "valkeys"}


def _ms(ttl: float | None) -> int:
    return 0 if ttl is None else max(1, round(ttl * 1000))


def _set_args(key: str, value: bytes, ttl: float | None) -> tuple[Any, ...]:
    return ("SET", key, value) if ttl is None else ("SET", key, value, "PX", _ms(ttl))


# Stores whose idle GET connections a forked child must forget (they are the parent's).
_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for store in list(_STORES):
        store._idle = deque()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _lease_result(reply: Any) -> bytes | bool:
    return reply if isinstance(reply, bytes) else bool(reply)


def _normalise_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{url!r} is not a Redis URL (redis://, rediss://, unix://, valkey://)"
        )
    if scheme.startswith("valkey"):
        scheme = scheme.replace("valkey", "redis")
    return f"{scheme}://{rest}"


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(
            "the Redis store needs redis-py: pip install 'cachelayer[redis]'"
        ) from None
    return redis


class RedisStore:
    """Sync Redis store; ``asynchronous()`` gives the asyncio face with the same settings.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS,
            ``unix:///path.sock``, or ``valkey://``. Query parameters (``socket_timeout``,
            ``ssl_ca_certs``, ...) are passed to redis-py and override the keywords below.
        socket_timeout: seconds to wait for a reply before the call fails.
        connect_timeout: seconds to wait for a connection.
        client: an existing ``redis.Redis`` to use instead of building one from ``url``
            (the Cache will not close it). Its retry settings are its own.
        **options: further redis-py connection options (``max_connections``, ...).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        client: redis.Redis | None = None,
        **options: Any,
    ) -> None:
        redis_py = _import_redis()
        self.url = _normalise_url(url)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            **options,
        }
        self._owns_client = client is None
        self.client: redis.Redis = client or redis_py.Redis.from_url(self.url, **self._options)
        self._pool = self.client.connection_pool
        # Connections checked out of the pool for GET and kept between calls: deque
        # pop/append are atomic, so threads share it without a lock.
        self._idle: deque[Any] = deque()
        _STORES.add(self)
        self._cmd: Callable[..., Any] = self.client.execute_command
        self._fill = self.client.register_script(_FILL)
        self._lease = self.client.register_script(_LEASE)
        self._set_void = self.client.register_script(_SET_VOID)
        self._async: AsyncRedisStore | None = None

    def get(self, key: str) -> bytes | None:
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._pool.get_connection()
        try:
            conn.send_command("GET", key)
            value: bytes | None = conn.read_response()
        except BaseException:
            conn.disconnect()  # never reuse a connection that may hold a half-read reply
            self._pool.release(conn)
            raise
        idle.append(conn)
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self._cmd("MGET", *keys))

    def set(self, key: str, value: bytes, ttl: float | None, void: str | None = None) -> None:
        if void is None:
            self._cmd(*_set_args(key, value, ttl))
        else:
            self._set_void(keys=[key, void], args=[value, _ms(ttl)])

    def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        pipe = self.client.pipeline(transaction=False)
        for i, (key, value, ttl) in enumerate(items):
            if i < len(void):
                self._set_void(keys=[key, void[i]], args=[value, _ms(ttl)], client=pipe)
            else:
                pipe.execute_command(*_set_args(key, value, ttl))  # type: ignore[no-untyped-call]
        pipe.execute()

    def delete(self, keys: Sequence[str]) -> int:
        return int(self._cmd("DEL", *keys)) if keys else 0

    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(self._cmd(*_set_args(key, value, ttl), "NX"))

    def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        return _lease_result(self._lease(keys=[key, lease], args=[token, _ms(ttl)]))

    def fill(self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes) -> bool:
        return bool(self._fill(keys=[key, lease], args=[token, value, _ms(ttl)]))

    def clear(self, prefix: str) -> int:
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    count += self.client.unlink(*batch)
                    batch.clear()
            if batch:
                count += self.client.unlink(*batch)
        return count

    def close(self) -> None:
        idle, self._idle = self._idle, deque()
        for conn in idle:
            self._pool.release(conn)
        if self._owns_client:
            self.client.close()

    def asynchronous(self) -> AsyncStore:
        if self._async is None:
            self._async = AsyncRedisStore(self.url, self._options)
        return self._async


class AsyncRedisStore:
    """Asyncio face of :class:`RedisStore`.

    redis-py's asyncio connections belong to the event loop that opened them, so the
    client is built on first use in each loop (a test suite or a framework that runs
    several loops in turn gets a working client in each).
    """

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url
        self._options = dict(options)
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff

        self._options["retry"] = AsyncRetry(NoBackoff(), 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        # redis-py's asyncio client is only partly annotated: held as Any.
        self._client: Any = None

    def _for_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio

            self._client = redis.asyncio.Redis.from_url(self.url, **self._options)
            self._idle: deque[Any] = deque()
            self._loop = loop
            self._fill = self._client.register_script(_FILL)
            self._lease = self._client.register_script(_LEASE)
            self._set_void = self._client.register_script(_SET_VOID)
        return self._client

    async def get(self, key: str) -> bytes | None:
        pool = self._for_loop().connection_pool
        idle = self._idle
        conn = idle.pop() if idle else await pool.get_connection()
        try:
            await conn.send_command("GET", key)
            value: bytes | None = await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            await pool.release(conn)
            raise
        idle.append(conn)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(await self._for_loop().execute_command("MGET", *keys))

    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        client = self._for_loop()
        if void is None:
            await client.execute_command(*_set_args(key, value, ttl))
        else:
            await self._set_void(keys=[key, void], args=[value, _ms(ttl)])

    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        pipe = self._for_loop().pipeline(transaction=False)
        for i, (key, value, ttl) in enumerate(items):
            if i < len(void):
                await self._set_void(keys=[key, void[i]], args=[value, _ms(ttl)], client=pipe)
            else:
                pipe.execute_command(*_set_args(key, value, ttl))
        await pipe.execute()

    async def delete(self, keys: Sequence[str]) -> int:
        return int(await self._for_loop().execute_command("DEL", *keys)) if keys else 0

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(await self._for_loop().execute_command(*_set_args(key, value, ttl), "NX"))

    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        self._for_loop()
        return _lease_result(await self._lease(keys=[key, lease], args=[token, _ms(ttl)]))

    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        self._for_loop()
        return bool(await self._fill(keys=[key, lease], args=[token, value, _ms(ttl)]))

    async def clear(self, prefix: str) -> int:
        client = self._for_loop()
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    count += await client.unlink(*batch)
                    batch.clear()
            if batch:
                count += await client.unlink(*batch)
        return count

    async def close(self) -> None:
        if self._client is not None:
            pool = self._client.connection_pool
            while self._idle:
                await pool.release(self._idle.pop())
            await self._client.aclose()
            self._client = None
