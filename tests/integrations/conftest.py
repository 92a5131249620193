"""Django for the integration tests: settings are configured once, for Django only.

Nothing outside ``tests/integrations`` imports Django, so configuring its global settings
here (only if nobody did before) cannot change what other tests see. Tests that need
other CACHES use ``override_settings``, which also resets Django's cache handler.
"""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        ALLOWED_HOSTS=["testserver"],
        CACHES={"default": {"BACKEND": "cachelayer.django.CacheBackend", "LOCATION": "memory://"}},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()
