"""What the Cluster and Sentinel stores share: their URLs, and an asyncio face over
redis-py's own asyncio clients.

A multi-host URL names several seed addresses, ``scheme://[user[:password]@]host:port,
host:port[/path][?options]``: the cluster's nodes (any few: the client learns the rest)
or the sentinels. :func:`parse_hosts_url` splits it; each store reads the path itself.

:class:`AsyncClientStore` is the asyncio face of both stores: one redis-py asyncio client
per event loop (:class:`~cachelayer.backends._perloop.PerLoop`), each call one command or
script on it. Unlike the Redis store's face it does not multiplex: each concurrent call
holds a connection of the client's pool while it waits, and a pool that is full fails
the call at once as :class:`~cachelayer.errors.StoreBusy` (a miss that never opens the
circuit breaker).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .._redact import redact_url
from ..errors import ConfigurationError, StoreBusy
from ._perloop import PerLoop
from .base import Item
from .redis import (
    _DELETE_IF,
    _FILL,
    _LEASE,
    _SET_VOID,
    _SWAP,
    SCAN_COUNT,
    _key_str,
    _lease_result,
    _ms,
    _set_args,
    _swap_args,
)

__all__ = ["AsyncClientStore", "HostsURL", "no_retry", "parse_hosts_url"]

P = ParamSpec("P")
R = TypeVar("R")

#: Query options every multi-host URL takes, with their parsers (redis-py's names).
OPTION_PARSERS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "client_name": str,
    "protocol": int,
}


@dataclass
class HostsURL:
    """A parsed multi-host URL."""

    hosts: list[tuple[str, int]]
    username: str | None
    password: str | None
    path: list[str]
    options: dict[str, Any] = field(default_factory=dict)


def parse_hosts_url(
    url: str,
    schemes: Sequence[str],
    default_port: int,
    extra_options: dict[str, Callable[[str], Any]] | None = None,
) -> HostsURL:
    """Split ``scheme://[user[:password]@]host[:port],host[:port][/path][?options]``.

    Raises:
        ConfigurationError: another scheme, no host, a bad port, or an unknown option.
    """
    shown = redact_url(url)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in schemes:
        raise ConfigurationError(f"{shown!r} is not a {' or '.join(schemes)}:// URL")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    hosts: list[tuple[str, int]] = []
    for entry in hostlist.split(","):
        if not entry:
            continue
        if entry.startswith("["):  # [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = entry.rpartition(":") if ":" in entry else (entry, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"{shown!r}: {port_text!r} is not a port") from None
        hosts.append((host, port))
    if not hosts:
        raise ConfigurationError(f"{shown!r} names no host (host:port,host:port)")
    parsers = {**OPTION_PARSERS, **(extra_options or {})}
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in parsers:
            raise ConfigurationError(
                f"{shown!r}: unknown option {name!r} (known: {', '.join(sorted(parsers))}; "
                "pass a ready redis-py client for anything else)"
            )
        try:
            options[name] = parsers[name](value)
        except ValueError:
            raise ConfigurationError(f"{shown!r}: {name}={value!r} is not valid") from None
    path = [unquote(p) for p in parts.path.split("/") if p]
    return HostsURL(hosts, username, password, path, options)


def no_retry() -> Any:
    """redis-py's retry policy for a cache: none (the Cache's breaker decides)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


@functools.cache
def _max_connections_error() -> type[BaseException]:
    import redis.exceptions

    found: type[BaseException] | None = getattr(redis.exceptions, "MaxConnectionsError", None)
    return found or _NeverRaised


class _NeverRaised(Exception):
    """Stands for an exception type the installed redis-py does not have."""


def _busy_aware(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """A full connection pool is this process's congestion, not a sick server."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except _max_connections_error() as exc:
            raise StoreBusy(
                "every connection of the client's pool is in use (max_connections)"
            ) from exc

    return call


class _Lua:
    """A script and its SHA1, run with EVALSHA (loaded on the node when it lacks it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def run(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # A node that never saw it: a new primary, a restarted one. (On a cluster,
            # SCRIPT LOAD goes to every primary.)
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


_FILL_LUA, _LEASE_LUA, _SET_VOID_LUA = _Lua(_FILL), _Lua(_LEASE), _Lua(_SET_VOID)
_SWAP_LUA, _DELETE_IF_LUA = _Lua(_SWAP), _Lua(_DELETE_IF)


class AsyncClientStore:
    """The asyncio face of a store over a redis-py asyncio client (one per event loop).

    Args:
        make_client: builds a client; called once in each event loop that uses the face.
        aclose: closes a client, in its own loop.
        sharded: the client is a cluster client: multi-key reads go per slot.
        failures: what the client raises when the servers fail.
    """

    def __init__(
        self,
        make_client: Callable[[], Any],
        aclose: Callable[[Any], Awaitable[None]],
        *,
        sharded: bool,
        failures: tuple[type[BaseException], ...],
    ) -> None:
        self.clients: PerLoop[Any] = PerLoop(make_client, aclose=aclose)
        self.sharded = sharded
        self.failures = failures

    @_busy_aware
    async def get(self, key: str) -> bytes | None:
        value: bytes | None = await self.clients.get().execute_command("GET", key)
        return value

    @_busy_aware
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        client = self.clients.get()
        if self.sharded:  # one MGET per slot, pipelined per node
            return list(await client.mget_nonatomic(list(keys)))
        return list(await client.execute_command("MGET", *keys))

    @_busy_aware
    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        client = self.clients.get()
        if void is None:
            await client.execute_command(*_set_args(key, value, ttl))
        else:
            await _SET_VOID_LUA.run(client, [key, void], [value, _ms(ttl)])

    @_busy_aware
    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        if not items:
            return
        pipe = self.clients.get().pipeline(transaction=False)
        for i, (key, value, ttl) in enumerate(items):
            if i < len(void):  # EVAL, not EVALSHA: a pipeline cannot load a missing script
                pipe.execute_command("EVAL", _SET_VOID, 2, key, void[i], value, _ms(ttl))
            else:
                pipe.execute_command(*_set_args(key, value, ttl))
        await pipe.execute()

    @_busy_aware
    async def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        # On a cluster client DEL is split by slot (each slot's keys deleted atomically).
        return int(await self.clients.get().delete(*keys))

    @_busy_aware
    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        client = self.clients.get()
        return bool(await client.execute_command(*_set_args(key, value, ttl), "NX"))

    @_busy_aware
    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        reply = await _LEASE_LUA.run(self.clients.get(), [key, lease], [token, _ms(ttl)])
        return _lease_result(reply)

    @_busy_aware
    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        client = self.clients.get()
        return bool(await _FILL_LUA.run(client, [key, lease], [token, value, _ms(ttl)]))

    @_busy_aware
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
        return bool(await _SWAP_LUA.run(self.clients.get(), args["keys"], args["args"]))

    @_busy_aware
    async def delete_if(self, key: str, token: bytes) -> bool:
        return bool(await _DELETE_IF_LUA.run(self.clients.get(), [key], [token]))

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        # A cluster client walks every primary in turn.
        async for key in self.clients.get().scan_iter(match=pattern, count=SCAN_COUNT):
            yield _key_str(key)

    @_busy_aware
    async def clear(self, prefix: str) -> int:
        client = self.clients.get()
        count = 0
        for pattern in (prefix + "*", "{" + prefix + "*"):
            batch: list[str] = []
            async for key in self.scan(pattern):
                batch.append(key)
                if len(batch) >= 1000:
                    count += int(await client.unlink(*batch))
                    batch.clear()
            if batch:
                count += int(await client.unlink(*batch))
        return count

    @_busy_aware
    async def publish(self, channel: str, message: bytes) -> int:
        return int(await self.clients.get().execute_command("PUBLISH", channel, message))

    async def close(self) -> None:
        await self.clients.close()
