"""Settings for Django's own test runner (``tests/runtests.py --settings``): Django's
``test_sqlite`` settings, with every cache a cachelayer backend.

``run.py`` copies this file into the unpacked Django source as ``cachelayer_settings.py``
and sets ``CACHELAYER_DJANGO_LOCATION`` (``memory://`` or a Redis URL) and
``CACHELAYER_DJANGO_NAMESPACE`` (one per run, so runs never share entries).
"""

from __future__ import annotations

import os

from test_sqlite import *  # noqa: F403

CACHELAYER_BACKEND = "cachelayer.django.CacheBackend"
CACHELAYER_LOCATION = os.environ.get("CACHELAYER_DJANGO_LOCATION", "memory://")
CACHELAYER_OPTIONS = {"namespace": os.environ.get("CACHELAYER_DJANGO_NAMESPACE", "djsuite")}

CACHES = {
    "default": {
        "BACKEND": CACHELAYER_BACKEND,
        "LOCATION": CACHELAYER_LOCATION,
        "OPTIONS": CACHELAYER_OPTIONS,
    }
}
