"""The demo API: ``GET /users/<id>`` (the profile), ``PUT /users/<id>`` (a write), ``/ping``.

The profile is read the way Django apps usually read one: the ORM, a handful of queries
(the user, profile, preferences, order count and total, the last 10 orders and their
items). ``settings.MODE`` picks how it is cached:

- ``none``: every read runs the queries;
- ``naive``: the story's code: ``cache.get``, ``if not data``, ``cache.set(timeout=300)``
  on Django's stock backend, and nothing on write;
- ``careful``: the same, plus ``cache.delete`` after each write commits: what a careful
  reader adds after the story's invalidation section (it still races: a read that missed
  and loaded the old row can write it back after the delete);
- ``cachelayer``: ``@cache.cached`` with a tag, and ``invalidate_on`` for the models the
  profile reads, so a committed write drops the entry.

``POST /_demo/warm`` loads a list of profiles into the cache before the traffic: with
``fn.warm`` for cachelayer, with the team's own ``cache.set`` loop for the story's code.
The ``/_demo/`` endpoints are not counted as requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse

from cachelayer import CachedFunction

from .counters import Counters
from .models import Order, Preference, Profile, User

COUNTERS = Counters(settings.CONFIG.get("counters"))
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


def _cachelayer_profile() -> CachedFunction[[int], dict[str, Any] | None]:
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
    "careful": _naive_profile,
}
#: The decorated function (cachelayer's phase only): its ``warm`` fills the cache.
cached_profile: CachedFunction[[int], dict[str, Any] | None] | None = None
if settings.MODE == "cachelayer":
    _PROFILE["cachelayer"] = cached_profile = _cachelayer_profile()
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
    if settings.MODE == "careful":
        # The careful reader's one line, after the commit: drop the cached profile.
        from django.core.cache import cache

        cache.delete(f"user_profile_{user_id}")
    return JsonResponse({"id": user.pk, "version": user.version})


def ping(request: HttpRequest) -> HttpResponse:
    """The framework floor: the same stack, no database, no cache."""
    return JsonResponse({"ok": True})


def stats(request: HttpRequest) -> HttpResponse:
    """Counters for the load driver (not counted as requests); in the cachelayer phase
    with one worker, the Cache's own counters too, prefixed ``cache_`` (lease waits,
    flight joins, ...): they are per process."""
    counts = COUNTERS.snapshot()
    if settings.MODE == "cachelayer" and not settings.CONFIG.get("counters_shared"):
        from cachelayer.django import get_cache

        snapshot = get_cache().stats.snapshot()
        counts.update({f"cache_{k}": v for k, v in snapshot.items() if k != "hit_ratio_permille"})
    return JsonResponse(counts)


def warm(request: HttpRequest) -> HttpResponse:
    """``POST {"ids": [...], "concurrency": 8}``: load those profiles into the cache.

    cachelayer: ``cached_profile.warm(ids)``, under leases, skipping fresh keys. The
    story's code: what a careful team writes, the same list through its own
    ``cache.set`` calls, as many at once; on ``LocMemCache`` only as many as it keeps
    (``MAX_ENTRIES``, 300 by Django's default): loading more would evict them as it goes.
    Answers what was done, and the seconds it took.
    """
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    try:
        body = json.loads(request.body)
        ids = [int(i) for i in body["ids"]]
        concurrency = int(body.get("concurrency", 8))
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'body must be JSON {"ids": [...]}'}, status=400)
    if concurrency < 1:
        return JsonResponse({"error": "concurrency must be at least 1"}, status=400)
    if cached_profile is not None:
        started = time.perf_counter()
        result = cached_profile.warm(
            ids, concurrency=concurrency, progress=lambda done, total: COUNTERS.add(warmed=1)
        )
        answer: dict[str, Any] = {
            "ids": len(ids),
            "loaded": result.loaded,
            "fresh": result.fresh,
            "busy": result.busy,
            "failed": result.failed,
            "seconds": round(time.perf_counter() - started, 3),
        }
    elif settings.MODE in ("naive", "careful"):
        answer = _warm_story(ids, concurrency)
    else:
        answer = {"ids": len(ids), "loaded": 0, "seconds": 0.0}
    return JsonResponse(answer)


def _warm_story(ids: list[int], concurrency: int) -> dict[str, Any]:
    """The story's cache, warmed the way a careful team would: ``cache.set`` per id."""
    from django.core.cache import cache
    from django.db import connection as thread_connection

    started = time.perf_counter()
    configured = settings.CACHES["default"]
    if configured["BACKEND"].endswith(".LocMemCache"):
        ids = ids[: int(configured.get("OPTIONS", {}).get("MAX_ENTRIES", 300))]
    failed = 0
    lock = threading.Lock()

    def load(chunk: list[int]) -> None:
        nonlocal failed
        try:
            for user_id in chunk:
                try:
                    cache.set(f"user_profile_{user_id}", build_profile(user_id), timeout=300)
                    COUNTERS.add(warmed=1)
                except Exception:  # a warm-up that fails leaves the key to the traffic
                    with lock:
                        failed += 1
        finally:
            thread_connection.close()  # this pool thread's own connection

    chunks = [ids[i::concurrency] for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency, "demo-warm") as pool:
        list(pool.map(load, chunks))
    return {
        "ids": len(ids),
        "loaded": len(ids) - failed,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 3),
    }
