"""Publishing invalidation events: build, sign, ``XADD`` to the namespace's stream.

The sync form sends through the Cache's own redis-py client (``cache.store.client``,
which the Redis, Valkey, Sentinel and Cluster stores have), so it costs no connection of
its own. The asyncio form takes an asyncio redis-py client when given one, else runs the
sync form in a worker thread: the Cache's asyncio face pipelines every coroutine's
commands on one connection and offers no raw command, so there is no public way to send
``XADD`` through it (docs/events.md, "Publishing").
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, StoreUnavailable
from ._format import MAX_ORIGIN, Event, encode, stream_for
from ._signing import Signer

__all__ = [
    "DEFAULT_MAXLEN",
    "HEADER_KID",
    "HEADER_SIGNATURE",
    "SignedEvent",
    "apublish_invalidation",
    "default_origin",
    "make_event",
    "publish_invalidation",
    "sign_event",
]

#: entries a stream keeps, approximately (``XADD ... MAXLEN ~``)
DEFAULT_MAXLEN = 100_000
#: the HTTP headers that carry the key id and the signature (docs/events.md)
HEADER_KID = "Cachelayer-Kid"
HEADER_SIGNATURE = "Cachelayer-Signature"


def default_origin() -> str:
    """``<host>:<pid>``: who sent an event, for logs and dead letters."""
    return f"{socket.gethostname()}:{os.getpid()}"[:MAX_ORIGIN]


def make_event(
    namespace: str,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    *,
    ts: int,
    origin: str | None = None,
    event_id: str | None = None,
) -> Event:
    """A new event (a random id unless given). :func:`sign_event` checks its limits."""
    return Event(
        id=event_id or uuid.uuid4().hex,
        ns=namespace,
        keys=_listed(keys, "keys"),
        tags=_listed(tags, "tags"),
        origin=default_origin() if origin is None else origin,
        ts=ts,
    )


def _listed(names: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"{what} is a list of str, not one str: {what}=[...]")
    return tuple(names)


@dataclass(frozen=True)
class SignedEvent:
    """An encoded, signed event, ready for a transport.

    Attributes:
        event: what it says.
        payload: the exact bytes signed (UTF-8 JSON).
        kid: the key id.
        signature: HMAC-SHA256 of ``payload``, lower-case hex.
    """

    event: Event
    payload: bytes
    kid: str
    signature: str

    def stream_fields(self) -> dict[str, bytes | str]:
        """The fields of its Redis stream entry: ``p``, ``k``, ``s``."""
        return {"p": self.payload, "k": self.kid, "s": self.signature}

    def http_headers(self) -> dict[str, str]:
        """The headers of its HTTP request (the body is ``payload``)."""
        return {
            "Content-Type": "application/json",
            HEADER_KID: self.kid,
            HEADER_SIGNATURE: self.signature,
        }


def sign_event(event: Event, signer: Signer) -> SignedEvent:
    """Encode ``event`` and sign it.

    Raises:
        TypeError, ValueError: the event breaks the format's rules or limits (no key and
            no tag, more than 1000 of them, a payload over 64 KiB, ...).
    """
    payload = encode(event)
    return SignedEvent(event, payload, signer.kid, signer.sign(payload))


def _prepare(
    cache: Any, keys: Iterable[str], tags: Iterable[str], signer: Signer, origin: str | None
) -> SignedEvent:
    if not isinstance(signer, Signer):
        raise ConfigurationError("signer= takes a cachelayer.events.Signer")
    ts = int(cache.engine.clock() * 1000)
    event = make_event(cache.engine.keys.namespace, keys, tags, ts=ts, origin=origin)
    return sign_event(event, signer)


def _decoded(entry_id: Any) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _sync_client(cache: Any) -> Any:
    client = getattr(cache.store, "client", None)
    if client is None or not callable(getattr(client, "xadd", None)):
        raise ConfigurationError(
            f"{cache!r} has no Redis client to publish through (a memory:// Cache?); "
            "pass client=redis.Redis(...) of the Redis that holds the stream"
        )
    return client


def publish_invalidation(
    cache: Any,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    *,
    signer: Signer,
    stream: str | None = None,
    origin: str | None = None,
    maxlen: int | None = DEFAULT_MAXLEN,
    client: Any = None,
) -> str:
    """Publish an invalidation of ``keys`` and ``tags`` in ``cache``'s namespace.

    Consumers (:class:`~cachelayer.events.StreamConsumer`, in any process, any language)
    apply it with ``delete`` and ``invalidate_tags``. Nothing is invalidated here.

    Args:
        cache: the Cache whose namespace the event names (and whose Redis client
            sends it, unless ``client`` is given).
        keys: logical keys, as passed to ``cache.delete``.
        tags: tags, as passed to ``cache.invalidate_tags``.
        signer: the key to sign with.
        stream: the stream; default ``{<namespace>:}events``.
        origin: who sends it (default ``<host>:<pid>``).
        maxlen: the stream keeps about this many entries (``MAXLEN ~``); None: unbounded.
        client: a redis-py client to send with instead of the Cache's.

    Returns:
        The stream entry id.

    Raises:
        TypeError, ValueError: no key and no tag, too many, a payload over 64 KiB.
        ConfigurationError: no Redis to send through.
        StoreUnavailable: Redis failed; the event may or may not have been added
            (publishing again is harmless: consumers apply each event id once).
    """
    signed = _prepare(cache, keys, tags, signer, origin)
    sender = client if client is not None else _sync_client(cache)
    name = stream or stream_for(signed.event.ns)
    try:
        entry_id = sender.xadd(
            name, signed.stream_fields(), maxlen=maxlen, approximate=maxlen is not None
        )
    except (OSError, _redis_errors()) as exc:
        raise StoreUnavailable(f"publishing to {name!r} failed: {type(exc).__name__}") from exc
    return _decoded(entry_id)


async def apublish_invalidation(
    cache: Any,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    *,
    signer: Signer,
    stream: str | None = None,
    origin: str | None = None,
    maxlen: int | None = DEFAULT_MAXLEN,
    client: Any = None,
) -> str:
    """:func:`publish_invalidation` for asyncio code.

    ``client`` is a ``redis.asyncio`` client; without one the sync form runs in a worker
    thread, through the Cache's sync client.
    """
    if client is None:
        return await asyncio.to_thread(
            publish_invalidation,
            cache,
            keys,
            tags,
            signer=signer,
            stream=stream,
            origin=origin,
            maxlen=maxlen,
        )
    signed = _prepare(cache, keys, tags, signer, origin)
    name = stream or stream_for(signed.event.ns)
    try:
        entry_id = await client.xadd(
            name, signed.stream_fields(), maxlen=maxlen, approximate=maxlen is not None
        )
    except (OSError, _redis_errors()) as exc:
        raise StoreUnavailable(f"publishing to {name!r} failed: {type(exc).__name__}") from exc
    return _decoded(entry_id)


def _redis_errors() -> type[BaseException]:
    import redis

    return redis.RedisError
