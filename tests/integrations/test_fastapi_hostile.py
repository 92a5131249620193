"""ResponseCacheMiddleware against hostile requests and hostile stored values.

Each test pins one hole of the review "Hostile values, hostile requests": request
bodies on GET, streams that held other clients back, keys built from the decoded path,
hit-for-pass and flooding, unsafe defaults, client disconnects, forged entries. The app
under test is a real FastAPI app, on memory and on a real Redis; streaming and
disconnects are driven through raw ASGI calls, ordered with events.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Body, FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from cachelayer import Cache
from cachelayer.fastapi import ResponseCacheMiddleware
from tests.conftest import FakeClock, make_cache

PUBLIC = {"cache-control": "public, max-age=60"}


@pytest.fixture
async def cache(store_kind: str, redis_url: str, namespace: str, clock: FakeClock) -> Any:
    """A Cache on each store, exact TTLs (no jitter); closed in-loop."""
    cache = make_cache(store_kind, redis_url, namespace, clock=clock, jitter=0, rng=lambda: 0.0)
    yield cache
    await cache.aclear()
    await cache.aclose()


class Streams:
    """What the streaming endpoints wait for and count."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()  # the streams' second part waits for it
        self.calls = 0
        self.entered = collections.defaultdict(asyncio.Event)  # by call number, from 1

    def enter(self) -> None:
        self.calls += 1
        self.entered[self.calls].set()


def build_app(cache: Cache, streams: Streams | None = None, **options: Any) -> FastAPI:
    """The app behind the cache; ``options`` go to the middleware."""
    app = FastAPI()
    app.add_middleware(ResponseCacheMiddleware, cache=cache, **options)
    gated = streams or Streams()
    calls: dict[str, int] = {}

    @app.get("/search")
    async def search(q: str = Body(..., embed=True)) -> Response:
        return Response(f"results for {q}", headers=PUBLIC, media_type="text/plain")

    @app.get("/f/{rest:path}")
    async def raw(request: Request) -> Response:
        return Response(request.scope["raw_path"], headers=PUBLIC)

    @app.get("/who")
    async def who(request: Request) -> Response:
        key = request.headers.get("x-api-key", "")
        assert request.client is not None
        return Response(f"key={key} ip={request.client.host}", media_type="text/plain")

    @app.get("/page/{name}")
    async def page(name: str, request: Request) -> Response:
        calls[name] = calls.get(name, 0) + 1
        status = int(request.query_params.get("status", "200"))
        headers = {"cache-control": request.query_params.get("cc", "public, max-age=60")}
        return Response(f"{name} v{calls[name]}", status, headers, media_type="text/plain")

    @app.get("/stream/{kind}")
    async def stream(kind: str) -> StreamingResponse:
        gated.enter()

        async def body() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await gated.gate.wait()
            yield b"data: second\n\n"

        if kind == "sse":
            return StreamingResponse(body(), media_type="text/event-stream", headers=PUBLIC)
        cc = "no-store" if kind == "no-store" else "public, max-age=60"
        return StreamingResponse(body(), headers={"cache-control": cc})

    @app.get("/slow-start")
    async def slow_start() -> Response:
        gated.enter()
        await gated.gate.wait()
        return Response("slow", headers=PUBLIC)

    return app


def client(app: Any, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


class Exchange:
    """One request driven through raw ASGI: what reached the client, and when."""

    def __init__(self, app: Any, path: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.started = asyncio.Event()
        self.first_body = asyncio.Event()
        self.disconnect = asyncio.Event()  # set it to make the client go away
        self._sent_request = False
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 1234), "server": ("testserver", 80),
        }  # fmt: skip
        self.task = asyncio.create_task(app(scope, self.receive, self.send))

    async def receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.start":
            self.started.set()
        elif message.get("body"):
            self.first_body.set()

    def header(self, name: bytes) -> bytes | None:
        start = self.messages[0]
        return dict(start["headers"]).get(name)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def arrives(event: asyncio.Event) -> None:
    """Wait for ``event``; the timeout only guards against a hang (it fails the test)."""
    await asyncio.wait_for(event.wait(), 10)


# -- 5. request bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_get_with_a_body_is_passed_to_the_app(cache: Cache, framing: str) -> None:
    """A GET that carries a body (Content-Length > 0 or Transfer-Encoding) is answered
    by the app and never stored: the key does not include the body."""

    def body(q: str) -> dict[str, Any]:
        data = b'{"q": "%s"}' % q.encode()
        if framing == "content-length":
            return {"content": data, "headers": {"content-type": "application/json"}}

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        return {"content": chunks(), "headers": {"content-type": "application/json"}}

    async with client(build_app(cache)) as c:
        attack = await c.request("GET", "/search", **body("<script>"))
        victim = await c.request("GET", "/search", **body("shoes"))
        assert attack.headers["x-cache"] == victim.headers["x-cache"] == "BYPASS"
        assert victim.text == "results for shoes"
        assert (await c.request("GET", "/search", **body("shoes"))).headers["x-cache"] == "BYPASS"


# -- 6. streams ----------------------------------------------------------------------------


async def test_an_event_stream_is_streamed_through_at_once(cache: Cache) -> None:
    """A text/event-stream response reaches its client chunk by chunk (never buffered,
    even when it says public), and a second client for the URL gets its own stream while
    the first is still open; nothing is stored."""
    streams = Streams()
    app = build_app(cache, streams, ttl=60)
    first = Exchange(app, "/stream/sse")
    await arrives(first.first_body)  # the first event, while the stream is still open
    second = Exchange(app, "/stream/sse")
    await arrives(second.first_body)
    assert first.header(b"x-cache") == second.header(b"x-cache") == b"BYPASS"
    streams.gate.set()
    await asyncio.gather(first.task, second.task)
    assert first.body == second.body == b"data: first\n\ndata: second\n\n"
    assert streams.calls == 2


async def test_waiters_are_released_when_a_response_turns_out_unstorable(cache: Cache) -> None:
    """A request that waits for another's response to the same key is released the
    moment that response turns out not storable (at its start), not when it ends."""
    streams = Streams()
    app = build_app(cache, streams, ttl=60)
    first = Exchange(app, "/stream/no-store")
    await arrives(first.first_body)
    second = Exchange(app, "/stream/no-store")
    await arrives(second.first_body)  # while the first stream is held open
    streams.gate.set()
    await asyncio.gather(first.task, second.task)
    assert second.body == b"data: first\n\ndata: second\n\n"
    assert streams.calls == 2


async def test_a_waiter_gives_up_after_max_wait(cache: Cache) -> None:
    """A request waiting for another's response that does not start asks the app itself
    after max_wait seconds (BYPASS); the first request's response is still stored."""
    streams = Streams()
    async with client(build_app(cache, streams, max_wait=0.05)) as c:
        first = asyncio.create_task(c.get("/slow-start"))
        await arrives(streams.entered[1])
        second = asyncio.create_task(c.get("/slow-start"))
        # The second request reaches the app only once it has stopped waiting.
        await arrives(streams.entered[2])
        streams.gate.set()
        responses = await asyncio.gather(first, second)
        assert [r.headers["x-cache"] for r in responses] == ["MISS", "BYPASS"]
        assert (await c.get("/slow-start")).headers["x-cache"] == "HIT"


# -- 7. the raw path -------------------------------------------------------------------------


async def test_the_key_is_the_raw_path(cache: Cache) -> None:
    """/f/a%2Fb and /f/a/b decode to one path but are two entries: each gets its own."""
    async with client(build_app(cache)) as c:
        encoded = await c.get("/f/a%2Fb")
        plain = await c.get("/f/a/b")
        assert encoded.text == "/f/a%2Fb"
        assert plain.headers["x-cache"] == "MISS"
        assert plain.text == "/f/a/b"
        assert (await c.get("/f/a%2Fb")).text == "/f/a%2Fb"


async def test_without_raw_path_the_escaped_path_is_keyed(cache: Cache) -> None:
    """A server that sends no raw_path still gets its responses cached, per path."""
    app = _drop_raw_path(build_app(cache))
    exchanges = [Exchange(app, path) for path in ("/page/\u00e9", "/page/\u00e9", "/page/e")]
    for exchange in exchanges:
        await exchange.task
    first, again, other = exchanges
    assert [e.header(b"x-cache") for e in exchanges] == [b"MISS", b"HIT", b"MISS"]
    assert again.body == first.body == "\u00e9 v1".encode()
    assert other.body == b"e v1"


def _drop_raw_path(app: Any) -> Callable[..., Any]:
    async def without(scope: Any, receive: Any, send: Any) -> None:
        scope = {k: v for k, v in scope.items() if k != "raw_path"}
        await app(scope, receive, send)

    return without


# -- 8. hit-for-pass and flooding ---------------------------------------------------------


async def test_hit_for_pass_lasts_a_few_seconds_by_default(cache: Cache, clock: FakeClock) -> None:
    """One uncacheable response passes its URL to the app for 5 s (pass_ttl), not 30:
    after that, the URL's next response is stored again."""
    calls: list[int] = []

    async def flips(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        cc = b"no-store" if len(calls) == 1 else b"public, max-age=60"
        headers = [(b"cache-control", cc)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})

    async with client(ResponseCacheMiddleware(flips, cache)) as c:
        assert (await c.get("/a")).headers["x-cache"] == "BYPASS"
        clock.advance(4)
        assert (await c.get("/a")).headers["x-cache"] == "BYPASS"  # still passed
        clock.advance(2)
        assert (await c.get("/a")).headers["x-cache"] == "MISS"
        assert (await c.get("/a")).headers["x-cache"] == "HIT"
    assert len(calls) == 3


async def test_a_404_leaves_no_hit_for_pass_entry(cache: Cache) -> None:
    """A status outside cacheable_statuses stores nothing, not even a hit-for-pass
    mark: the URL's next cacheable response is stored at once."""
    calls: list[int] = []

    async def flips(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        status = 404 if len(calls) == 1 else 200
        headers = [(b"cache-control", b"public, max-age=60")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})

    async with client(ResponseCacheMiddleware(flips, cache)) as c:
        assert (await c.get("/gone")).headers["x-cache"] == "BYPASS"
        assert (await c.get("/gone")).headers["x-cache"] == "MISS"
        assert (await c.get("/gone")).headers["x-cache"] == "HIT"
    assert len(calls) == 2


async def test_entries_per_route_are_bounded(cache: Cache, clock: FakeClock) -> None:
    """A route stores at most max_entries_per_route live entries per process; unique
    URLs past that are served (BYPASS) and not stored, until stored ones expire."""
    async with client(build_app(cache, max_entries_per_route=3)) as c:
        for i in range(3):
            assert (await c.get(f"/page/p{i}")).headers["x-cache"] == "MISS"
        for i in range(3, 5):
            assert (await c.get(f"/page/p{i}")).headers["x-cache"] == "BYPASS"
            assert (await c.get(f"/page/p{i}")).headers["x-cache"] == "BYPASS"
        assert (await c.get("/page/p0")).headers["x-cache"] == "HIT"
        assert (await c.get("/f/elsewhere")).headers["x-cache"] == "MISS"  # another route
        clock.advance(61)  # the stored ones have expired
        assert (await c.get("/page/p3")).headers["x-cache"] == "MISS"
        assert (await c.get("/page/p3")).headers["x-cache"] == "HIT"
    assert ResponseCacheMiddleware(FastAPI(), cache).budget.limit == 1000


# -- 9. safe defaults ------------------------------------------------------------------------


async def test_by_default_only_shareable_responses_are_stored(cache: Cache) -> None:
    """Under the default settings a response that does not say it may be shared (a page
    personalised by X-API-Key, or by client IP) is never served to anyone else; one that
    says public, max-age is stored."""
    app = build_app(cache)
    async with client(app, "10.0.0.1") as alice, client(app, "10.0.0.2") as bob:
        mine = await alice.get("/who", headers={"x-api-key": "alice-key"})
        theirs = await bob.get("/who", headers={"x-api-key": "bob-key"})
        assert mine.text == "key=alice-key ip=10.0.0.1"
        assert theirs.text == "key=bob-key ip=10.0.0.2"
        assert theirs.headers["x-cache"] == "BYPASS"
        assert (await bob.get("/who")).text == "key= ip=10.0.0.2"
        assert (await alice.get("/page/pub")).headers["x-cache"] == "MISS"
        assert (await bob.get("/page/pub")).headers["x-cache"] == "HIT"


# -- 10. disconnects -------------------------------------------------------------------------


async def test_a_client_that_goes_away_mid_stream_is_quiet(
    cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that disconnects while a storable stream is buffered ends the request
    quietly: no exception reaches the server, nothing is logged, nothing is stored."""
    streams = Streams()
    app = build_app(cache, streams)
    with caplog.at_level(logging.WARNING):
        gone = Exchange(app, "/stream/public")
        await arrives(streams.entered[1])
        gone.disconnect.set()  # the app stops streaming, and returns
        await asyncio.wait_for(gone.task, 10)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    streams.gate.set()
    after = Exchange(app, "/stream/public")
    await after.task
    assert after.header(b"x-cache") == b"MISS"
    assert after.body == b"data: first\n\ndata: second\n\n"


# -- 3. forged entries -----------------------------------------------------------------------

GOOD = {
    "status": 200,
    "headers": [["content-type", "text/plain"]],
    "body": b"forged",
    "etag": '"x"',
    "stored": 1_700_000_000.0,
    "ttl": 60.0,
    "stale": 0.0,
}


async def test_a_well_formed_stored_entry_is_served(cache: Cache, clock: FakeClock) -> None:
    """The control for the malformed entries below: a well-formed value written under
    a response's key is served as a HIT."""
    keys = record_keys(cache)
    async with client(build_app(cache)) as c:
        await c.get("/page/f")
        await cache.aset(keys[0], {**GOOD, "stored": clock.now}, 60)
        response = await c.get("/page/f")
    assert response.headers["x-cache"] == "HIT"
    assert response.text == "forged"


def record_keys(cache: Cache) -> list[str]:
    """Record the keys the middleware looks up (a spy on the Cache, not on the store)."""
    seen: list[str] = []
    aget_or_load = cache.aget_or_load

    async def recording(key: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(key)
        return await aget_or_load(key, *args, **kwargs)

    cache.aget_or_load = recording  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize(
    "change",
    [
        {"headers": [["x-snow", "\u2603"]]},
        {"headers": [["x-one"]]},
        {"headers": [["x-split", "a\r\nset-cookie: s=1"]]},
        {"headers": [["x-int", 1]]},
        {"headers": "content-type: text/plain"},
        {"status": "200"},
        {"status": 1000},
        {"status": True},
        {"body": "forged"},
        {"etag": None},
        {"etag": "\u2603"},
        {"stored": "now"},
        {"ttl": float("nan")},
        {"stale": -1.0},
    ],
    ids=repr,
)
async def test_a_malformed_stored_entry_is_a_miss(
    cache: Cache, clock: FakeClock, change: dict[str, Any]
) -> None:
    """A forged or corrupted entry under a response's key (any part of the wrong
    shape) is never served and never raises: the app answers."""
    seen = record_keys(cache)
    async with client(build_app(cache)) as c:
        assert (await c.get("/page/f")).headers["x-cache"] == "MISS"
        assert (await c.get("/page/f")).text == "f v1"
        await cache.aset(seen[0], {**GOOD, "stored": clock.now, **change}, 60)
        response = await c.get("/page/f")
    assert response.status_code == 200
    assert response.text == "f v2"
    assert response.headers["x-cache"] == "MISS"
