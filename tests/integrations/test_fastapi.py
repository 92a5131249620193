"""The Cache in a FastAPI (or Starlette) app: lifespan, dependency, cached helpers.

The lifespan runs through the ASGI lifespan protocol, as a server runs it; requests go
through httpx's ASGITransport. Connections are counted on a Redis server of the test's
own, so a leaked pool shows up as a client the server still lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import cachelayer.fastapi
from cachelayer import Cache
from cachelayer.backends.redis import RedisStore
from cachelayer.fastapi import CacheDep, CacheLifespan, get_cache
from cachelayer.testing import RedisServer
from tests.conftest import make_cache


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s lifespan as an ASGI server does; yields the lifespan state."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    message = await from_app.get()
    if message["type"] != "lifespan.startup.complete":
        with contextlib.suppress(Exception):
            await task
        raise RuntimeError(message.get("message", "startup failed"))
    try:
        yield scope["state"]
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        message = await from_app.get()
        assert message["type"] == "lifespan.shutdown.complete", message
        await task


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def until(condition: Callable[[], bool]) -> None:
    """Poll a state another process changes (the server dropping closed connections)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


@pytest.fixture
async def cache(store_kind: str, redis_url: str, namespace: str) -> AsyncIterator[Cache]:
    """A Cache on each store; the lifespan closes it, this clears its keys afterwards."""
    cache = make_cache(store_kind, redis_url, namespace)
    yield cache
    await cache.aclear()
    await cache.aclose()


async def test_the_dependency_gives_the_apps_cache(cache: Cache) -> None:
    """Inside the lifespan, CacheDep and Depends(get_cache) give the app's Cache, and an
    @cache.cached async helper an endpoint calls is loaded once for two requests."""
    app = FastAPI(lifespan=CacheLifespan(cache))
    loads: list[int] = []

    @cache.cached(ttl=60, key="user:{user_id}")
    async def load_user(user_id: int) -> dict[str, Any]:
        loads.append(user_id)
        return {"id": user_id, "name": f"user {user_id}"}

    @app.get("/users/{user_id}")
    async def read_user(user_id: int, app_cache: CacheDep) -> dict[str, Any]:
        assert app_cache is cache
        return await load_user(user_id)

    @app.get("/namespace")
    async def namespace(app_cache: Cache = Depends(get_cache)) -> str:  # noqa: B008
        return app_cache.engine.keys.namespace

    async with running(app):
        assert app.state.cache is cache
        async with client(app) as c:
            first = await c.get("/users/1")
            second = await c.get("/users/1")
            assert (await c.get("/namespace")).json() == cache.engine.keys.namespace
    assert first.json() == second.json() == {"id": 1, "name": "user 1"}
    assert loads == [1]
    assert not hasattr(app.state, "cache")


async def test_shutdown_closes_the_connections(private_redis: RedisServer) -> None:
    """After the app's shutdown, the Cache holds no connection to Redis."""
    admin = redis.Redis.from_url(private_redis.url)
    cache = Cache(RedisStore(private_redis.url, socket_timeout=2, connect_timeout=2))
    app = FastAPI(lifespan=CacheLifespan(cache))

    @app.get("/put")
    async def put(app_cache: CacheDep) -> bool:
        await app_cache.aset("k", 1)
        return await app_cache.aget("k") == 1

    async with running(app):
        async with client(app) as c:
            assert (await c.get("/put")).json() is True
        assert len(admin.client_list()) >= 2  # the Cache's connection and ours
    await until(lambda: len(admin.client_list()) == 1)  # only ours is left
    admin.close()


async def test_the_apps_own_lifespan_runs_inside(cache: Cache) -> None:
    """CacheLifespan(cache, lifespan=own): own startup sees the cache, own state becomes
    the app's state, own shutdown runs before the cache closes."""
    events: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append(("start", app.state.cache is cache))
        await cache.aset("warm", "yes")
        yield {"db": "connected"}
        events.append(("stop", getattr(app.state, "cache", None) is cache))
        events.append(("read", await cache.aget("warm")))

    app = FastAPI(lifespan=CacheLifespan(cache, lifespan=own))
    async with running(app) as state:
        assert state == {"db": "connected"}
    assert events == [("start", True), ("stop", True), ("read", "yes")]


async def test_a_failed_startup_still_closes_the_cache(cache: Cache) -> None:
    """If the app's own startup raises, the cache is taken off app.state and closed."""

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        raise ConnectionError("database unreachable")
        yield

    app = FastAPI(lifespan=CacheLifespan(cache, lifespan=own))
    with pytest.raises(RuntimeError, match="database unreachable"):
        async with running(app):
            pass
    assert not hasattr(app.state, "cache")


async def test_without_the_lifespan_get_cache_says_what_to_do() -> None:
    """get_cache in an app whose lifespan did not run raises, naming the fix."""
    app = FastAPI()

    @app.get("/")
    async def index(app_cache: CacheDep) -> str:
        return repr(app_cache)

    async with client(app) as c:
        with pytest.raises(RuntimeError, match=r"lifespan=CacheLifespan\(cache\)"):
            await c.get("/")


async def test_plain_starlette(cache: Cache) -> None:
    """CacheLifespan and get_cache need only Starlette."""

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse(repr(get_cache(request)))

    app = Starlette(routes=[Route("/", index)], lifespan=CacheLifespan(cache))
    async with running(app), client(app) as c:
        assert (await c.get("/")).text == repr(cache)


def test_imports_without_fastapi() -> None:
    """Everything but CacheDep imports with FastAPI absent; CacheDep then fails clearly."""
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import cachelayer.fastapi as f\n"
        "assert f.ResponseCacheMiddleware and f.CacheLifespan and f.get_cache and f.cache_tags\n"
        "try:\n    f.CacheDep\nexcept ImportError:\n    print('no fastapi')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "no fastapi"


def test_all_lists_every_public_name() -> None:
    """cachelayer.fastapi's __all__ is exactly its public names, and each exists."""
    public = {
        name
        for name in dir(cachelayer.fastapi)
        if not name.startswith("_")
        and name not in {"annotations", "TYPE_CHECKING", "Any"}
        and not isinstance(getattr(cachelayer.fastapi, name), type(sys))
    }
    assert public | {"CacheDep"} == set(cachelayer.fastapi.__all__)
    for name in cachelayer.fastapi.__all__:
        assert getattr(cachelayer.fastapi, name) is not None
