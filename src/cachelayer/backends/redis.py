"""The Redis store (and Redis-compatible servers: Valkey, KeyDB, Dragonfly) via redis-py.

One connection pool per face (sync, async), short timeouts suited to a cache and no
client-side retries: a cache that waits on a sick server costs more than the query it
saves, and the Cache's circuit breaker decides when to try again. ``GET``, the one
command on the hot path, is sent on a pooled connection directly rather than through
redis-py's generic dispatch, and on a connection kept in a small lock-free free list
rather than checked in and out of redis-py's pool each time: together those are most of
redis-py's per-call cost (bench/bench_get.py).
Guarded writes are Lua scripts, each touching one key and its lease (one cluster slot),
and each using only ``GET``, ``SET`` and ``DEL``, so the least-privilege ACL user of
docs/guide.md can run them. The asyncio face keeps one redis-py client per event loop
(``_perloop.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import socket
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._perloop import PerLoop
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
# KEYS[1] value key, KEYS[2] key to void (KEYS[1] again when there is none);
# ARGV[1] "1" if the key must be absent, else ARGV[2] is the value it must hold;
# ARGV[3] new value; ARGV[4] ttl ms: "0" none, "-1" keep the key's current expiry
# (KEEPTTL: Redis >= 6.0).
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
# KEYS[1] key; ARGV[1] the token it must hold
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_SCHEMES = {"redis", "rediss", "unix", "valkey", "valkeys"}
#: Keys asked for per SCAN call: large enough for few round trips, small enough that
#: one call never stalls the server.
SCAN_COUNT = 1000


def _ms(ttl: float | None) -> int:
    return 0 if ttl is None else max(1, round(ttl * 1000))


def _set_args(key: str, value: bytes, ttl: float | None) -> tuple[Any, ...]:
    return ("SET", key, value) if ttl is None else ("SET", key, value, "PX", _ms(ttl))


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


def _key_str(key: bytes | str) -> str:
    # Keys are UTF-8; a foreign writer's other bytes come back surrogate-escaped.
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key


@functools.cache
def _get_connection_args(get_connection: Callable[..., Any]) -> tuple[str, ...]:
    """What to pass a pool's ``get_connection`` for a GET, decided once per pool class.

    redis-py 5.0-5.2 require a command name (``get_connection(command_name, *keys)``);
    5.3 made it optional and deprecated passing it (a DeprecationWarning per call).
    """
    parameter = inspect.signature(get_connection).parameters.get("command_name")
    required = parameter is not None and parameter.default is inspect.Parameter.empty
    return ("GET",) if required else ()


# Stores whose idle GET connections a forked child must forget (they are the parent's).
_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for store in list(_STORES):
        store._idle = deque()  # noqa: SLF001 - this module's own class


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
        self._get_args = _get_connection_args(type(self._pool).get_connection)
        self._cmd: Callable[..., Any] = self.client.execute_command
        self._fill = self.client.register_script(_FILL)
        self._lease = self.client.register_script(_LEASE)
        self._set_void = self.client.register_script(_SET_VOID)
        self._swap = self.client.register_script(_SWAP)
        self._delete_if = self.client.register_script(_DELETE_IF)
        self._async: AsyncRedisStore | None = None
        #: what this store raises when Redis fails (the runner fails open on these, and
        #: on OSError; anything else is a bug and raises)
        self.failures: tuple[type[BaseException], ...] = (redis_py.RedisError,)

    def get(self, key: str) -> bytes | None:
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._pool.get_connection(*self._get_args)
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

    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        return bool(self._swap(**_swap_args(key, expected, value, ttl, void, keep_ttl)))

    def delete_if(self, key: str, token: bytes) -> bool:
        return bool(self._delete_if(keys=[key], args=[token]))

    def scan(self, pattern: str) -> Iterator[str]:
        for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
            yield _key_str(key)

    def clear(self, prefix: str) -> int:
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
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


class _LoopClient:
    """What the asyncio face holds per event loop: a client, its GET connections kept
    between calls, and its registered scripts."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        import redis.asyncio

        # redis-py's asyncio client is only partly annotated: held as Any.
        self.client: Any = redis.asyncio.Redis.from_url(url, **options)
        self.pool: Any = self.client.connection_pool
        self.get_args = _get_connection_args(type(self.pool).get_connection)
        self.idle: deque[Any] = deque()
        register = self.client.register_script
        self.fill, self.lease, self.set_void = (
            register(_FILL),
            register(_LEASE),
            register(_SET_VOID),
        )
        self.swap, self.delete_if = register(_SWAP), register(_DELETE_IF)

    async def aclose(self) -> None:
        """Close in the client's own loop: return the GET connections, close the pool."""
        while self.idle:
            await self.pool.release(self.idle.pop())
        close = getattr(self.client, "aclose", None) or self.client.close  # redis-py < 5.0.1
        await close()

    def discard(self) -> None:
        """Release the connections when their loop is gone: shut each socket down, so the
        server drops the client now. asyncio cannot close a transport without its loop,
        and redis-py has no loopless close: its connections are detached from their
        streams here (their ``__del__`` would close through the dead loop, which raises
        on redis-py 5.0), and each socket is closed when its transport is collected."""
        pool = self.pool
        conns = [
            *self.idle,
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
        ]
        self.idle.clear()
        for conn in conns:
            writer = getattr(conn, "_writer", None)
            sock = writer.get_extra_info("socket") if writer is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            if writer is not None:  # redis-py has no public loopless close (see above)
                conn._reader = conn._writer = None  # noqa: SLF001


class AsyncRedisStore:
    """Asyncio face of :class:`RedisStore`.

    redis-py's asyncio connections belong to the event loop that opened them, so the
    face keeps one client per event loop (:class:`~cachelayer.backends._perloop.PerLoop`),
    built on first use in that loop and closed when the loop ends: threads that each run
    their own loop, and a test suite or a framework that runs several loops in turn, each
    get a working client of their own, and no more than one.
    """

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.url = url
        self._options = dict(options)
        from redis.asyncio.retry import Retry as AsyncRetry
        from redis.backoff import NoBackoff

        self._options["retry"] = AsyncRetry(NoBackoff(), 0)
        self.clients: PerLoop[_LoopClient] = PerLoop(
            lambda: _LoopClient(self.url, self._options),
            aclose=_LoopClient.aclose,
            discard=_LoopClient.discard,
        )

    async def get(self, key: str) -> bytes | None:
        here = self.clients.get()
        idle = here.idle
        conn = idle.pop() if idle else await here.pool.get_connection(*here.get_args)
        try:
            await conn.send_command("GET", key)
            value: bytes | None = await conn.read_response()
        except BaseException:
            await conn.disconnect(nowait=True)
            await here.pool.release(conn)
            raise
        idle.append(conn)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(await self.clients.get().client.execute_command("MGET", *keys))

    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        here = self.clients.get()
        if void is None:
            await here.client.execute_command(*_set_args(key, value, ttl))
        else:
            await here.set_void(keys=[key, void], args=[value, _ms(ttl)])

    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        here = self.clients.get()
        pipe = here.client.pipeline(transaction=False)
        for i, (key, value, ttl) in enumerate(items):
            if i < len(void):
                await here.set_void(keys=[key, void[i]], args=[value, _ms(ttl)], client=pipe)
            else:
                pipe.execute_command(*_set_args(key, value, ttl))
        await pipe.execute()

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self.clients.get().client.execute_command("DEL", *keys))

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        client = self.clients.get().client
        return bool(await client.execute_command(*_set_args(key, value, ttl), "NX"))

    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        reply = await self.clients.get().lease(keys=[key, lease], args=[token, _ms(ttl)])
        return _lease_result(reply)

    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        fill = self.clients.get().fill
        return bool(await fill(keys=[key, lease], args=[token, value, _ms(ttl)]))

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        swap = self.clients.get().swap
        return bool(await swap(**_swap_args(key, expected, value, ttl, void, keep_ttl)))

    async def delete_if(self, key: str, token: bytes) -> bool:
        return bool(await self.clients.get().delete_if(keys=[key], args=[token]))

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        client = self.clients.get().client
        async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
            yield _key_str(key)

    async def clear(self, prefix: str) -> int:
        client = self.clients.get().client
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                if len(batch) >= 1000:
                    count += await client.unlink(*batch)
                    batch.clear()
            if batch:
                count += await client.unlink(*batch)
        return count

    async def close(self) -> None:
        await self.clients.close()
