"""The Redis Cluster store: keys sharded over several primaries, via redis-py's cluster
clients.

Every operation of the store protocol works on a cluster because cachelayer keeps
what one step touches in one slot: a key and its lease share a hash tag
(docs/keys.md), so each script runs on one node. Multi-key calls are split by slot:
``get_many`` is one ``MGET`` per slot and ``delete`` one ``DEL`` per slot, pipelined per
node (a tagged read is one ``get_many`` over the value and its tag tokens, which lie in
different slots); ``set_many`` pipelines its writes per node. ``scan`` and ``clear`` walk
every primary.

As for the Redis store: short timeouts and no client retries (the Cache's circuit breaker
decides when to try again), but redis-py follows ``MOVED`` and ``ASK`` redirections and
refreshes its slot map when a node fails, so a resharding or a replica's promotion costs
a few failed calls, not a restart. A ``MOVED`` updates the one slot it names
(``reinitialize_steps=0``), without the full refresh redis-py makes by default every fifth
one, whose asyncio form closes the connections of calls in flight.

The asyncio face multiplexes as the Redis store's does, one connection per node and
event loop, routing by slot itself (``_clustermux.py``); with ``client=`` (or an option
only redis-py's cluster client knows) it is redis-py's asyncio cluster client that
``async_client`` builds. The store publishes and subscribes (the local tier's purges):
a cluster forwards ``PUBLISH`` to every node, and the subscription is a connection to the
node of the channel's slot.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigurationError
from ._clustermux import multiplexed_cluster
from ._multihost import AsyncClientStore, no_retry, parse_hosts_url
from .base import AsyncStore, Item, Subscription
from .redis import (
    _DELETE_IF,
    _FILL,
    _LEASE,
    _SET_VOID,
    _SWAP,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    SCAN_COUNT,
    RedisSubscription,
    _import_redis,
    _key_str,
    _lease_result,
    _ms,
    _set_args,
    _swap_args,
)

if TYPE_CHECKING:
    import redis.asyncio.cluster
    import redis.cluster

__all__ = ["AsyncClusterStore", "ClusterStore"]

T = TypeVar("T")

SCHEMES = ("redis+cluster", "valkey+cluster")
#: seconds between two reads of the slot map after failed commands
REREAD_INTERVAL = 0.5
DEFAULT_PORT = 6379


def cluster_failures() -> tuple[type[BaseException], ...]:
    """What redis-py's cluster clients raise when the cluster fails (some of its cluster
    errors, a slot no node serves for one, are not ``RedisError``)."""
    redis_py = _import_redis()
    from redis.exceptions import RedisClusterException

    return (redis_py.RedisError, RedisClusterException)


def _noting_failures(method: Callable[..., T]) -> Callable[..., T]:
    """Note a failed command, so the next one reads the slot map first."""

    @functools.wraps(method)
    def call(self: ClusterStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except self.failures:
            self._failed_at = time.monotonic()
            raise

    return call


class ClusterStore:
    """Sync Redis Cluster store; ``asynchronous()`` gives the asyncio face.

    Args:
        url: ``redis+cluster://[[user]:password@]host:port,host:port[?options]``: a few
            nodes of the cluster (the client learns the others). Options:
            ``socket_timeout``, ``socket_connect_timeout``, ``max_connections`` (per
            node), ``client_name``, ``protocol``; they override the keywords below.
        socket_timeout: seconds to wait for a reply before the call fails.
        connect_timeout: seconds to wait for a connection.
        client: a ready ``redis.cluster.RedisCluster`` for anything the URL cannot say
            (TLS, a password provider, ``address_remap``...); the store does not close
            it. Its retry settings are its own.
        async_client: with ``client``, builds the asyncio face's
            ``redis.asyncio.cluster.RedisCluster`` (called once per event loop; the
            store closes what it returns).
        **options: further redis-py cluster options (``require_full_coverage``, ...).

    Raises:
        ConfigurationError: the URL is not a cluster URL, or names a database other than 0.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        client: redis.cluster.RedisCluster | None = None,
        async_client: Callable[[], redis.asyncio.cluster.RedisCluster] | None = None,
        **options: Any,
    ) -> None:
        self.failures: tuple[type[BaseException], ...] = cluster_failures()
        self._lock = threading.Lock()
        # (the client, its scripts); Any: redis-py's cluster client is partly untyped
        self._built: tuple[Any, _Scripts] | None = None
        self._owns_client = client is None
        self._settings: dict[str, Any] = {}
        self._hosts: list[tuple[str, int]] = []
        # When a command last failed (0.0: none since the map was read again), and when
        # the map was last read again.
        self._failed_at = self._reread_at = 0.0
        #: clients replaced by a re-read map, closed one generation later
        self._retired: list[Any] = []
        if client is not None:
            self.url = url or "redis+cluster://(client)"
            self._built = (client, _Scripts(client))
        else:
            if url is None:
                raise ConfigurationError("ClusterStore needs a redis+cluster:// URL or client=")
            parsed = parse_hosts_url(url, SCHEMES, DEFAULT_PORT)
            if parsed.path not in ([], ["0"]):
                raise ConfigurationError(
                    f"{parsed.path!r}: a cluster has one database, 0 (leave the path out)"
                )
            self.url = url
            self._hosts = parsed.hosts
            self._settings = {
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                "username": parsed.username,
                "password": parsed.password,
                # After every 5th MOVED, redis-py re-reads the whole slot map, and its
                # asyncio client does so by closing every node's connections, those of
                # calls in flight too: during a resharding these calls failed, some with
                # an AttributeError from inside redis-py that no fail-open catches. With
                # 0, a MOVED updates the slot it names; a failed node still re-reads all.
                "reinitialize_steps": 0,
                **options,
                **parsed.options,
            }
        # The multiplexed face (one connection per node and loop), unless a ready client
        # or an option only redis-py's cluster client knows asks for redis-py's.
        face = None if client is not None else multiplexed_cluster(self._hosts, self._settings)
        self._async: AsyncStore = face or AsyncClusterStore(
            self._hosts, self._settings, async_client, client
        )

    # The cluster client reads the slot map when it is built: built at first use, so a
    # Cache made while the cluster is down still starts (its calls fail open until then).
    def _cluster(self) -> tuple[Any, _Scripts]:
        built = self._built
        if self._failed_at and built is not None and self._owns_client:
            built = self._rebuilt(built)
        if built is None:
            with self._lock:
                if self._built is None:
                    self._built = self._new_client()
                built = self._built
        return built

    def _new_client(self) -> tuple[Any, _Scripts]:
        from redis.cluster import ClusterNode, RedisCluster

        client = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in self._hosts],  # type: ignore[no-untyped-call]
            retry=no_retry(),
            **self._settings,
        )
        return client, _Scripts(client)

    def _rebuilt(self, built: tuple[Any, _Scripts]) -> tuple[Any, _Scripts]:
        """After a command failed, a client with a slot map read now (at most every
        ``REREAD_INTERVAL``). redis-py re-reads its map only as a command fails: after a
        failover, the breaker's probe would still go to the dead node, fail, and keep the
        breaker open another cooldown (hits came back after 10 s instead of 5). A new
        client, swapped in whole, leaves the calls other threads are making on the old
        one undisturbed (re-reading the old client's map under them is not thread-safe
        in redis-py 5); the client retired before it is closed now."""
        now = time.monotonic()
        if now - self._reread_at < REREAD_INTERVAL or not self._lock.acquire(blocking=False):
            return built
        try:
            self._reread_at = now
            try:
                fresh = self._new_client()
            except self.failures:  # still failing: the command fails open as it would
                return built
            if self._built is not None:
                self._retired.append(self._built[0])
            self._built, self._failed_at = fresh, 0.0
            while len(self._retired) > 1:
                self._retired.pop(0).close()
            return fresh
        finally:
            self._lock.release()

    @property
    def client(self) -> redis.cluster.RedisCluster:
        """The redis-py cluster client (built on first use)."""
        client: redis.cluster.RedisCluster = self._cluster()[0]
        return client

    @_noting_failures
    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._cluster()[0].execute_command("GET", key)
        return value

    @_noting_failures
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # One MGET per slot, each a plain routed command. (Not redis-py's mget_nonatomic:
        # its pipeline by slot is not thread-safe while a node fails over -- threads got
        # "RuntimeError: dictionary changed size during iteration" from inside redis-py,
        # which no fail-open may hide, in redis-py 5.0 to 6.0 at least.)
        if not keys:
            return []
        client = self._cluster()[0]
        values: list[bytes | None] = [None] * len(keys)
        for indexes in _by_slot(keys).values():
            replies = client.execute_command("MGET", *(keys[i] for i in indexes))
            for i, value in zip(indexes, replies, strict=True):
                values[i] = value
        return values

    @_noting_failures
    def set(self, key: str, value: bytes, ttl: float | None, void: str | None = None) -> None:
        client, scripts = self._cluster()
        if void is None:
            client.execute_command(*_set_args(key, value, ttl))
        else:
            scripts.set_void(keys=[key, void], args=[value, _ms(ttl)])

    @_noting_failures
    def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        # One write after the other (not a redis-py cluster pipeline: see get_many).
        for i, (key, value, ttl) in enumerate(items):
            self.set(key, value, ttl, void[i] if i < len(void) else None)

    @_noting_failures
    def delete(self, keys: Sequence[str]) -> int:
        # One DEL per slot: each slot's keys (a key and its lease) go atomically. Plain
        # routed commands, not redis-py's split (a pipeline: see get_many).
        client = self._cluster()[0]
        count = 0
        for indexes in _by_slot(keys).values():
            count += int(client.execute_command("DEL", *(keys[i] for i in indexes)))
        return count

    @_noting_failures
    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return bool(self._cluster()[0].execute_command(*_set_args(key, value, ttl), "NX"))

    @_noting_failures
    def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        scripts = self._cluster()[1]
        return _lease_result(scripts.lease(keys=[key, lease], args=[token, _ms(ttl)]))

    @_noting_failures
    def fill(self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes) -> bool:
        scripts = self._cluster()[1]
        return bool(scripts.fill(keys=[key, lease], args=[token, value, _ms(ttl)]))

    @_noting_failures
    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        scripts = self._cluster()[1]
        return bool(scripts.swap(**_swap_args(key, expected, value, ttl, void, keep_ttl)))

    @_noting_failures
    def delete_if(self, key: str, token: bytes) -> bool:
        return bool(self._cluster()[1].delete_if(keys=[key], args=[token]))

    def scan(self, pattern: str) -> Iterator[str]:
        # SCAN on every primary in turn (redis-py's cluster scan_iter).
        for key in self._cluster()[0].scan_iter(match=pattern, count=SCAN_COUNT):
            yield _key_str(key)

    @_noting_failures
    def clear(self, prefix: str) -> int:
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[str] = []
            for key in self.scan(pattern):
                batch.append(key)
                if len(batch) >= 1000:
                    count += self.delete(batch)
                    batch.clear()
            if batch:
                count += self.delete(batch)
        return count

    @_noting_failures
    def publish(self, channel: str, message: bytes) -> int:
        # A cluster forwards PUBLISH to every node: subscribers anywhere hear it.
        return int(self._cluster()[0].publish(channel, message))

    def subscribe(self, channel: str) -> Subscription:
        # A connection of its own to the node serving the channel's slot.
        return RedisSubscription(self._cluster()[0], channel)

    def close(self) -> None:
        with self._lock:
            built, self._built = self._built, None
            retired, self._retired = self._retired, []
        for old in retired:
            old.close()
        if built is not None and self._owns_client:
            built[0].close()

    def asynchronous(self) -> AsyncStore:
        return self._async


def _by_slot(keys: Sequence[str]) -> dict[int, list[int]]:
    """``{slot: [indexes of its keys]}``, in first-seen order."""
    from redis.crc import key_slot

    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key_slot(key.encode()), []).append(index)
    return groups


class _Scripts:
    """The store's Lua scripts registered on one cluster client (each runs on the node
    of its keys' slot; a node that lacks one is sent it)."""

    def __init__(self, client: Any) -> None:
        self.fill = client.register_script(_FILL)
        self.lease = client.register_script(_LEASE)
        self.set_void = client.register_script(_SET_VOID)
        self.swap = client.register_script(_SWAP)
        self.delete_if = client.register_script(_DELETE_IF)


class AsyncClusterStore(AsyncClientStore):
    """Asyncio face of :class:`ClusterStore`: a ``redis.asyncio.cluster.RedisCluster``
    per event loop, built from the same seeds and settings (or by ``async_client``)."""

    def __init__(
        self,
        hosts: list[tuple[str, int]],
        settings: dict[str, Any],
        async_client: Callable[[], Any] | None = None,
        sync_client: Any = None,
    ) -> None:
        def make_client() -> Any:
            if async_client is not None:
                return async_client()
            if sync_client is not None:
                raise ConfigurationError(
                    "ClusterStore(client=...) has no asyncio face of its own: pass "
                    "async_client=, a function that builds a redis.asyncio.RedisCluster"
                )
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            return RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in hosts],
                retry=no_retry(),
                **settings,
            )

        async def aclose(client: Any) -> None:
            await client.aclose()

        super().__init__(make_client, aclose, sharded=True, failures=cluster_failures())
