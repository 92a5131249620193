"""The Redis store (and Redis-compatible servers: Valkey, KeyDB, Dragonfly) via redis-py.

One connection pool per face (sync, async), short timeouts suited to a cache and no
client-side retries: a cache that waits on a sick server costs more than the query it
saves, and the Cache's circuit breaker decides when to try again. ``GET``, the one
command on the hot path, is sent on a connection directly rather than through redis-py's
generic dispatch, and on a connection kept in a small lock-free free list
(:class:`_GetConnections`) rather than checked in and out of redis-py's pool each time:
together those are most of redis-py's per-call cost (bench/bench_get.py).

The sync face is made for many threads: both the GET connections and redis-py's pool for
the other commands are bounded (``max_connections`` each), and a thread that finds every
connection busy waits for one (up to ``pool_timeout``) instead of failing. A wait that
runs out raises :class:`~cachelayer.errors.StoreBusy`, which the Cache counts apart from
store failures: a process's own congestion never opens the circuit breaker.
Guarded writes are Lua scripts, each touching one key and its lease (one cluster slot),
and each using only ``GET``, ``SET`` and ``DEL``, so the least-privilege ACL user of
docs/guide.md can run them. The asyncio face keeps one redis-py client per event loop
(``_perloop.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .._redact import redact_url
from ..errors import ConfigurationError, StoreBusy
from ._perloop import PerLoop
from .base import AsyncStore, Item, Subscription

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from ._multiplex import Multiplexer

__all__ = ["AsyncRedisStore", "RedisStore", "RedisSubscription"]

DEFAULT_SOCKET_TIMEOUT = 0.25
DEFAULT_CONNECT_TIMEOUT = 0.25
#: Connections of each kind (GET's own, and redis-py's pool for the rest) per process.
DEFAULT_MAX_CONNECTIONS = 128
#: Seconds a thread waits for a free connection before its call fails open (StoreBusy).
DEFAULT_POOL_TIMEOUT = 1.0

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


# Stores whose idle GET connections a forked child must forget (they are the parent's).
_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for store in list(_STORES):
        store.get_connections.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_connections_after_fork)


@functools.cache
def _packer() -> Callable[[tuple[Any, ...]], bytes]:
    """hiredis's RESP packer (redis-py's own adds a Python pass over the arguments:
    about 1.5 us a command); hiredis before 2.2 has none, and gets the multiplexer's
    Python packer."""
    import hiredis

    from ._multiplex import pack_command_py

    pack: Callable[[tuple[Any, ...]], bytes] = getattr(hiredis, "pack_command", pack_command_py)
    return pack


class _GetConnections:
    """The connections GET runs on: a lock-free free list, bounded, with a wait.

    ``take`` pops an idle connection (deque pop/append are atomic, so the hot path takes
    no lock); with none idle it makes one while fewer than ``limit`` exist, else waits
    up to ``timeout`` for one to come back, then raises :class:`StoreBusy`. A connection
    that failed mid-call is disconnected and still comes back: redis-py reconnects it on
    its next command.
    """

    def __init__(self, make: Callable[[], Any], limit: int, timeout: float) -> None:
        self._make = make
        self.limit = limit
        self.timeout = timeout
        self._idle: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._made = 0
        self._waiting = 0

    def take(self) -> Any:
        try:
            return self._idle.pop()
        except IndexError:
            return self._take_or_wait()

    def _take_or_wait(self) -> Any:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._made < self.limit:
                    self._made += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StoreBusy(
                        f"all {self.limit} GET connections stayed busy for "
                        f"{self.timeout:g} s (max_connections, pool_timeout)"
                    )
                self._waiting += 1
                try:
                    # Short slices: a connection given back without a notify (the
                    # give-back path reads the waiter count without the lock) is found
                    # on the next look.
                    self._cond.wait(min(remaining, 0.005))
                finally:
                    self._waiting -= 1
        try:
            return self._make()
        except BaseException:
            with self._cond:
                self._made -= 1
            raise

    def give(self, conn: Any) -> None:
        self._idle.append(conn)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def close(self) -> None:
        """Disconnect the idle connections and forget them (a connection in use comes
        back later and is kept); their places are free again."""
        with self._cond:
            idle, self._idle = self._idle, deque()
            self._made -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.disconnect()

    def forget(self) -> None:
        """After a fork: the parent's connections are not this process's to use."""
        self._idle = deque()
        self._cond = threading.Condition(threading.Lock())
        self._made = self._waiting = 0


@functools.cache
def _busy_pool_class() -> type[Any]:
    """redis-py's BlockingConnectionPool, raising StoreBusy when no connection came free
    in time (a bound on this process's connections, not a sign of a sick server)."""
    import redis

    class BusyAwarePool(redis.BlockingConnectionPool):
        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except redis.ConnectionError as exc:
                if str(exc) == "No connection available.":
                    raise StoreBusy(
                        f"all {self.max_connections} connections stayed busy for "
                        f"{self.timeout} s (max_connections, pool_timeout)"
                    ) from exc
                raise

    return BusyAwarePool


def _lease_result(reply: Any) -> bytes | bool:
    return reply if isinstance(reply, bytes) else bool(reply)


def _normalise_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ConfigurationError(
            f"{redact_url(url)!r} is not a Redis URL (redis://, rediss://, unix://, valkey://)"
        )
    if scheme.startswith("valkey"):
        scheme = scheme.replace("valkey", "redis")
    if scheme != "unix":
        db = urlsplit(url).path.strip("/")
        if db and not db.isdigit():
            # redis-py would silently use db 0 for "/seven"
            raise ConfigurationError(
                f"{redact_url(url)!r}: the path names the database, a number (/0 to /15 "
                f"on a default server), not {db!r}"
            )
    return f"{scheme}://{rest}"


def _verify_hostname(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """``{"ssl_check_hostname": True}`` for a ``rediss://`` URL that verifies the server's
    certificate and says nothing of host names: redis-py before 6 does not check them by
    default (the asyncio face always does, as newer redis-py)."""
    if not url.startswith("rediss://"):
        return {}
    query = parse_qs(urlsplit(url).query)
    if "ssl_check_hostname" in options or "ssl_check_hostname" in query:
        return {}
    # (The URL wins over keywords, as in redis-py.)
    reqs = query.get("ssl_cert_reqs", [None])[0] or options.get("ssl_cert_reqs")
    if reqs is not None and str(reqs).lower() not in ("required", "2"):
        return {}  # not verifying the certificate: no host name to check either
    return {"ssl_check_hostname": True}


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
        max_connections: most connections for GET, and most for the other commands,
            in this process (threads beyond that wait for one).
        pool_timeout: seconds a thread waits for a free connection before its call
            fails open (counted as ``store_busy``, never as a store failure).
        client: an existing ``redis.Redis`` to use instead of building one from ``url``
            (the Cache will not close it). Its retry settings are its own.
        asynchronous: the asyncio face to hand out instead of one built from ``url``
            (a store over a ``client`` the URL does not describe, as Sentinel's).
        **options: further redis-py connection options (``max_connections``, ...).
    """

    #: connect a GET connection before each command (a Sentinel store's connections ask
    #: the sentinels where the primary is as they connect)
    connect_first = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        client: redis.Redis | None = None,
        asynchronous: AsyncStore | None = None,
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
            **_verify_hostname(self.url, options),
            **options,
        }
        self._owns_client = client is None
        if client is None:
            pool = _busy_pool_class().from_url(
                self.url, max_connections=max_connections, timeout=pool_timeout, **self._options
            )
            client = redis_py.Redis(connection_pool=pool, retry=self._options["retry"])
        self.client: redis.Redis = client
        self._pool = self.client.connection_pool
        #: the connections GET runs on (bounded like the pool, with the same wait)
        self.get_connections = _GetConnections(
            self._pool.make_connection,
            getattr(self._pool, "max_connections", None) or max_connections,
            pool_timeout,
        )
        _STORES.add(self)
        self._cmd: Callable[..., Any] = self.client.execute_command
        self._fill = self.client.register_script(_FILL)
        self._lease = self.client.register_script(_LEASE)
        self._set_void = self.client.register_script(_SET_VOID)
        self._swap = self.client.register_script(_SWAP)
        self._delete_if = self.client.register_script(_DELETE_IF)
        # Built now, so that a URL or option the asyncio face cannot honour (a mistyped
        # ?socket_timout=, say) is refused when the Cache is made, not at its first call.
        self._async: AsyncStore = (
            asynchronous if asynchronous is not None else AsyncRedisStore(self.url, self._options)
        )
        #: what this store raises when Redis fails (the runner fails open on these, and
        #: on OSError; anything else is a bug and raises)
        self.failures: tuple[type[BaseException], ...] = (redis_py.RedisError,)
        self._response_error = redis_py.ResponseError
        self._no_script = redis_py.exceptions.NoScriptError

    def get(self, key: str) -> bytes | None:
        conns = self.get_connections
        conn = conns.take()
        try:
            if self.connect_first:
                conn.connect()
            conn.send_packed_command([_packer()(("GET", key))])
            value: bytes | None = conn.read_response()
        except BaseException:
            conn.disconnect()  # never reuse a connection that may hold a half-read reply
            raise
        finally:
            conns.give(conn)
        return value

    def _direct(self, *args: Any) -> Any:
        """One command on a GET connection: what ``get`` does, for the read path's other
        single-round-trip commands (its scripts), skipping redis-py's per-command client
        machinery (a third of a miss + fill's time)."""
        conns = self.get_connections
        conn = conns.take()
        try:
            if self.connect_first:
                conn.connect()
            conn.send_packed_command([_packer()(args)])
            return conn.read_response()
        except self._response_error:
            raise  # the whole reply was read: the connection is clean
        except BaseException:
            conn.disconnect()  # never reuse a connection that may hold a half-read reply
            raise
        finally:
            conns.give(conn)

    def _run_script(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """EVALSHA on a GET connection; a server without the script gets it loaded (the
        redis-py Script object does that)."""
        try:
            return self._direct("EVALSHA", script.sha, len(keys), *keys, *args)
        except self._no_script:
            return script(keys=keys, args=args)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self._direct("MGET", *keys))

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
        return _lease_result(self._run_script(self._lease, [key, lease], [token, _ms(ttl)]))

    def fill(self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes) -> bool:
        return bool(self._run_script(self._fill, [key, lease], [token, value, _ms(ttl)]))

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

    def publish(self, channel: str, message: bytes) -> int:
        return int(self._cmd("PUBLISH", channel, message))

    def subscribe(self, channel: str) -> Subscription:
        return RedisSubscription(self.client, channel)

    def close(self) -> None:
        self.get_connections.close()
        if self._owns_client:
            self.client.close()

    def asynchronous(self) -> AsyncStore:
        return self._async


class RedisSubscription:
    """A confirmed subscription to one channel, on a connection of its own.

    A subscription that hears nothing is checked: after ``heartbeat`` seconds of silence
    it sends a ``PING``; after three heartbeats without any reply it reports itself lost
    (a half-open connection would otherwise look like a quiet channel forever).

    Args:
        client: the redis-py client whose pool lends the connection.
        channel: the channel to subscribe to.
        heartbeat: seconds of silence before a ``PING``.
        confirm_timeout: seconds to wait for the server's confirmation.

    Raises:
        redis.RedisError, OSError: the subscription could not be made.
    """

    def __init__(
        self, client: Any, channel: str, heartbeat: float = 1.0, confirm_timeout: float = 2.0
    ) -> None:
        self._pubsub = client.pubsub()
        self._heartbeat = heartbeat
        self._errors = _import_redis()
        try:
            self._pubsub.subscribe(channel)
            deadline = time.monotonic() + confirm_timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._errors.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")
                reply = self._pubsub.get_message(timeout=left)
                if reply is not None and reply["type"] == "subscribe":
                    break
        except BaseException:
            self._pubsub.close()
            raise
        self._seen = self._pinged = time.monotonic()

    def receive(self, timeout: float) -> bytes | None:
        reply = self._pubsub.get_message(timeout=timeout)
        now = time.monotonic()
        if reply is not None:
            self._seen = now
            if reply["type"] == "message":
                data: bytes = reply["data"]
                return data
            return None
        silent = now - self._seen
        if silent > 3 * self._heartbeat:
            raise self._errors.ConnectionError(
                f"subscription silent for {silent:.1f} s, PING unanswered"
            )
        if silent > self._heartbeat and now - self._pinged > self._heartbeat:
            self._pubsub.ping()
            self._pinged = now
        return None

    def close(self) -> None:
        self._pubsub.close()


def _multiplexer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The Multiplexer's keywords for the sync store's redis-py options.

    Raises:
        ConfigurationError: an option the asyncio face cannot honour.
    """
    from ._multiplex import ssl_context

    mapped: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for name, value in options.items():
        if name == "socket_timeout":
            mapped["timeout"] = value
        elif name == "socket_connect_timeout":
            mapped["connect_timeout"] = value
        elif name in _SAME_NAME:
            mapped[name] = value
        elif name.startswith("ssl_"):
            tls[name[4:]] = value
        elif name not in _SYNC_ONLY:
            raise ConfigurationError(
                f"option {name}={value!r} is not supported by the asyncio face of the Redis "
                "store (it multiplexes one connection per event loop); put it in the URL "
                "if it is a connection setting, or leave it out"
            )
    if tls:
        mapped["ssl"] = ssl_context(**tls)
    return mapped


# redis-py options that shape the sync face's pool and retries only.
# (TCP keepalive is left out on the asyncio face: a reply that does not arrive within
# the timeout fails its connection anyway.)
_SYNC_ONLY = frozenset(
    {
        "retry",
        "max_connections",
        "pool_timeout",
        "health_check_interval",
        "retry_on_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
    }
)
# Options both faces take under the same name.
_SAME_NAME = frozenset({"client_name", "db", "username", "password"})


class AsyncRedisStore:
    """Asyncio face of :class:`RedisStore`: every coroutine's commands pipelined on one
    connection per event loop (:class:`~cachelayer.backends._multiplex.Multiplexer`).

    Concurrent calls issued in one loop iteration leave in one write and their replies
    are matched in order, so a hundred coroutines cost one socket and a few system calls
    instead of a hundred of each; a lone caller's command is written at once. A reply
    times out only when it has not *arrived* within ``socket_timeout`` of being written,
    never because the loop was busy. Past ``max_pending`` commands waiting on the
    connection a call fails at once (:class:`~cachelayer.errors.StoreBusy`, a miss that
    never opens the breaker).

    A connection belongs to the event loop that opened it, so the face keeps one per
    loop (:class:`~cachelayer.backends._perloop.PerLoop`), built on first use there and
    closed when the loop ends.
    """

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        max_pending: int = 10_000,
        *,
        clients: PerLoop[Multiplexer] | None = None,
    ) -> None:
        self.url = url
        #: what this face raises when Redis fails (as the sync face)
        self.failures: tuple[type[BaseException], ...] = (_import_redis().RedisError,)
        if clients is not None:  # built by a store that finds its server another way
            self.clients = clients
            return
        from ._multiplex import Multiplexer, ssl_context

        settings = {**_multiplexer_options(options), "max_pending": max_pending}
        # As redis-py does for the sync face, what the URL says wins over keywords.
        from redis.connection import parse_url

        in_url = parse_url(url)  # type: ignore[no-untyped-call]
        renamed = {"socket_timeout": "timeout", "socket_connect_timeout": "connect_timeout"}
        for name in in_url:
            settings.pop(renamed.get(name, name), None)
        tls = {k[4:]: v for k, v in {**options, **in_url}.items() if k.startswith("ssl_")}
        if "ssl" in settings and any(k.startswith("ssl_") for k in in_url):
            # One TLS context of both, option by option (the keywords' alone would
            # replace the URL's whole context).
            settings["ssl"] = ssl_context(**tls)
        Multiplexer.from_url(url, **settings)  # the URL and options are checked now
        self.clients = PerLoop(
            lambda: Multiplexer.from_url(url, **settings),
            aclose=Multiplexer.close,
            discard=Multiplexer.discard,
        )

    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.clients.get().execute("GET", key)
        return value

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(await self.clients.get().execute("MGET", *keys))

    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        here = self.clients.get()
        if void is None:
            await here.execute(*_set_args(key, value, ttl))
        else:
            await here.evalsha(_SET_VOID, [key, void], [value, _ms(ttl)])

    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        here = self.clients.get()
        # Issued together, the writes leave in one batch (one round trip).
        await asyncio.gather(
            *(
                here.evalsha(_SET_VOID, [key, void[i]], [value, _ms(ttl)])
                if i < len(void)
                else here.execute(*_set_args(key, value, ttl))
                for i, (key, value, ttl) in enumerate(items)
            )
        )

    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return int(await self.clients.get().execute("DEL", *keys))

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(await self.clients.get().execute(*_set_args(key, value, ttl), "NX"))

    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        reply = await self.clients.get().evalsha(_LEASE, [key, lease], [token, _ms(ttl)])
        return _lease_result(reply)

    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        here = self.clients.get()
        return bool(await here.evalsha(_FILL, [key, lease], [token, value, _ms(ttl)]))

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        args = _swap_args(key, expected, value, ttl, void, keep_ttl)
        return bool(await self.clients.get().evalsha(_SWAP, args["keys"], args["args"]))

    async def delete_if(self, key: str, token: bytes) -> bool:
        return bool(await self.clients.get().evalsha(_DELETE_IF, [key], [token]))

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        here = self.clients.get()
        cursor: bytes | int = 0
        while True:
            cursor, keys = await here.execute(
                "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT
            )
            for key in keys:
                yield _key_str(key)
            if cursor in (0, b"0"):
                return

    async def clear(self, prefix: str) -> int:
        here = self.clients.get()
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[str] = []
            async for key in self.scan(pattern):
                batch.append(key)
                if len(batch) >= 1000:
                    count += int(await here.execute("UNLINK", *batch))
                    batch.clear()
            if batch:
                count += int(await here.execute("UNLINK", *batch))
        return count

    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self.clients.get().execute("PUBLISH", channel, message))

    async def close(self) -> None:
        await self.clients.close()
