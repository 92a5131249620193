"""The webhook receivers against the real Redis: the ASGI app (httpx's ASGI transport and
raw ASGI calls), the WSGI app and the Django view (each on a real loopback socket),
hostile requests, store failures, and the flow's steps one by one."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import redis

from cachelayer import Cache
from cachelayer.events import (
    MAX_PAYLOAD_BYTES,
    ASGIEventReceiver,
    EventReceiver,
    SignedEvent,
    Signer,
    Verifier,
    WSGIEventReceiver,
    make_event,
    sign_event,
    stream_for,
)
from cachelayer.events._apply import Apply, Command
from cachelayer.testing import RedisServer
from tests.conftest import make_cache

CacheFactory = Callable[..., Cache]


def signed(
    cache: Cache,
    signer: Signer,
    keys: list[str] | None = None,
    tags: list[str] | None = None,
    *,
    ts: int | None = None,
    namespace: str | None = None,
    event_id: str | None = None,
) -> SignedEvent:
    """A signed event of ``cache``'s namespace, made now unless ``ts`` is given."""
    event = make_event(
        namespace or cache.engine.keys.namespace,
        keys or [],
        tags or [],
        ts=int(time.time() * 1000) if ts is None else ts,
        origin="test",
        event_id=event_id,
    )
    return sign_event(event, signer)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 on a free port, in a thread; yields its base URL."""
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def raw_request(base: str, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send ``head`` (request line and headers) and ``body`` over a socket as they are;
    returns the status and the JSON body of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _headers, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(content)


def populated(cache: Cache) -> None:
    """An entry under a key and one under a tag."""
    cache.set("user:42", {"name": "ada"})
    cache.cached(ttl=60, key="team:{n}", tags=["team:{n}"])(lambda n: n)(7)


def nothing_applied(cache: Cache) -> bool:
    return cache.get("user:42") == {"name": "ada"}


# -- the WSGI app, on a socket ----------------------------------------------------------------


@pytest.fixture
def wsgi(events_cache: CacheFactory, verifier: Verifier) -> Iterator[tuple[Cache, Any, str]]:
    """A Cache, its WSGI receiver, and the URL it is served at."""
    cache = events_cache()
    app = WSGIEventReceiver(cache, verifier)
    with serve(app) as base:
        yield cache, app, base


def test_wsgi_applies_an_event_and_answers_a_retry_as_duplicate(
    wsgi: tuple[Cache, WSGIEventReceiver, str], signer: Signer, redis_client: redis.Redis
) -> None:
    """A signed POST deletes the keys and invalidates the tags before the 200; the same
    request again is a duplicate (200, nothing applied again); the mark is the HTTP
    delivery's."""
    cache, app, base = wsgi
    populated(cache)
    event = signed(cache, signer, keys=["user:42"], tags=["team:7"])
    answer = httpx.post(base + "/hook", content=event.payload, headers=event.http_headers())
    assert (answer.status_code, answer.json()) == (200, {"status": "applied"})
    assert cache.get("user:42") is None
    assert app.counters.applied == 1
    cache.set("user:42", "again")
    answer = httpx.post(base + "/hook", content=event.payload, headers=event.http_headers())
    assert (answer.status_code, answer.json()) == (200, {"status": "duplicate"})
    assert cache.get("user:42") == "again"
    assert app.counters.duplicates == 1
    mark = redis_client.get("{" + cache.engine.keys.prefix + "}events:seen:" + event.event.id)
    assert mark == b"http"


def test_wsgi_refuses_hostile_requests_and_applies_nothing(
    wsgi: tuple[Cache, WSGIEventReceiver, str], signer: Signer
) -> None:
    """Forged, unknown-key, expired, wrong-namespace, garbage and header-less requests get
    their 4xx and the reason (never the payload); nothing is applied."""
    cache, app, base = wsgi
    populated(cache)
    good = signed(cache, signer, keys=["user:42"])
    forged = Signer("k2", b"f" * 32).sign(good.payload)
    stranger = signed(cache, Signer("k9", b"s" * 32), keys=["user:42"])
    old = signed(cache, signer, keys=["user:42"], ts=int(time.time() * 1000) - 301_000)
    elsewhere = signed(cache, signer, keys=["user:42"], namespace="elsewhere")
    garbage = b'{"v":1,"keys":["user:42"]'

    def signature(value: str) -> dict[str, str]:
        return {**good.http_headers(), "Cachelayer-Signature": value}

    cases = [
        (good.payload, signature(forged), 401, "bad_signature"),
        (good.payload, signature(good.signature.upper()), 401, "bad_signature"),
        (stranger.payload, stranger.http_headers(), 401, "unknown_kid"),
        (old.payload, old.http_headers(), 400, "expired"),
        (elsewhere.payload, elsewhere.http_headers(), 400, "namespace"),
        (garbage, signature(signer.sign(garbage)), 400, "malformed"),
        (good.payload, {"Content-Type": "application/json"}, 400, "malformed"),
    ]
    for body, headers, status, reason in cases:
        answer = httpx.post(base, content=body, headers=headers)
        assert answer.status_code == status, reason
        assert answer.json() == {"status": "refused", "reason": reason}
        assert b"user:42" not in answer.content
    assert nothing_applied(cache)
    snapshot = app.counters.snapshot()
    assert snapshot["applied"] == 0
    assert snapshot["refused"] == len(cases)
    assert httpx.post(base, content=good.payload, headers=good.http_headers()).status_code == 200


def test_wsgi_refuses_an_oversized_body_before_reading_it(
    wsgi: tuple[Cache, WSGIEventReceiver, str],
) -> None:
    """A Content-Length over 64 KiB is answered 413 at once: the server does not wait
    for a body that is never sent."""
    cache, app, base = wsgi
    populated(cache)
    status, body = raw_request(
        base,
        "POST / HTTP/1.0\nHost: x\nContent-Type: application/json\n"
        f"Content-Length: {100 * MAX_PAYLOAD_BYTES}\nCachelayer-Kid: k2\n"
        f"Cachelayer-Signature: {'0' * 64}\n",
    )
    assert (status, body) == (413, {"status": "refused", "reason": "oversized"})
    assert app.counters.refused["oversized"] == 1
    assert nothing_applied(cache)


def test_wsgi_answers_405_to_other_methods_and_411_without_a_length(
    wsgi: tuple[Cache, WSGIEventReceiver, str],
) -> None:
    """GET is 405 with ``Allow: POST``; a POST without Content-Length is 411."""
    _cache, _app, base = wsgi
    answer = httpx.get(base)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert raw_request(base, "POST / HTTP/1.0\nHost: x\n")[0] == 411


def test_wsgi_answers_503_while_the_store_is_down_and_applies_after(
    private_redis: RedisServer,
    events_cache: CacheFactory,
    namespace: str,
    signer: Signer,
    verifier: Verifier,
) -> None:
    """The store failing is a 503 with Retry-After (the sender retries); the retry once
    the store is back applies the event."""
    events_cache()  # cleans the namespace afterwards
    cache = make_cache("redis", private_redis.url, namespace)
    try:
        app = WSGIEventReceiver(cache, verifier)
        event = signed(cache, signer, keys=["user:42"])
        with serve(app) as base:
            private_redis.stop()
            answer = httpx.post(base, content=event.payload, headers=event.http_headers())
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json() == {"status": "error", "reason": "store_unavailable"}
            assert app.counters.failures == 1
            private_redis.start()
            cache.set("user:42", 1)
            answer = httpx.post(base, content=event.payload, headers=event.http_headers())
            assert (answer.status_code, answer.json()) == (200, {"status": "applied"})
            assert cache.get("user:42") is None
    finally:
        cache.close()


def test_an_event_applied_from_the_stream_is_a_replay_over_http(
    wsgi: tuple[Cache, WSGIEventReceiver, str],
    signer: Signer,
    verifier: Verifier,
    consumers: Callable[..., Any],
    redis_client: redis.Redis,
) -> None:
    """An event a stream consumer applied, POSTed again, is refused 409 ``replayed``: its
    mark names the stream entry, not an HTTP delivery."""
    cache, _app, base = wsgi
    consumer = consumers(cache, verifier)
    consumer.poll()
    event = signed(cache, signer, keys=["user:42"])
    redis_client.xadd(stream_for(cache.engine.keys.namespace), event.stream_fields())
    consumer.poll()
    assert consumer.counters.applied == 1
    cache.set("user:42", 1)
    answer = httpx.post(base, content=event.payload, headers=event.http_headers())
    assert (answer.status_code, answer.json()["reason"]) == (409, "replayed")
    assert cache.get("user:42") == 1


def test_an_event_the_cache_cannot_apply_is_422(
    wsgi: tuple[Cache, WSGIEventReceiver, str], signer: Signer
) -> None:
    """A key the Cache refuses (``a}b``) is 422: a retry would fail the same way."""
    cache, app, base = wsgi
    event = signed(cache, signer, keys=["a}b"])
    answer = httpx.post(base, content=event.payload, headers=event.http_headers())
    assert (answer.status_code, answer.json()["reason"]) == (422, "unappliable")
    assert app.counters.failures == 1


# -- the ASGI app -------------------------------------------------------------------------------


@pytest.fixture
async def asgi(events_cache: CacheFactory, verifier: Verifier) -> Any:
    """A Cache and its ASGI receiver (its asyncio client closed afterwards)."""
    cache = events_cache()
    app = ASGIEventReceiver(cache, verifier)
    yield cache, app
    await app.aclose()


async def test_asgi_applies_refuses_and_deduplicates(
    asgi: tuple[Cache, ASGIEventReceiver], signer: Signer
) -> None:
    """Over httpx's ASGI transport: applied, then duplicate; forged, expired and other
    namespaces refused with nothing applied; GET is 405."""
    cache, app = asgi
    populated(cache)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
        good = signed(cache, signer, keys=["user:42"], tags=["team:7"])
        forged = {**good.http_headers(), "Cachelayer-Signature": "0" * 64}
        old = signed(cache, signer, keys=["user:42"], ts=int(time.time() * 1000) - 400_000)
        other = signed(cache, signer, keys=["user:42"], namespace="other")
        for event, headers, status, reason in [
            (good, forged, 401, "bad_signature"),
            (old, old.http_headers(), 400, "expired"),
            (other, other.http_headers(), 400, "namespace"),
        ]:
            answer = await client.post("/", content=event.payload, headers=headers)
            assert (answer.status_code, answer.json()["reason"]) == (status, reason)
        assert await cache.aget("user:42") == {"name": "ada"}
        answer = await client.post("/", content=good.payload, headers=good.http_headers())
        assert (answer.status_code, answer.json()) == (200, {"status": "applied"})
        assert await cache.aget("user:42") is None
        answer = await client.post("/", content=good.payload, headers=good.http_headers())
        assert answer.json() == {"status": "duplicate"}
        assert (await client.get("/")).status_code == 405
    assert app.counters.applied == 1
    assert app.counters.duplicates == 1


async def test_asgi_stops_reading_a_chunked_body_past_the_limit(
    asgi: tuple[Cache, ASGIEventReceiver],
) -> None:
    """A body without Content-Length is read chunk by chunk and refused (413) once it
    passes 64 KiB; the rest is never read. A large Content-Length is refused unread."""
    _cache, app = asgi
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert pulled == MAX_PAYLOAD_BYTES // 1024 + 1
    pulled, sent[:] = 0, []
    scope["headers"] = [(b"content-length", b"1000000")]
    await app(scope, receive, send)
    assert (sent[0]["status"], pulled) == (413, 0)
    assert json.loads(sent[1]["body"]) == {"status": "refused", "reason": "oversized"}


async def test_asgi_refuses_doubled_signature_headers(
    asgi: tuple[Cache, ASGIEventReceiver], signer: Signer
) -> None:
    """Two ``Cachelayer-Signature`` headers make the request malformed (which one would
    be checked is not for the receiver to guess)."""
    cache, app = asgi
    event = signed(cache, signer, keys=["k"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
        headers = [*event.http_headers().items(), ("Cachelayer-Signature", "0" * 64)]
        answer = await client.post("/", content=event.payload, headers=headers)
    assert (answer.status_code, answer.json()["reason"]) == (400, "malformed")


async def test_asgi_lifespan_closes_its_client(
    asgi: tuple[Cache, ASGIEventReceiver], signer: Signer
) -> None:
    """The lifespan protocol's shutdown closes the client the receiver made."""
    cache, app = asgi
    event = signed(cache, signer, keys=["k"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
        answer = await client.post("/", content=event.payload, headers=event.http_headers())
    assert answer.status_code == 200
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    replies: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        replies.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [r["type"] for r in replies] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert not app._clients


# -- the flow, step by step ---------------------------------------------------------------------


def test_flow_steps_apply_mark_and_answer(
    events_cache: CacheFactory, signer: Signer, verifier: Verifier
) -> None:
    """The flow yields GET mark, Apply, SET mark NX PX; with the store's replies scripted
    it answers applied, duplicate (mark ``http``) or replayed (mark of a stream entry)."""
    cache = events_cache()
    receiver = EventReceiver(cache, verifier, window=10)
    event = signed(cache, signer, keys=["a"])
    flow = receiver.flow(event.payload, event.kid, event.signature)
    get = next(flow)
    assert isinstance(get, Command)
    assert get.method == "get"
    assert get.args[0].endswith("}events:seen:" + event.event.id)
    assert isinstance(flow.send(None), Apply)
    put = flow.send(None)
    assert (put.method, put.args[1], put.kwargs) == ("set", "http", {"nx": True, "px": 80_000})
    with pytest.raises(StopIteration) as done:
        flow.send(True)
    assert done.value.value.status == 200
    for mark, status in [(b"http", 200), (b"1700000000000-0", 409)]:
        flow = receiver.flow(event.payload, event.kid, event.signature)
        next(flow)
        with pytest.raises(StopIteration) as done:
            flow.send(mark)
        assert done.value.value.status == status
    flow = receiver.flow(event.payload, event.kid, event.signature)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.throw(redis.ConnectionError("down"))
    assert done.value.value.status == 503
    counts = receiver.counters.snapshot()
    assert (counts["applied"], counts["duplicates"], counts["refused_replayed"]) == (1, 1, 1)
    assert counts["failures"] == 1


# -- the Django view ----------------------------------------------------------------------------

_views: dict[str, Any] = {}


def _dispatch(request: Any) -> Any:
    return _views["hook"](request)


def __getattr__(name: str) -> Any:
    # Django's URL resolver reads this module's urlpatterns (ROOT_URLCONF below); built
    # lazily so that importing the module does not need Django configured.
    if name == "urlpatterns":
        from django.urls import path

        return [path("hook", _dispatch)]
    raise AttributeError(name)


@pytest.fixture
def django_configured() -> None:
    """Django configured as the integration tests configure it (once per process)."""
    import tests.integrations.conftest  # noqa: F401


@pytest.fixture
def django_site(
    django_configured: None, events_cache: CacheFactory, verifier: Verifier
) -> Iterator[tuple[Cache, str]]:
    """This module as Django's URLconf, the events view at /hook, served by Django's WSGI
    handler on a socket."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    from cachelayer.django import events_webhook

    cache = events_cache()
    _views["hook"] = events_webhook(verifier, cache=cache)
    with override_settings(ROOT_URLCONF=__name__), serve(WSGIHandler()) as base:
        yield cache, base
    _views.clear()


def test_django_view_applies_and_refuses(django_site: tuple[Cache, str], signer: Signer) -> None:
    """The Django view over a socket: applied, duplicate, forged 401, oversized 413
    unread, GET 405; nothing applied by the hostile ones."""
    cache, base = django_site
    populated(cache)
    event = signed(cache, signer, keys=["user:42"])
    forged = {**event.http_headers(), "Cachelayer-Signature": "a" * 64}
    answer = httpx.post(base + "/hook", content=event.payload, headers=forged)
    assert (answer.status_code, answer.json()["reason"]) == (401, "bad_signature")
    status, body = raw_request(
        base,
        f"POST /hook HTTP/1.0\nHost: 127.0.0.1\nContent-Length: {MAX_PAYLOAD_BYTES + 1}\n",
    )
    assert (status, body["reason"]) == (413, "oversized")
    assert httpx.get(base + "/hook").status_code == 405
    assert nothing_applied(cache)
    answer = httpx.post(base + "/hook", content=event.payload, headers=event.http_headers())
    assert (answer.status_code, answer.json()) == (200, {"status": "applied"})
    assert cache.get("user:42") is None
    answer = httpx.post(base + "/hook", content=event.payload, headers=event.http_headers())
    assert answer.json() == {"status": "duplicate"}


def test_publish_on_commit_publishes_after_commit_only(
    django_configured: None, events_cache: CacheFactory, signer: Signer, redis_client: redis.Redis
) -> None:
    """``publish_on_commit`` inside ``atomic()`` publishes when the block commits, and
    nothing when it rolls back."""
    from django.db import transaction

    from cachelayer.django import publish_on_commit

    cache = events_cache()
    stream = stream_for(cache.engine.keys.namespace)
    with transaction.atomic():
        publish_on_commit(keys=["user:1"], signer=signer, cache=cache)
        transaction.set_rollback(True)
    assert redis_client.xlen(stream) == 0
    with transaction.atomic():
        publish_on_commit(keys=["user:2"], tags=["t"], signer=signer, cache=cache)
        assert redis_client.xlen(stream) == 0
    ((_id, fields),) = redis_client.xrange(stream)
    assert json.loads(fields[b"p"])["keys"] == ["user:2"]
    with pytest.raises(ValueError, match="at least one"):
        publish_on_commit(signer=signer, cache=cache)


def test_receivers_need_a_verifier(events_cache: CacheFactory) -> None:
    """A receiver without a Verifier is a configuration error, not a silent open door."""
    from cachelayer.errors import ConfigurationError

    cache = events_cache()
    with pytest.raises(ConfigurationError):
        WSGIEventReceiver(cache, {"k": "x" * 32})  # type: ignore[arg-type]
