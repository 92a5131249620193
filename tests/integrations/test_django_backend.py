"""cachelayer.django.CacheBackend against Django's documented cache API, on memory and Redis.

Each behaviour is the one Django's cache documentation states ("The low-level cache
API"); where cachelayer differs on purpose (codecs, clear, fail-open) the test says so.
Expiry is tested by moving the Cache's injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.core.cache import CacheKeyWarning, caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.cache import FetchFromCacheMiddleware, UpdateCacheMiddleware
from django.test import RequestFactory, override_settings
from django.views.decorators.cache import cache_page

from cachelayer import StoreUnavailable
from cachelayer.django import CacheBackend
from cachelayer.testing import free_port
from tests.conftest import FakeClock
from tests.integrations.conftest import Factory, backend_params

BACKEND = "cachelayer.django.CacheBackend"
SIGNING_KEY = "a-test-signing-key-of-32-bytes!!"


@pytest.fixture
async def abackend(location: str, namespace: str, clock: FakeClock) -> AsyncIterator[CacheBackend]:
    """A backend used from asyncio, closed in the test's own event loop."""
    backend = CacheBackend(location, backend_params(namespace, clock, {"TIMEOUT": 60}))
    yield backend
    await backend.aclear()
    await backend.cache.aclose()


@pytest.fixture
def dead_location() -> str:
    """A Redis URL where nothing listens (connections are refused at once)."""
    return f"redis://127.0.0.1:{free_port()}/0?socket_timeout=0.5&socket_connect_timeout=0.5"


class Opaque:
    """A class no codec knows."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


def reversed_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION for the tests (importable by dotted path)."""
    return f"{version}|{key_prefix}|{key}"[::-1]


# -- get / set / add / delete ----------------------------------------------------------------


def test_get_returns_default_when_absent(backend: CacheBackend) -> None:
    """get() of an absent key returns None, or the default given."""
    assert backend.get("absent") is None
    assert backend.get("absent", "fallback") == "fallback"


@pytest.mark.parametrize(
    "value",
    [
        {"id": 42, "name": "Ada", "tags": ["a", "b"]},
        (1, "two", 3.0),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        Decimal("1.50"),
        b"\x00\xff",
        0,
        "",
        [],
        False,
    ],
    ids=repr,
)
def test_set_then_get_returns_the_value_exactly(backend: CacheBackend, value: Any) -> None:
    """set()/get() round-trip values with their types, falsy ones included."""
    backend.set("k", value)
    got = backend.get("k", "absent")
    assert got == value
    assert type(got) is type(value)


def test_stored_none_is_returned_as_none(backend: CacheBackend) -> None:
    """A stored None comes back as None, not as the default (Django's documented caveat)."""
    backend.set("k", None)
    assert backend.get("k", "default") is None
    assert backend.has_key("k")


def test_add_stores_only_if_absent(backend: CacheBackend) -> None:
    """add() stores and returns True only when the key is absent."""
    assert backend.add("k", "first") is True
    assert backend.add("k", "second") is False
    assert backend.get("k") == "first"


def test_add_replaces_an_expired_or_unreadable_entry(
    backend: CacheBackend, clock: FakeClock, namespace: str
) -> None:
    """An expired entry, or bytes that do not decode, count as absent for add()."""
    backend.set("k", "old", timeout=10)
    clock.advance(11)  # expired for cachelayer, though the store may still hold the key
    assert backend.add("k", "new") is True
    assert backend.get("k") == "new"

    backend.cache.store.set(f"{namespace}:v1::1:junk", b"not an envelope", None)
    assert backend.add("junk", "fresh") is True
    assert backend.get("junk") == "fresh"


def test_add_is_atomic_across_threads(make_backend: Factory) -> None:
    """Of many concurrent add() calls on one key, exactly one wins (one backend per
    thread, as Django builds them)."""
    backends = [make_backend() for _ in range(8)]
    barrier = threading.Barrier(len(backends))
    results: dict[int, bool] = {}

    def run(i: int) -> None:
        barrier.wait()
        results[i] = backends[i].add("k", i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert backends[0].get("k") == winners[0]


def test_delete_reports_whether_the_key_was_there(backend: CacheBackend) -> None:
    """delete() removes the key and returns True, or False when it was absent."""
    backend.set("k", 1)
    assert backend.delete("k") is True
    assert backend.get("k") is None
    assert backend.delete("k") is False


def test_has_key_and_in(backend: CacheBackend, clock: FakeClock) -> None:
    """has_key() and ``in`` say whether a live value is there."""
    assert not backend.has_key("k")
    assert "k" not in backend
    backend.set("k", 0, timeout=5)
    assert backend.has_key("k")
    assert "k" in backend
    clock.advance(6)
    assert not backend.has_key("k")


# -- touch -------------------------------------------------------------------------------------


def test_touch_sets_a_new_expiry(backend: CacheBackend, clock: FakeClock) -> None:
    """touch() gives a live key a new timeout and returns True; False for an absent key."""
    backend.set("k", "v", timeout=10)
    assert backend.touch("k", 100) is True
    clock.advance(50)
    assert backend.get("k") == "v"
    clock.advance(51)
    assert backend.get("k") is None
    assert backend.touch("k", 100) is False
    assert backend.touch("never-set") is False


def test_touch_none_never_expires_and_default_uses_timeout(
    make_backend: Factory, clock: FakeClock
) -> None:
    """touch(key, None) makes the key permanent; touch(key) applies the default TIMEOUT."""
    backend = make_backend(TIMEOUT=30)
    backend.set("k", "v", timeout=5)
    assert backend.touch("k", None)
    clock.advance(10 * 365 * 86400)
    assert backend.get("k") == "v"
    assert backend.touch("k")
    clock.advance(29)
    assert backend.get("k") == "v"
    clock.advance(2)
    assert backend.get("k") is None


@pytest.mark.parametrize("timeout", [0, -1])
def test_touch_with_zero_or_negative_timeout_expires_the_key(
    backend: CacheBackend, timeout: int
) -> None:
    """touch(key, 0) (or a negative timeout) expires a live key at once and returns True."""
    backend.set("k", "v")
    assert backend.touch("k", timeout) is True
    assert backend.get("k") is None
    assert backend.touch("k", timeout) is False


# -- incr / decr -------------------------------------------------------------------------------


def test_incr_and_decr(backend: CacheBackend) -> None:
    """incr()/decr() add or subtract delta (default 1) and return the new value."""
    backend.set("n", 1)
    assert backend.incr("n") == 2
    assert backend.incr("n", 10) == 12
    assert backend.decr("n") == 11
    assert backend.decr("n", 5) == 6
    assert backend.incr("n", -10) == -4
    assert backend.get("n") == -4


@pytest.mark.parametrize("method", ["incr", "decr"])
def test_incr_decr_of_absent_key_raise_value_error(backend: CacheBackend, method: str) -> None:
    """incr()/decr() of a key that does not exist raise ValueError, as documented."""
    with pytest.raises(ValueError, match="Key 'absent' not found"):
        getattr(backend, method)("absent")
    assert backend.get("absent") is None


@pytest.mark.parametrize("value", ["3", 1.5, True, [1]], ids=repr)
def test_incr_of_a_non_int_raises_type_error(backend: CacheBackend, value: Any) -> None:
    """incr() of a value that is not an int raises TypeError naming its type."""
    backend.set("k", value)
    with pytest.raises(TypeError, match=type(value).__name__):
        backend.incr("k")
    assert backend.get("k") == value


def test_incr_keeps_the_expiry(
    backend: CacheBackend, clock: FakeClock, store_kind: str, redis_url: str, namespace: str
) -> None:
    """incr() keeps the key's expiry, like Redis INCRBY and LocMemCache."""
    backend.set("n", 1, timeout=10)
    clock.advance(5)
    assert backend.incr("n") == 2
    clock.advance(4)
    assert backend.get("n") == 2
    clock.advance(2)
    assert backend.get("n") is None
    with pytest.raises(ValueError, match="not found"):
        backend.incr("n")
    if store_kind == "redis":
        backend.set("p", 1, timeout=100)
        backend.incr("p")
        client = redis.Redis.from_url(redis_url)
        assert 0 < client.pttl(f"{namespace}:v1::1:p") <= 100_000
        backend.set("q", 1, timeout=None)
        backend.incr("q")
        assert client.pttl(f"{namespace}:v1::1:q") == -1
        client.close()


def test_incr_is_atomic_across_threads(make_backend: Factory) -> None:
    """Concurrent incr() calls from many threads lose no increment."""
    backends = [make_backend() for _ in range(8)]
    backends[0].set("n", 0)
    barrier = threading.Barrier(len(backends))

    def run(b: CacheBackend) -> None:
        barrier.wait()
        for _ in range(50):
            b.incr("n")

    threads = [threading.Thread(target=run, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backends[0].get("n") == 8 * 50


# -- get_or_set ----------------------------------------------------------------------------------


def test_get_or_set_calls_a_callable_once(backend: CacheBackend) -> None:
    """get_or_set() with a callable calls it on a miss only, and caches its value."""
    calls: list[int] = []

    def load() -> dict[str, int]:
        calls.append(1)
        return {"load": len(calls)}

    assert backend.get_or_set("k", load) == {"load": 1}
    assert backend.get_or_set("k", load) == {"load": 1}
    assert calls == [1]
    assert backend.get("k") == {"load": 1}


def test_get_or_set_with_a_value_and_an_existing_key(backend: CacheBackend) -> None:
    """get_or_set() stores a plain default on a miss and returns an existing value as is."""
    assert backend.get_or_set("k", "default") == "default"
    assert backend.get("k") == "default"
    backend.set("other", 0)
    assert backend.get_or_set("other", "ignored") == 0
    assert backend.get_or_set("falsy", 0) == 0
    assert backend.get_or_set("falsy", 1) == 0  # a cached 0 is a hit, not a miss


def test_get_or_set_respects_the_timeout(backend: CacheBackend, clock: FakeClock) -> None:
    """get_or_set()'s timeout is the entry's lifetime."""
    backend.get_or_set("k", "v", timeout=10)
    clock.advance(11)
    assert backend.get_or_set("k", "w", timeout=10) == "w"


@pytest.mark.parametrize("timeout", [0, -5])
def test_get_or_set_with_zero_timeout_stores_nothing(backend: CacheBackend, timeout: int) -> None:
    """get_or_set() with a timeout <= 0 returns the default without caching it."""
    assert backend.get_or_set("k", lambda: "v", timeout=timeout) == "v"
    assert backend.get("k") is None
    backend.set("k", "there")
    assert backend.get_or_set("k", "v", timeout=timeout) == "there"


def test_get_or_set_propagates_the_callables_error(backend: CacheBackend) -> None:
    """An exception from the callable reaches the caller and nothing is cached."""

    def fail() -> None:
        raise LookupError("no such row")

    with pytest.raises(LookupError):
        backend.get_or_set("k", fail)
    assert backend.get("k", "absent") == "absent"


# -- many --------------------------------------------------------------------------------------


def test_set_many_get_many_delete_many(backend: CacheBackend) -> None:
    """set_many() returns no failed keys; get_many() returns only the keys present;
    delete_many() removes them."""
    assert backend.set_many({"a": 1, "b": None, "c": [3]}) == []
    assert backend.get_many(["a", "b", "c", "absent"]) == {"a": 1, "b": None, "c": [3]}
    assert backend.get_many(k for k in ("a", "absent")) == {"a": 1}
    backend.delete_many(["a", "c"])
    assert backend.get_many(["a", "b", "c"]) == {"b": None}
    assert backend.set_many({}) == []
    assert backend.get_many([]) == {}
    backend.delete_many([])


def test_set_many_timeout(backend: CacheBackend, clock: FakeClock) -> None:
    """set_many()'s timeout applies to every key; a timeout of 0 deletes them."""
    backend.set_many({"a": 1, "b": 2}, timeout=10)
    clock.advance(11)
    assert backend.get_many(["a", "b"]) == {}
    backend.set_many({"a": 1, "b": 2})
    assert backend.set_many({"a": 5, "b": 6}, timeout=0) == []
    assert backend.get_many(["a", "b"]) == {}


# -- keys, prefixes, versions ------------------------------------------------------------------


def test_versions(make_backend: Factory) -> None:
    """version= selects a separate key; VERSION sets the default one."""
    backend = make_backend(VERSION=2)
    backend.set("k", "v2")
    backend.set("k", "v3", version=3)
    assert backend.get("k") == "v2"
    assert backend.get("k", version=2) == "v2"
    assert backend.get("k", version=3) == "v3"
    assert backend.get("k", version=1) is None
    assert backend.make_key("k") == ":2:k"


def test_incr_version_and_decr_version(backend: CacheBackend) -> None:
    """incr_version() moves the value to the next version; decr_version() back."""
    backend.set("k", "v")
    assert backend.incr_version("k") == 2
    assert backend.get("k") is None
    assert backend.get("k", version=2) == "v"
    assert backend.decr_version("k", version=2) == 1
    assert backend.get("k") == "v"
    assert backend.get("k", version=2) is None
    with pytest.raises(ValueError, match="not found"):
        backend.incr_version("absent")


def test_key_prefix_separates_caches(make_backend: Factory, namespace: str) -> None:
    """Backends with different KEY_PREFIX share a store without seeing each other's keys."""
    shop, blog = make_backend(KEY_PREFIX="shop"), make_backend(KEY_PREFIX="blog")
    shop.set("k", "shop")
    blog.set("k", "blog")
    assert shop.get("k") == "shop"
    assert blog.get("k") == "blog"
    assert shop.key_prefix == "shop"
    assert shop.make_key("k") == "shop:1:k"
    assert shop.cache.store.get(f"{namespace}:v1:shop:1:k") is not None


@pytest.mark.parametrize(
    "key_function", [reversed_key, "tests.integrations.test_django_backend.reversed_key"]
)
def test_key_function(make_backend: Factory, namespace: str, key_function: Any) -> None:
    """KEY_FUNCTION (a callable or a dotted path) builds the key cachelayer stores."""
    backend = make_backend(KEY_FUNCTION=key_function, KEY_PREFIX="p")
    backend.set("abc", 1)
    assert backend.get("abc") == 1
    assert backend.cache.store.get(f"{namespace}:v1:cba|p|1") is not None


def test_keys_with_braces_and_percent_signs(backend: CacheBackend) -> None:
    """Keys holding '{', '}' or '%' (which cachelayer reserves) work and stay distinct."""
    keys = ["a}b", "{tag}", "a%7Db", "{", "}", "%", "%25", '{"json":1}']
    for i, key in enumerate(keys):
        backend.set(key, i)
    assert [backend.get(key) for key in keys] == list(range(len(keys)))
    assert backend.add("x}", 1)
    assert backend.incr("x}") == 2
    assert backend.touch("x}", 10)
    assert backend.get_many(["a}b", "{tag}"]) == {"a}b": 0, "{tag}": 1}


def test_memcached_unsafe_keys_warn_like_django_and_work(backend: CacheBackend) -> None:
    """Long keys or keys with spaces raise Django's CacheKeyWarning (as its own backends
    do) and are stored all the same."""
    long_key = "x" * 300
    with pytest.warns(CacheKeyWarning):
        backend.set(long_key, 1)
    with pytest.warns(CacheKeyWarning):
        assert backend.get(long_key) == 1
    with pytest.warns(CacheKeyWarning):
        backend.set("with space", 2)
    with pytest.warns(CacheKeyWarning):
        assert backend.get("with space") == 2


# -- timeouts ------------------------------------------------------------------------------------


def test_default_timeout_is_the_timeout_setting(make_backend: Factory, clock: FakeClock) -> None:
    """Without timeout=, or with DEFAULT_TIMEOUT, an entry lives for TIMEOUT seconds."""
    backend = make_backend(TIMEOUT=60)
    backend.set("a", 1)
    backend.set("b", 2, timeout=DEFAULT_TIMEOUT)
    backend.add("c", 3)
    clock.advance(59)
    assert backend.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    clock.advance(2)
    assert backend.get_many(["a", "b", "c"]) == {}


def test_timeout_none_never_expires(
    make_backend: Factory, clock: FakeClock, store_kind: str, redis_url: str, namespace: str
) -> None:
    """timeout=None (or TIMEOUT None) caches forever: no expiry in the store either."""
    backend = make_backend(TIMEOUT=None)
    backend.set("a", 1)
    backend.set("b", 2, timeout=None)
    clock.advance(100 * 365 * 86400)
    assert backend.get_many(["a", "b"]) == {"a": 1, "b": 2}
    if store_kind == "redis":
        client = redis.Redis.from_url(redis_url)
        assert client.pttl(f"{namespace}:v1::1:a") == -1
        client.close()


@pytest.mark.parametrize("timeout", [0, -1, -100.5])
def test_zero_or_negative_timeout_does_not_cache(backend: CacheBackend, timeout: float) -> None:
    """A timeout of 0 or less stores nothing and deletes what was there (as Django's
    backends do); add() then returns whether the key was absent."""
    backend.set("k", "old")
    backend.set("k", "new", timeout=timeout)
    assert backend.get("k") is None
    assert backend.add("k", "v", timeout=timeout) is True
    assert backend.get("k") is None
    backend.set("k", "there")
    assert backend.add("k", "v", timeout=timeout) is False
    assert backend.get("k") == "there"


def test_timeout_setting_zero_caches_nothing(make_backend: Factory) -> None:
    """TIMEOUT 0 makes every default-timeout write a no-op."""
    backend = make_backend(TIMEOUT=0)
    backend.set("k", 1)
    assert backend.get("k") is None
    backend.set("k", 1, timeout=5)
    assert backend.get("k") == 1


# -- clear, close, stores ------------------------------------------------------------------------


def test_clear_deletes_only_this_namespace(
    make_backend: Factory, namespace: str, store_kind: str, redis_url: str
) -> None:
    """clear() empties this backend's namespace and leaves other namespaces (and other
    data in the same Redis database) alone, unlike Django's RedisCache (FLUSHDB)."""
    mine = make_backend()
    other = make_backend(OPTIONS={"namespace": namespace + "-other"})
    mine.set_many({"a": 1, "b": 2})
    other.set("a", "kept")
    if store_kind == "redis":
        client = redis.Redis.from_url(redis_url)
        client.set(f"unrelated-{namespace}", b"kept")
    mine.clear()
    assert mine.get_many(["a", "b"]) == {}
    assert other.get("a") == "kept"
    if store_kind == "redis":
        assert client.get(f"unrelated-{namespace}") == b"kept"
        client.delete(f"unrelated-{namespace}")
        client.close()


def test_close_after_each_request_keeps_the_backend_usable(backend: CacheBackend) -> None:
    """Django calls close() after every request; the backend keeps working."""
    backend.set("k", 1)
    backend.close()
    assert backend.get("k") == 1
    backend.set("k", 2)
    assert backend.get("k") == 2


def test_memory_backends_with_one_location_share_data(namespace: str) -> None:
    """Backend objects of one memory LOCATION (one per thread, as Django builds them) see
    the same entries, like LocMemCache's LOCATION."""
    params: dict[str, Any] = {"OPTIONS": {"namespace": namespace}}
    first = CacheBackend("memory://?max_entries=100", dict(params))
    in_thread: list[Any] = []
    first.set("k", "shared")
    thread = threading.Thread(
        target=lambda: in_thread.append(CacheBackend("memory://?max_entries=100", params).get("k"))
    )
    thread.start()
    thread.join()
    assert in_thread == ["shared"]
    assert CacheBackend("memory://?max_entries=99", params).get("k") is None
    first.clear()


# -- values ---------------------------------------------------------------------------------------


def test_unsupported_value_raises_type_error_naming_it(backend: CacheBackend) -> None:
    """The safe default codec refuses an arbitrary object with a TypeError naming its
    type, in set(), add(), set_many() and get_or_set()."""
    match = "Opaque"
    with pytest.raises(TypeError, match=match):
        backend.set("k", Opaque(1))
    with pytest.raises(TypeError, match=match):
        backend.add("k", Opaque(1))
    with pytest.raises(TypeError, match=match):
        backend.set_many({"a": 1, "k": Opaque(1)})
    with pytest.raises(TypeError, match=match):
        backend.get_or_set("k", lambda: Opaque(1))
    assert backend.get_many(["a", "k"]) == {}


def test_signed_pickle_option_stores_arbitrary_objects(make_backend: Factory) -> None:
    """OPTIONS codec="pickle" with a signing_key caches what pickle can (Django's default
    semantics), signed so the store cannot inject code."""
    backend = make_backend(OPTIONS={"codec": "pickle", "signing_key": SIGNING_KEY})
    backend.set("k", Opaque(7))
    assert backend.get("k") == Opaque(7)
    assert backend.get_or_set("g", lambda: Opaque(8)) == Opaque(8)
    backend.set("n", 1)
    assert backend.incr("n") == 2


def test_registered_types_work_through_the_backend(backend: CacheBackend) -> None:
    """Types registered on backend.cache are cached with the safe codec."""
    backend.cache.register_type(
        Opaque, name="tests.Opaque", dump=lambda o: o.n, load=lambda n: Opaque(n)
    )
    backend.set("k", Opaque(3))
    assert backend.get("k") == Opaque(3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"codec": "pickle"}, "signing_key"),
        ({"ttl": 5}, "TIMEOUT"),
        ({"MAX_ENTRIES": 5}, "max_entries"),
        ({"CULL_FREQUENCY": 3}, "CULL_FREQUENCY"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"namespace": "bad namespace"}, "namespace"),
    ],
)
def test_misconfiguration_raises_improperly_configured(
    options: dict[str, Any], message: str
) -> None:
    """Bad OPTIONS raise ImproperlyConfigured naming the setting and the fix."""
    with pytest.raises(ImproperlyConfigured, match=message):
        CacheBackend("memory://", {"OPTIONS": options})


def test_bad_location_raises_improperly_configured() -> None:
    """A LOCATION that is not one cachelayer URL raises ImproperlyConfigured."""
    with pytest.raises(ImproperlyConfigured, match="LOCATION"):
        CacheBackend(["redis://a", "redis://b"], {})  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="not a Redis URL"):
        CacheBackend("memcached://localhost", {})


# -- failures -------------------------------------------------------------------------------------


def test_store_down_never_raises(dead_location: str) -> None:
    """With Redis down, reads miss, writes are dropped and nothing raises (fail-open);
    incr() raises ValueError as for an absent key, and set_many() reports every key."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"namespace": "down"}})
    try:
        assert backend.get("k", "fallback") == "fallback"
        backend.set("k", 1)
        assert backend.add("k", 1) is False
        assert backend.touch("k") is False
        assert backend.has_key("k") is False
        assert backend.delete("k") is False
        assert backend.get_many(["a", "b"]) == {}
        assert backend.set_many({"a": 1, "b": 2}) == ["a", "b"]
        backend.delete_many(["a", "b"])
        assert backend.get_or_set("k", lambda: "loaded") == "loaded"
        with pytest.raises(ValueError, match="unavailable"):
            backend.incr("k")
        backend.clear()
    finally:
        backend.cache.close()


async def test_store_down_never_raises_async(dead_location: str) -> None:
    """The async API fails open the same way."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"namespace": "down"}})
    try:
        assert await backend.aget("k", "fallback") == "fallback"
        await backend.aset("k", 1)
        assert await backend.aadd("k", 1) is False
        assert await backend.atouch("k") is False
        assert await backend.ahas_key("k") is False
        assert await backend.aset_many({"a": 1}) == ["a"]
        assert await backend.aget_or_set("k", "loaded") == "loaded"
        with pytest.raises(ValueError, match="unavailable"):
            await backend.aincr("k")
        await backend.aclear()
    finally:
        await backend.cache.aclose()


def test_on_error_raise_raises_store_unavailable(dead_location: str) -> None:
    """OPTIONS on_error="raise" makes calls raise StoreUnavailable instead."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"on_error": "raise"}})
    try:
        with pytest.raises(StoreUnavailable):
            backend.get("k")
        with pytest.raises(StoreUnavailable):
            backend.add("k", 1)
        with pytest.raises(StoreUnavailable):
            backend.set_many({"k": 1})
    finally:
        backend.cache.close()


def test_least_privilege_acl_user_is_enough(least_privilege_url: str) -> None:
    """Every backend operation runs as the Redis user docs/guide.md lists (its namespace's
    keys; GET, SET, DEL, scripts...): the backend needs no further command."""
    url = f"{least_privilege_url}?socket_timeout=2"
    backend = CacheBackend(url, {"OPTIONS": {"namespace": "shop", "on_error": "raise"}})
    try:
        backend.set("k", 1, timeout=60)
        assert backend.add("k", 2) is False
        assert backend.add("a", 2) is True
        assert backend.incr("k") == 2
        assert backend.touch("k", None) is True
        assert backend.get_or_set("g", "v") == "v"
        assert backend.set_many({"m": 1}) == []
        assert backend.get_many(["k", "m"]) == {"k": 2, "m": 1}
        backend.delete_many(["m"])
        assert backend.delete("a") is True
        backend.clear()
        assert backend.get("k") is None
    finally:
        backend.cache.close()


# -- async ----------------------------------------------------------------------------------------


async def test_async_api(abackend: CacheBackend, clock: FakeClock) -> None:
    """Every a* method behaves as its sync twin."""
    b = abackend
    assert await b.aget("k", "default") == "default"
    await b.aset("k", {"v": 1})
    assert await b.aget("k") == {"v": 1}
    assert await b.aadd("k", "x") is False
    assert await b.aadd("new", "x") is True
    assert await b.ahas_key("new")
    assert await b.adelete("new") is True
    assert await b.adelete("new") is False
    await b.aset("n", 10)
    assert await b.aincr("n") == 11
    assert await b.adecr("n", 5) == 6
    with pytest.raises(ValueError, match="not found"):
        await b.aincr("absent")
    assert await b.aset_many({"a": 1, "b": 2}) == []
    assert await b.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    await b.adelete_many(["a"])
    assert await b.aget_many(["a", "b"]) == {"b": 2}
    assert await b.aget_or_set("g", lambda: "loaded") == "loaded"
    assert await b.aget_or_set("g", "other") == "loaded"
    assert await b.aincr_version("g") == 2
    assert await b.aget("g", version=2) == "loaded"
    assert await b.adecr_version("g", version=2) == 1
    assert await b.atouch("k", 1000) is True
    clock.advance(500)  # past TIMEOUT (60), within the touched 1000 s
    assert await b.aget("k") == {"v": 1}
    assert await b.aget("b") is None
    await b.aset("k", 1, timeout=0)
    assert await b.aget("k") is None
    await b.aclear()
    assert await b.aget("g") is None
    await b.aclose()


async def test_aget_or_set_accepts_an_async_callable(abackend: CacheBackend) -> None:
    """aget_or_set() awaits an async default; with a timeout of 0 it is not stored."""

    async def load() -> str:
        return "async"

    assert await abackend.aget_or_set("k", load) == "async"
    assert await abackend.aget("k") == "async"
    assert await abackend.aget_or_set("z", load, timeout=0) == "async"
    assert await abackend.aget("z") is None


async def test_async_methods_use_no_threads(
    abackend: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The a* methods are native coroutines: none falls back to BaseCache's
    sync_to_async thread wrappers."""
    import django.core.cache.backends.base as base

    def no_threads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync_to_async used")

    monkeypatch.setattr(base, "sync_to_async", no_threads)
    b = abackend
    await b.aset("n", 1)
    await b.aadd("m", 1)
    await b.aget("n")
    await b.aincr("n")
    await b.adecr("n")
    await b.atouch("n")
    await b.ahas_key("n")
    await b.aget_many(["n"])
    await b.aset_many({"o": 1})
    await b.adelete_many(["o"])
    await b.aget_or_set("p", 1)
    await b.aincr_version("p")
    await b.adelete("n")
    await b.aclear()
    await b.aclose()
    for name in ["aget", "aset", "aadd", "adelete", "atouch", "ahas_key", "aincr",
                 "aget_many", "aset_many", "adelete_many", "aget_or_set", "aclear"]:  # fmt: skip
        assert getattr(CacheBackend, name) is not getattr(BaseCache, name), name


async def test_async_incr_and_add_are_atomic(abackend: CacheBackend) -> None:
    """Concurrent aincr() tasks lose no increment; of concurrent aadd()s one wins."""
    await abackend.aset("n", 0)

    async def bump() -> None:
        for _ in range(20):
            await abackend.aincr("n")

    await asyncio.gather(*(bump() for _ in range(10)))
    assert await abackend.aget("n") == 200
    wins = await asyncio.gather(*(abackend.aadd("k", i) for i in range(10)))
    assert sum(wins) == 1


# -- through Django: caches, the cache middleware -------------------------------------------------


@pytest.fixture
def caches_setting(location: str, namespace: str) -> Callable[..., dict[str, Any]]:
    """Build a CACHES setting whose default is this backend on the parametrized store."""

    def setting(**options: Any) -> dict[str, Any]:
        return {
            "default": {
                "BACKEND": BACKEND,
                "LOCATION": location,
                "TIMEOUT": 300,
                "KEY_PREFIX": "site",
                "OPTIONS": {"namespace": namespace, **options},
            }
        }

    return setting


def _close_default() -> None:
    caches["default"].clear()
    caches["default"].cache.close()  # type: ignore[attr-defined]


def test_caches_default_end_to_end(caches_setting: Callable[..., dict[str, Any]]) -> None:
    """CACHES with BACKEND "cachelayer.django.CacheBackend" serves django.core.cache.cache,
    across requests (request_finished closes caches)."""
    from django.core.cache import cache

    with override_settings(CACHES=caches_setting()):
        try:
            assert isinstance(caches["default"], CacheBackend)
            cache.set("user:42", {"id": 42}, 60)
            assert cache.get("user:42") == {"id": 42}
            assert cache.make_key("user:42") == "site:1:user:42"
            request_finished.send(sender=None)  # what Django sends after each request
            assert cache.get_or_set("n", 0) == 0
            assert cache.incr("n") == 1
            assert caches["default"].get_many(["user:42", "n"]) == {"user:42": {"id": 42}, "n": 1}
        finally:
            _close_default()


def _page_view() -> tuple[Callable[[HttpRequest], HttpResponse], list[int]]:
    calls: list[int] = []

    @cache_page(60)
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        return HttpResponse(f"page {len(calls)}")

    return view, calls


def test_cache_page_with_the_default_codec_serves_from_cache(
    caches_setting: Callable[..., dict[str, Any]],
) -> None:
    """cache_page works with the safe default codec: the second request is served from
    the cache (the view is not called) with the same status, headers, cookies and body."""
    calls: list[int] = []

    @cache_page(60)
    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        response = HttpResponse(f"page {len(calls)}", headers={"X-View": "yes"})
        response.set_cookie("seen", "1", max_age=30)
        return response

    with override_settings(CACHES=caches_setting()):
        try:
            first = view(RequestFactory().get("/page"))
            second = view(RequestFactory().get("/page"))
            assert calls == [1]
            assert second.content == first.content == b"page 1"
            assert second.status_code == 200
            assert second["X-View"] == "yes"
            assert second["Cache-Control"] == "max-age=60"
            assert second.cookies.output() == first.cookies.output()
            assert view(RequestFactory().get("/other")).content == b"page 2"
            assert caches["default"].cache.stats.hits >= 1  # type: ignore[attr-defined]
        finally:
            _close_default()


def test_cache_middleware_with_the_default_codec(
    caches_setting: Callable[..., dict[str, Any]],
) -> None:
    """The site-wide cache middleware (UpdateCacheMiddleware ... FetchFromCacheMiddleware)
    caches a JsonResponse with the default codec and serves it back as a JsonResponse."""
    calls: list[int] = []

    def view(request: HttpRequest) -> HttpResponse:
        calls.append(1)
        return JsonResponse({"n": len(calls)})

    with override_settings(CACHES=caches_setting(), CACHE_MIDDLEWARE_SECONDS=30):
        try:
            stack = UpdateCacheMiddleware(FetchFromCacheMiddleware(view))
            first = stack(RequestFactory().get("/api"))
            second = stack(RequestFactory().get("/api"))
            assert calls == [1]
            assert type(second) is JsonResponse
            assert second.content == first.content == b'{"n": 1}'
            assert second["Content-Type"] == "application/json"
        finally:
            _close_default()


def test_cache_page_with_signed_pickle_serves_from_cache(
    caches_setting: Callable[..., dict[str, Any]],
) -> None:
    """With OPTIONS codec="pickle" and a signing_key, cache_page caches the response:
    the second request is served without calling the view."""
    view, calls = _page_view()
    with override_settings(CACHES=caches_setting(codec="pickle", signing_key=SIGNING_KEY)):
        try:
            first = view(RequestFactory().get("/page"))
            second = view(RequestFactory().get("/page"))
            assert first.content == second.content == b"page 1"
            assert calls == [1]
            assert second.status_code == 200
            assert view(RequestFactory().get("/other")).content == b"page 2"
        finally:
            _close_default()
