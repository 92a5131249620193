"""Receiving events over HTTP: an ASGI app and a WSGI app (the Django view is
``cachelayer.django.events_webhook``).

What a request means is decided once, with no I/O: :func:`preflight` (method and
``Content-Length``, before the body is read) and :meth:`EventReceiver.flow`, a generator
of the steps of ``_apply`` (the same replay check, invalidation and mark as the stream
consumer) that returns the :class:`WebhookResponse`. The ASGI shell drives it with an
asyncio redis-py client and the Cache's async methods, the WSGI and Django shells with a
sync client. The status codes are in docs/events.md ("Webhook receivers").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .._stats import RateLimitedLog
from ..errors import ConfigurationError
from ._apply import (
    ApplyFailed,
    EventCounters,
    Step,
    adrive,
    apply_flow,
    drive,
    mark_ttl_ms,
    store_failures,
)
from ._format import DEFAULT_WINDOW, MAX_PAYLOAD_BYTES, check
from ._publish import HEADER_KID, HEADER_SIGNATURE
from ._refused import Refused
from ._signing import Verifier

__all__ = [
    "ASGIEventReceiver",
    "EventReceiver",
    "WSGIEventReceiver",
    "WebhookResponse",
    "preflight",
    "read_limited",
]

log = logging.getLogger("cachelayer.events")

#: The mark an HTTP delivery leaves (docs/events.md, "Replays"): every HTTP delivery of
#: one event id is the same delivery, so a sender's retry is a duplicate (200), while an
#: event first applied from a stream (its mark names a stream entry) is a replay (409).
HTTP_DELIVERY = "http"

#: HTTP status per refusal reason (docs/events.md, "Webhook receivers").
STATUS_FOR = {
    "malformed": 400,
    "oversized": 413,
    "unknown_kid": 401,
    "bad_signature": 401,
    "version": 400,
    "namespace": 400,
    "expired": 400,
    "replayed": 409,
}

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class WebhookResponse:
    """What a receiver answers: a status, a JSON body giving the outcome or the reason
    (never the payload), and extra headers."""

    status: int
    outcome: dict[str, str]
    headers: tuple[tuple[str, str], ...] = ()

    def content(self) -> bytes:
        """The response body: compact JSON."""
        return json.dumps(self.outcome, separators=(",", ":")).encode("ascii")

    def all_headers(self) -> list[tuple[str, str]]:
        """Every header of the response, ``Content-Type`` and ``Content-Length`` included."""
        return [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.content()))),
            ("Cache-Control", "no-store"),
            *self.headers,
        ]


def _refusal(reason: str) -> WebhookResponse:
    headers: tuple[tuple[str, str], ...] = ()
    if reason in ("unknown_kid", "bad_signature"):
        headers = (("WWW-Authenticate", HEADER_SIGNATURE),)
    return WebhookResponse(STATUS_FOR[reason], {"status": "refused", "reason": reason}, headers)


METHOD_NOT_ALLOWED = WebhookResponse(
    405, {"status": "refused", "reason": "method"}, (("Allow", "POST"),)
)
LENGTH_REQUIRED = WebhookResponse(411, {"status": "refused", "reason": "length_required"})
#: the store failed: the sender retries (with a backoff)
RETRY_LATER = WebhookResponse(
    503, {"status": "error", "reason": "store_unavailable"}, (("Retry-After", "1"),)
)


def preflight(
    method: str, content_length: str | None, *, chunked_ok: bool = False
) -> tuple[WebhookResponse | None, int | None]:
    """Decide what can be decided before the body is read.

    Args:
        method: the request's method.
        content_length: its ``Content-Length`` header, None when absent.
        chunked_ok: the shell can read a body of unknown length with a bound (ASGI).

    Returns:
        ``(response, None)`` to answer at once (405, 411, 400, 413) without reading the
        body, else ``(None, length)``: read at most ``length`` bytes (None: unknown, read
        at most ``MAX_PAYLOAD_BYTES + 1``).
    """
    if method != "POST":
        return METHOD_NOT_ALLOWED, None
    if content_length is None or content_length == "":
        return (None, None) if chunked_ok else (LENGTH_REQUIRED, None)
    if not content_length.isascii() or not content_length.isdigit() or len(content_length) > 18:
        return _refusal("malformed"), None
    length = int(content_length)
    if length > MAX_PAYLOAD_BYTES:
        return _refusal("oversized"), None
    return None, length


def read_limited(read: Callable[[int], bytes], length: int) -> bytes | None:
    """Read exactly ``length`` bytes with ``read(n)`` (a WSGI input, a Django request);
    None when the stream ends first (a truncated request)."""
    chunks: list[bytes] = []
    left = length
    while left > 0:
        chunk = read(min(left, 65_536))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class EventReceiver:
    """Applies events delivered over HTTP to a Cache: the checks, then the replay check,
    the invalidation and the mark of the stream consumer.

    Args:
        cache: the Cache to apply events to; its namespace must be the events'.
        verifier: the keys events may be signed with.
        window: seconds either side of now an event's timestamp may lie; an event id is
            applied once per window.
        clock: wall-clock seconds (injected by tests).
    """

    def __init__(
        self,
        cache: Any,
        verifier: Verifier,
        *,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(verifier, Verifier):
            raise ConfigurationError("verifier= takes a cachelayer.events.Verifier")
        if window <= 0:
            raise ConfigurationError("window > 0")
        self.cache = cache
        self.verifier = verifier
        self.namespace: str = cache.engine.keys.namespace
        self.prefix: str = cache.engine.keys.prefix
        self.window = window
        self.clock = clock
        #: what this receiver did (``counters.snapshot()`` for a dict)
        self.counters = EventCounters()
        self._log = RateLimitedLog(log)

    def __repr__(self) -> str:
        return f"EventReceiver(namespace={self.namespace!r})"

    def flow(
        self, payload: Any, kid: Any, signature: Any
    ) -> Generator[Step, Any, WebhookResponse]:
        """Check and apply one delivery; returns the answer. Never raises for what the
        sender or the store did (a refusal, a failure); re-raises anything else.

        Args:
            payload: the request body (bytes).
            kid: the ``Cachelayer-Kid`` header (None when absent).
            signature: the ``Cachelayer-Signature`` header (None when absent).
        """
        window_ms = int(self.window * 1000)
        failed: tuple[type[BaseException], ...] = (ApplyFailed, *store_failures())
        try:
            event = check(
                payload,
                kid,
                signature,
                self.verifier,
                self.namespace,
                int(self.clock() * 1000),
                window_ms,
            )
            outcome = yield from apply_flow(
                event, self.prefix, HTTP_DELIVERY, mark_ttl_ms(window_ms)
            )
        except Refused as refusal:
            self.counters.count(refusal.reason)
            self._log.log(
                logging.WARNING,
                "refused:" + refusal.reason,
                "cachelayer: refused an event received over HTTP (%s); not applied",
                refusal.reason,
            )
            return _refusal(refusal.reason)
        except failed as exc:
            self.counters.count("failures")
            self._log.log(
                logging.WARNING,
                "store",
                "cachelayer: applying an event received over HTTP failed (%s); answered 503",
                type(exc).__name__ if not isinstance(exc, ApplyFailed) else exc,
            )
            return RETRY_LATER
        except ValueError as exc:
            # Not the store: the Cache refuses a key or tag of it (``a}b``). A retry would
            # fail the same way, so the sender must not retry.
            self.counters.count("failures")
            self._log.log(
                logging.WARNING,
                "apply",
                "cachelayer: an event received over HTTP cannot be applied (%s); answered 422",
                type(exc).__name__,
            )
            return WebhookResponse(422, {"status": "refused", "reason": "unappliable"})
        if outcome == "duplicate":
            self.counters.count("duplicates")
            return WebhookResponse(200, {"status": "duplicate"})
        self.counters.count("applied")
        return WebhookResponse(200, {"status": "applied"})

    def refuse(self, reason: str) -> WebhookResponse:
        """Count a refusal decided outside the flow (by the shell: a body over the limit,
        a truncated one) and answer it."""
        self.counters.count(reason)
        return _refusal(reason)

    def early(self, response: WebhookResponse) -> WebhookResponse:
        """Count an answer :func:`preflight` gave (a refusal reason is counted; a wrong
        method or a missing length is not an event) and return it."""
        reason = response.outcome.get("reason", "")
        if reason in self.counters.refused:
            self.counters.count(reason)
        return response


def _sync_client(cache: Any, client: Any) -> Any:
    found = client if client is not None else getattr(cache.store, "client", None)
    if found is None or not callable(getattr(found, "set", None)):
        raise ConfigurationError(
            f"{cache!r} has no Redis client to keep the replay marks in (a memory:// "
            "Cache?); pass client=redis.Redis(...)"
        )
    return found


class WSGIEventReceiver:
    """A WSGI app that applies events POSTed to it (any path; mount it where you like).

    Args:
        cache: the Cache to apply events to.
        verifier: the keys events may be signed with.
        client: a sync redis-py client for the replay marks (default: the Cache's own,
            ``cache.store.client``).
        window: see :class:`EventReceiver`.
        clock: see :class:`EventReceiver`.
    """

    def __init__(
        self,
        cache: Any,
        verifier: Verifier,
        *,
        client: Any = None,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receiver = EventReceiver(cache, verifier, window=window, clock=clock)
        self.cache = cache
        self._client = _sync_client(cache, client)

    @property
    def counters(self) -> EventCounters:
        """What this receiver did."""
        return self.receiver.counters

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        response = self.handle(
            environ.get("REQUEST_METHOD", ""),
            environ.get("CONTENT_LENGTH"),
            environ["wsgi.input"].read,
            environ.get("HTTP_CACHELAYER_KID"),
            environ.get("HTTP_CACHELAYER_SIGNATURE"),
        )
        start_response(_status_line(response.status), response.all_headers())
        return [response.content()]

    def handle(
        self,
        method: str,
        content_length: str | None,
        read: Callable[[int], bytes],
        kid: str | None,
        signature: str | None,
    ) -> WebhookResponse:
        """Answer one request (what ``__call__`` and the Django view do)."""
        early, length = preflight(method, content_length)
        if early is not None:
            return self.receiver.early(early)
        body = read_limited(read, length or 0)
        if body is None:  # the stream ended before Content-Length bytes
            return self.receiver.refuse("malformed")
        response: WebhookResponse = drive(
            self.receiver.flow(body, kid, signature), self._client, self.cache
        )
        return response


class ASGIEventReceiver:
    """An ASGI app that applies events POSTed to it (any path; mount it where you like:
    ``app.mount("/cachelayer/events", receiver)`` in Starlette or FastAPI).

    It uses the Cache's async methods and an asyncio redis-py client for the replay
    marks: ``aclient`` when given, else one per event loop made from the Cache's URL
    (closed by the ASGI lifespan's shutdown, or by :meth:`aclose`).

    Args:
        cache: the Cache to apply events to.
        verifier: the keys events may be signed with.
        aclient: an asyncio redis-py client for the replay marks (not closed here).
        url: the Redis of the replay marks (default the Cache's own, ``cache.store.url``).
        window: see :class:`EventReceiver`.
        clock: see :class:`EventReceiver`.
    """

    def __init__(
        self,
        cache: Any,
        verifier: Verifier,
        *,
        aclient: Any = None,
        url: str | None = None,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receiver = EventReceiver(cache, verifier, window=window, clock=clock)
        self.cache = cache
        self._aclient = aclient
        self._url = url or getattr(cache.store, "url", None)
        if aclient is None and (
            not isinstance(self._url, str)
            or self._url.partition("://")[0] not in ("redis", "rediss", "unix")
        ):
            raise ConfigurationError(
                f"{cache!r}: no Redis URL for the replay marks; pass url= (redis://...) or "
                "aclient= (a redis.asyncio client, for Cluster or Sentinel)"
            )
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}

    @property
    def counters(self) -> EventCounters:
        """What this receiver did."""
        return self.receiver.counters

    def _client(self) -> Any:
        if self._aclient is not None:
            return self._aclient
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(
                str(self._url), socket_timeout=5.0, socket_connect_timeout=5.0
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client this receiver made for the running event loop."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"cachelayer's event receiver serves HTTP, not {scope['type']!r}")
        kid = signature = length_header = None
        doubled = False
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name == "content-length":
                doubled |= length_header is not None
                length_header = value
            elif name == HEADER_KID.lower():
                doubled |= kid is not None
                kid = value
            elif name == HEADER_SIGNATURE.lower():
                doubled |= signature is not None
                signature = value
        early, length = preflight(scope.get("method", ""), length_header, chunked_ok=True)
        if early is None and doubled:
            early = _refusal("malformed")
        if early is not None:
            await _respond(send, self.receiver.early(early))
            return
        body = await _read_body(receive, MAX_PAYLOAD_BYTES if length is None else length)
        if body is None:  # the client went away
            return
        response: WebhookResponse
        if len(body) > MAX_PAYLOAD_BYTES:
            response = self.receiver.refuse("oversized")
        elif length is not None and len(body) != length:
            response = self.receiver.refuse("malformed")
        else:
            flow = self.receiver.flow(body, kid, signature)
            response = await adrive(flow, self._client(), self.cache)
        await _respond(send, response)

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(receive: ASGIReceive, limit: int) -> bytes | None:
    """The body, read until it ends or is over ``limit`` bytes (then at most one chunk
    more than ``limit`` was read, and the rest is never read); None on a disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: ASGISend, response: WebhookResponse) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in response.all_headers()
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.content()})


_REASON_PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}


def _status_line(status: int) -> str:
    return f"{status} {_REASON_PHRASES.get(status, 'Unknown')}"
