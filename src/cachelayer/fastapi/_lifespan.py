"""The Cache in the app's lifespan, and the dependency that hands it to endpoints.

Starlette is enough for both: ``CacheLifespan`` is a lifespan for ``Starlette(...)`` as
for ``FastAPI(...)``, and ``get_cache`` takes a ``starlette.requests.HTTPConnection``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import HTTPConnection

from .._cache import Cache

__all__ = ["CacheLifespan", "get_cache"]

#: The ``app.state`` attribute that holds the Cache while the app runs.
STATE_ATTRIBUTE = "cache"


class CacheLifespan:
    """A lifespan that puts ``cache`` on ``app.state.cache`` and closes it at shutdown.

    ::

        cache = Cache("redis://localhost:6379/0", namespace="shop")
        app = FastAPI(lifespan=CacheLifespan(cache))

    Args:
        cache: the Cache the app uses (usually a module global, so that ``@cache.cached``
            can decorate functions at import time).
        lifespan: the app's own lifespan, if it has one. It runs inside this one, so its
            startup can use the cache and its shutdown runs before the cache closes;
            the state it yields is the app's lifespan state.

    At shutdown, ``await cache.aclose()`` cancels the Cache's background refreshes and
    closes its connection pools. Connections open lazily, in the server's event loop, on
    first use; nothing is opened at startup, so a Redis that is down at startup does not
    stop the app from starting (the Cache fails open).
    """

    def __init__(
        self,
        cache: Cache,
        *,
        lifespan: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        self.cache = cache
        self.lifespan = lifespan

    def __call__(self, app: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._run(app)

    @contextlib.asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Any]:
        setattr(app.state, STATE_ATTRIBUTE, self.cache)
        try:
            if self.lifespan is None:
                yield None
            else:
                async with self.lifespan(app) as state:
                    yield state
        finally:
            try:
                await self.cache.aclose()
            finally:
                with contextlib.suppress(AttributeError):
                    delattr(app.state, STATE_ATTRIBUTE)


def get_cache(connection: HTTPConnection) -> Cache:
    """The app's Cache, for ``Depends(get_cache)`` (or the ``CacheDep`` annotation).

    Raises:
        RuntimeError: the app was not started with :class:`CacheLifespan` (or its
            lifespan did not run, as with a ``TestClient`` used outside ``with``).
    """
    cache = getattr(connection.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(cache, Cache):
        raise RuntimeError(
            "no cachelayer Cache on app.state.cache: create the app with "
            "FastAPI(lifespan=CacheLifespan(cache)) and run its lifespan (with TestClient, "
            "use `with TestClient(app) as client:`)"
        )
    return cache
