"""One Cache per CACHES alias and process: get_cache(), sharing across threads, forks.

Django builds a backend object per thread; these tests pin that every object of one
alias wraps the same cachelayer Cache (one single-flight, one set of counters), that
get_cache() returns it, and that it keeps working in threads with their own event loops
and in a forked child.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from cachelayer import Cache
from cachelayer.django import CacheBackend, get_cache
from tests.conftest import FakeClock

BACKEND = "cachelayer.django.CacheBackend"
Settings = Callable[..., dict[str, Any]]


@pytest.fixture
def location(store_kind: str, redis_url: str) -> str:
    if store_kind == "redis":
        return redis_url + "?socket_timeout=2&socket_connect_timeout=2"
    return "memory://"


@pytest.fixture
def caches_setting(location: str, namespace: str) -> Iterator[Settings]:
    """CACHES with a cachelayer "default" (and any more aliases asked for); every shared
    Cache the test used is cleared and closed afterwards."""
    used: list[Cache] = []

    def setting(**extra: Any) -> dict[str, Any]:
        default: dict[str, Any] = {
            "BACKEND": BACKEND,
            "LOCATION": location,
            "OPTIONS": {"namespace": namespace},
        }
        default.update(extra.pop("default", {}))
        return {"default": default, **extra}

    def remember() -> None:
        for alias in caches.settings:
            backend = caches[alias]
            if isinstance(backend, CacheBackend) and backend.cache not in used:
                used.append(backend.cache)

    setting.remember = remember  # type: ignore[attr-defined]
    yield setting
    for cache in used:
        cache.clear()
        cache.close()


def in_thread(func: Callable[[], Any]) -> Any:
    """Run ``func`` in a new thread and return its result (or raise its exception)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(func())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def test_every_backend_object_of_an_alias_shares_one_cache(caches_setting: Settings) -> None:
    """Backend objects of one alias in different threads are different objects around
    the same Cache, which get_cache() returns, in any thread."""
    with override_settings(CACHES=caches_setting()):
        caches_setting.remember()  # type: ignore[attr-defined]
        here = caches["default"]
        there = in_thread(lambda: caches["default"])
        assert here is not there
        assert isinstance(here, CacheBackend)
        assert here.cache is there.cache
        assert get_cache() is here.cache
        assert in_thread(get_cache) is here.cache
        here.set("k", 1)
        there.get("k")
        assert get_cache().stats.sets == 1
        assert get_cache().stats.hits == 1


def test_aliases_with_different_settings_have_their_own_cache(
    caches_setting: Settings, namespace: str
) -> None:
    """Two aliases with different settings have two Caches, each with its namespace."""
    other = {
        "BACKEND": BACKEND,
        "LOCATION": "memory://",
        "OPTIONS": {"namespace": namespace + "o"},
    }
    with override_settings(CACHES=caches_setting(other=other)):
        caches_setting.remember()  # type: ignore[attr-defined]
        assert get_cache() is not get_cache("other")
        get_cache().set("k", "default")
        get_cache("other").set("k", "other")
        assert get_cache().get("k") == "default"
        assert get_cache("other").get("k") == "other"


def test_single_flight_spans_threads(caches_setting: Settings) -> None:
    """Concurrent get_or_set() misses of one key from two threads' backend objects call
    the loader once: the second thread shares the first one's load."""
    with override_settings(CACHES=caches_setting()):
        caches_setting.remember()  # type: ignore[attr-defined]
        shared = get_cache()
        loads: list[int] = []

        def load() -> str:
            loads.append(1)
            deadline = time.monotonic() + 10
            while shared.stats.misses < 2 and time.monotonic() < deadline:
                time.sleep(0.002)  # until the other thread has missed too, and waits
            return "value"

        results: list[Any] = []

        def read() -> None:
            results.append(caches["default"].get_or_set("k", load))

        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert shared.stats.misses == 2
        assert results == ["value", "value"]
        assert loads == [1]
        assert shared.stats.flight_joins == 1


def test_get_cache_default_ttl_is_the_timeout_setting(
    caches_setting: Settings, clock: FakeClock
) -> None:
    """The shared Cache's default TTL is TIMEOUT, so get_cache().set() without a ttl and
    a decorator without one expire when Django's entries do."""
    options = {"namespace": caches_setting()["default"]["OPTIONS"]["namespace"], "clock": clock}
    with override_settings(CACHES=caches_setting(default={"TIMEOUT": 40, "OPTIONS": options})):
        caches_setting.remember()  # type: ignore[attr-defined]
        cache = get_cache()
        calls: list[int] = []

        @cache.cached(key="n:{n}", early_refresh=0)
        def square(n: int) -> int:
            calls.append(n)
            return n * n

        cache.set("k", "v")
        assert square(3) == 9
        clock.advance(39)
        assert cache.get("k") == "v"
        assert square(3) == 9
        clock.advance(2)
        assert cache.get("k") is None
        assert square(3) == 9
        assert calls == [3, 3]


def test_get_cache_refuses_aliases_that_are_not_cachelayer(caches_setting: Settings) -> None:
    """get_cache() of a missing alias or of another backend raises ImproperlyConfigured
    naming the alias."""
    locmem = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    with override_settings(CACHES=caches_setting(locmem=locmem)):
        with pytest.raises(ImproperlyConfigured, match=r"'nope'.*no such alias"):
            get_cache("nope")
        with pytest.raises(ImproperlyConfigured, match="LocMemCache"):
            get_cache("locmem")
    bad = {"BACKEND": BACKEND, "OPTIONS": {"namespace": "bad namespace"}}
    with (
        override_settings(CACHES={"default": bad}),
        pytest.raises(ImproperlyConfigured, match="namespace"),
    ):
        get_cache()


def test_closing_the_shared_cache_lets_the_next_backend_build_a_new_one(
    caches_setting: Settings,
) -> None:
    """A closed shared Cache is forgotten: backend objects built afterwards get a new one."""
    with override_settings(CACHES=caches_setting()):
        first = get_cache()
        first.close()
        fresh = in_thread(lambda: caches["default"].cache)
        caches_setting.remember()  # type: ignore[attr-defined]
        assert fresh is not first
        fresh.set("k", 1)
        assert fresh.get("k") == 1


@pytest.mark.parametrize("store_kind", ["redis"])
def test_async_use_from_threads_with_their_own_event_loops(caches_setting: Settings) -> None:
    """Threads that each run an event loop (async_to_sync, a second server loop) use the
    shared Cache's async API at the same time without one loop's connections reaching
    another: no store error."""
    with override_settings(CACHES=caches_setting()):
        caches_setting.remember()  # type: ignore[attr-defined]
        cache = get_cache()
        barrier = threading.Barrier(4)

        async def work(i: int) -> list[Any]:
            got = []
            for j in range(30):
                await cache.aset(f"k{i}:{j}", j)
                got.append(await cache.aget(f"k{i}:{j}"))
            await cache.astore.close()  # this thread's connections, in this loop
            return got

        def run(i: int) -> list[Any]:
            barrier.wait()
            return asyncio.run(work(i))

        results: dict[int, list[Any]] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, run(i))) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {i: list(range(30)) for i in range(4)}
        assert cache.stats.store_errors == 0


@pytest.mark.parametrize("store_kind", ["redis"])
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_uses_the_shared_cache(caches_setting: Settings) -> None:
    """A child forked after the parent used the shared Cache gets it with working
    connections of its own, and the parent's keep working."""
    with override_settings(CACHES=caches_setting()):
        caches_setting.remember()  # type: ignore[attr-defined]
        cache = get_cache()
        cache.set("parent", 1)
        assert cache.get("parent") == 1  # the parent holds a pooled connection now
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                child = get_cache()
                child.set("child", 2)
                code = 0 if child is cache and child.get("parent") == 1 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cache.get("child") == 2
        assert cache.get("parent") == 1


def test_public_names_of_the_django_package() -> None:
    """cachelayer.django's __all__ lists its public names, and each one exists."""
    import sys

    import cachelayer.django as package

    public = {
        name
        for name in dir(package)
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(getattr(package, name), type(sys))
    }
    assert public == set(package.__all__)
    assert {
        "CacheBackend", "ModelInvalidation", "get_cache", "invalidate_on",
        "register_django_types", "metrics_view",
    } <= set(package.__all__)  # fmt: skip
