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
import contextlib
import hmac
import math
import urllib.parse
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .. import Fresh
from .._keys import escape
from ..errors import ConfigurationError
from ._budget import StoreBudget
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
    Uncached,
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


_STORED_FLOATS = ("stored", "ttl", "stale")


def _latin1_line(value: object) -> bool:
    """A str a header line may carry: latin-1 encodable, without CR, LF or NUL."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return "\r" not in value and "\n" not in value and "\0" not in value


def _stored_value(value: Any) -> dict[str, Any] | None:
    """A response the middleware stored, or None for anything else under its key.

    The whole shape is checked, since the store may hold anything under the key (a
    forged or corrupted entry): an int status in 100-599, headers as ``[name, value]``
    pairs of header-safe str, bytes body, str ETag, finite float times. A malformed
    entry is a miss; serving it must never raise into the server.
    """
    if not isinstance(value, dict):
        return None
    status, headers = value.get("status"), value.get("headers")
    if type(status) is not int or not 100 <= status <= 599:
        return None
    if not isinstance(headers, list) or not all(
        isinstance(pair, (list, tuple))
        and len(pair) == 2
        and _latin1_line(pair[0])
        and _latin1_line(pair[1])
        and pair[0]
        for pair in headers
    ):
        return None
    if not isinstance(value.get("body"), bytes) or not _latin1_line(value.get("etag")):
        return None
    for name in _STORED_FLOATS:
        number = value.get(name)
        if type(number) is not float or not math.isfinite(number) or number < 0:
            return None
    return value


def _carries_body(headers: dict[bytes, bytes]) -> bool:
    """Does the request announce a body (a non-zero or malformed ``Content-Length``, or
    any ``Transfer-Encoding``)? The key does not include a body."""
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length")
    return length is not None and length.strip() != b"0"


class ResponseCacheMiddleware:
    """Cache GET and HEAD responses in a cachelayer Cache, by HTTP's rules for shared caches.

    ::

        app.add_middleware(ResponseCacheMiddleware, cache=cache)

    Args:
        app: the ASGI app.
        cache: the Cache to store responses in (shared by every worker on Redis).
        ttl: None (default): store only responses that say a shared cache may keep
            them (``Cache-Control`` ``public``, ``s-maxage`` or ``max-age``). Seconds:
            also store responses that say nothing, fresh for that long -- only for apps
            that never personalise a response without ``Cache-Control: private``.
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
        pass_ttl: seconds a key whose response could not be stored (for its headers or
            size; not for its status) goes straight to the app, without waiting on other
            requests for it (0: every request tries again).
        max_wait: seconds a request waits for another request's response to the same
            key before it asks the app itself.
        max_entries_per_route: live entries one process stores per route (its
            hit-for-pass marks included); past it, responses are served and not
            stored. None: no limit.

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
        ttl: float | None = None,
        max_ttl: float = 86400.0,
        cacheable_statuses: Collection[int] = (200,),
        vary: Collection[str] = ("accept-encoding",),
        credential_headers: Collection[str] = ("authorization", "cookie"),
        per_user_key: bytes | str | None = None,
        max_body_size: int = 1 << 20,
        pass_ttl: float = 5.0,
        max_wait: float = 2.0,
        max_entries_per_route: int | None = 1000,
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
        self.pass_ttl = positive("pass_ttl", pass_ttl) if pass_ttl else 0.0
        self._cache_errors: dict[type[BaseException], float] | None = (
            {Pass: self.pass_ttl} if self.pass_ttl else None
        )
        self.max_wait = positive("max_wait", max_wait)
        if max_entries_per_route is not None and (
            isinstance(max_entries_per_route, bool)
            or not isinstance(max_entries_per_route, int)
            or max_entries_per_route < 1
        ):
            raise ConfigurationError(
                f"max_entries_per_route={max_entries_per_route!r} must be an int >= 1 or None"
            )
        self.budget = StoreBudget(max_entries_per_route, cache.engine.clock)

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
        if (
            no_store
            or (has_credentials and self._user_key is None)
            or _carries_body(headers)  # the key does not include it
        ):
            await self._bypass(scope, receive, send, BYPASS)
            return
        key = self._key(scope, headers, has_credentials)
        route, tags = route_tags(scope.get("app", self.app), scope)
        inm = headers.get(b"if-none-match")
        request = Request(
            scope, receive, send, None if inm is None else inm.decode("latin-1"), key, route
        )
        await self._serve(request, [path_tag(scope["path"]), *tags])

    def _key(self, scope: Scope, headers: dict[bytes, bytes], has_credentials: bool) -> str:
        """``http:<scheme>:<host>:<path>:<query>[:<vary values>][:u<user>]``, each part
        escaped. The path is the one the client sent (``raw_path``; else the decoded
        path, percent-encoded again), since ``/a%2Fb`` and ``/a/b`` decode alike but may
        be different resources. The query string is keyed exactly as sent, never
        reordered: the app may read its order (``request.url``), and ``%71`` names ``q``
        once decoded, so only the raw bytes tell two queries the app sees differently
        apart."""
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path:
            path = raw_path.split(b"?", 1)[0].decode("latin-1")
        else:
            path = urllib.parse.quote(scope["path"], safe="/:@!$&'()*+,;=")
        parts = [
            scope.get("scheme", "http"),
            headers.get(b"host", b"").decode("latin-1").lower(),
            path,
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

    async def _serve(self, request: Request, tags: list[str]) -> None:
        """Look the key up in a task of its own. This request either gets the lookup's
        answer, or is asked (``lead``) to run the app and decide what the loader
        returns, or waits no longer than ``max_wait`` and asks the app itself."""
        lead, decision = request.lead, request.decision

        async def load() -> Fresh[dict[str, Any]]:
            if asyncio.current_task() is not request.lookup:
                return await self._refresh(request)  # a stale entry's background refresh
            lead.set_result(None)
            return await decision

        # The response states its own freshness (Fresh); the call's TTL and stale
        # window are the caps every response is held to.
        lookup = asyncio.ensure_future(
            self.cache.aget_or_load(
                request.key,
                load,
                self.max_ttl,
                cache_errors=self._cache_errors,
                stale_ttl=self.max_ttl,
                tags=tags,
            )
        )
        request.lookup = lookup
        lookup.add_done_callback(_retrieved)
        try:
            done, _ = await asyncio.wait(
                (lookup, lead), timeout=self.max_wait, return_when=asyncio.FIRST_COMPLETED
            )
            if lead.done():
                await self._lead(request)
                return
            if not done:  # waited long enough for another request's response
                lookup.cancel()
                await self._pass(request, BYPASS)
                return
            try:
                value = lookup.result()
            except (Pass, Uncached, AppFailed):
                # hit-for-pass, or another request's response that was not stored
                await self._pass(request, BYPASS)
                return
        finally:
            if lead.done():
                if not decision.done():  # the app's run ended before it decided
                    decision.set_exception(Uncached("no response"))
            elif not lookup.done():
                lookup.cancel()  # the lookup waits on others: this request is gone
        stored = _stored_value(value)
        now = self.cache.engine.clock()
        age = -1.0 if stored is None else max(0.0, now - stored["stored"])
        if stored is None or age >= stored["ttl"] + stored["stale"]:
            # Not ours, or past its own stale window but not yet gone from the store (the
            # store's clock lags the Cache's): answer fresh, and let the refresh refill.
            await self._pass(request, MISS)
            return
        await self.send_stored(request, stored, STALE if age >= stored["ttl"] else HIT, age)

    async def _lead(self, request: Request) -> None:
        """Run the app for the cache in the request's own task. The capture decides what
        the lookup's loader returns as soon as it can tell; the lookup then fills the
        store (or not) while the response goes on to the client."""
        capture = Capture(self, request)
        error: Exception | None = None
        try:
            await self.app(request.app_scope(True), request.receive, capture.send)
        except Exception as exc:
            error = exc
            capture.decide(AppFailed(request, exc))
        finally:
            request.publish()
        if error is None and capture.outcome is None:
            # The app returned before its response was complete: the client went away
            # (a server's app stops streaming then), or the app is done with it. The
            # server gets what the app sent, as without the cache; nothing is stored.
            await capture.flush()
            capture.decide(Uncached("the app returned before its response was complete"))
        assert request.lookup is not None
        with contextlib.suppress(Pass, Uncached, AppFailed):
            await request.lookup  # the fill, or the lease's release, is done
        if error is not None:
            raise error  # the app's own exception, as without the cache

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

    # -- the refresh ------------------------------------------------------------------------

    async def _refresh(self, request: Request) -> Fresh[dict[str, Any]]:
        """Run the app for a stale entry's background refresh: the response is captured,
        never sent; the request is replayed with an empty body."""
        capture = Capture(self, None)
        try:
            await self.app(request.app_scope(False), capture.replay_receive, capture.send)
        except Exception as exc:
            raise AppFailed(None, exc) from exc
        outcome = capture.outcome
        if outcome is None:
            raise Uncached("the app returned before its response was complete")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a lookup's outcome seen, so a lookup nobody awaited logs nothing."""
    if not task.cancelled():
        task.exception()
