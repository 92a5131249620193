"""System checks of the cachelayer.django app: misconfiguration is reported, not a crash.

They run through Django's check framework (``run_checks``), as ``manage.py check`` and
``runserver`` do, with the app in INSTALLED_APPS (tests/integrations/conftest.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from cachelayer.django.checks import check_caches
from tests.integrations.djapp.models import Customer, Order

BACKEND = "cachelayer.django.CacheBackend"


def ours(tag: str) -> list[tuple[str, str]]:
    """(id, message) of the cachelayer messages the checks with ``tag`` report."""
    return [
        (m.id, m.msg)
        for m in checks.run_checks(tags=[tag])
        if m.id is not None and m.id.startswith("cachelayer.")
    ]


def caches_with(**entry: Any) -> dict[str, Any]:
    return {
        "default": {"BACKEND": BACKEND, "LOCATION": "memory://"},
        "other": {"BACKEND": BACKEND, **entry},
    }


def test_a_correct_configuration_reports_nothing() -> None:
    """Valid cachelayer CACHES and no rules: no cachelayer message."""
    location = "redis://127.0.0.1:1/0?socket_timeout=0.2&max_connections=5"
    setting = caches_with(LOCATION=location, OPTIONS={"namespace": "ok"})
    with override_settings(CACHES=setting):
        assert ours("caches") == []
        assert ours("models") == []


def test_a_mistyped_redis_option_stops_the_checks() -> None:
    """A LOCATION option no Redis connection takes (a typo) cannot build a backend: the
    checks stop with ImproperlyConfigured naming it, as Django does for its own bad
    settings, without connecting (it used to build one that failed every request)."""
    typo = "redis://127.0.0.1:1/0?socket_timout=0.2"
    with (
        override_settings(CACHES=caches_with(LOCATION=typo)),
        pytest.raises(ImproperlyConfigured, match="socket_timout"),
    ):
        ours("caches")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"LOCATION": "memcached://localhost"}, "not a Redis URL"),
        ({"LOCATION": "redis://127.0.0.1:1/0?socket_timeout=abc"}, "socket_timeout"),
        ({"LOCATION": "memory://?max_entries=0"}, "max_entries"),
        ({"OPTIONS": {"namespace": "bad namespace"}}, "namespace"),
        ({"OPTIONS": {"codec": "pickle"}}, "signing_key"),
        ({"OPTIONS": {"lease_ttl": "10"}}, "lease_ttl|str|int"),
        ({"OPTIONS": {"no_such": 1}}, "no_such"),
    ],
)
def test_entries_that_cannot_be_built(entry: dict[str, Any], expected: str) -> None:
    """A refused setting raises ImproperlyConfigured naming it as soon as anything builds
    the backend, Django's own cache checks included (so manage.py check stops with it);
    cachelayer's check, run alone, reports it as cachelayer.E001 instead of raising."""
    with override_settings(CACHES=caches_with(**entry)):
        with pytest.raises(ImproperlyConfigured, match=expected):
            call_command("check")
        found = check_caches(None)
    assert [m.id for m in found] == ["cachelayer.E001"]
    assert "'other'" in found[0].msg
    assert re.search(expected, found[0].msg)


@pytest.mark.parametrize("timeout", [0, -1])
def test_timeout_zero_is_w001(timeout: int) -> None:
    """TIMEOUT 0 (or less) stores nothing by default: cachelayer.W001."""
    with override_settings(CACHES=caches_with(TIMEOUT=timeout)):
        assert [i for i, _ in ours("caches")] == ["cachelayer.W001"]
    with override_settings(CACHES=caches_with(TIMEOUT=None)):
        assert ours("caches") == []


def test_invalidate_on_template_naming_no_field_is_e002(rules: Any) -> None:
    """A template naming something the model lacks is cachelayer.E002 on that model;
    fields, attnames, pk and other attributes (properties, methods) are fine."""
    rules(Order, tags=["customer:{customer_id}", "order:{pk}", "o:{id}:{total}"])
    rules(Customer, keys=["c:{name}:{initials}", "x:{joined.year}"])
    assert ours("models") == []
    rules(Order, tags=["customer:{custmer_id}"])
    found = ours("models")
    assert [i for i, _ in found] == ["cachelayer.E002"]
    assert "'custmer_id'" in found[0][1]
    assert "djapp.Order" in found[0][1]


def test_invalidate_on_template_naming_a_relation_is_w002(rules: Any) -> None:
    """A template formatting a relation (a query per write, and str() of the object) is
    cachelayer.W002, with the attname to use instead."""
    rules(Order, tags=["customer:{customer}"])
    found = checks.run_checks(tags=["models"])
    warning = next(m for m in found if m.id == "cachelayer.W002")
    assert "{customer_id}" in (warning.hint or "")


def test_invalidate_on_unknown_alias_is_e003(rules: Any) -> None:
    """A rule naming an alias that is missing or not cachelayer's is cachelayer.E003."""
    locmem = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    setting = {"default": {"BACKEND": BACKEND}, "locmem": locmem}
    rules(Order, tags=["customer:{customer_id}"], cache="nope")
    rules(Order, tags=["customer:{customer_id}"], cache="locmem")
    rules(Order, tags=["customer:{customer_id}"], cache="default")
    with override_settings(CACHES=setting):
        found = ours("models")
    assert [i for i, _ in found] == ["cachelayer.E003", "cachelayer.E003"]
    assert "'nope'" in found[0][1]
    assert "'locmem'" in found[1][1]


def test_manage_py_check_fails_on_errors(rules: Any) -> None:
    """``manage.py check`` stops on a cachelayer error, as on Django's own."""
    rules(Order, tags=["customer:{nope}"])
    with pytest.raises(SystemCheckError, match=r"cachelayer\.E002"):
        call_command("check")


@pytest.mark.parametrize(
    ("engine", "alias", "warned"),
    [
        ("django.contrib.sessions.backends.cache", "other", True),
        ("django.contrib.sessions.backends.cached_db", "other", False),
        ("django.contrib.sessions.backends.db", "other", False),
        ("django.contrib.sessions.backends.cache", "stock", False),
    ],
)
def test_sessions_only_in_a_cachelayer_cache_warn(engine: str, alias: str, warned: bool) -> None:
    """Sessions kept only in a cachelayer cache are W003 (a Redis outage logs everyone out
    and login answers 500); cached_db, db, or a non-cachelayer alias are fine."""
    caches = caches_with(LOCATION="memory://")
    caches["stock"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    with override_settings(CACHES=caches, SESSION_ENGINE=engine, SESSION_CACHE_ALIAS=alias):
        found = ours("caches")
    assert ("cachelayer.W003" in [i for i, _ in found]) is warned
