"""Django integration: cachelayer as a Django cache backend, and model-driven invalidation.

::

    CACHES = {
        "default": {
            "BACKEND": "cachelayer.django.CacheBackend",
            "LOCATION": "redis://localhost:6379/0",     # or "memory://"
            "TIMEOUT": 300,
            "OPTIONS": {"namespace": "shop"},           # cachelayer.Cache keyword arguments
        }
    }

    # views.py
    from cachelayer.django import get_cache, invalidate_on

    @get_cache().cached(ttl=300, key="profile:{user_id}", tags=["user:{user_id}"])
    def profile(user_id: int) -> dict: ...

    invalidate_on(Order, tags=["user:{user_id}"])   # after each committed write

Add ``"cachelayer.django"`` to ``INSTALLED_APPS`` for the system checks and the
``cachelayer_stats`` and ``cachelayer_clear`` commands (optional).

Never imported by ``import cachelayer``; importing it imports Django. See docs/django.md.
"""

from __future__ import annotations

from ._invalidation import ModelInvalidation, invalidate_on
from ._shared import get_cache
from ._types import register_django_types
from .backend import CacheBackend
from .events import events_webhook, publish_on_commit
from .metrics import metrics_view

__all__ = [
    "CacheBackend",
    "ModelInvalidation",
    "events_webhook",
    "get_cache",
    "invalidate_on",
    "metrics_view",
    "publish_on_commit",
    "register_django_types",
]
