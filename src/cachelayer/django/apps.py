"""The optional Django app: ``INSTALLED_APPS = [..., "cachelayer.django"]``.

It adds cachelayer's system checks (``cachelayer.E001``...) and the ``cachelayer_stats``
and ``cachelayer_clear`` management commands. The cache backend, ``get_cache`` and
``invalidate_on`` work without it.
"""

from __future__ import annotations

from django.apps import AppConfig


class CachelayerConfig(AppConfig):
    """cachelayer's app: checks and management commands, no models."""

    name = "cachelayer.django"
    label = "cachelayer"
    verbose_name = "cachelayer"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
        from ._invalidation import connect_pending

        connect_pending()  # rules declared in models modules: every model is loaded now
