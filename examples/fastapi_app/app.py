"""A small FastAPI app on cachelayer: users in SQLite, cached reads, invalidating writes.

- ``GET /users/{user_id}`` is served by ``load_user``, an async helper cached with
  ``@cache.cached`` (tagged ``user:<id>``).
- ``GET /users`` is cached whole by ``ResponseCacheMiddleware`` (tagged ``users``): 30 s
  fresh, then served stale for up to 60 s while one refresh runs.
- ``PUT /users/{user_id}`` commits, then drops both with one call:
  ``ainvalidate_responses(cache, tags=["user:<id>", "users"])``.

Run it (``memory://`` when ``CACHE_URL`` is not set)::

    pip install "cachelayer[fastapi,redis]" uvicorn
    CACHE_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app.app:app

    curl -i localhost:8000/users          # X-Cache: MISS, then HIT
    curl -i -X PUT localhost:8000/users/1 -H 'content-type: application/json' \\
         -d '{"name": "Ada L.", "email": "ada@example.org"}'
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel

from cachelayer import Cache
from cachelayer.fastapi import (
    CacheDep,
    CacheLifespan,
    ResponseCacheMiddleware,
    ainvalidate_responses,
    cache_tags,
)


class UserIn(BaseModel):
    name: str
    email: str


class User(UserIn):
    id: int


class Database:
    """The slow part the cache saves: a SQLite users table that counts its queries."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self.queries = 0
        with self._lock, self._conn:
            self._conn.execute(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "email TEXT NOT NULL)"
            )
            self._conn.executemany(
                "INSERT INTO users (id, name, email) VALUES (?, ?, ?)",
                [(1, "Ada", "ada@example.org"), (2, "Grace", "grace@example.org")],
            )

    def _query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            self.queries += 1
            return self._conn.execute(sql, args).fetchall()

    def get_user(self, user_id: int) -> dict[str, Any] | None:
        rows = self._query("SELECT id, name, email FROM users WHERE id = ?", user_id)
        return dict(zip(("id", "name", "email"), rows[0], strict=True)) if rows else None

    def list_users(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT id, name, email FROM users ORDER BY id")
        return [dict(zip(("id", "name", "email"), row, strict=True)) for row in rows]

    def update_user(self, user_id: int, change: UserIn) -> bool:
        with self._lock, self._conn:  # commits on success
            self.queries += 1
            cursor = self._conn.execute(
                "UPDATE users SET name = ?, email = ? WHERE id = ?",
                (change.name, change.email, user_id),
            )
            return cursor.rowcount == 1


def create_app(cache: Cache, db: Database | None = None) -> FastAPI:
    """The app, on ``cache`` (closed at the app's shutdown) and ``db``."""
    database = db or Database()

    @cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}"])
    async def load_user(user_id: int) -> dict[str, Any] | None:
        return database.get_user(user_id)  # None ("no such user") is cached too

    app = FastAPI(title="users", lifespan=CacheLifespan(cache))
    # Stores only responses that say they may be shared (Cache-Control: public, ...).
    app.add_middleware(ResponseCacheMiddleware, cache=cache)

    @app.get("/users")
    @cache_tags("users")
    async def list_users(response: Response) -> list[User]:
        response.headers["Cache-Control"] = "public, max-age=30, stale-while-revalidate=60"
        return [User(**row) for row in database.list_users()]

    @app.get("/users/{user_id}")
    async def read_user(user_id: int, response: Response) -> User:
        # load_user's entry serves this route; "no-cache" tells the response cache (and
        # browsers) not to keep a second copy of it.
        response.headers["Cache-Control"] = "no-cache"
        user = await load_user(user_id)
        if user is None:
            raise HTTPException(404, "no such user")
        return User(**user)

    @app.put("/users/{user_id}")
    async def update_user(user_id: int, change: UserIn, app_cache: CacheDep) -> User:
        if not database.update_user(user_id, change):
            raise HTTPException(404, "no such user")
        # Committed: drop the user's cached row and the cached list page, in one round
        # trip, before the client hears that the write succeeded.
        await ainvalidate_responses(app_cache, tags=[f"user:{user_id}", "users"])
        return User(id=user_id, **change.model_dump())

    app.state.database = database
    return app


app = create_app(Cache(os.environ.get("CACHE_URL", "memory://"), namespace="users-example"))
