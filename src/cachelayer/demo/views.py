"""The demo API: ``GET /users/<id>`` (the profile), ``PUT /users/<id>`` (a write), ``/ping``.

The profile is read the way Django apps usually read one: the ORM, a handful of queries
(the user, profile, preferences, order count and total, the last 10 orders and their
items). ``settings.MODE`` picks how it is cached:

- ``none``: every read runs the queries;
- ``naive``: the story's code: ``cache.get``, ``if not data``, ``cache.set(timeout=300)``
  on Django's stock backend, and nothing on write;
- ``cachelayer``: ``@cache.cached`` with a tag, and ``invalidate_on`` for the models the
  profile reads, so a committed write drops the entry.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse

from .models import Order, Preference, Profile, User

KINDS = ("ping", "hit", "miss", "write")


class Counters:
    """Per-process request counters, read by the load driver through ``/_demo/stats``.

    Besides totals, each request's server CPU time (``time.thread_time``: this thread's
    own, not time spent waiting for the GIL) is summed by kind: ``ping`` (the floor),
    ``hit`` and ``miss`` (profile reads that did not / did run the queries), ``write``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(["requests", "queries", "reads", "loads"], 0)
        for kind in KINDS:
            self.counts[f"n_{kind}"] = self.counts[f"cpu_us_{kind}"] = 0

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                self.counts[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


COUNTERS = Counters()
_request = threading.local()


def count_queries(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., Any]:
    """Middleware: count each request's SQL statements and CPU time, by kind."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/_demo/"):
            return get_response(request)
        queries = 0

        def wrapper(execute: Callable[..., Any], *args: Any) -> Any:
            nonlocal queries
            queries += 1
            return execute(*args)

        _request.loaded = False
        cpu = time.thread_time_ns()
        with connection.execute_wrapper(wrapper):
            response = get_response(request)
        cpu = (time.thread_time_ns() - cpu) // 1000
        if request.method == "PUT":
            kind = "write"
        elif request.path == "/ping":
            kind = "ping"
        else:
            kind = "miss" if _request.loaded else "hit"
        COUNTERS.add(**{"requests": 1, "queries": queries, f"n_{kind}": 1, f"cpu_us_{kind}": cpu})
        return response

    return middleware


def build_profile(user_id: int) -> dict[str, Any] | None:
    """The profile as the endpoint returns it; ``None`` for an unknown user."""
    COUNTERS.add(loads=1)
    _request.loaded = True
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        return None
    profile = Profile.objects.get(user=user)
    preferences = {p.key: p.value for p in Preference.objects.filter(user=user)}
    summary = Order.objects.filter(user=user).aggregate(count=Count("id"), total=Sum("total"))
    recent = Order.objects.filter(user=user).order_by("-created_at").prefetch_related("items")
    return {
        "id": user.pk,
        "version": user.version,
        "email": user.email,
        "name": user.name,
        "joined_at": user.joined_at.isoformat(),
        "profile": {
            "bio": profile.bio,
            "city": profile.city,
            "avatar_url": profile.avatar_url,
            "loyalty_points": profile.loyalty_points,
        },
        "preferences": preferences,
        "orders": {"count": summary["count"], "total": str(summary["total"] or "0.00")},
        "recent_orders": [
            {
                "id": order.pk,
                "created_at": order.created_at.isoformat(),
                "status": order.status,
                "total": str(order.total),
                "items": [
                    {
                        "sku": item.sku,
                        "title": item.title,
                        "quantity": item.quantity,
                        "unit_price": str(item.unit_price),
                    }
                    for item in order.items.all()
                ],
            }
            for order in recent[:10]
        ],
    }


def _naive_profile(user_id: int) -> dict[str, Any] | None:
    """The story's code, as it was: no invalidation anywhere, a falsy miss is not cached."""
    from django.core.cache import cache

    key = f"user_profile_{user_id}"
    data = cache.get(key)
    if not data:
        data = build_profile(user_id)
        cache.set(key, data, timeout=300)
    return data  # type: ignore[no-any-return]


def _cachelayer_profile() -> Callable[[int], dict[str, Any] | None]:
    """cachelayer as its docs recommend: the decorator on the query, model-driven invalidation."""
    from cachelayer.django import get_cache, invalidate_on

    cache = get_cache()

    @cache.cached(ttl=300, key="profile:{user_id}", tags=["user:{user_id}"])
    def cached_profile(user_id: int) -> dict[str, Any] | None:
        return build_profile(user_id)

    # Everything the profile reads: a committed write to any of it drops the entry.
    invalidate_on(User, tags=["user:{pk}"])
    for model in (Profile, Preference, Order):
        invalidate_on(model, tags=["user:{user_id}"])
    return cached_profile


_PROFILE: dict[str, Callable[[int], dict[str, Any] | None]] = {
    "none": build_profile,
    "naive": _naive_profile,
}
if settings.MODE == "cachelayer":
    _PROFILE["cachelayer"] = _cachelayer_profile()
read_profile = _PROFILE[settings.MODE]


def user(request: HttpRequest, user_id: int) -> HttpResponse:
    """``GET``: the profile. ``PUT {"name": ...}``: rename the user, a new version."""
    if request.method == "PUT":
        return _update(request, user_id)
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD, PUT"})
    COUNTERS.add(reads=1)
    data = read_profile(user_id)
    if data is None:
        return JsonResponse({"error": "no such user"}, status=404)
    return JsonResponse(data)


def _update(request: HttpRequest, user_id: int) -> HttpResponse:
    try:
        name = str(json.loads(request.body)["name"])[:120]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'body must be JSON {"name": ...}'}, status=400)
    with transaction.atomic():
        user = User.objects.select_for_update().filter(pk=user_id).first()
        if user is None:
            return JsonResponse({"error": "no such user"}, status=404)
        user.name = name
        user.version += 1
        user.save(update_fields=["name", "version"])
    return JsonResponse({"id": user.pk, "version": user.version})


def ping(request: HttpRequest) -> HttpResponse:
    """The framework floor: the same stack, no database, no cache."""
    return JsonResponse({"ok": True})


def stats(request: HttpRequest) -> HttpResponse:
    """Counters for the load driver (not counted as requests); in the cachelayer phase,
    the Cache's own counters too, prefixed ``cache_`` (lease waits, flight joins, ...)."""
    counts = COUNTERS.snapshot()
    if settings.MODE == "cachelayer":
        from cachelayer.django import get_cache

        snapshot = get_cache().stats.snapshot()
        counts.update({f"cache_{k}": v for k, v in snapshot.items() if k != "hit_ratio_permille"})
    return JsonResponse(counts)
