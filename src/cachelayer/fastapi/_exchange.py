"""One run of the app by the response cache: the request it answers, and the ``send``
that captures the response (``Capture``).

The capture buffers a storable response and builds the value the cache stores; it
passes anything else through to the client as it comes. For the request that runs the
app for the cache it decides, as soon as it can tell (at the response's start, past
``max_body_size``, or at its end), what the cache's loader returns: the response to
store, or an exception that stores nothing (``Pass``, ``Uncached``). Requests waiting
for that key are released then, not when a long stream ends. It also answers the
client as soon as the response is complete, so the app's background tasks do not delay
it; in a background refresh it only captures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .. import Fresh
from ._http import header, storage_policy, strong_etag

if TYPE_CHECKING:
    from ._middleware import ResponseCacheMiddleware

__all__ = [
    "BYPASS", "HIT", "MISS", "STALE", "AppFailed", "Capture", "Pass", "Request", "Uncached"
]  # fmt: skip

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HIT, MISS, STALE, BYPASS = b"HIT", b"MISS", b"STALE", b"BYPASS"

# Not stored with a response: hop-by-hop headers, and those the cache writes itself.
_UNSTORED = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
        b"trailer", b"upgrade", b"content-length", b"age", b"x-cache",
    }
)  # fmt: skip
# Stripped from the request the cache sends to the app, so the app answers in full and
# the cache evaluates If-None-Match itself against what it stores.
_CONDITIONAL = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since",
     b"if-range", b"range"}
)  # fmt: skip
_FILE_SENDS = ("http.response.pathsend", "http.response.zerocopysend")


class Pass(Exception):
    """The response was not stored: its key is passed straight to the app for a while.

    Cached as a negative entry (``pass_ttl``); rebuilt without ``owner`` on a hit.
    """

    owner: object = None


class Uncached(Exception):
    """The response was not stored, and its key is not remembered as one to pass: a
    status outside ``cacheable_statuses``, a route over its store budget, or a response
    the app never completed (a client that went away). Never cached."""


class AppFailed(Exception):
    """The app raised while the cache ran it; the request that ran it re-raises it."""

    def __init__(self, owner: object, error: Exception) -> None:
        super().__init__()
        self.owner = owner
        self.error = error


# Keys of the scope the cache sets on the copy the app runs on: never written back.
_CACHE_SET = ("method", "headers", "extensions")


class Request:
    """One cacheable request: what the loader and the senders need to know of it."""

    __slots__ = (
        "decision", "head", "if_none_match", "key", "lead", "lookup", "original", "receive",
        "route", "run", "scope", "send",
    )  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        inm: str | None,
        key: str = "",
        route: str | None = None,
    ) -> None:
        self.scope = scope  # the server's: the cache never changes its method or headers
        self.original = dict(scope)  # before the app adds its own keys: for refreshes
        self.head = scope["method"] == "HEAD"
        self.if_none_match = inm
        self.receive = receive
        self.send = send
        self.key = key
        self.route = route  # the template of the route it reaches, for the store budget
        self.run: Scope | None = None  # the scope of the app's run in this request's task
        loop = asyncio.get_running_loop()
        # The cache's lookup runs in a task of its own (``lookup``); its loader sets
        # ``lead`` when this request is to run the app, then returns what the capture
        # puts in ``decision``.
        self.lookup: asyncio.Task[Any] | None = None
        self.lead: asyncio.Future[None] = loop.create_future()
        self.decision: asyncio.Future[Fresh[dict[str, Any]]] = loop.create_future()

    def app_scope(self, foreground: bool, full: bool = True) -> Scope:
        """The scope for one run of the app by the cache: a copy of the request's, as a
        GET and, when ``full``, with no conditional headers and no file-send extensions,
        so that the app answers with the full body the cache stores.

        The server's scope is never changed: it reads ``method`` while the response goes
        out (uvicorn sends no body for a HEAD). The request's own run writes what the app
        adds to its copy (the route, for one) back to the server's scope with
        :meth:`publish`, so that outer middleware sees it as without the cache; a refresh
        gets a copy of the scope as it arrived.
        """
        scope = dict(self.scope if foreground else self.original)
        scope["method"] = "GET"
        if not foreground and isinstance(scope.get("state"), dict):
            scope["state"] = dict(scope["state"])
        if foreground:
            self.run = scope
        if not full:
            return scope
        scope["headers"] = [(k, v) for k, v in self.original["headers"] if k not in _CONDITIONAL]
        extensions = self.original.get("extensions")
        if extensions:
            scope["extensions"] = {k: v for k, v in extensions.items() if k not in _FILE_SENDS}
        return scope

    def publish(self) -> None:
        """Copy the keys the app set in the scope of its run to the server's scope, but
        for those the cache set itself (``method``, ``headers``, ``extensions``)."""
        if self.run is None:
            return
        original = self.original
        for name, value in self.run.items():
            if name not in _CACHE_SET and (name not in original or original[name] is not value):
                self.scope[name] = value

    async def respond(self, message: Message) -> None:
        """Send ``message`` to the client, the app's additions to the scope published."""
        self.publish()
        await self.send(message)


class Capture:
    """The ``send`` the app gets when the cache runs it: buffers a storable response,
    and passes anything else through to the client (when there is one) as it comes.
    With ``passing``, everything is passed through under that ``X-Cache`` label.

    ``outcome`` is what the cache's loader returns (a ``Fresh`` response) or raises; in
    the run of the request that leads the lookup it also resolves ``request.decision``
    the moment it is known."""

    def __init__(
        self,
        mw: ResponseCacheMiddleware,
        request: Request | None,
        passing: bytes | None = None,
    ) -> None:
        self.mw = mw
        self.request = request
        self.client = request.respond if request is not None else None
        self.head = request is not None and request.head
        self.start: Message = {}
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.freshness: tuple[float, float] | None = None
        self.passing = False
        self.label = passing or BYPASS
        self.forced = passing is not None
        self.leading = request is not None and not self.forced
        self.outcome: Fresh[dict[str, Any]] | Exception | None = None
        self.complete = asyncio.Event()
        self._replayed = False

    async def replay_receive(self) -> Message:
        """``receive`` for a refresh: an empty GET body, then a disconnect once the
        response is complete (as a client that reads the whole response would)."""
        if not self._replayed:
            self._replayed = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.complete.wait()
        return {"type": "http.disconnect"}

    def decide(self, outcome: Fresh[dict[str, Any]] | Exception) -> None:
        """Settle what the loader returns (or raises); the first decision holds."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.leading:
            assert self.request is not None
            decision = self.request.decision
            if self.request.lead.done() and not decision.done():
                if isinstance(outcome, Exception):
                    decision.set_exception(outcome)
                else:
                    decision.set_result(outcome)

    def _not_stored(self, why: str) -> Exception:
        """Hit-for-pass for a status the cache could store (its headers or size stopped
        it); nothing for another status (a 404 flood writes no entries), nor for a route
        whose store budget is spent."""
        if self.status in self.mw.statuses and self.mw.pass_ttl > 0:
            request = self.request
            if not self.leading or self.mw.budget.admit(
                None if request is None else request.route,
                "" if request is None else request.key,
                self.mw.pass_ttl,
            ):
                passed = Pass(why)
                passed.owner = request
                return passed
        return Uncached(why)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = dict(message)
            self.status = int(message["status"])
            self.headers = [(k.lower(), v) for k, v in message.get("headers", ())]
            if not (self.forced or message.get("trailers", False)):
                policy = storage_policy(
                    self.status,
                    self.headers,
                    statuses=self.mw.statuses,
                    covered=self.mw.covered,
                    default_ttl=self.mw.ttl,
                    max_ttl=self.mw.max_ttl,
                    now=self.mw.cache.engine.clock(),
                )
                self.freshness = None if policy is None else (policy.ttl, policy.stale)
            if self.freshness is None:
                self.decide(self._not_stored("the response may not be stored"))
                await self._start_passing()
            return
        if kind != "http.response.body":
            if self.passing and self.client is not None:  # trailers and other extensions
                await self.client(message)
            return
        body = message.get("body", b"")
        more = bool(message.get("more_body", False))
        if self.passing:
            await self._forward(body, more)
        else:
            self.chunks.append(body)
            self.size += len(body)
            if self.size > self.mw.max_body_size:
                self.decide(self._not_stored("the body is over max_body_size"))
                await self.flush(more)
            elif not more:
                await self._finish()
        if not more:
            self.complete.set()

    async def flush(self, more: bool = True) -> None:
        """Pass what is buffered to the client, and the rest as it comes."""
        if self.passing or not self.start:
            return
        buffered = b"".join(self.chunks)
        self.chunks = []
        await self._start_passing()
        if buffered or not more:
            await self._forward(buffered, more)

    async def _start_passing(self) -> None:
        self.passing = True
        if self.client is not None:
            start = dict(self.start)  # as the app sent it (``trailers`` included)
            start["headers"] = [*start.get("headers", ()), (b"x-cache", self.label)]
            await self.client(start)

    async def _forward(self, body: bytes, more: bool) -> None:
        if self.client is None:
            return
        if self.head:
            if not more:
                await self.client({"type": "http.response.body", "body": b""})
            return
        await self.client({"type": "http.response.body", "body": body, "more_body": more})

    async def _finish(self) -> None:
        """The response is complete and storable: build the stored value, decide, and
        answer the client from it (MISS; BYPASS when the route's budget is spent)."""
        body = b"".join(self.chunks)
        self.chunks = []
        headers = [(k, v) for k, v in self.headers if k not in _UNSTORED]
        etag = header(headers, b"etag") or ""
        if not etag and self.status == 200:
            etag = strong_etag(body)
            headers.append((b"etag", etag.encode("latin-1")))
        assert self.freshness is not None
        ttl, stale = self.freshness
        value = {
            "status": self.status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
            "body": body,
            "etag": etag if self.status == 200 else "",
            "stored": float(self.mw.cache.engine.clock()),
            "ttl": ttl,
            "stale": stale,
        }
        request = self.request
        label = MISS
        if self.leading:
            assert request is not None
            if not self.mw.budget.admit(request.route, request.key, ttl + stale):
                label = BYPASS
                self.decide(Uncached("the route's store budget is spent"))
        # The response decides its own freshness; the jitter only ever shortens it, so
        # no entry outlives what the response allowed.
        self.decide(Fresh(value, ttl, stale))
        if request is not None:
            await self.mw.send_stored(request, value, label, None)
