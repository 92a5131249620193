"""Django's own cache tests (``tests/cache/tests.py`` of Django's source) against
``cachelayer.django.CacheBackend``.

``run.py`` copies this file into the unpacked Django source as ``cache/test_cachelayer.py``
and runs it with Django's ``tests/runtests.py``, once per store (the settings'
``CACHELAYER_LOCATION``, see ``settings.py``). Each class below is one of Django's test
classes with its ``CACHES`` replaced by cachelayer backends: ``BaseCacheTests`` (the low
level API, every backend's contract) with the default JSON codec and with signed pickle,
and the cache middleware, ``cache_page`` and ``django.utils.cache`` tests.

Django's ``cull`` and ``zero_cull`` caches are left out, as for Django's own Redis
backend: ``MAX_ENTRIES`` and ``CULL_FREQUENCY`` are LocMemCache options, which cachelayer
refuses (docs/django.md), so Django skips its culling tests.
"""

from __future__ import annotations

import functools
import unittest
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.test import TestCase, override_settings

from . import tests as django_tests

BACKEND = settings.CACHELAYER_BACKEND
LOCATION = settings.CACHELAYER_LOCATION
NAMESPACE = settings.CACHELAYER_OPTIONS["namespace"]
SIGNING_KEY = "django-suite-signing-key-32bytes"


# Each class has a namespace of its own: runtests runs the classes in parallel processes,
# and one class's clear() must not empty another's entries on a shared Redis.


def caches_for_base_tests(namespace: str, **options: Any) -> dict[str, Any]:
    """Django's test CACHES (default, prefix, v2, custom_key, custom_key2), every alias on
    one store and namespace, as the versioning tests need: an entry written through one
    alias is read through another."""
    return django_tests.caches_setting_for_tests(
        BACKEND=BACKEND,
        LOCATION=LOCATION,
        OPTIONS={"namespace": NAMESPACE + namespace, **options},
        exclude={"cull", "zero_cull"},
    )


def cachelayer(namespace: str, **params: Any) -> dict[str, Any]:
    """One CACHES entry: a cachelayer backend on the store, in its own namespace."""
    options = {"namespace": NAMESPACE + namespace}
    return {"BACKEND": BACKEND, "LOCATION": LOCATION, "OPTIONS": options, **params}


def expected_failure(test: Callable[[Any], None]) -> Callable[[Any], None]:
    """``unittest.expectedFailure`` on a copy: it marks the function it is given, and the
    function is BaseCacheTests' own, which the signed-pickle class runs too."""

    @functools.wraps(test)
    def copy(self: Any) -> None:
        test(self)

    return unittest.expectedFailure(copy)


# What cachelayer does differently on purpose, with the default (JSON) codec: pickle is off,
# so a function, a class or an object of a type no codec knows raises TypeError, never
# pickle.PickleError (docs/django.md, "Values"). The signed-pickle class runs them all.
PICKLE_OFF = {
    "test_data_types": "a function and a class are not values JSON stores",
    "test_add_fail_on_pickleerror": "TypeError (no codec stores the type), not PickleError",
    "test_set_fail_on_pickleerror": "TypeError (no codec stores the type), not PickleError",
}


@override_settings(CACHES=caches_for_base_tests("json"))
class CachelayerCacheTests(django_tests.BaseCacheTests, TestCase):
    """BaseCacheTests with the default codec (exact JSON)."""


for _name in PICKLE_OFF:
    setattr(
        CachelayerCacheTests,
        _name,
        expected_failure(getattr(django_tests.BaseCacheTests, _name)),
    )


@override_settings(CACHES=caches_for_base_tests("pickle", codec="pickle", signing_key=SIGNING_KEY))
class CachelayerSignedPickleCacheTests(django_tests.BaseCacheTests, TestCase):
    """BaseCacheTests with OPTIONS codec="pickle" and a signing_key: pickle semantics."""


@override_settings(CACHES={"default": cachelayer("utils")})
class CachelayerCacheUtils(django_tests.CacheUtils):
    """django.utils.cache (get_cache_key, learn_cache_key, ...) over cachelayer."""


@override_settings(CACHES={"default": cachelayer("putils", KEY_PREFIX="cacheprefix")})
class CachelayerPrefixedCacheUtils(django_tests.CacheUtils):
    """The same, with a KEY_PREFIX."""


@override_settings(CACHES={"default": cachelayer("head")})
class CachelayerCacheHEADTest(django_tests.CacheHEADTest):
    """HEAD requests through the cache middleware."""


@override_settings(CACHES={"default": cachelayer("i18n")})
class CachelayerCacheI18nTest(django_tests.CacheI18nTest):
    """Cache keys by language and time zone, and the middleware with i18n."""


@override_settings(CACHES={"default": cachelayer("pi18n", KEY_PREFIX="cacheprefix")})
class CachelayerPrefixedCacheI18nTest(django_tests.CacheI18nTest):
    """The same, with a KEY_PREFIX."""


@override_settings(
    CACHES={
        "default": cachelayer("mw"),
        "other": cachelayer("mwother", TIMEOUT="1"),
    }
)
class CachelayerCacheMiddlewareTest(django_tests.CacheMiddlewareTest):
    """CacheMiddleware, UpdateCacheMiddleware, FetchFromCacheMiddleware and cache_page."""
