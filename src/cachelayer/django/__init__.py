"""Django integration: cachelayer as a Django cache backend.

::

    CACHES = {
        "default": {
            "BACKEND": "cachelayer.django.CacheBackend",
            "LOCATION": "redis://localhost:6379/0",     # or "memory://"
            "TIMEOUT": 300,
            "OPTIONS": {"namespace": "shop"},           # cachelayer.Cache keyword arguments
        }
    }

Never imported by ``import cachelayer``; importing it imports Django. See docs/django.md.
"""

from __future__ import annotations

from .backend import CacheBackend

__all__ = ["CacheBackend"]
