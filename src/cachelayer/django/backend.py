"""Django's cache API on a cachelayer :class:`~cachelayer.Cache` (docs/django.md).

Django builds one backend object per thread (and per async context) from ``CACHES``;
all the objects of one alias share one :class:`~cachelayer.Cache` per process
(``_shared.py``), so single-flight, the circuit breaker, the counters and the Redis
connection pool span threads; :func:`~cachelayer.django.get_cache` returns it. The
connections are kept between requests, as Django's own Redis backend does. ``memory://``
stores are shared by every backend object of the process with the same ``LOCATION``
(as ``LocMemCache`` shares by ``LOCATION``), so all threads see one cache. The Cache
stores model instances and ``HttpResponse`` objects with the safe codecs (``_types.py``).

Every method has a native async twin (``aget`` awaits the Cache's ``aget``: no thread).
Read-modify-writes (``add``, ``incr``/``decr``, ``touch``) are written once as
generators that yield store steps, driven by :meth:`CacheBackend._run` with blocking
calls or by :meth:`CacheBackend._arun` with ``await``; each conditional write is an
atomic compare-and-set (the store's ``swap``), retried when another writer won.

django-redis's extras (``ttl``, ``expire``, ``persist``, ``delete_pattern``, ``keys``,
``iter_keys``, ``lock``) are here too, with their async twins; patterns are mapped
through Django's key function by ``_keymap.py``.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured

from .._cache import Cache
from .._engine import lease_key
from .._envelope import Entry
from .._lock import Lock
from .._purge import KEYS
from .._steps import FAILED, Flow, Get, Keys, SetMany, Swap
from ..backends import MemoryStore, Store, store_from_url
from ..errors import CacheError, ConfigurationError
from ._keymap import KeyTemplate, escape, glob_escape
from ._shared import SharedCache, shared_cache
from ._types import register_django_types

__all__ = ["CacheBackend"]

#: A read-modify-write that loses this many races in a row gives up (a livelock guard:
#: every lost race means another writer of the same key made progress).
MAX_SWAPS = 1000
#: delete_pattern() deletes the keys it found in steps of this many (and their leases).
DELETE_BATCH = 500

# OPTIONS that configure Django's own backends, not a Cache: what to use instead.
_NOT_OPTIONS = {
    "ttl": 'the "TIMEOUT" setting (and timeout= per call)',
    "MAX_ENTRIES": 'the LOCATION "memory://?max_entries=N" (a memory store\'s bound)',
    "CULL_FREQUENCY": "nothing: the memory store evicts least recently used entries",
}
_CACHE_OPTIONS = frozenset(inspect.signature(Cache).parameters) - {"url", "ttl"}

_memory_stores: dict[str, MemoryStore] = {}
_memory_lock = threading.Lock()


def _store_for(location: str) -> Store:
    """The store ``location`` names (Redis, Sentinel, Cluster...); one memory store per
    memory URL in the process."""
    if location.partition("://")[0].lower() != "memory":
        return store_from_url(location)
    with _memory_lock:
        store = _memory_stores.get(location)
        if store is None:
            parsed = store_from_url(location)  # validates the URL and its options
            assert isinstance(parsed, MemoryStore)
            store = _memory_stores[location] = parsed
        return store


def _dont_store(seconds: float | None) -> bool:
    """Django: a timeout of 0 or less means "do not cache" (and drop what is there)."""
    return seconds is not None and seconds <= 0


def _default_value(default: Any) -> Any:
    return default() if callable(default) else default


class CacheBackend(BaseCache):
    """A Django cache backend on cachelayer: ``"BACKEND": "cachelayer.django.CacheBackend"``.

    Args:
        location: ``LOCATION``: ``"redis://host:6379/0"`` (also ``rediss://``,
            ``unix://``, ``valkey://``; redis-py options as query parameters, e.g.
            ``?socket_timeout=0.2``) or ``"memory://"`` (the default;
            ``?max_entries=N&max_bytes=64MB``).
        params: the rest of the ``CACHES`` entry: ``TIMEOUT``, ``KEY_PREFIX``,
            ``VERSION``, ``KEY_FUNCTION``, and ``OPTIONS``, the keyword arguments of
            :class:`~cachelayer.Cache` (``namespace``, ``codec``, ``signing_key``,
            ``on_error``, ``jitter``, ...) except ``ttl``, which is ``TIMEOUT``.
            ``jitter`` defaults to 0 here, so timeouts are exact as Django documents.

    Every backend object built from the same settings in one process wraps the same
    Cache (``self.cache``, also :func:`~cachelayer.django.get_cache`). Its default TTL
    is ``TIMEOUT`` when that is a number > 0 or ``None``.

    Raises:
        ImproperlyConfigured: an unknown option, a bad URL or a bad Cache option.
    """

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        for name in options:
            if name in _NOT_OPTIONS:
                raise ImproperlyConfigured(
                    f"cachelayer.django.CacheBackend: OPTIONS[{name!r}] is not a cachelayer "
                    f"option; use {_NOT_OPTIONS[name]}"
                )
            if name not in _CACHE_OPTIONS:
                raise ImproperlyConfigured(
                    f"cachelayer.django.CacheBackend: unknown OPTIONS key {name!r} "
                    f"(known: {', '.join(sorted(_CACHE_OPTIONS))})"
                )
        if not isinstance(location, str):
            raise ImproperlyConfigured(
                f"cachelayer.django.CacheBackend: LOCATION must be one URL string, "
                f"not a {type(location).__name__}"
            )
        options.setdefault("jitter", 0.0)
        timeout = self.default_timeout
        if timeout is None or timeout > 0:
            options["ttl"] = timeout
        self._raise = options.get("on_error", "ignore") == "raise"

        def build() -> SharedCache:
            try:
                cache = SharedCache(_store_for(location or "memory://"), **options)
            except (ConfigurationError, ValueError, TypeError) as exc:
                # ValueError: redis-py refused a LOCATION option's value; TypeError: an
                # OPTIONS value of the wrong type.
                raise ImproperlyConfigured(f"cachelayer.django.CacheBackend: {exc}") from exc
            register_django_types(cache)
            return cache

        #: The cachelayer Cache behind this backend, shared by every backend object of
        #: these settings in the process: its ``stats``, ``cached`` decorator and
        #: ``register_type`` work on the same entries.
        self.cache: Cache = shared_cache(location, params, build)

    def __repr__(self) -> str:
        return f"<cachelayer.django.CacheBackend over {self.cache!r}>"

    # -- keys, timeouts, values ------------------------------------------------------------

    def _key(self, key: Any, version: int | None) -> str:
        """Django's key (``KEY_PREFIX:VERSION:key``, or ``KEY_FUNCTION``'s), validated
        as Django's backends do (a ``CacheKeyWarning`` for memcached-unsafe keys), then
        escaped for cachelayer; the Cache adds its namespace in front."""
        return escape(self.make_and_validate_key(key, version=version))

    def _seconds(self, timeout: Any) -> float | None:
        """Seconds to keep an entry; ``None`` never expires; <= 0 means do not store."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        seconds = float(timeout)
        return None if math.isinf(seconds) and seconds > 0 else seconds

    def _live(self, raw: bytes, full: str) -> Entry | None:
        """The entry ``raw`` holds if it is a fresh value; None if it is expired, a cached
        error or does not decode (all of which a reader sees as a miss).

        Tag tokens are not checked: this backend never writes tagged entries.
        """
        engine = self.cache.engine
        entry = engine.decode(raw, key=full)
        if entry is None or entry.negative:
            return None
        if entry.fresh_until_ms and engine.now_ms() >= entry.fresh_until_ms:
            return None
        return entry

    # -- the read-modify-writes, written once ----------------------------------------------

    def _run(self, flow: Flow) -> Any:
        """Drive a flow with blocking store calls (failures come back as FAILED)."""
        return self.cache.engine.drive(flow, None, self._raise)

    async def _arun(self, flow: Flow) -> Any:
        """Drive a flow with awaited store calls."""
        return await self.cache.engine.adrive(flow, None, self._raise)

    def _add_flow(self, key: Any, value: Any, timeout: Any, version: int | None) -> Flow:
        """Store only if absent: one atomic swap; a dead entry (expired by its envelope,
        unreadable) counts as absent and is replaced under the same guard."""
        engine = self.cache.engine
        full = engine.keys.full(self._key(key, version))
        seconds = self._seconds(timeout)
        if _dont_store(seconds):
            engine.encode(value, None, key=full)  # an unsupported type raises, as on a store
            raw = yield Get(full)
            return raw is None or (raw is not FAILED and self._live(raw, full) is None)
        seconds = engine.ttl.resolve(seconds)
        payload = engine.encode(value, seconds, key=full)
        lease = lease_key(full)  # voided: a fill that started before the add must not land
        expected: bytes | None = None
        for _ in range(MAX_SWAPS):
            done = yield Swap(full, expected, payload, seconds, lease)
            if done is not False:  # stored, or maybe (a timeout): purge either way
                yield from engine.purged(KEYS, [full])
                return done is True  # stored, or the store failed (not stored)
            raw = yield Get(full)
            if raw is FAILED or (raw is not None and self._live(raw, full) is not None):
                return False
            expected = raw
        return False

    def _touch_flow(
        self, key: Any, timeout: Any, version: int | None, persist: bool = False
    ) -> Flow:
        """Give a live entry a new expiry: rewrite its envelope if it is unchanged.

        With ``persist``, an entry that has no expiry already is left alone (False)."""
        engine = self.cache.engine
        full = engine.keys.full(self._key(key, version))
        seconds = self._seconds(timeout)
        if _dont_store(seconds):
            raw = yield Get(full)
            if raw is None or raw is FAILED or self._live(raw, full) is None:
                return False
            yield engine.delete_step([full])
            yield from engine.purged(KEYS, [full])
            return True
        seconds = engine.ttl.resolve(seconds)
        for _ in range(MAX_SWAPS):
            raw = yield Get(full)
            entry = None if raw is None or raw is FAILED else self._live(raw, full)
            if entry is None or (persist and not entry.fresh_until_ms):
                return False
            payload = engine.encode(
                entry.value, seconds, entry.duration_ms, tags=entry.tags, key=full
            )
            done = yield Swap(full, raw, payload, seconds, None)
            if done is not False:  # stored, or maybe (a timeout): purge either way
                yield from engine.purged(KEYS, [full])
                return done is True
        return False

    def _incr_flow(self, key: Any, delta: int, version: int | None) -> Flow:
        """Add ``delta`` to an int entry, keeping its expiry; atomic (compare-and-set)."""
        engine = self.cache.engine
        full = engine.keys.full(self._key(key, version))
        lease = lease_key(full)
        for _ in range(MAX_SWAPS):
            raw = yield Get(full)
            if raw is FAILED:
                raise ValueError(f"Key '{key}' not found: the cache store is unavailable")
            entry = None if raw is None else self._live(raw, full)
            if entry is None:
                raise ValueError(f"Key '{key}' not found")
            if type(entry.value) is not int:
                raise TypeError(
                    f"incr()/decr() need an int value; key '{key}' holds a "
                    f"{type(entry.value).__name__}"
                )
            value = entry.value + delta
            payload = engine.serializer.dumps(
                value,
                written_ms=engine.now_ms(),
                fresh_until_ms=entry.fresh_until_ms,
                duration_ms=entry.duration_ms,
                tags=entry.tags,
                key=full,
            )
            done = yield Swap(full, raw, payload, None, lease, keep_ttl=True)
            if done is not False:  # stored, or maybe (a timeout): purge either way
                yield from engine.purged(KEYS, [full])
            if done is True:
                return value
            if done is FAILED:
                raise ValueError(f"Key '{key}' not found: the cache store is unavailable")
        raise CacheError(
            f"incr(): key '{key}' changed {MAX_SWAPS} times while it was being updated"
        )

    def _pttl(self, raw: Any, full: str) -> int | None:
        """Milliseconds the entry ``raw`` has left: 0 when absent, None for no expiry."""
        entry = None if raw is None or raw is FAILED else self._live(raw, full)
        if entry is None:
            return 0
        if not entry.fresh_until_ms:
            return None
        return max(1, entry.fresh_until_ms - self.cache.engine.now_ms())

    def _glob(self, pattern: str, version: int | None) -> tuple[str, KeyTemplate]:
        """The store glob for Django keys matching ``pattern`` (only ``pattern`` is a glob:
        namespace, ``KEY_PREFIX`` and version match literally), and the key template."""
        if not isinstance(pattern, str):
            raise TypeError(f"a key pattern is a str, not {type(pattern).__name__}")
        template = KeyTemplate(lambda key, v: self.make_key(key, version=v), version)
        return glob_escape(self.cache.engine.keys.prefix) + template.glob(pattern), template

    def _matching(self, found: Any, template: KeyTemplate, pattern: str) -> dict[str, str]:
        """``{store key: Django key}`` for the keys of a scan whose Django key matches
        ``pattern`` (the scan's glob is a superset); hashed long keys never match."""
        if found is FAILED:
            return {}
        limit = self.cache.engine.keys.max_length
        start = len(self.cache.engine.keys.prefix)
        matches = template.matches(pattern)
        out: dict[str, str] = {}
        for key in found:
            name = template.reverse(key[start:]) if len(key) < limit else None
            if name is not None and matches(name):
                out[key] = name
        return out

    def _set_many_step(
        self, data: dict[Any, Any], seconds: float | None, version: int | None
    ) -> SetMany:
        engine = self.cache.engine
        items, void = [], []
        for key, value in data.items():
            full = engine.keys.full(self._key(key, version))
            jittered = engine.ttl.resolve(seconds)
            items.append((full, engine.encode(value, jittered, key=full), jittered))
            void.append(lease_key(full))
        engine.stats.sets += len(items)
        return SetMany(items, void)

    # -- Django's API ------------------------------------------------------------------------

    def get(self, key: Any, default: Any | None = None, version: int | None = None) -> Any:
        """The cached value, or ``default`` when absent, expired or the store is down."""
        return self.cache.get(self._key(key, version), default)

    async def aget(self, key: Any, default: Any | None = None, version: int | None = None) -> Any:
        return await self.cache.aget(self._key(key, version), default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        """Store ``value``; a timeout <= 0 deletes the key instead.

        Raises:
            TypeError: the codec cannot store the value's type (it is named).
        """
        key, seconds = self._key(key, version), self._seconds(timeout)
        if _dont_store(seconds):
            self.cache.delete(key)
        else:
            self.cache.set(key, value, seconds)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        key, seconds = self._key(key, version), self._seconds(timeout)
        if _dont_store(seconds):
            await self.cache.adelete(key)
        else:
            await self.cache.aset(key, value, seconds)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Store ``value`` only if the key holds no live value; True if stored (with a
        timeout <= 0: True if the key was absent, and nothing is stored)."""
        return bool(self._run(self._add_flow(key, value, timeout, version)))

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return bool(await self._arun(self._add_flow(key, value, timeout, version)))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Set a new expiry for a live key (``None``: never); False if it is absent."""
        return bool(self._run(self._touch_flow(key, timeout, version)))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return bool(await self._arun(self._touch_flow(key, timeout, version)))

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete the key (and void loads in flight for it); True if it was there."""
        return self.cache.delete(self._key(key, version))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return await self.cache.adelete(self._key(key, version))

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """True if the key holds a live value."""
        missing = self._missing_key
        return self.cache.get(self._key(key, version), missing) is not missing

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        missing = self._missing_key
        return await self.cache.aget(self._key(key, version), missing) is not missing

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        """Add ``delta`` atomically and return the new value; the expiry is kept.

        Raises:
            ValueError: the key is absent (or the store is unavailable).
            TypeError: the key holds something other than an int.
        """
        return int(self._run(self._incr_flow(key, delta, version)))

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._arun(self._incr_flow(key, delta, version)))

    # decr, adecr, incr_version, decr_version and their async twins: BaseCache's, which
    # call incr/aincr and get/set/delete (and their async twins) above.

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """``{key: value}`` for the keys that hold a live value; one round trip."""
        names = {self._key(key, version): key for key in keys}
        return {names[k]: v for k, v in self.cache.get_many(names).items()}

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        names = {self._key(key, version): key for key in keys}
        return {names[k]: v for k, v in (await self.cache.aget_many(names)).items()}

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Store every item in one round trip; returns the keys that were not stored
        (all of them when the store failed)."""
        seconds = self._seconds(timeout)
        if not data:
            return []
        if _dont_store(seconds):
            self.delete_many(data, version)
            return []
        step = self._set_many_step(data, seconds, version)
        written = self.cache.engine.write(step, KEYS, [key for key, _, _ in step.items])
        return list(data) if written is FAILED else []

    async def aset_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        seconds = self._seconds(timeout)
        if not data:
            return []
        if _dont_store(seconds):
            await self.adelete_many(data, version)
            return []
        step = self._set_many_step(data, seconds, version)
        written = await self.cache.engine.awrite(step, KEYS, [key for key, _, _ in step.items])
        return list(data) if written is FAILED else []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Delete the keys in one round trip."""
        self.cache.delete_many([self._key(key, version) for key in keys])

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self.cache.adelete_many([self._key(key, version) for key in keys])

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value; on a miss ``default`` (called if callable), stored and returned.

        Runs cachelayer's read path: concurrent misses of one key call ``default`` once
        per process and wait for one another across processes (leases).
        """
        name, seconds = self._key(key, version), self._seconds(timeout)
        if _dont_store(seconds):
            value = self.cache.get(name, self._missing_key)
            return _default_value(default) if value is self._missing_key else value
        loader: Callable[[], Any] = default if callable(default) else lambda: default
        return self.cache.get_or_load(name, loader, seconds, early_refresh=0.0)

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """``get_or_set``; ``default`` may also be an async callable."""
        name, seconds = self._key(key, version), self._seconds(timeout)
        if _dont_store(seconds):
            value = await self.cache.aget(name, self._missing_key)
            if value is not self._missing_key:
                return value
            value = _default_value(default)
            return await value if inspect.isawaitable(value) else value
        loader: Callable[[], Any] = default if callable(default) else lambda: default
        return await self.cache.aget_or_load(name, loader, seconds, early_refresh=0.0)

    def clear(self) -> None:
        """Delete every entry of this cache's namespace (and cachelayer version) only."""
        self.cache.clear()

    async def aclear(self) -> None:
        await self.cache.aclear()

    # -- django-redis's extras -----------------------------------------------------------
    #
    # The methods django-redis adds to Django's API, on cachelayer's entries (docs/django.md,
    # "Migrating from django-redis"). Expiry lives in each entry's envelope, so ttl() reads
    # the entry and expire()/persist() rewrite it under compare-and-set, as touch() does.

    def ttl(self, key: Any, version: int | None = None) -> int | None:
        """Seconds the key has left (rounded up): 0 when it is absent (or the store is
        down), None when it never expires."""
        ms = self.pttl(key, version)
        return None if ms is None else math.ceil(ms / 1000)

    async def attl(self, key: Any, version: int | None = None) -> int | None:
        ms = await self.apttl(key, version)
        return None if ms is None else math.ceil(ms / 1000)

    def pttl(self, key: Any, version: int | None = None) -> int | None:
        """``ttl`` in milliseconds."""
        step = Get(self.cache.engine.keys.full(self._key(key, version)))
        return self._pttl(self.cache.engine.call(step, self._raise), step.key)

    async def apttl(self, key: Any, version: int | None = None) -> int | None:
        step = Get(self.cache.engine.keys.full(self._key(key, version)))
        return self._pttl(await self.cache.engine.acall(step, self._raise), step.key)

    def expire(self, key: Any, timeout: float | None, version: int | None = None) -> bool:
        """Give a live key a new timeout in seconds (``None``: never expires; <= 0: delete
        it); True if the key was there. ``touch`` with a timeout you must give."""
        return bool(self._run(self._touch_flow(key, timeout, version)))

    async def aexpire(self, key: Any, timeout: float | None, version: int | None = None) -> bool:
        return bool(await self._arun(self._touch_flow(key, timeout, version)))

    def persist(self, key: Any, version: int | None = None) -> bool:
        """Make a live key never expire; True if it had a timeout (as Redis's PERSIST:
        False when the key is absent or never expired anyway)."""
        return bool(self._run(self._touch_flow(key, None, version, persist=True)))

    async def apersist(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._arun(self._touch_flow(key, None, version, persist=True)))

    def delete_pattern(self, pattern: str, version: int | None = None) -> int:
        """Delete this cache's keys that match the glob ``pattern`` (and void the loads in
        flight for them); returns how many were found and deleted.

        ``pattern`` is a Redis glob over the keys callers use (``"user:*"``); the
        namespace, ``KEY_PREFIX`` and version around it match literally. The store is
        walked with SCAN (never KEYS) and the keys are deleted in batches. Keys longer than
        the Cache's ``max_key_length`` are stored hashed and never match. A store failure
        counts as an invalidation error (and stops the walk), as other deletes do.

        Raises:
            ValueError: the KEY_FUNCTION hides the key (patterns need it unchanged).
        """
        engine = self.cache.engine
        glob, template = self._glob(pattern, version)
        found = list(self._matching(engine.call(Keys(glob), self._raise, True), template, pattern))
        count = 0
        for start in range(0, len(found), DELETE_BATCH):
            batch = found[start : start + DELETE_BATCH]
            if engine.call(engine.delete_step(batch), self._raise, True) is FAILED:
                break
            if engine.purges:
                engine.purge(KEYS, batch)
            count += len(batch)
        return count

    async def adelete_pattern(self, pattern: str, version: int | None = None) -> int:
        engine = self.cache.engine
        glob, template = self._glob(pattern, version)
        keys = await engine.acall(Keys(glob), self._raise, True)
        found = list(self._matching(keys, template, pattern))
        count = 0
        for start in range(0, len(found), DELETE_BATCH):
            batch = found[start : start + DELETE_BATCH]
            if await engine.acall(engine.delete_step(batch), self._raise, True) is FAILED:
                break
            if engine.purges:
                await engine.apurge(KEYS, batch)
            count += len(batch)
        return count

    def keys(self, pattern: str, version: int | None = None) -> list[str]:
        """The keys (as callers wrote them) of this cache that match the glob ``pattern``,
        found with SCAN; none when the store is down. See :meth:`delete_pattern` for what
        the pattern matches. An entry past its timeout may be listed until the store
        drops it.

        Raises:
            ValueError: the KEY_FUNCTION hides the key (patterns need it unchanged).
        """
        glob, template = self._glob(pattern, version)
        found = self.cache.engine.call(Keys(glob), self._raise)
        return list(self._matching(found, template, pattern).values())

    async def akeys(self, pattern: str, version: int | None = None) -> list[str]:
        glob, template = self._glob(pattern, version)
        found = await self.cache.engine.acall(Keys(glob), self._raise)
        return list(self._matching(found, template, pattern).values())

    def iter_keys(self, pattern: str, version: int | None = None) -> Iterator[str]:
        """:meth:`keys` as an iterator (the walk happens when this is called)."""
        return iter(self.keys(pattern, version))

    async def aiter_keys(self, pattern: str, version: int | None = None) -> AsyncIterator[str]:
        for key in await self.akeys(pattern, version):
            yield key

    def lock(
        self,
        key: Any,
        version: int | None = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking_timeout: float | None = None,
    ) -> Lock:
        """A lock named by a Django key (``KEY_PREFIX``/``VERSION`` applied), for threads
        and processes, sync (``with``) and async (``async with``): see
        :meth:`cachelayer.Cache.lock`. It never fails open: with the store down,
        acquiring raises :class:`~cachelayer.StoreUnavailable`.

        Args:
            key: the lock's name, mapped as every key of this backend.
            version: the Django cache version (default ``VERSION``).
            timeout: seconds after which a held lock frees itself; ``None``: never.
            sleep: seconds between attempts while waiting.
            blocking_timeout: seconds ``acquire`` waits at most; ``None``: no limit.
        """
        return self.cache.lock(self._key(key, version), timeout, blocking_timeout, sleep)

    def close(self, **kwargs: Any) -> None:
        """Nothing to do: Django calls this after every request, and the connections are
        pooled for the next one (as with Django's own Redis backend)."""

    async def aclose(self, **kwargs: Any) -> None:
        """Nothing to do (see :meth:`close`)."""
