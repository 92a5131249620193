"""FastAPI and Starlette integration: the Cache in the lifespan, a dependency, and an
HTTP response cache.

::

    from fastapi import FastAPI
    from cachelayer import Cache
    from cachelayer.fastapi import CacheDep, CacheLifespan, ResponseCacheMiddleware

    cache = Cache("redis://localhost:6379/0", namespace="shop")
    app = FastAPI(lifespan=CacheLifespan(cache))
    app.add_middleware(ResponseCacheMiddleware, cache=cache)

Never imported by ``import cachelayer``. Only ``CacheDep`` needs FastAPI (it is imported
on first use); the rest needs Starlette, and the middleware is plain ASGI. See
docs/fastapi.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._lifespan import CacheLifespan, get_cache
from ._middleware import ResponseCacheMiddleware
from ._tags import ainvalidate_responses, cache_tags, invalidate_responses, path_tag

if TYPE_CHECKING:
    from ._dependency import CacheDep

__all__ = [
    "CacheDep",
    "CacheLifespan",
    "ResponseCacheMiddleware",
    "ainvalidate_responses",
    "cache_tags",
    "get_cache",
    "invalidate_responses",
    "path_tag",
]


def __getattr__(name: str) -> Any:
    if name == "CacheDep":  # the one name that needs FastAPI itself
        from ._dependency import CacheDep

        return CacheDep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
