"""The example app end to end, on memory and on a real Redis: reads are cached, writes
are seen at once by the next read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cachelayer import Cache, CircuitBreaker

from .app import Database, create_app


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan as a server does, and give a client for it."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_url: str, namespace: str) -> Any:
    """The example's Cache on each store (the app closes it at shutdown)."""
    url = "memory://" if request.param == "memory" else redis_url
    cache = Cache(url, namespace=namespace, breaker=CircuitBreaker(threshold=0))
    yield cache
    await cache.aclear()
    await cache.aclose()


async def test_user_reads_are_cached_and_writes_seen(cache: Cache) -> None:
    """GET /users/1 queries the database once; after PUT the next GET has the change."""
    db = Database()
    async with serve(create_app(cache, db)) as client:
        first = await client.get("/users/1")
        second = await client.get("/users/1")
        assert (
            first.json() == second.json() == {"id": 1, "name": "Ada", "email": "ada@example.org"}
        )
        assert db.queries == 1
        assert second.headers["x-cache"] == "BYPASS"  # the helper caches it, not the middleware

        change = {"name": "Ada Lovelace", "email": "ada@example.org"}
        assert (await client.put("/users/1", json=change)).status_code == 200
        assert (await client.get("/users/1")).json()["name"] == "Ada Lovelace"

        assert (await client.get("/users/9")).status_code == 404
        assert (await client.get("/users/9")).status_code == 404
        assert (await client.put("/users/9", json=change)).status_code == 404
    assert db.queries == 5  # read 1, write 1, read 1 again, read 9 once (cached None), write 9


async def test_the_list_page_is_cached_and_invalidated_by_writes(cache: Cache) -> None:
    """GET /users is a MISS then a HIT (304 for its ETag); a PUT drops it at once."""
    db = Database()
    async with serve(create_app(cache, db)) as client:
        miss = await client.get("/users")
        hit = await client.get("/users")
        assert miss.headers["x-cache"] == "MISS"
        assert hit.headers["x-cache"] == "HIT"
        assert hit.json() == miss.json()
        assert [u["name"] for u in hit.json()] == ["Ada", "Grace"]
        not_modified = await client.get("/users", headers={"if-none-match": hit.headers["etag"]})
        assert not_modified.status_code == 304
        assert db.queries == 1

        change = {"name": "Grace Hopper", "email": "grace@example.org"}
        await client.put("/users/2", json=change)
        after = await client.get("/users")
        assert after.headers["x-cache"] == "MISS"
        assert [u["name"] for u in after.json()] == ["Ada", "Grace Hopper"]
        assert after.headers["etag"] != hit.headers["etag"]
        stale = await client.get("/users", headers={"if-none-match": hit.headers["etag"]})
        assert stale.status_code == 200
