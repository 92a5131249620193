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

from cachelayer import CircuitBreaker
from cachelayer.django import CacheBackend
from tests.conftest import FakeClock


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


#: Builds a cachelayer Django backend; its keywords are the rest of a CACHES entry.
Factory = Callable[..., CacheBackend]


@pytest.fixture
def location(store_kind: str, redis_url: str) -> str:
    """LOCATION of the parametrized store (generous timeouts: a busy test machine)."""
    if store_kind == "redis":
        return redis_url + "?socket_timeout=2&socket_connect_timeout=2"
    return "memory://"


def backend_params(namespace: str, clock: FakeClock, params: dict[str, Any]) -> dict[str, Any]:
    """A CACHES entry's params with the test's namespace and clock and no breaker."""
    options = params.setdefault("OPTIONS", {})
    options.setdefault("namespace", namespace)
    options.setdefault("clock", clock)
    options.setdefault("breaker", CircuitBreaker(threshold=0))
    return params


@pytest.fixture
def make_backend(location: str, namespace: str, clock: FakeClock) -> Iterator[Factory]:
    """Build backends the way Django does (``Backend(LOCATION, params)``); each is cleared
    and its connections closed afterwards."""
    made: list[CacheBackend] = []

    def factory(**params: Any) -> CacheBackend:
        backend = CacheBackend(
            params.pop("LOCATION", location), backend_params(namespace, clock, params)
        )
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.clear()
        backend.cache.close()


@pytest.fixture
def backend(make_backend: Factory) -> CacheBackend:
    """A backend with Django's defaults (TIMEOUT 300, no KEY_PREFIX, VERSION 1)."""
    return make_backend()
