"""One :class:`~cachelayer.Cache` per ``CACHES`` alias and process, and ``get_cache``.

Django builds one backend object per thread (and per async context). They all wrap the
same Cache, so single-flight, the circuit breaker, the counters and the Redis connection
pool span the threads of the process. Backend objects are matched by their settings
(``LOCATION`` and the rest of the ``CACHES`` entry, compared with ``==``): objects built
from one alias share one Cache, and so would two aliases with identical settings.

A forked child keeps the parent's Cache: the Redis store drops the parent's connections
after a fork and opens its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .._cache import Cache

__all__ = ["SharedCache", "get_cache", "shared_cache"]


class SharedCache(Cache):
    """The Cache behind a backend alias. Closing it also forgets it, so the next backend
    object of that alias builds a fresh one (tests close theirs; Django never does)."""

    def close(self) -> None:
        _forget(self)
        super().close()

    async def aclose(self) -> None:
        _forget(self)
        await super().aclose()


_lock = threading.Lock()
# (LOCATION, the rest of the CACHES entry, its Cache); a list because settings may hold
# unhashable values (OPTIONS dicts, signing_key lists, a breaker object).
_shared: list[tuple[str, dict[str, Any], SharedCache]] = []


def shared_cache(
    location: str, params: dict[str, Any], build: Callable[[], SharedCache]
) -> SharedCache:
    """The Cache for these settings: the one already built in this process, or ``build()``'s."""
    with _lock:
        for known_location, known_params, cache in _shared:
            if known_location == location and known_params == params:
                return cache
        cache = build()
        _shared.append((location, _copy(params), cache))
        return cache


def _copy(params: dict[str, Any]) -> dict[str, Any]:
    """Keep the settings as they were (a caller mutating its OPTIONS later changes
    nothing); values are kept by reference, so objects keep their identity."""
    copied = dict(params)
    if isinstance(copied.get("OPTIONS"), dict):
        copied["OPTIONS"] = dict(copied["OPTIONS"])
    return copied


def _forget(cache: Cache) -> None:
    with _lock:
        _shared[:] = [entry for entry in _shared if entry[2] is not cache]


def get_cache(alias: str = "default") -> Cache:
    """The :class:`~cachelayer.Cache` behind a ``CACHES`` alias that uses cachelayer.

    It is the Cache every backend object of that alias uses, in every thread of the
    process: put a decorator on it at import time of a views module::

        @get_cache().cached(ttl=300, key="profile:{user_id}", tags=["user:{user_id}"])
        def profile(user_id: int) -> dict: ...

    Its keys are cachelayer keys (``namespace:v1:profile:42``): Django's ``KEY_PREFIX``
    and ``VERSION`` apply to the Django cache API only.

    Raises:
        ImproperlyConfigured: the alias is not in ``CACHES``, its ``BACKEND`` is not
            ``cachelayer.django.CacheBackend``, or its settings are wrong.
    """
    from django.conf import settings
    from django.core.cache import InvalidCacheBackendError, caches

    from .backend import CacheBackend

    if alias not in settings.CACHES:
        raise ImproperlyConfigured(
            f"cachelayer.django.get_cache({alias!r}): there is no such alias in CACHES "
            f"(aliases: {', '.join(map(repr, settings.CACHES)) or 'none'})"
        )
    try:
        backend = caches[alias]
    except InvalidCacheBackendError as exc:
        raise ImproperlyConfigured(f"cachelayer.django.get_cache({alias!r}): {exc}") from exc
    if not isinstance(backend, CacheBackend):
        raise ImproperlyConfigured(
            f"cachelayer.django.get_cache({alias!r}): CACHES[{alias!r}] uses "
            f"{type(backend).__module__}.{type(backend).__qualname__}, not "
            '"cachelayer.django.CacheBackend"'
        )
    return backend.cache
