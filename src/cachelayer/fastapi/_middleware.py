"""``ResponseCacheMiddleware``: a shared HTTP cache for GET and HEAD, on a cachelayer Cache.

Pure ASGI: it works under Starlette and FastAPI and imports neither. Each cacheable
request goes through the public ``Cache.aget_or_load``, as a decorated function does, so
responses get single-flight, leases, tags, stale-while-revalidate, negative caching (for
"hit-for-pass") and fail-open handling from the one algorithm.

The loader runs the app and captures its response. HTTP states freshness in the
response, so the loader returns it as :class:`~cachelayer.Fresh` with the TTL and stale
window its ``Cache-Control`` allows; the call's ``max_ttl`` caps both. Reads classify
entries with ``stale_ttl=max_ttl``; an entry's own stale window ends its life in the
store, and the stamp stored with the response is checked again here.
See docs/fastapi.md for the rules and their limits.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .._keys import escape
from .._options import Fresh
from ..errors import ConfigurationError
from ._exchange import (
    BYPASS,
    HIT,
    MISS,
    STALE,
    AppFailed,
    ASGIApp,
    Capture,
    Message,
    Pass,
    Receive,
    Request,
    Scope,
    Send,
)
from ._http import etag_matches, parse_cache_control
from ._tags import path_tag, route_tags

if TYPE_CHECKING:
    from .._cache import Cache

__all__ = ["ResponseCacheMiddleware"]

# A 304 repeats these headers of the 200 it stands for (RFC 9110 15.4.5).
_NOT_MODIFIED_KEEPS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"age",
     b"x-cache"}
)  # fmt: skip


def _stored_value(value: Any) -> dict[str, Any] | None:
    """A response the middleware stored, or None for anything else under its key."""
    if not isinstance(value, dict):
        return None
    try:
        ok = (
            isinstance(value["status"], int)
            and isinstance(value["headers"], list)
            and isinstance(value["body"], bytes)
            and isinstance(value["etag"], str)
            and isinstance(value["stored"], float)
            and isinstance(value["ttl"], float)
            and isinstance(value["stale"], float)
        )
    except KeyError:
        return None
    return value if ok else None


class ResponseCacheMiddleware:
    """Cache GET and HEAD responses in a cachelayer Cache, by HTTP's rules for shared caches.

    ::

        app.add_middleware(ResponseCacheMiddleware, cache=cache, ttl=60)

    Args:
        app: the ASGI app.
        cache: the Cache to store responses in (shared by every worker on Redis).
        ttl: freshness, in seconds, of a response whose headers state none
            (``s-maxage``, ``max-age``, ``Expires``); None stores only those that do.
        max_ttl: caps every response's freshness, and its stale window; twice it must
            stay below the Cache's ``tag_ttl`` (with the Cache's jitter on top).
        cacheable_statuses: the status codes that may be stored.
        vary: request headers every key includes, so responses may ``Vary`` on them;
            a response that varies on another header is not stored.
        credential_headers: request headers that identify a user.
        per_user_key: None (default): requests that carry a credential header are
            passed to the app and never cached. A secret of at least 16 bytes: they are
            cached per user, under an HMAC of their credentials with this key.
        max_body_size: a larger response is streamed to the client and not stored.
        pass_ttl: seconds a key whose response could not be stored goes straight to the
            app, without waiting on other requests for it (0: every request tries again).

    Responses carry ``X-Cache``: ``HIT``, ``STALE``, ``MISS`` (the app answered; the
    response was stored unless the store was down) or ``BYPASS`` (not cacheable).

    Raises:
        ConfigurationError: an option out of range.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: Cache,
        *,
        ttl: float | None = 60.0,
        max_ttl: float = 86400.0,
        cacheable_statuses: Collection[int] = (200,),
        vary: Collection[str] = ("accept-encoding",),
        credential_headers: Collection[str] = ("authorization", "cookie"),
        per_user_key: bytes | str | None = None,
        max_body_size: int = 1 << 20,
        pass_ttl: float = 30.0,
    ) -> None:
        def positive(name: str, value: object) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{name}={value!r} must be a number of seconds > 0")
            return float(value)

        self.app = app
        self.cache = cache
        self.max_ttl = positive("max_ttl", max_ttl)
        # fresh (jitter may lengthen the cap) plus stale time, as get_or_load checks it
        if self.max_ttl * (2.0 + cache.engine.ttl.jitter) >= cache.tag_ttl:
            raise ConfigurationError(
                f"max_ttl={max_ttl!r}: fresh plus stale time must stay below the Cache's "
                f"tag_ttl={cache.tag_ttl:.0f} s; lower max_ttl or raise tag_ttl"
            )
        self.ttl = None if ttl is None else min(positive("ttl", ttl), self.max_ttl)
        self.statuses = frozenset(int(s) for s in cacheable_statuses)
        self.vary = tuple(sorted({h.lower() for h in vary}))
        self.credential_headers = tuple(h.lower().encode("latin-1") for h in credential_headers)
        self.covered = frozenset(self.vary) | {h.lower() for h in credential_headers} | {"host"}
        self._vary_raw = tuple(h.encode("latin-1") for h in self.vary)
        if per_user_key is not None:
            per_user_key = (
                per_user_key.encode() if isinstance(per_user_key, str) else bytes(per_user_key)
            )
            if len(per_user_key) < 16:
                raise ConfigurationError("per_user_key must be a secret of at least 16 bytes")
        self._user_key = per_user_key
        if isinstance(max_body_size, bool) or not isinstance(max_body_size, int):
            raise ConfigurationError(f"max_body_size={max_body_size!r} must be an int")
        self.max_body_size = max_body_size
        if pass_ttl:
            self._cache_errors: dict[type[BaseException], float] | None = {
                Pass: positive("pass_ttl", pass_ttl)
            }
        else:
            self._cache_errors = None

    # -- the request -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers[name] = headers[name] + b", " + value if name in headers else value
        no_store = b"cache-control" in headers and "no-store" in parse_cache_control(
            headers[b"cache-control"].decode("latin-1")
        )
        has_credentials = any(h in headers for h in self.credential_headers)
        if no_store or (has_credentials and self._user_key is None):
            await self._bypass(scope, receive, send, BYPASS)
            return
        key = self._key(scope, headers, has_credentials)
        tags = [path_tag(scope["path"]), *route_tags(scope.get("app", self.app), scope)]
        inm = headers.get(b"if-none-match")
        request = Request(scope, receive, send, None if inm is None else inm.decode("latin-1"))
        await self._serve(request, key, tags)

    def _key(self, scope: Scope, headers: dict[bytes, bytes], has_credentials: bool) -> str:
        """``http:<scheme>:<host>:<path>:<query>[:<vary values>][:u<user>]``, each part
        escaped. The query string is keyed exactly as sent, never reordered: the app may
        read its order (``request.url``), and ``%71`` names ``q`` once decoded, so only
        the raw bytes tell two queries the app sees differently apart."""
        parts = [
            scope.get("scheme", "http"),
            headers.get(b"host", b"").decode("latin-1").lower(),
            scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
        ]
        key = "http:" + ":".join(escape(p) for p in parts)
        for name in self._vary_raw:  # "!" (never in an escaped value): header absent
            value = headers.get(name)
            key += ":" + ("!" if value is None else escape(value.decode("latin-1")))
        if has_credentials:
            assert self._user_key is not None
            signed = b"\0".join(
                h + b"=" + headers[h] for h in self.credential_headers if h in headers
            )
            key += ":u" + hmac.new(self._user_key, signed, "sha256").hexdigest()[:32]
        return key

    async def _serve(self, request: Request, key: str, tags: list[str]) -> None:
        cache = self.cache

        async def load() -> Fresh[dict[str, Any]]:
            return await self._load(request)

        error: Exception | None = None
        value: Any = None
        try:
            # The response states its own freshness (Fresh); the call's TTL and stale
            # window are the caps every response is held to.
            value = await cache.aget_or_load(
                key,
                load,
                self.max_ttl,
                cache_errors=self._cache_errors,
                stale_ttl=self.max_ttl,
                tags=tags,
            )
        except Pass as exc:
            if exc.owner is not request:  # hit-for-pass, or another request's response
                await self._pass(request, BYPASS)
            return
        except AppFailed as exc:
            if exc.owner is not request:
                await self._pass(request, BYPASS)
                return
            error = exc.error
        if error is not None:
            raise error  # the app's own exception, as without the cache (outside the
            # except block, so that its context stays the app's)
        if request.sent:
            return
        stored = _stored_value(value)
        now = cache.engine.clock()
        age = -1.0 if stored is None else max(0.0, now - stored["stored"])
        if stored is None or age >= stored["ttl"] + stored["stale"]:
            # Not ours, or past its own stale window but not yet gone from the store (the
            # store's clock lags the Cache's): answer fresh, and let the refresh refill.
            await self._pass(request, MISS)
            return
        await self.send_stored(request, stored, STALE if age >= stored["ttl"] else HIT, age)

    async def _pass(self, request: Request, label: bytes) -> None:
        """Answer a request the cache took, from the app and without storing: as a GET,
        so that HEAD gets the same headers as when the response is stored."""
        capture = Capture(self, request, label)
        try:
            await self.app(request.app_scope(True, full=False), request.receive, capture.send)
        finally:
            request.publish()

    async def _bypass(self, scope: Scope, receive: Receive, send: Send, label: bytes) -> None:
        """Run the app as if there were no cache (a request the cache does not take);
        only the response gets ``X-Cache``."""

        async def labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"x-cache", label)]
            await send(message)

        await self.app(scope, receive, labelled)

    async def send_stored(
        self, request: Request, stored: dict[str, Any], label: bytes, age: float | None
    ) -> None:
        """Answer from a stored response: 304 when If-None-Match matches its ETag."""
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored["headers"]]
        if age is not None:
            headers.append((b"age", str(int(age)).encode()))
        headers.append((b"x-cache", label))
        etag = stored["etag"]
        send = request.respond
        inm = request.if_none_match
        if etag and inm is not None and etag_matches(inm, etag):
            kept = [(k, v) for k, v in headers if k in _NOT_MODIFIED_KEEPS]
            await send({"type": "http.response.start", "status": 304, "headers": kept})
            await send({"type": "http.response.body", "body": b""})
            return
        body = stored["body"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": stored["status"], "headers": headers})
        await send({"type": "http.response.body", "body": b"" if request.head else body})

    # -- the loader --------------------------------------------------------------------------

    async def _load(self, request: Request) -> Fresh[dict[str, Any]]:
        """Run the app for the cache. In the request's own task the response also goes to
        the client as soon as it is complete (so background tasks do not delay it); in a
        background refresh it is only captured."""
        foreground = asyncio.current_task() is request.task
        owner = request if foreground else None
        capture = Capture(self, owner)
        receive = request.receive if foreground else capture.replay_receive
        try:
            await self.app(request.app_scope(foreground), receive, capture.send)
        except Exception as exc:
            raise AppFailed(owner, exc) from exc
        finally:
            if foreground:
                request.publish()
        if capture.passing:
            passed = Pass()
            passed.owner = owner
            raise passed
        if capture.value is None:
            incomplete = RuntimeError("the app returned before its response was complete")
            raise AppFailed(owner, incomplete)
        fresh = capture.freshness
        assert fresh is not None
        # The response decides its own freshness; the jitter only ever shortens it, so no
        # entry outlives what the response allowed.
        return Fresh(capture.value, fresh[0], fresh[1])
