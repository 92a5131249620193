"""The Redis Sentinel store: one primary found through its sentinels, followed across
failovers.

The sync face is the Redis store itself (:class:`~cachelayer.backends.redis.RedisStore`,
its fast GET path and bounded connections included) over a redis-py Sentinel master
client: each new connection asks a sentinel for the primary's address, and a connection
that fails is dropped, so after a failover the next connection goes to the promoted
primary. While the sentinels still call the dead primary theirs (``down-after-
milliseconds`` plus the election), calls fail at once (connection refused) or within the
connect timeout, and the Cache fails open: callers get their loader's value.

The asyncio face multiplexes as the Redis store's does (one connection per event loop,
every coroutine's commands pipelined on it): before each connection it asks the
sentinels (``SENTINEL GET-MASTER-ADDR-BY-NAME``, each sentinel in turn) where the
primary is, and a connection that fails -- or hears ``READONLY`` from a primary demoted
to replica -- is dropped, so the next command connects to the promoted one. With
``client=``, the face is redis-py's asyncio Sentinel client that ``async_client`` builds
(:class:`~cachelayer.backends._multihost.AsyncClientStore`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._multihost import AsyncClientStore, no_retry, parse_hosts_url
from .base import AsyncStore
from .redis import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    AsyncRedisStore,
    RedisStore,
    _import_redis,
    _multiplexer_options,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio
    import redis.sentinel

__all__ = ["AsyncSentinelStore", "SentinelStore", "multiplexed_face"]

SCHEMES = ("redis+sentinel", "valkey+sentinel")
DEFAULT_PORT = 26379
#: URL options for the sentinels themselves (the userinfo is the primary's).
SENTINEL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "sentinel_username": str,
    "sentinel_password": str,
}


class SentinelStore(RedisStore):
    """Sync Redis Sentinel store; ``asynchronous()`` gives the asyncio face.

    Args:
        url: ``redis+sentinel://[[user]:password@]host:26379,host:26379/service[/db]
            [?options]``: the sentinels, the name they monitor the primary under, and
            the database. The userinfo is the primary's; ``sentinel_username`` and
            ``sentinel_password`` are the sentinels'. Other options:
            ``socket_timeout``, ``socket_connect_timeout``, ``max_connections``,
            ``client_name``, ``protocol``; they override the keywords below.
        socket_timeout: seconds to wait for a reply (primary and sentinels).
        connect_timeout: seconds to wait for a connection.
        max_connections: most connections for GET, and most for the other commands.
        pool_timeout: seconds a thread waits for a free GET connection.
        client: a ready Sentinel master client (``Sentinel(...).master_for(...)``) for
            anything the URL cannot say; the store does not close it.
        async_client: with ``client``, builds the asyncio face's client (an asyncio
            ``master_for``), called once per event loop; the store closes what it
            returns, with its sentinels' clients.
        **options: further redis-py connection options for the primary.

    Raises:
        ConfigurationError: not a Sentinel URL, no service name, or a bad database.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        client: redis.Redis | None = None,
        async_client: Callable[[], redis.asyncio.Redis] | None = None,
        **options: Any,
    ) -> None:
        _import_redis()
        self.sentinel: redis.sentinel.Sentinel | None = None
        self._owns_master = client is None
        if client is not None:
            face: AsyncStore = AsyncSentinelStore(None, "", {}, {}, async_client)
            super().__init__(client=client, pool_timeout=pool_timeout, asynchronous=face)
            self.url = url or "redis+sentinel://(client)"
            return
        if url is None:
            raise ConfigurationError("SentinelStore needs a redis+sentinel:// URL or client=")
        parsed = parse_hosts_url(url, SCHEMES, DEFAULT_PORT, SENTINEL_OPTIONS)
        if not parsed.path or len(parsed.path) > 2:
            raise ConfigurationError(
                f"{url.split('://')[0]}://...: the path is /service[/db], the name the "
                "sentinels monitor the primary under (sentinel monitor <name> ...)"
            )
        service = parsed.path[0]
        db_text = parsed.path[1] if len(parsed.path) > 1 else "0"
        if not db_text.isdigit():
            raise ConfigurationError(f"the database is a number (/0 to /15), not {db_text!r}")
        settings = dict(parsed.options)
        sentinel_auth = {
            name.removeprefix("sentinel_"): settings.pop(name)
            for name in list(settings)
            if name.startswith("sentinel_")
        }
        timeouts = {
            "socket_timeout": settings.get("socket_timeout", socket_timeout),
            "socket_connect_timeout": settings.get("socket_connect_timeout", connect_timeout),
        }
        sentinel_settings = {**timeouts, **sentinel_auth}
        master_settings: dict[str, Any] = {
            **timeouts,
            "db": int(db_text),
            "username": parsed.username,
            "password": parsed.password,
            "max_connections": max_connections,
            **options,
            **settings,
        }
        from redis.sentinel import Sentinel

        self.sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parsed.hosts, sentinel_kwargs={**sentinel_settings, "retry": no_retry()}
        )
        master = self.sentinel.master_for(  # type: ignore[no-untyped-call]
            service, retry=no_retry(), **master_settings
        )
        face = multiplexed_face(url, parsed.hosts, service, sentinel_settings, master_settings)
        super().__init__(client=master, pool_timeout=pool_timeout, asynchronous=face)
        self.url = url

    # Each GET connection (the fast path of get and the read path's scripts) is connected
    # through ``connect()`` first: that is where a Sentinel connection asks the sentinels
    # for the primary. (Sent on unconnected, redis-py would dial the connection's last
    # address, or localhost:6379 for a new one, and after a failover keep dialling the
    # dead primary.) On a connected connection ``connect()`` returns at once.
    connect_first = True

    def close(self) -> None:
        super().close()
        if self._owns_master:
            self.client.close()
        if self.sentinel is not None:
            for sentinel in self.sentinel.sentinels:
                sentinel.close()


class AsyncSentinelStore(AsyncClientStore):
    """Asyncio face of :class:`SentinelStore`: an asyncio Sentinel master client per
    event loop, built from the same sentinels and settings (or by ``async_client``)."""

    def __init__(
        self,
        hosts: list[tuple[str, int]] | None,
        service: str,
        sentinel_settings: dict[str, Any],
        master_settings: dict[str, Any],
        async_client: Callable[[], Any] | None = None,
    ) -> None:
        def make_client() -> Any:
            if async_client is not None:
                return async_client()
            if hosts is None:
                raise ConfigurationError(
                    "SentinelStore(client=...) has no asyncio face of its own: pass "
                    "async_client=, a function that builds an asyncio Sentinel master "
                    "client (redis.asyncio.sentinel.Sentinel(...).master_for(...))"
                )
            import redis.asyncio
            from redis.asyncio.sentinel import Sentinel

            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                hosts, sentinel_kwargs={**sentinel_settings, "retry": no_retry()}
            )
            return sentinel.master_for(
                service, redis_class=redis.asyncio.Redis, retry=no_retry(), **master_settings
            )

        async def aclose(client: Any) -> None:
            await client.aclose()
            # The sentinels' own clients (built for this client, by us or async_client).
            manager = getattr(client.connection_pool, "sentinel_manager", None)
            if manager is not None:
                for sentinel in manager.sentinels:
                    await sentinel.aclose()

        super().__init__(
            make_client, aclose, sharded=False, failures=(_import_redis().RedisError,)
        )


class _Sentinels:
    """Where the primary is, asked of each sentinel in turn (one event loop's clients).

    The sentinel that answered is asked first next time."""

    def __init__(
        self, hosts: list[tuple[str, int]], service: str, settings: dict[str, Any]
    ) -> None:
        from ._multiplex import Multiplexer

        self.service = service
        self.clients = [
            Multiplexer(host, port, **_multiplexer_options(settings)) for host, port in hosts
        ]

    async def primary(self) -> tuple[str, int]:
        errors = _import_redis()
        problems: list[str] = []
        for index, client in enumerate(self.clients):
            try:
                reply = await client.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except errors.RedisError as exc:
                problems.append(f"{client.address}: {exc}")
                continue
            if not reply:
                problems.append(f"{client.address}: does not monitor {self.service!r}")
                continue
            if index:
                self.clients.insert(0, self.clients.pop(index))
            host, port = reply
            return host.decode(), int(port)
        raise errors.ConnectionError(
            f"no sentinel gave the address of {self.service!r}: {'; '.join(problems)}"
        )

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()

    def discard(self) -> None:
        for client in self.clients:
            client.discard()


def multiplexed_face(
    url: str,
    hosts: list[tuple[str, int]],
    service: str,
    sentinel_settings: dict[str, Any],
    master_settings: dict[str, Any],
) -> AsyncRedisStore:
    """The asyncio face of a Sentinel URL: the Redis store's multiplexed face, with its
    connections pointed at wherever the sentinels say the primary is."""
    from ._multiplex import Multiplexer
    from ._perloop import PerLoop

    settings = _multiplexer_options({k: v for k, v in master_settings.items() if k != "protocol"})

    class Primary(Multiplexer):
        """A Multiplexer to the primary that owns its loop's sentinel clients."""

        def __init__(self) -> None:
            self.sentinels = _Sentinels(hosts, service, sentinel_settings)
            super().__init__(hosts[0][0], hosts[0][1], resolve=self.sentinels.primary, **settings)

        async def close(self) -> None:
            await super().close()
            await self.sentinels.aclose()

        def discard(self) -> None:
            super().discard()
            self.sentinels.discard()

    Primary()  # the settings are checked now
    # (Called as methods, so Primary's own close and discard run.)
    clients: PerLoop[Multiplexer] = PerLoop(
        Primary, aclose=lambda client: client.close(), discard=lambda client: client.discard()
    )
    return AsyncRedisStore(url, {}, clients=clients)
