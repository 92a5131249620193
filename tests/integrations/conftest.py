"""Django for the integration tests: settings are configured once, for Django only.

Nothing outside ``tests/integrations`` imports Django, so configuring its global settings
here (only if nobody did before) cannot change what other tests see. Tests that need
other CACHES use ``override_settings``, which also resets Django's cache handler. The
test models (``djapp``) live in an in-memory SQLite database of each test process; tests
that use it create the tables with ``djapp.db.database()``.
"""

from __future__ import annotations

import django
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
