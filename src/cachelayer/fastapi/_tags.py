"""Tags on cached responses: the path tag, ``@cache_tags`` on routes, invalidation.

Every stored response carries its path's tag and its route's tags; invalidating any of
them (``Cache.ainvalidate_tags``) drops it. The middleware reads the tags' tokens before
the app runs, so the tags must be known from the request alone: the path, and the route
the router would pick for it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from .._keys import escape
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .._cache import Cache

__all__ = [
    "ainvalidate_responses",
    "cache_tags",
    "invalidate_responses",
    "path_tag",
    "route_tags",
]

Scope = MutableMapping[str, Any]
F = TypeVar("F")

_TAGS_ATTR = "__cachelayer_tags__"
_PATH_TAG = "http-path:"


def path_tag(path: str) -> str:
    """The tag every cached response of ``path`` carries (any query string, any host)."""
    return _PATH_TAG + escape(path)


async def ainvalidate_responses(
    cache: Cache, *, paths: Iterable[str] = (), tags: Iterable[str] = ()
) -> bool:
    """Drop the cached responses of ``paths`` and everything tagged with ``tags``.

    One store round trip. ``paths`` are as the app sees them (``request.url.path``);
    each drops every cached variant of that path: any query string, host, ``Vary``
    value or user. ``tags`` are plain cachelayer tags, so they also drop
    ``@cache.cached`` entries declared with the same tag. Call it after the write has
    committed. Returns False when the store failed (counted and logged; the old
    responses may then be served until their TTL ends).
    """
    return await cache.ainvalidate_tags(*[path_tag(p) for p in paths], *tags)


def invalidate_responses(
    cache: Cache, *, paths: Iterable[str] = (), tags: Iterable[str] = ()
) -> bool:
    """``ainvalidate_responses`` for sync code (``def`` endpoints)."""
    return cache.invalidate_tags(*[path_tag(p) for p in paths], *tags)


def cache_tags(*templates: str) -> Callable[[F], F]:
    """Tag every cached response of a route, for ``cache.ainvalidate_tags(...)``.

    ::

        @app.get("/users/{user_id}")
        @cache_tags("user:{user_id}", "users")
        async def read_user(user_id: int) -> User: ...

    A template names path parameters, rendered with ``str()`` from the path as routed
    (``{user_id:int}`` in the path makes ``/users/042`` render as ``42``). The
    middleware reads the tags before the endpoint runs, so an invalidation during the
    request voids the response it produces.

    Raises:
        ConfigurationError: a template has a field that is not a plain name.
    """
    for template in templates:
        if not isinstance(template, str) or not template:
            raise ConfigurationError(
                f"cache_tags() takes non-empty str templates, not {template!r}"
            )
        for _, field, spec, conv in string.Formatter().parse(template):
            if field is not None and (not field.isidentifier() or spec or conv):
                raise ConfigurationError(
                    f"cache_tags template {template!r}: {{{field}}} must be a plain path "
                    "parameter name"
                )

    def decorate(endpoint: F) -> F:
        setattr(endpoint, _TAGS_ATTR, tuple(templates))
        return endpoint

    return decorate


def _find_route(routes: Any, scope: Scope, depth: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """The route, endpoint and path parameters Starlette's router would pick for a GET
    of ``scope``, or ``(None, None, {})``; mounted routers are searched too."""
    if not routes or depth > 8:
        return None, None, {}
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        if getattr(match, "name", "") != "FULL":
            continue
        merged = {**scope, **child}
        sub = getattr(route, "routes", None)
        if sub:
            return _find_route(sub, merged, depth + 1)
        return route, child.get("endpoint"), dict(merged.get("path_params") or {})
    return None, None, {}


def _render_tag(template: str, params: dict[str, Any], path: str) -> str:
    try:
        return template.format_map({k: str(v) for k, v in params.items()})
    except KeyError as exc:
        raise ConfigurationError(
            f"cache_tags template {template!r} names {exc.args[0]!r}, but the route for "
            f"{path!r} has no such path parameter (it has: {', '.join(params) or 'none'})"
        ) from None


def route_tags(app: Any, scope: Scope) -> tuple[str | None, list[str]]:
    """The path template of the route a GET of ``scope`` would reach (None when there
    is none, or no router to ask) and its rendered ``@cache_tags``.

    ``app`` is the Starlette or FastAPI app (``scope["app"]``), whose router is asked.
    """
    routes = getattr(getattr(app, "router", app), "routes", None)
    if not routes:
        return None, []
    route, endpoint, params = _find_route(routes, {**scope, "method": "GET"})
    templates = getattr(endpoint, _TAGS_ATTR, ())
    template = getattr(route, "path", None)
    rendered = [_render_tag(t, params, scope["path"]) for t in templates]
    return (template if isinstance(template, str) else None), rendered
