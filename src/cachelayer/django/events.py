"""Invalidation events in Django: a webhook view that applies signed events POSTed to it,
and ``publish_on_commit``, which publishes an event once the transaction has committed.

::

    # urls.py
    from cachelayer.django import events_webhook
    from cachelayer.events import Verifier

    urlpatterns = [
        path("cachelayer/events", events_webhook(Verifier({"k1": os.environ["EVENT_KEY"]}))),
    ]

    # a view that writes
    with transaction.atomic():
        order.save()
        publish_on_commit(tags=[f"user:{order.user_id}"], signer=signer)

See docs/events.md ("Webhook receivers", "Django").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ..errors import StoreUnavailable
from ..events import (
    DEFAULT_WINDOW,
    Signer,
    Verifier,
    WSGIEventReceiver,
    make_event,
    publish_invalidation,
    sign_event,
)
from ._shared import get_cache

__all__ = ["events_webhook", "publish_on_commit"]

log = logging.getLogger("cachelayer.django")


def events_webhook(
    verifier: Verifier,
    *,
    alias: str = "default",
    cache: Any = None,
    client: Any = None,
    window: float = DEFAULT_WINDOW,
    clock: Callable[[], float] = time.time,
) -> Callable[[HttpRequest], HttpResponse]:
    """A view that applies the signed invalidation events POSTed to it (CSRF-exempt: the
    signature authenticates the sender).

    It answers 200 once the event is applied (``{"status": "applied"}``) or was already
    applied (``{"status": "duplicate"}``, a sender's retry), 4xx for a refusal and 503
    when the store failed (docs/events.md, "Webhook receivers").

    Args:
        verifier: the keys events may be signed with.
        alias: the ``CACHES`` alias whose Cache applies the events (resolved on the first
            request).
        cache: a Cache to use instead of the alias's.
        client: a sync redis-py client for the replay marks (default the Cache's own).
        window: seconds either side of now an event's timestamp may lie.
        clock: wall-clock seconds (injected by tests).
    """
    lock = threading.Lock()
    made: list[WSGIEventReceiver] = []

    def receiver() -> WSGIEventReceiver:
        with lock:
            if not made:
                made.append(
                    WSGIEventReceiver(
                        cache if cache is not None else get_cache(alias),
                        verifier,
                        client=client,
                        window=window,
                        clock=clock,
                    )
                )
            return made[0]

    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        answer = receiver().handle(
            request.method or "",
            request.META.get("CONTENT_LENGTH"),
            request.read,
            request.headers.get("Cachelayer-Kid"),
            request.headers.get("Cachelayer-Signature"),
        )
        response = HttpResponse(
            answer.content(), status=answer.status, content_type="application/json"
        )
        for name, value in answer.headers:
            response[name] = value
        response["Cache-Control"] = "no-store"
        return response

    view.receiver = receiver  # type: ignore[attr-defined]
    return view


def publish_on_commit(
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    *,
    signer: Signer,
    alias: str = "default",
    cache: Any = None,
    using: str | None = None,
    **options: Any,
) -> None:
    """Publish an invalidation event of ``keys`` and ``tags`` once the current
    transaction of ``using`` commits (at once outside a transaction); nothing if it rolls
    back.

    A failure to publish after the commit is logged (the commit stands): for a guarantee
    that survives Redis failures and the process dying after the commit, write the event
    to the outbox instead (``cachelayer.events.outbox_write``).

    Args:
        keys: logical keys, as passed to ``cache.delete``.
        tags: tags, as passed to ``cache.invalidate_tags``.
        signer: the key to sign with.
        alias: the ``CACHES`` alias whose Cache names the namespace and sends the event.
        cache: a Cache to use instead of the alias's.
        using: the database alias whose transaction to wait for.
        options: those of :func:`cachelayer.events.publish_invalidation` (``stream``,
            ``origin``, ``maxlen``, ``client``).

    Raises:
        TypeError, ValueError: the event breaks the format's rules (checked now, not
            after the commit).
    """
    keys, tags = list(keys), list(tags)
    target = cache if cache is not None else get_cache(alias)
    if not isinstance(signer, Signer):
        raise TypeError("signer= takes a cachelayer.events.Signer")
    # The format's rules and limits are checked now, where the caller can see the error.
    sign_event(make_event(target.engine.keys.namespace, keys, tags, ts=0, origin=""), signer)

    def publish() -> None:
        try:
            publish_invalidation(target, keys, tags, signer=signer, **options)
        except StoreUnavailable as exc:
            log.error(
                "cachelayer: publishing an invalidation after a commit failed (%s); the "
                "entries may stay stale until their TTL (use the outbox to guarantee it)",
                exc,
            )

    transaction.on_commit(publish, using=using)
