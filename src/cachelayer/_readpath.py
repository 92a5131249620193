"""The read path, written once: a generator that yields the store steps it needs.

``read_through`` decides everything about a cache-aside read -- fresh hit, negative hit,
corrupt entry, miss, lease, load, guarded fill -- and yields each store operation as a
tuple ``(method, *args)`` (or :data:`LOAD` for "call the loader now"). The Cache's sync
shell runs those steps with blocking calls, its async shell with ``await``; neither knows
the algorithm, so it cannot drift between the two. A store step that failed is answered
with :data:`FAILED`, never an exception, so the flow decides how to degrade.

See docs/architecture.md for the diagram.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any

from ._keys import derived_key
from ._policy import TtlSpec
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = ["FAILED", "LOAD", "ErrorPolicy", "Flow", "lease_key", "read_through"]


class _Failed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FAILED"


#: Sent into a flow in place of the result of a store step that failed.
FAILED: Any = _Failed()
#: Yielded by a flow when it wants the loader called; the loader's value is sent back,
#: or its exception thrown in.
LOAD = ("load",)

Flow = Generator[tuple[Any, ...], Any, Any]

LEASE_SUFFIX = "lease"


def lease_key(key: str) -> str:
    """The lease key of a value key (same Redis Cluster slot)."""
    return derived_key(key, LEASE_SUFFIX)


class ErrorPolicy:
    """Negative caching: which loader exceptions are cached, and for how long.

    Args:
        ttls: exception type -> seconds (``{NotFound: 30}``). The first type the raised
            exception is an instance of wins.

    The stored entry names the matched type and holds the exception's args when the codec
    can store them. Only the types configured here are ever rebuilt from a stored name.
    """

    def __init__(self, ttls: Mapping[type[BaseException], float]) -> None:
        self.ttls: dict[type[BaseException], float] = {}
        for exc_type, ttl in ttls.items():
            if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
                raise ConfigurationError(
                    f"cache_errors keys must be Exception subclasses, not {exc_type!r}"
                )
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
                raise ConfigurationError(
                    f"cache_errors[{exc_type.__name__}]={ttl!r} must be seconds > 0"
                )
            self.ttls[exc_type] = float(ttl)
        self._by_name = {self.name(t): t for t in self.ttls}

    @staticmethod
    def name(exc_type: type[BaseException]) -> str:
        return f"{exc_type.__module__}.{exc_type.__qualname__}"

    def match(self, exc: BaseException) -> type[BaseException] | None:
        for exc_type in self.ttls:
            if isinstance(exc, exc_type):
                return exc_type
        return None

    def rebuild(self, stored: Any) -> BaseException | None:
        """The exception a negative entry stands for, or None if it is not one of ours."""
        if not (isinstance(stored, dict) and isinstance(stored.get("args"), list)):
            return None
        exc_type = self._by_name.get(stored.get("error"))  # type: ignore[arg-type]
        if exc_type is None:
            return None
        try:
            return exc_type(*stored["args"])
        except Exception:
            try:
                return exc_type()
            except Exception:
                return None


def read_through(cache: Cache, key: str, ttl: TtlSpec, errors: ErrorPolicy | None) -> Flow:
    """Cache-aside for one store key: return the cached value or load, fill and return.

    Guarantees: a fill happens only under a lease taken at the miss, so a write or an
    invalidation that happens during the load (it deletes the lease) makes the fill a
    no-op instead of writing back the old value. A store that fails is skipped: the
    loader's value is returned and nothing raises. A loader's exception propagates
    unchanged (after a negative entry is stored when ``errors`` lists its type).
    """
    stats = cache.stats
    raw = yield ("get", key)
    if raw is not None and raw is not FAILED:
        entry = cache._decode(raw)
        if entry is not None and (
            not entry.fresh_until_ms or cache._now_ms() < entry.fresh_until_ms
        ):
            if not entry.negative:
                stats.hits += 1
                return entry.value
            exc = errors.rebuild(entry.value) if errors is not None else None
            if exc is not None:
                stats.negative_hits += 1
                raise exc
    stats.misses += 1
    lease = lease_key(key)
    token: bytes | None = None
    if raw is not FAILED:
        token = os.urandom(16)
        if (yield ("add", lease, token, cache.lease_ttl)) is not True:
            token = None  # another caller is loading (or the store failed): load, no fill
    stats.loads += 1
    started = time.perf_counter()
    try:
        value = yield LOAD
    except Exception as exc:
        stats.load_errors += 1
        exc_type = errors.match(exc) if errors is not None else None
        if token is not None:
            if exc_type is None:
                yield ("delete", [lease])  # let the next caller fill without waiting
            else:
                assert errors is not None
                seconds = cache._ttl.resolve(errors.ttls[exc_type])
                payload = cache._encode_negative(exc_type, exc, seconds)
                yield ("fill", key, payload, seconds, lease, token)
        raise
    duration_ms = int((time.perf_counter() - started) * 1000)
    seconds = cache._ttl.resolve(ttl)
    try:
        payload = cache._encode(value, seconds, duration_ms)
    except TypeError:
        if token is not None:
            yield ("delete", [lease])
        raise
    if token is not None:
        filled = yield ("fill", key, payload, seconds, lease, token)
        if filled is True:
            stats.fills += 1
        elif filled is False:
            stats.fills_rejected += 1
    return value
