"""Django for the integration tests: settings are configured once, for Django only.

Nothing outside ``tests/integrations`` imports Django, so configuring its global settings
here (only if nobody did before) cannot change what other tests see. Tests that need
other CACHES use ``override_settings``, which also resets Django's cache handler. The
test models (``djapp``) live in an in-memory SQLite database of each test process; tests
that use it create the tables with ``djapp.db.database()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        ALLOWED_HOSTS=["testserver"],
        CACHES={"default": {"BACKEND": "cachelayer.django.CacheBackend", "LOCATION": "memory://"}},
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["cachelayer.django", "tests.integrations.djapp"],
        USE_TZ=True,
    )
    django.setup()


@pytest.fixture
def rules() -> Iterator[Callable[..., Any]]:
    """invalidate_on, with every rule it made disconnected afterwards."""
    from cachelayer.django import invalidate_on

    made: list[Any] = []

    def connect(model: Any, **options: Any) -> Any:
        rule = invalidate_on(model, **options)
        made.append(rule)
        return rule

    yield connect
    for rule in made:
        rule.disconnect()
