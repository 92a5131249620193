"""cachelayer: a correct, fast cache-aside layer for Python backends.

    from cachelayer import Cache

    cache = Cache("redis://localhost:6379/0", namespace="shop")

    @cache.cached(ttl=300, key="user:{user_id}")
    def get_user(user_id: int) -> dict: ...

See README.md and docs/ for the rest.
"""

from __future__ import annotations

from ._breaker import CircuitBreaker
from ._cache import Cache
from ._codecs import TypeRegistry
from ._decorator import AsyncCachedFunction, CacheDecorator, CachedFunction
from ._local import LocalTier
from ._lock import Lock, LockError
from ._metrics import HistogramSnapshot, LocalSnapshot, StatsSnapshot
from ._metrics import collect as collect_stats
from ._options import Fresh
from ._policy import DEFAULT
from ._warm import WarmResult
from .errors import CacheError, ConfigurationError, DecodeError, StoreUnavailable


class _Missing:
    """The type of :data:`MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: A sentinel to pass as ``default=`` when ``None`` could be a cached value.
MISSING = _Missing()

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT",
    "MISSING",
    "AsyncCachedFunction",
    "Cache",
    "CacheDecorator",
    "CacheError",
    "CachedFunction",
    "CircuitBreaker",
    "ConfigurationError",
    "DecodeError",
    "Fresh",
    "HistogramSnapshot",
    "LocalSnapshot",
    "LocalTier",
    "Lock",
    "LockError",
    "StatsSnapshot",
    "StoreUnavailable",
    "TypeRegistry",
    "WarmResult",
    "__version__",
    "collect_stats",
]
