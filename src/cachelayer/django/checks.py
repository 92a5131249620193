"""System checks for cachelayer (``python manage.py check``), run with the app installed.

- ``cachelayer.E001``: a cachelayer ``CACHES`` entry cannot be used: redis-py does not
  accept an option of its ``LOCATION`` (which would otherwise fail every request, open),
  or the backend cannot be built at all.
- ``cachelayer.E002``: an ``invalidate_on`` template names an attribute the model lacks.
- ``cachelayer.E003``: an ``invalidate_on`` rule names an alias that is not cachelayer's.
- ``cachelayer.W001``: ``TIMEOUT`` is 0 or negative: default-timeout writes store nothing.
- ``cachelayer.W002``: an ``invalidate_on`` template formats a relation (a query a write).
- ``cachelayer.W003``: sessions live only in a cachelayer cache
  (``SESSION_ENGINE = "django.contrib.sessions.backends.cache"``): a Redis outage logs
  every user out and new sessions fail with 500, ``cachelayer_clear`` deletes them all.

Django's own cache checks build every backend, so a setting the backend refuses (a bad
URL, an unknown option, pickle without a signing key) usually stops ``manage.py check``
with that ``ImproperlyConfigured`` error, which names the setting, before these run.
No check connects to Redis: ``manage.py migrate`` must not depend on the cache. Use
``manage.py cachelayer_stats`` for a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import FieldDoesNotExist
from django.utils.module_loading import import_string

from ..backends.redis import RedisStore
from ._invalidation import registered_rules
from .backend import CacheBackend

__all__ = ["cachelayer_aliases", "check_caches", "check_invalidation_rules"]


def cachelayer_aliases() -> list[str]:
    """The ``CACHES`` aliases whose ``BACKEND`` is cachelayer's (or a subclass of it)."""
    return [alias for alias, conf in settings.CACHES.items() if _is_ours(conf)]


def _is_ours(conf: Any) -> bool:
    try:
        cls = import_string(conf.get("BACKEND", ""))
    except (ImportError, AttributeError, TypeError):
        return False  # Django reports a backend it cannot import
    return isinstance(cls, type) and issubclass(cls, CacheBackend)


@checks.register(checks.Tags.caches)
def check_caches(
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """Every cachelayer ``CACHES`` entry can be used, and its TIMEOUT stores."""
    from django.core.cache import caches

    messages: list[checks.CheckMessage] = []
    for alias in cachelayer_aliases():
        conf = settings.CACHES[alias]
        try:
            problem = _connection_problem(caches[alias])
        except Exception as exc:
            problem = f"cannot be built: {exc}"
        if problem:
            messages.append(
                checks.Error(
                    f"CACHES[{alias!r}] {problem}",
                    hint="See the settings table of docs/django.md.",
                    id="cachelayer.E001",
                )
            )
        timeout = conf.get("TIMEOUT", 300)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout <= 0:
            messages.append(
                checks.Warning(
                    f"CACHES[{alias!r}] has TIMEOUT {timeout!r}: a write with the default "
                    "timeout stores nothing.",
                    hint="Use a number of seconds, or None for entries that never expire.",
                    id="cachelayer.W001",
                )
            )
    messages += _check_sessions()
    return messages


_CACHE_SESSIONS = "django.contrib.sessions.backends.cache"


def _check_sessions() -> list[checks.CheckMessage]:
    engine = getattr(settings, "SESSION_ENGINE", "django.contrib.sessions.backends.db")
    alias = getattr(settings, "SESSION_CACHE_ALIAS", "default")
    if engine != _CACHE_SESSIONS or alias not in cachelayer_aliases():
        return []
    return [
        checks.Warning(
            f"Sessions are stored only in CACHES[{alias!r}], a cachelayer cache: when Redis "
            "is down the cache fails open, so no session can be read (every user is logged "
            "out) or created (login answers 500), and cachelayer_clear deletes them all.",
            hint='Use SESSION_ENGINE = "django.contrib.sessions.backends.cached_db" '
            "(sessions in the database, read through the cache), or keep sessions in a "
            "SESSION_CACHE_ALIAS of their own that is not cachelayer's.",
            id="cachelayer.W003",
        )
    ]


@checks.register(checks.Tags.models)
def check_invalidation_rules(
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """Every ``invalidate_on`` template names attributes of its model; every alias named
    is a cachelayer one."""
    messages: list[checks.CheckMessage] = []
    ours = set(cachelayer_aliases())
    for rule in registered_rules():
        model = rule.model
        label = model._meta.label
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        for root in rule.roots:
            field = _field(model, root)
            if field is None and root != "pk" and not hasattr(model, root):
                messages.append(
                    checks.Error(
                        f"invalidate_on({label}) has a template naming {root!r}, which "
                        f"{label} has no field or attribute for.",
                        hint="Name a field (user_id), pk, or an attribute of the model; "
                        "pass a callable for anything else.",
                        obj=model,
                        id="cachelayer.E002",
                    )
                )
            elif field is not None and field.is_relation and field.name == root:
                attname = getattr(field, "attname", None)
                use = f"{{{attname}}}" if field.concrete and attname else "a callable"
                messages.append(
                    checks.Warning(
                        f"invalidate_on({label}) has a template naming the relation "
                        f"{root!r}: formatting it loads the related object (a query per "
                        "write) and renders it with str().",
                        hint=f"Use {use} instead.",
                        obj=model,
                        id="cachelayer.W002",
                    )
                )
        if isinstance(rule.cache, str) and rule.cache not in ours:
            messages.append(
                checks.Error(
                    f"invalidate_on({label}) uses the cache alias {rule.cache!r}, which is "
                    'not a CACHES entry with BACKEND "cachelayer.django.CacheBackend".',
                    obj=model,
                    id="cachelayer.E003",
                )
            )
    return messages


def _connection_problem(backend: Any) -> str | None:
    """Why the backend's Redis connections cannot be made, found without connecting:
    redis-py takes unknown ``LOCATION`` query options and fails on each connection."""
    store = backend.cache.store
    if not isinstance(store, RedisStore):
        return None
    pool = store.client.connection_pool
    try:
        pool.connection_class(**pool.connection_kwargs)  # builds; connects on first use
    except (TypeError, ValueError) as exc:
        return f"has a LOCATION redis-py does not accept: {exc}"
    return None


def _field(model: Any, name: str) -> Any:
    try:
        return model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
