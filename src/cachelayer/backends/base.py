"""The store interface: bytes in, bytes out, TTLs, and the atomic steps the read path needs.

A store knows nothing of codecs, policies or namespaces: the Cache hands it finished
keys and envelope bytes. Every store comes in two faces with the same method names: a
:class:`Store` for sync code and an :class:`AsyncStore` (``store.asynchronous()``) for
asyncio code, over the same data. The contract suite shipped in
:mod:`cachelayer.testing_contract` pins what each method must do; a new store passes it
before it is used (docs/stores.md).

TTLs are seconds (``float``); ``None`` means no expiry. A TTL is always > 0. Every
method that names several keys in one atomic step touches one key and keys derived
from it (its lease), which share a cluster slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["AsyncPublisher", "AsyncStore", "Publisher", "Store", "Subscription", "SyncAsAsync"]

#: One write: (key, value, ttl seconds or None).
Item = tuple[str, bytes, "float | None"]


@runtime_checkable
class Store(Protocol):
    """Sync face of a store."""

    def get(self, key: str) -> bytes | None:
        """The value stored at ``key``, or ``None`` when absent or expired."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for ``keys`` in order, ``None`` where absent; one round trip."""
        ...

    def set(self, key: str, value: bytes, ttl: float | None, void: str | None = None) -> None:
        """Store ``value`` at ``key``; in the same atomic step delete the key ``void``.

        ``void`` is the key's lease: a write must cancel any fill that started before it.
        """
        ...

    def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        """``set`` for each item (``void[i]`` pairs with ``items[i]``); one round trip."""
        ...

    def delete(self, keys: Sequence[str]) -> int:
        """Delete ``keys`` in one atomic step; return how many existed."""
        ...

    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """Store ``value`` only if ``key`` is absent; ``True`` if it was stored."""
        ...

    def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        """At a miss, atomically: if ``key`` now holds a value, return it; else store
        ``token`` at ``lease`` unless a lease is there, and say whether it was stored.

        (A value filled between the miss and this call is returned rather than loaded
        again.)
        """
        ...

    def fill(self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes) -> bool:
        """The guarded fill: atomically, if ``lease`` holds ``token``, store ``value`` at
        ``key`` and delete ``lease``; ``True`` if stored."""
        ...

    def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        """Compare-and-set: atomically, if ``key`` holds exactly ``expected`` (``None``:
        if it is absent), store ``value`` and delete the key ``void``.

        Args:
            key: the key to write.
            expected: the bytes ``key`` must hold now, or ``None`` for "absent".
            value: the new value.
            ttl: seconds the new value lives (``None``: no expiry); ignored with
                ``keep_ttl``.
            void: a key to delete in the same step (the key's lease), or ``None``.
            keep_ttl: keep the expiry ``key`` has now (none if it was absent).

        Returns:
            ``True`` if the value was stored, ``False`` if ``key`` held something else.
        """
        ...

    def delete_if(self, key: str, token: bytes) -> bool:
        """Atomically delete ``key`` only if it holds exactly ``token`` (a lock's release
        by its owner); ``True`` if it was deleted."""
        ...

    def scan(self, pattern: str) -> Iterator[str]:
        """Every key that matches the Redis glob ``pattern``, walked incrementally.

        The pattern language is Redis's: ``*`` any run of characters, ``?`` one character,
        ``[abc]``, ``[a-z]`` and ``[^a]`` classes, ``\\`` makes the next character literal.
        A key present for the whole walk is returned at least once; a key written or
        deleted during it may or may not be, and a key may come twice (Redis ``SCAN``).
        """
        ...

    def clear(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix`` or ``"{" + prefix``; return a count."""
        ...

    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""
        ...

    def asynchronous(self) -> AsyncStore:
        """The asyncio face of this store (same data, same settings)."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """Asyncio face of a store: :class:`Store`'s methods as coroutines."""

    async def get(self, key: str) -> bytes | None: ...
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None: ...
    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None: ...
    async def delete(self, keys: Sequence[str]) -> int: ...
    async def add(self, key: str, value: bytes, ttl: float | None) -> bool: ...
    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool: ...
    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool: ...
    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool: ...
    async def delete_if(self, key: str, token: bytes) -> bool: ...
    def scan(self, pattern: str) -> AsyncIterator[str]: ...
    async def clear(self, prefix: str) -> int: ...
    async def close(self) -> None: ...


@runtime_checkable
class Subscription(Protocol):
    """A live subscription to one channel (``Publisher.subscribe``)."""

    def receive(self, timeout: float) -> bytes | None:
        """The next message published on the channel, or ``None`` when none came within
        ``timeout`` seconds.

        Raises:
            the store's failures (``OSError``, ``failures``): the subscription is lost
            (messages may have been missed); close it and subscribe again.
        """
        ...

    def close(self) -> None:
        """Unsubscribe and release the connection."""
        ...


@runtime_checkable
class Publisher(Protocol):
    """A store that can broadcast messages to every process (the local tier's purges).

    Optional: a store without it works, but cannot carry ``Cache(local=...)``.
    """

    def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to every subscriber of ``channel``; return how many got it.

        Returns only once the message is on its way to every current subscriber.
        """
        ...

    def subscribe(self, channel: str) -> Subscription:
        """Subscribe to ``channel``; returns once the subscription is confirmed, so every
        message published after the return is received, in order."""
        ...


@runtime_checkable
class AsyncPublisher(Protocol):
    """Asyncio face of :class:`Publisher` (publishing only: subscribers are threads)."""

    async def publish(self, channel: str, message: bytes) -> int: ...


class SyncAsAsync:
    """The async face of a store whose sync methods never block (process memory).

    Each coroutine calls the sync method directly: no thread, no executor. Only for stores
    whose every call is bounded CPU work under a short lock.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, key: str) -> bytes | None:
        return self._store.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._store.get_many(keys)

    async def set(
        self, key: str, value: bytes, ttl: float | None, void: str | None = None
    ) -> None:
        self._store.set(key, value, ttl, void)

    async def set_many(self, items: Sequence[Item], void: Sequence[str] = ()) -> None:
        self._store.set_many(items, void)

    async def delete(self, keys: Sequence[str]) -> int:
        return self._store.delete(keys)

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        return self._store.add(key, value, ttl)

    async def lease(self, key: str, lease: str, token: bytes, ttl: float) -> bytes | bool:
        return self._store.lease(key, lease, token, ttl)

    async def fill(
        self, key: str, value: bytes, ttl: float | None, lease: str, token: bytes
    ) -> bool:
        return self._store.fill(key, value, ttl, lease, token)

    async def swap(
        self,
        key: str,
        expected: bytes | None,
        value: bytes,
        ttl: float | None,
        void: str | None = None,
        keep_ttl: bool = False,
    ) -> bool:
        return self._store.swap(key, expected, value, ttl, void, keep_ttl)

    async def delete_if(self, key: str, token: bytes) -> bool:
        return self._store.delete_if(key, token)

    async def scan(self, pattern: str) -> AsyncIterator[str]:
        for key in self._store.scan(pattern):
            yield key

    async def clear(self, prefix: str) -> int:
        return self._store.clear(prefix)

    async def close(self) -> None:
        self._store.close()
