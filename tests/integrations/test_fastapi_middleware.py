"""ResponseCacheMiddleware in front of a FastAPI app, on memory and on a real Redis.

The app counts how often each resource is produced, so every test can tell a response
served from the cache from one the app produced. Time is the Cache's injected clock;
background refreshes are awaited through the Cache's refresher; concurrent requests are
ordered with events, never with sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.routing import Route

from cachelayer import Cache, CircuitBreaker, ConfigurationError
from cachelayer.backends import MemoryStore
from cachelayer.backends.redis import RedisStore
from cachelayer.fastapi import (
    ResponseCacheMiddleware,
    ainvalidate_responses,
    cache_tags,
    invalidate_responses,
)
from cachelayer.testing import RedisServer
from tests.conftest import FakeClock, make_cache

USER_KEY = "a-test-secret-of-32-bytes-length"


class Spec:
    """How the app answers for one resource name."""

    def __init__(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        cookie: bool = False,
        chunks: int = 0,
    ) -> None:
        self.status = status
        self.headers = headers or {}
        self.cookie = cookie
        self.chunks = chunks  # > 0: a StreamingResponse of that many chunks
        self.entered = asyncio.Event()  # set when the endpoint starts
        self.gate: asyncio.Event | None = None  # when set, the endpoint waits for it


class Origin:
    """The app behind the cache, and what it has been asked."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.specs: dict[str, Spec] = {}
        self.seen_if_none_match: list[str | None] = []
        self.seen_methods: list[str] = []

    def spec(self, name: str, **kwargs: Any) -> Spec:
        self.specs[name] = Spec(**kwargs)
        return self.specs[name]


def build_app(cache: Cache, origin: Origin, **options: Any) -> FastAPI:
    """The test app; it opts into ttl=60 for responses that say nothing, unless told."""
    app = FastAPI()
    options.setdefault("ttl", 60)
    app.add_middleware(ResponseCacheMiddleware, cache=cache, **options)

    @app.get("/r/{name}")
    async def resource(name: str, request: Request) -> Response:
        spec = origin.specs.get(name) or origin.spec(name)
        origin.calls[name] += 1
        n = origin.calls[name]
        origin.seen_if_none_match.append(request.headers.get("if-none-match"))
        origin.seen_methods.append(request.method)
        spec.entered.set()
        if spec.gate is not None:
            await spec.gate.wait()
        lang = request.headers.get("accept-language", "")
        user = request.headers.get("authorization", "")
        body = f"{name} v{n} lang={lang} user={user}"
        response: Response
        if spec.chunks:
            parts = [f"{body} part{i};".encode() for i in range(spec.chunks)]

            async def stream() -> AsyncIterator[bytes]:
                for part in parts:
                    yield part

            response = StreamingResponse(stream(), spec.status, spec.headers)
        else:
            response = Response(body, spec.status, spec.headers, media_type="text/plain")
        if spec.cookie:
            response.set_cookie("session", str(n))
        return response

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        origin.calls["echo"] += 1
        return {"q": request.query_params.getlist("q"), "query": request.url.query}

    @app.post("/r/{name}")
    async def write(name: str) -> dict[str, str]:
        origin.calls["POST " + name] += 1
        return {"ok": name}

    @app.get("/items/{item_id}")
    @cache_tags("item:{item_id}", "items")
    async def item(item_id: int) -> dict[str, Any]:
        origin.calls[f"item{item_id}"] += 1
        spec = origin.specs.get("items")
        if spec is not None:
            spec.entered.set()
            if spec.gate is not None:
                await spec.gate.wait()
        return {"id": item_id, "v": origin.calls[f"item{item_id}"]}

    @app.put("/items/{item_id}")
    def put_item(item_id: int) -> dict[str, bool]:
        origin.calls[f"put{item_id}"] += 1  # a sync endpoint: the sync invalidation
        return {"ok": invalidate_responses(cache, paths=[f"/items/{item_id}"])}

    @app.get("/bad-tags/{x}")
    @cache_tags("thing:{missing}")
    async def bad_tags(x: str) -> str:
        return x

    @app.get("/boom")
    async def boom() -> None:
        origin.calls["boom"] += 1
        raise RuntimeError("the app failed")

    @app.get("/fails-once")
    async def fails_once() -> str:
        origin.calls["fails-once"] += 1
        spec = origin.specs.get("fails-once")
        if origin.calls["fails-once"] == 1 and spec is not None:
            spec.entered.set()
            assert spec.gate is not None
            await spec.gate.wait()
            raise RuntimeError("the first run failed")
        return f"run {origin.calls['fails-once']}"

    return app


def client(app: Any, host: str = "testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


@pytest.fixture
async def cache(store_kind: str, redis_url: str, namespace: str, clock: FakeClock) -> Any:
    """A Cache on each store, exact TTLs (no jitter), no early refresh; closed in-loop."""
    cache = make_cache(store_kind, redis_url, namespace, clock=clock, jitter=0, rng=lambda: 0.0)
    yield cache
    await cache.aclear()
    await cache.aclose()


Setup = Callable[..., tuple[httpx.AsyncClient, Origin]]


@pytest.fixture
async def setup(cache: Cache) -> AsyncIterator[Setup]:
    """Build the app with middleware options; yields (client, origin)."""
    clients: list[httpx.AsyncClient] = []

    def make(**options: Any) -> tuple[httpx.AsyncClient, Origin]:
        origin = Origin()
        c = client(build_app(cache, origin, **options))
        clients.append(c)
        return c, origin

    yield make
    for c in clients:
        await c.aclose()


async def settle(cache: Cache) -> None:
    await cache.engine.runner.refresher.drain()


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds (a state, observed; not a delay)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0.0005)
    raise AssertionError("the condition never held")


# -- the basics ------------------------------------------------------------------------------


async def test_get_is_stored_then_served(setup: Setup) -> None:
    """A GET is answered by the app once (MISS), then from the cache (HIT, with Age)."""
    c, origin = setup()
    first = await c.get("/r/a")
    second = await c.get("/r/a")
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert "age" not in first.headers
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["age"] == "0"
    assert second.text == first.text == "a v1 lang= user="
    assert second.headers["content-type"] == "text/plain; charset=utf-8"
    assert second.headers["content-length"] == str(len(first.content))
    assert origin.calls["a"] == 1


async def test_age_counts_seconds_since_stored(setup: Setup, clock: FakeClock) -> None:
    """Age is the whole seconds since the app produced the stored response."""
    c, _ = setup()
    await c.get("/r/a")
    clock.advance(7.9)
    assert (await c.get("/r/a")).headers["age"] == "7"


async def test_head_is_served_from_the_get_entry(setup: Setup) -> None:
    """HEAD after GET is a HIT with the GET's headers and no body."""
    c, origin = setup()
    get = await c.get("/r/a")
    head = await c.head("/r/a")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "HIT"
    assert head.content == b""
    assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["etag"] == get.headers["etag"]
    assert origin.calls["a"] == 1


async def test_head_miss_fetches_a_get_and_stores_it(setup: Setup) -> None:
    """A HEAD miss asks the app for a GET (FastAPI would answer HEAD with 405), stores it,
    and answers without a body; the next GET is a HIT with the body."""
    c, origin = setup()
    head = await c.head("/r/a")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "MISS"
    assert head.content == b""
    assert origin.seen_methods == ["GET"]
    get = await c.get("/r/a")
    assert get.headers["x-cache"] == "HIT"
    assert get.text == "a v1 lang= user="
    assert head.headers["content-length"] == str(len(get.content))


async def test_other_methods_pass_through(setup: Setup) -> None:
    """POST is never cached and gets no X-Cache header."""
    c, origin = setup()
    for _ in range(2):
        response = await c.post("/r/a")
        assert response.json() == {"ok": "a"}
        assert "x-cache" not in response.headers
    assert origin.calls["POST a"] == 2


async def test_non_200_is_not_stored_unless_configured(setup: Setup) -> None:
    """A 404 goes to the app every time by default; listed in cacheable_statuses, it is
    stored like a 200."""
    c, origin = setup()
    origin.spec("gone", status=404)
    for _ in range(2):
        response = await c.get("/r/gone")
        assert response.status_code == 404
        assert response.headers["x-cache"] == "BYPASS"
    assert origin.calls["gone"] == 2

    c2, origin2 = setup(cacheable_statuses={200, 404})
    origin2.spec("missing", status=404)
    assert (await c2.get("/r/missing")).headers["x-cache"] == "MISS"
    again = await c2.get("/r/missing")
    assert again.status_code == 404
    assert again.headers["x-cache"] == "HIT"
    assert origin2.calls["missing"] == 1


async def test_app_errors_are_raised_and_not_cached(setup: Setup) -> None:
    """An exception in the app reaches the server as without the cache; nothing is
    stored, so the next request runs the app again."""
    c, origin = setup()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="the app failed"):
            await c.get("/boom")
    assert origin.calls["boom"] == 2


async def test_a_waiting_request_does_not_inherit_an_app_error(setup: Setup, cache: Cache) -> None:
    """A request that waited on another's run of the app, which raised, runs the app
    itself: the error stays with the request that caused it."""
    c, origin = setup()
    spec = origin.spec("fails-once")
    spec.gate = asyncio.Event()
    first = asyncio.create_task(c.get("/fails-once"))
    await spec.entered.wait()
    second = asyncio.create_task(c.get("/fails-once"))
    await until(lambda: cache.stats.misses == 2)  # it waits on the first one's run
    spec.gate.set()
    with pytest.raises(RuntimeError, match="the first run failed"):
        await first
    response = await second
    assert response.status_code == 200
    assert response.json() == "run 2"
    assert response.headers["x-cache"] == "BYPASS"


async def test_concurrent_misses_run_the_app_once(setup: Setup, cache: Cache) -> None:
    """Two concurrent GETs of a cold resource: one runs the app, both get its answer."""
    c, origin = setup()
    spec = origin.spec("a")
    spec.gate = asyncio.Event()
    first = asyncio.create_task(c.get("/r/a"))
    await spec.entered.wait()
    second = asyncio.create_task(c.get("/r/a"))
    await until(lambda: cache.stats.misses == 2)  # it joined the first one's load
    spec.gate.set()
    responses = await asyncio.gather(first, second)
    assert [r.text for r in responses] == ["a v1 lang= user="] * 2
    assert origin.calls["a"] == 1
    assert cache.stats.flight_joins == 1


async def test_background_tasks_do_not_delay_the_response(cache: Cache) -> None:
    """The stored response reaches the client when it is complete, before the app's
    background tasks have run (they wait for the client to have the body here)."""
    app = FastAPI()
    app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60)
    body_sent = asyncio.Event()

    async def after_response() -> None:
        await body_sent.wait()  # deadlocks if the middleware holds the body back

    @app.get("/with-task")
    async def with_task(tasks: BackgroundTasks) -> str:
        tasks.add_task(after_response)
        return "done"

    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            body_sent.set()

    async def receive() -> dict[str, Any]:
        await body_sent.wait()
        return {"type": "http.disconnect"}

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/with-task", "raw_path": b"/with-task", "root_path": "",
        "query_string": b"", "headers": [(b"host", b"testserver")], "server": ("t", 80),
    }  # fmt: skip
    await asyncio.wait_for(app(scope, receive, send), 30)  # a guard against a hang only
    start = messages[0]
    assert start["status"] == 200
    assert (b"x-cache", b"MISS") in start["headers"]
    assert messages[-1]["body"] == b'"done"'


# -- responses that must not be stored ----------------------------------------------------


@pytest.mark.parametrize(
    "cache_control", ["no-store", "private", "no-cache", "max-age=0", "private, max-age=60"]
)
async def test_response_directives_forbid_storing(setup: Setup, cache_control: str) -> None:
    """no-store, private, no-cache and a zero max-age keep a response out of the cache."""
    c, origin = setup()
    origin.spec("a", headers={"cache-control": cache_control})
    for _ in range(2):
        response = await c.get("/r/a")
        assert response.headers["x-cache"] == "BYPASS"
        assert response.headers["cache-control"] == cache_control
    assert origin.calls["a"] == 2


async def test_a_passed_request_keeps_its_conditionals_and_head(setup: Setup) -> None:
    """A request the cache took but could not store an answer for reaches the app with
    its If-None-Match (the app may answer 304 itself); a HEAD still gets GET's headers."""
    c, origin = setup()
    origin.spec("a", headers={"cache-control": "no-store"})
    await c.get("/r/a")  # not stored: the key is passed to the app for a while
    response = await c.get("/r/a", headers={"if-none-match": '"x"'})
    assert response.headers["x-cache"] == "BYPASS"
    assert origin.seen_if_none_match == [None, '"x"']
    head = await c.head("/r/a")
    assert head.status_code == 200
    assert head.headers["x-cache"] == "BYPASS"
    assert head.headers["content-length"] == str(len("a v3 lang= user="))
    assert head.content == b""
    assert origin.seen_methods == ["GET", "GET", "GET"]


class ServerView:
    """An outer ASGI layer that plays the server: it records what its own scope says
    (method, headers, route) at the moment each response message reaches it, as uvicorn
    reads ``scope["method"]`` when it writes a response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str, bool, str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope["headers"])

        async def recording(message: Any) -> None:
            route = scope.get("route")
            self.seen.append(
                (
                    message["type"],
                    scope["method"],
                    scope["headers"] == headers,
                    None if route is None else route.path,
                )
            )
            await send(message)

        await self.app(scope, receive, recording)
        self.seen.append(("returned", scope["method"], scope["headers"] == headers, None))


@pytest.mark.parametrize("path", ["miss", "hit-for-pass"])
async def test_the_servers_scope_stays_head_while_the_response_is_sent(
    cache: Cache, path: str
) -> None:
    """When the cache runs the app as a GET for a HEAD, the server's own scope still says
    HEAD, with its own headers, whenever a response message reaches the server (on a
    miss, and on a key passed to the app). The route the app found is still visible."""
    origin = Origin()
    if path == "hit-for-pass":
        origin.spec("a", headers={"cache-control": "no-store"})
    server = ServerView(build_app(cache, origin))
    async with client(server) as c:
        if path == "hit-for-pass":
            assert (await c.get("/r/a")).headers["x-cache"] == "BYPASS"
            server.seen.clear()
        head = await c.head("/r/a", headers={"if-none-match": '"other"'})
    assert head.status_code == 200
    assert head.headers["x-cache"] == ("MISS" if path == "miss" else "BYPASS")
    assert head.content == b""
    assert origin.seen_methods[-1] == "GET"
    assert server.seen == [
        ("http.response.start", "HEAD", True, "/r/{name}"),
        ("http.response.body", "HEAD", True, "/r/{name}"),
        ("returned", "HEAD", True, None),
    ]


async def test_request_no_store_bypasses_the_cache(setup: Setup) -> None:
    """A request with Cache-Control: no-store is neither answered from nor stored in the
    cache."""
    c, origin = setup()
    nostore = {"cache-control": "no-store"}
    assert (await c.get("/r/a", headers=nostore)).headers["x-cache"] == "BYPASS"
    assert (await c.get("/r/a")).headers["x-cache"] == "MISS"  # nothing was stored
    assert (await c.get("/r/a", headers=nostore)).text == "a v3 lang= user="
    assert (await c.get("/r/a")).text == "a v2 lang= user="  # the stored one
    assert origin.calls["a"] == 3


async def test_set_cookie_is_never_stored_nor_shared(setup: Setup) -> None:
    """A response that sets a cookie goes only to its own request, even when concurrent
    requests for the same URL arrive while it is being produced."""
    c, origin = setup()
    spec = origin.spec("a", cookie=True)
    spec.gate = asyncio.Event()
    first = asyncio.create_task(c.get("/r/a"))
    await spec.entered.wait()
    others = [asyncio.create_task(c.get("/r/a")) for _ in range(3)]
    spec.gate.set()
    responses = [await first, *await asyncio.gather(*others)]
    c.cookies.clear()
    later = await c.get("/r/a")
    for response in [*responses, later]:
        assert response.headers["x-cache"] == "BYPASS"
        n = response.text.split()[1].removeprefix("v")
        assert response.headers["set-cookie"].startswith(f"session={n};")
    assert origin.calls["a"] == 5
    assert len({r.text for r in [*responses, later]}) == 5


async def test_large_streaming_response_passes_through(setup: Setup) -> None:
    """A streamed body over max_body_size reaches the client whole and is not stored; a
    small streamed body is stored and served with its length."""
    c, origin = setup(max_body_size=100)
    origin.spec("big", chunks=20)
    origin.spec("small", chunks=3)
    for _ in range(2):
        big = await c.get("/r/big")
        assert big.headers["x-cache"] == "BYPASS"
        assert big.text == "".join(
            f"big v{origin.calls['big']} lang= user= part{i};" for i in range(20)
        )
    assert origin.calls["big"] == 2
    head = await c.head("/r/big")
    assert head.status_code == 200
    assert head.content == b""

    small = await c.get("/r/small")
    assert small.headers["x-cache"] == "MISS"
    again = await c.get("/r/small")
    assert again.headers["x-cache"] == "HIT"
    assert again.text == small.text == "".join(f"small v1 lang= user= part{i};" for i in range(3))
    assert again.headers["content-length"] == str(len(small.content))
    assert origin.calls["small"] == 1


async def test_a_response_with_trailers_is_passed_with_its_trailers(cache: Cache) -> None:
    """A response that announces trailers is not stored; it reaches the client with
    ``trailers: True`` on its start and its trailers after the body, on the request that
    ran the app and on the hit-for-pass requests after it."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers,
                    "trailers": True})  # fmt: skip
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", b"1")],
                    "more_trailers": False})  # fmt: skip

    middleware = ResponseCacheMiddleware(app, cache=cache)
    for _ in range(2):
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any, sent: list[Any] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": "/t", "raw_path": b"/t",
            "query_string": b"", "root_path": "", "headers": [(b"host", b"testserver")],
            "extensions": {"http.response.trailers": {}},
        }  # fmt: skip
        await middleware(scope, receive, send)
        assert [m["type"] for m in sent] == [
            "http.response.start",
            "http.response.body",
            "http.response.trailers",
        ]
        assert sent[0]["trailers"] is True
        assert sent[0]["status"] == 200
        assert (b"x-cache", b"BYPASS") in sent[0]["headers"]
        assert (b"content-type", b"text/plain") in sent[0]["headers"]
        assert sent[1]["body"] == b"data"
        assert sent[2]["headers"] == [(b"x-sum", b"1")]


# -- keys: users, Vary, query strings, hosts ---------------------------------------------


@pytest.mark.parametrize("credential", [("authorization", "Bearer alice"), ("cookie", "sid=1")])
async def test_requests_with_credentials_bypass_by_default(
    setup: Setup, credential: tuple[str, str]
) -> None:
    """A request carrying Authorization or Cookie is never answered from the cache and
    never stored: an anonymous entry is not served to it, nor its response to others."""
    c, origin = setup()
    assert (await c.get("/r/a")).headers["x-cache"] == "MISS"
    for _ in range(2):
        response = await c.get("/r/a", headers=dict([credential]))
        assert response.headers["x-cache"] == "BYPASS"
    anonymous = await c.get("/r/a")
    assert anonymous.headers["x-cache"] == "HIT"
    assert anonymous.text == "a v1 lang= user="
    assert origin.calls["a"] == 3


async def test_per_user_caching_keeps_users_apart(setup: Setup) -> None:
    """With per_user_key, each user's responses are cached under their own key: a user
    gets their own cached response, never another user's."""
    c, origin = setup(per_user_key=USER_KEY)
    alice = {"authorization": "Bearer alice"}
    bob = {"authorization": "Bearer bob"}
    assert (await c.get("/r/a", headers=alice)).headers["x-cache"] == "MISS"
    assert (await c.get("/r/a", headers=bob)).text == "a v2 lang= user=Bearer bob"
    assert (await c.get("/r/a")).text == "a v3 lang= user="
    hit = await c.get("/r/a", headers=alice)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.text == "a v1 lang= user=Bearer alice"
    hit = await c.get("/r/a", headers=bob)
    assert hit.text == "a v2 lang= user=Bearer bob"
    assert (await c.get("/r/a", headers={"cookie": "sid=alice"})).headers["x-cache"] == "MISS"
    assert origin.calls["a"] == 4


async def test_vary_keeps_variants_apart(setup: Setup) -> None:
    """A response that varies on a header the key includes is stored per value of it."""
    c, origin = setup(vary=("accept-language",))
    origin.spec("a", headers={"vary": "Accept-Language"})
    fr, de = {"accept-language": "fr"}, {"accept-language": "de"}
    assert (await c.get("/r/a", headers=fr)).headers["x-cache"] == "MISS"
    assert (await c.get("/r/a", headers=de)).headers["x-cache"] == "MISS"
    assert (await c.get("/r/a", headers=fr)).text == "a v1 lang=fr user="
    assert (await c.get("/r/a", headers=de)).text == "a v2 lang=de user="
    assert origin.calls["a"] == 2


@pytest.mark.parametrize("vary", ["Accept-Language", "*", "Accept-Encoding, X-Tenant"])
async def test_vary_on_a_header_outside_the_key_is_not_stored(setup: Setup, vary: str) -> None:
    """Vary naming a header the key does not include (or *) keeps the response out."""
    c, origin = setup()
    origin.spec("a", headers={"vary": vary})
    for lang in ("fr", "de"):
        response = await c.get("/r/a", headers={"accept-language": lang})
        assert response.headers["x-cache"] == "BYPASS"
        assert response.text.endswith(f"lang={lang} user=")
    assert origin.calls["a"] == 2


async def test_query_string_is_keyed_as_sent(setup: Setup) -> None:
    """The query string is keyed exactly as the client sent it: ?a=1&b=2 and ?b=2&a=1
    are two entries, and so are ?q=a&%71=b and ?%71=b&q=a (both name q: the app sees
    q == ["a", "b"] for one and ["b", "a"] for the other)."""
    c, origin = setup()
    await c.get("/r/q?a=1&b=2")
    assert (await c.get("/r/q?b=2&a=1")).headers["x-cache"] == "MISS"
    assert (await c.get("/r/q?a=1&b=2")).headers["x-cache"] == "HIT"
    await c.get("/r/q?t=1&t=2")
    assert (await c.get("/r/q?t=2&t=1")).headers["x-cache"] == "MISS"
    assert (await c.get("/r/q?t=1&t=2")).headers["x-cache"] == "HIT"
    assert (await c.get("/r/q")).headers["x-cache"] == "MISS"
    assert origin.calls["q"] == 5

    for query, values in (("q=a&%71=b", ["a", "b"]), ("%71=b&q=a", ["b", "a"])):
        for label in ("MISS", "HIT"):
            response = await c.get(f"/echo?{query}")
            assert response.headers["x-cache"] == label
            assert response.json() == {"q": values, "query": query}
    assert origin.calls["echo"] == 2


async def test_hosts_are_kept_apart(cache: Cache) -> None:
    """The same path on two hosts is two entries."""
    origin = Origin()
    app = build_app(cache, origin)
    async with client(app, "a.example") as a, client(app, "b.example") as b:
        await a.get("/r/x")
        assert (await b.get("/r/x")).headers["x-cache"] == "MISS"
        assert (await a.get("/r/x")).headers["x-cache"] == "HIT"
    assert origin.calls["x"] == 2


# -- ETags and 304 ---------------------------------------------------------------------------


async def test_etag_is_the_body_digest_and_stable_across_instances(
    store_kind: str, redis_url: str, namespace: str
) -> None:
    """Two middleware instances on two Caches (two workers, or a restart) give the same
    body the same strong ETag: the quoted BLAKE2b-128 digest of its bytes."""
    memory = MemoryStore()
    caches = [
        make_cache(store_kind, redis_url, f"{namespace}{i}", memory, jitter=0) for i in range(2)
    ]
    try:
        tags = []
        for c in caches:
            async with client(build_app(c, Origin())) as http:
                response = await http.get("/r/a")
                tags.append(response.headers["etag"])
                assert response.content == b"a v1 lang= user="
        digest = hashlib.blake2b(b"a v1 lang= user=", digest_size=16).hexdigest()
        assert tags == [f'"{digest}"'] * 2
    finally:
        for c in caches:
            await c.aclear()
            await c.aclose()


@pytest.mark.parametrize("if_none_match", ["{etag}", "W/{etag}", '"other", {etag}', "*"], ids=str)
async def test_if_none_match_gives_304(setup: Setup, if_none_match: str) -> None:
    """A matching If-None-Match (weak comparison, lists, *) gets 304 with the validators
    and no body, on a HIT and on a MISS; the app never sees the condition."""
    c, origin = setup()
    origin.spec("a", headers={"cache-control": "max-age=60"})
    first = await c.get("/r/a")
    header = if_none_match.format(etag=first.headers["etag"])
    hit = await c.get("/r/a", headers={"if-none-match": header})
    assert hit.status_code == 304
    assert hit.content == b""
    assert hit.headers["etag"] == first.headers["etag"]
    assert hit.headers["cache-control"] == "max-age=60"
    assert hit.headers["x-cache"] == "HIT"
    assert "content-type" not in hit.headers

    await c.get("/r/b")  # same body digest scheme: compute the next one's tag up front
    expected = hashlib.blake2b(b"c v1 lang= user=", digest_size=16).hexdigest()
    header = if_none_match.format(etag=f'"{expected}"')
    miss = await c.get("/r/c", headers={"if-none-match": header})
    assert miss.status_code == 304
    assert miss.headers["x-cache"] == "MISS"
    assert (await c.get("/r/c")).text == "c v1 lang= user="  # the full response was stored
    assert origin.seen_if_none_match == [None, None, None]


async def test_if_none_match_mismatch_gets_the_full_response(setup: Setup) -> None:
    """A different ETag in If-None-Match gets a 200 with the body."""
    c, _ = setup()
    await c.get("/r/a")
    response = await c.get("/r/a", headers={"if-none-match": '"something-else"'})
    assert response.status_code == 200
    assert response.text == "a v1 lang= user="


async def test_an_etag_the_app_sets_is_kept(setup: Setup) -> None:
    """When the app sends its own ETag the cache keeps it and validates against it."""
    c, origin = setup()
    origin.spec("a", headers={"etag": 'W/"v1"'})
    assert (await c.get("/r/a")).headers["etag"] == 'W/"v1"'
    response = await c.get("/r/a", headers={"if-none-match": '"v1"'})
    assert response.status_code == 304
    assert response.headers["x-cache"] == "HIT"


# -- freshness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fresh_for"),
    [
        ({}, 60),  # the middleware's default ttl
        ({"cache-control": "max-age=10"}, 10),
        ({"cache-control": "s-maxage=5, max-age=100"}, 5),
        ({"cache-control": "max-age=100000"}, 120),  # capped by max_ttl
        ({"cache-control": "max-age=10, stale-while-revalidate=30, must-revalidate"}, 10),
    ],
)
async def test_freshness_from_the_response(
    setup: Setup, cache: Cache, clock: FakeClock, headers: dict[str, str], fresh_for: float
) -> None:
    """A response is a HIT until its freshness (s-maxage, max-age, else the default TTL,
    capped by max_ttl) ends; then the app answers again (never STALE without
    stale-while-revalidate, nor with must-revalidate)."""
    c, origin = setup(ttl=60, max_ttl=120)
    origin.spec("a", headers=headers)
    await c.get("/r/a")
    clock.advance(fresh_for - 0.5)
    assert (await c.get("/r/a")).headers["x-cache"] == "HIT"
    clock.advance(1.0)
    expired = await c.get("/r/a")
    assert expired.headers["x-cache"] == "MISS"
    assert not expired.text.startswith("a v1 ")
    await settle(cache)
    assert (await c.get("/r/a")).headers["x-cache"] == "HIT"


async def test_expires_header_sets_freshness(setup: Setup, clock: FakeClock) -> None:
    """Without max-age, Expires minus Date is the freshness; a past Expires is not stored."""
    c, origin = setup()
    date = email.utils.formatdate(clock.now, usegmt=True)
    origin.spec("a", headers={"date": date, "expires": email.utils.formatdate(clock.now + 30)})
    origin.spec("old", headers={"expires": email.utils.formatdate(clock.now - 30)})
    await c.get("/r/a")
    clock.advance(29)
    assert (await c.get("/r/a")).headers["x-cache"] == "HIT"
    clock.advance(2)
    assert (await c.get("/r/a")).headers["x-cache"] == "MISS"
    assert (await c.get("/r/old")).headers["x-cache"] == "BYPASS"


async def test_stale_while_revalidate_serves_stale_once_then_refreshed(
    setup: Setup, cache: Cache, clock: FakeClock
) -> None:
    """Within stale-while-revalidate, the stale response is served at once (STALE, its
    Age past max-age) while one background refresh runs; then the new one is a HIT."""
    c, origin = setup()
    origin.spec("a", headers={"cache-control": "max-age=10, stale-while-revalidate=30"})
    assert (await c.get("/r/a")).text.startswith("a v1 ")
    clock.advance(15)
    stale = await c.get("/r/a")
    assert stale.headers["x-cache"] == "STALE"
    assert stale.headers["age"] == "15"
    assert stale.text.startswith("a v1 ")
    await settle(cache)
    assert origin.calls["a"] == 2  # one refresh
    fresh = await c.get("/r/a")
    assert fresh.headers["x-cache"] == "HIT"
    assert fresh.headers["age"] == "0"
    assert fresh.text.startswith("a v2 ")
    assert fresh.headers["etag"] != stale.headers["etag"]
    assert origin.seen_methods == ["GET", "GET"]


async def test_stale_refreshes_once_for_many_requests(
    setup: Setup, cache: Cache, clock: FakeClock
) -> None:
    """Many requests inside the stale window start one refresh between them."""
    c, origin = setup()
    spec = origin.spec("a", headers={"cache-control": "max-age=10, stale-while-revalidate=30"})
    await c.get("/r/a")
    clock.advance(15)
    spec.gate = asyncio.Event()  # the refresh waits until every stale request is answered
    spec.entered.clear()
    responses = [await c.get("/r/a") for _ in range(5)]
    assert {r.headers["x-cache"] for r in responses} == {"STALE"}
    spec.gate.set()
    await settle(cache)
    assert origin.calls["a"] == 2


async def test_past_the_stale_window_the_app_answers(
    setup: Setup, cache: Cache, clock: FakeClock
) -> None:
    """After max-age plus stale-while-revalidate, a request gets a new response, never
    the old one."""
    c, origin = setup()
    origin.spec("a", headers={"cache-control": "max-age=10, stale-while-revalidate=30"})
    await c.get("/r/a")
    clock.advance(41)
    response = await c.get("/r/a")
    assert response.headers["x-cache"] == "MISS"
    assert not response.text.startswith("a v1 ")
    await settle(cache)


async def test_redis_keeps_an_entry_for_fresh_plus_stale_time(
    redis_url: str, redis_client: Any, namespace: str
) -> None:
    """On Redis the key's TTL is max-age plus stale-while-revalidate: the store reclaims
    the entry when it can no longer be served."""
    cache = make_cache("redis", redis_url, namespace, jitter=0)
    origin = Origin()
    origin.spec("a", headers={"cache-control": "max-age=100, stale-while-revalidate=50"})
    async with client(build_app(cache, origin)) as c:
        await c.get("/r/a")
    keys = [k for k in redis_client.scan_iter(match=f"{namespace}:*") if b"lease" not in k]
    assert len(keys) == 1
    assert 100_000 < redis_client.pttl(keys[0]) <= 150_000
    await cache.aclear()
    await cache.aclose()


# -- invalidation ----------------------------------------------------------------------------


async def test_invalidate_by_path_drops_every_variant(setup: Setup, cache: Cache) -> None:
    """ainvalidate_responses(paths=...) drops the path with any query string; other
    paths stay cached."""
    c, origin = setup()
    for url in ("/r/p", "/r/p?x=1", "/r/q"):
        await c.get(url)
    assert await ainvalidate_responses(cache, paths=["/r/p"])
    assert (await c.get("/r/p")).headers["x-cache"] == "MISS"
    assert (await c.get("/r/p?x=1")).headers["x-cache"] == "MISS"
    assert (await c.get("/r/q")).headers["x-cache"] == "HIT"
    assert origin.calls["p"] == 4


async def test_invalidate_from_a_sync_write_endpoint(setup: Setup) -> None:
    """A def endpoint invalidates with invalidate_responses; the next GET is a MISS."""
    c, origin = setup()
    await c.get("/items/1")
    assert (await c.get("/items/1")).headers["x-cache"] == "HIT"
    assert (await c.put("/items/1")).json() == {"ok": True}
    response = await c.get("/items/1")
    assert response.headers["x-cache"] == "MISS"
    assert response.json() == {"id": 1, "v": 2}
    assert origin.calls["put1"] == 1


async def test_invalidate_by_route_tag(setup: Setup, cache: Cache) -> None:
    """Tags declared with @cache_tags drop exactly the responses that carry them, and
    @cache.cached entries declared with the same tag."""
    c, origin = setup()
    loads: list[int] = []

    @cache.cached(ttl=60, key="item-row:{item_id}", tags=["item:{item_id}"])
    async def item_row(item_id: int) -> int:
        loads.append(item_id)
        return item_id

    await item_row(1)
    for url in ("/items/1", "/items/2"):
        await c.get(url)
    assert await cache.ainvalidate_tags("item:1")
    assert (await c.get("/items/1")).json() == {"id": 1, "v": 2}
    assert (await c.get("/items/2")).headers["x-cache"] == "HIT"
    await item_row(1)
    assert loads == [1, 1]
    assert await ainvalidate_responses(cache, tags=["items"])
    assert (await c.get("/items/1")).headers["x-cache"] == "MISS"
    assert (await c.get("/items/2")).headers["x-cache"] == "MISS"
    assert (origin.calls["item1"], origin.calls["item2"]) == (3, 2)


@pytest.mark.parametrize("how", ["path", "tag"])
async def test_invalidation_during_the_request_voids_its_response(
    setup: Setup, cache: Cache, how: str
) -> None:
    """An invalidation that lands while the app produces a response keeps that response
    out of the cache: its request gets it, the next request asks the app again."""
    c, origin = setup()
    spec = origin.spec("items")
    spec.gate = asyncio.Event()
    request = asyncio.create_task(c.get("/items/1"))
    await spec.entered.wait()  # the app has read its data; the write and its
    if how == "path":  # invalidation happen now
        assert await ainvalidate_responses(cache, paths=["/items/1"])
    else:
        assert await cache.ainvalidate_tags("item:1")
    spec.gate.set()
    assert (await request).json() == {"id": 1, "v": 1}
    spec.gate = None
    after = await c.get("/items/1")
    assert after.headers["x-cache"] == "MISS"
    assert after.json() == {"id": 1, "v": 2}


async def test_invalidation_drops_a_hit_for_pass_entry(setup: Setup, cache: Cache) -> None:
    """The hit-for-pass entry carries the request's tags: invalidating its path drops
    it, so the next request runs the app through the cache again and can be stored."""
    c, origin = setup()
    spec = origin.spec("a", headers={"cache-control": "no-store"})
    assert (await c.get("/r/a")).headers["x-cache"] == "BYPASS"
    spec.headers = {}  # the app's response is cacheable now
    assert (await c.get("/r/a")).headers["x-cache"] == "BYPASS"  # still passed
    assert await ainvalidate_responses(cache, paths=["/r/a"])
    assert (await c.get("/r/a")).headers["x-cache"] == "MISS"
    hit = await c.get("/r/a")
    assert hit.headers["x-cache"] == "HIT"
    assert hit.text == "a v3 lang= user="
    assert origin.calls["a"] == 3


async def test_a_tag_template_naming_no_path_parameter_is_an_error(setup: Setup) -> None:
    """cache_tags naming a parameter the path does not have fails loudly, by name."""
    c, _ = setup()
    with pytest.raises(ConfigurationError, match="'missing'"):
        await c.get("/bad-tags/1")


def test_bad_configuration_is_refused(cache: Cache) -> None:
    """Options out of range raise ConfigurationError when the middleware is built."""
    app = FastAPI()
    with pytest.raises(ConfigurationError, match="tag_ttl"):
        ResponseCacheMiddleware(app, cache, max_ttl=cache.tag_ttl)
    with pytest.raises(ConfigurationError, match="per_user_key"):
        ResponseCacheMiddleware(app, cache, per_user_key="short")
    with pytest.raises(ConfigurationError, match="ttl"):
        ResponseCacheMiddleware(app, cache, ttl=0)
    with pytest.raises(ConfigurationError, match="plain path parameter"):
        cache_tags("user:{user.id}")


# -- without FastAPI, and with a failing Redis ---------------------------------------------


async def test_plain_starlette_app(cache: Cache) -> None:
    """The middleware is plain ASGI: a Starlette app with route tags works the same."""
    calls: list[str] = []

    @cache_tags("page:{name}")
    async def page(request: Any) -> Response:
        calls.append(request.path_params["name"])
        return Response(f"page {len(calls)}")

    app = Starlette(routes=[Route("/pages/{name}", page)])
    app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60)
    async with client(app) as c:
        assert (await c.get("/pages/x")).headers["x-cache"] == "MISS"
        assert (await c.get("/pages/x")).text == "page 1"
        await cache.ainvalidate_tags("page:x")
        assert (await c.get("/pages/x")).text == "page 2"


async def test_redis_down_requests_are_still_answered(private_redis: RedisServer) -> None:
    """With its Redis stopped, every request is answered by the app (MISS), HEAD and 304
    included; invalidation reports failure instead of raising; caching resumes after."""
    clock = FakeClock()
    cache = Cache(
        RedisStore(private_redis.url, socket_timeout=1.0, connect_timeout=1.0),
        namespace="down",
        breaker=CircuitBreaker(threshold=2, cooldown=30.0, clock=clock),
        clock=clock,
        jitter=0,
    )
    origin = Origin()
    async with client(build_app(cache, origin)) as c:
        first = await c.get("/r/a")
        assert (await c.get("/r/a")).headers["x-cache"] == "HIT"
        private_redis.stop()  # our own server, by its pid
        for i in range(4):
            response = await c.get("/r/a")
            assert response.status_code == 200
            assert response.headers["x-cache"] == "MISS"
            assert response.text == f"a v{i + 2} lang= user="
        head = await c.head("/r/a")
        assert head.status_code == 200
        assert head.content == b""
        expected = hashlib.blake2b(b"a v7 lang= user=", digest_size=16).hexdigest()
        assert (await c.get("/r/a", headers={"if-none-match": f'"{expected}"'})).status_code == 304
        assert await ainvalidate_responses(cache, paths=["/r/a"]) is False
        assert (await c.get("/items/1")).status_code == 200
        assert cache.stats.store_errors >= 1
        assert cache.stats.invalidation_errors == 1
        assert first.headers["x-cache"] == "MISS"
        await cache.aclose()  # what the lifespan's shutdown does: no error either

        private_redis.start()
        clock.advance(31)  # the breaker's cooldown is over: the next call probes
        for _ in range(3):
            await c.get("/r/b")
        assert (await c.get("/r/b")).headers["x-cache"] == "HIT"
    await cache.aclose()
