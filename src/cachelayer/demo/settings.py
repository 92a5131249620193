"""Django settings of the demo app, read from the ``CACHELAYER_DEMO`` environment variable.

``CACHELAYER_DEMO`` is JSON written by the ``cachelayer demo`` command:
``{"mode": "none" | "naive" | "careful" | "cachelayer", "database": <URL>, "store": <URL>,
"namespace": <str>, "counters": <path>, "counters_shared": <bool>}``. ``database`` is
``sqlite:///path`` or ``postgresql://...``; ``store`` is ``memory://`` or a Redis URL;
``counters`` is the file the workers keep their request counters in (views.Counters),
``counters_shared`` whether several workers do.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote, urlsplit

CONFIG: dict[str, Any] = json.loads(os.environ.get("CACHELAYER_DEMO", "{}"))
MODE = CONFIG.get("mode", "none")
STORE = CONFIG.get("store", "memory://")
NAMESPACE = CONFIG.get("namespace", "demo")


def database_settings(url: str) -> dict[str, Any]:
    """Django's ``DATABASES["default"]`` for ``sqlite:///path`` or ``postgresql://...``."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # The file is in WAL mode (set when it is built): readers run beside the one
        # writer. Write transactions take the lock when they begin (IMMEDIATE), so two
        # writers queue for up to 20 s instead of failing on a stale snapshot.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parts.path),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
        }
    raise ValueError(f"--database {url!r}: use sqlite:///path or postgresql://user@host/db")


def cache_settings(mode: str, store: str, namespace: str) -> dict[str, Any]:
    """``CACHES``: Django's stock backend, at its defaults, for the story's code (``naive``
    and ``careful``); cachelayer's for cachelayer."""
    redis = not store.startswith("memory://")
    if mode == "cachelayer":
        return {
            "default": {
                "BACKEND": "cachelayer.django.CacheBackend",
                "LOCATION": store,
                "TIMEOUT": 300,
                "OPTIONS": {"namespace": namespace},
            }
        }
    if redis:
        return {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": store,
                # A prefix per phase: the careful reader must not start with the keys
                # the story's code left in the same Redis (nor their stale values).
                "KEY_PREFIX": f"{namespace}:{mode}",
            }
        }
    return {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


SECRET_KEY = "cachelayer-demo-not-secret"  # noqa: S105 - a local demo's throwaway key
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["cachelayer.demo", "cachelayer.django"]
MIDDLEWARE = [
    "cachelayer.demo.views.count_queries",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "cachelayer.demo.urls"
DATABASES = {"default": database_settings(CONFIG.get("database", "sqlite:///:memory:"))}
CACHES = cache_settings(MODE, STORE, NAMESPACE)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None
