"""django-redis's extras on cachelayer.django.CacheBackend, on memory and Redis, sync and async.

ttl/pttl, expire, persist, delete_pattern, keys/iter_keys and lock, with the meanings
docs/django.md ("Migrating from django-redis") gives them. Expiry is moved with the
Cache's injected clock; the lock's races are driven by events.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest

from cachelayer import Lock, LockError, StoreUnavailable
from cachelayer._keys import derived_key
from cachelayer.django import CacheBackend
from cachelayer.testing import free_port
from tests.conftest import FakeClock
from tests.integrations.conftest import Factory, backend_params


@pytest.fixture
async def abackend(location: str, namespace: str, clock: FakeClock) -> AsyncIterator[CacheBackend]:
    """A backend used from asyncio, cleared and closed in the test's own event loop."""
    backend = CacheBackend(location, backend_params(namespace, clock, {}))
    yield backend
    await backend.aclear()
    await backend.cache.aclose()


@pytest.fixture
def dead_location() -> str:
    """A Redis URL where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0?socket_timeout=0.5&socket_connect_timeout=0.5"


def hiding_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION that does not keep the key as it is (it reverses it)."""
    return f"{key_prefix}:{version}:{key}"[::-1]


def slash_key(key: str, key_prefix: str, version: int) -> str:
    """A KEY_FUNCTION with its own layout, keeping the key as it is."""
    return f"v{version}/{key}/{key_prefix}"


# -- ttl, pttl, expire, persist ---------------------------------------------------------------


def test_ttl_of_absent_persistent_and_expiring_keys(
    backend: CacheBackend, clock: FakeClock
) -> None:
    """ttl() is 0 for an absent or expired key, None for one without expiry, else the
    seconds left, rounded up (pttl(): milliseconds)."""
    assert backend.ttl("absent") == 0
    assert backend.pttl("absent") == 0
    backend.set("forever", 1, timeout=None)
    assert backend.ttl("forever") is None
    assert backend.pttl("forever") is None
    backend.set("k", 1, timeout=100)
    assert backend.ttl("k") == 100
    clock.advance(30.5)
    assert backend.ttl("k") == 70
    assert backend.pttl("k") == 69_500
    clock.advance(70)
    assert backend.ttl("k") == 0
    backend.set("default", 1)
    assert backend.ttl("default") == 300


def test_expire_then_ttl(backend: CacheBackend, clock: FakeClock) -> None:
    """expire() gives a live key a new timeout and returns True; False when absent;
    None makes it permanent and 0 deletes it."""
    backend.set("k", "v", timeout=10)
    assert backend.expire("k", 500) is True
    assert backend.ttl("k") == 500
    clock.advance(400)
    assert backend.get("k") == "v"
    assert backend.expire("absent", 10) is False
    assert backend.expire("k", None) is True
    assert backend.ttl("k") is None
    assert backend.expire("k", 0) is True
    assert backend.get("k") is None
    assert backend.ttl("k") == 0


def test_persist_removes_the_expiry(backend: CacheBackend, clock: FakeClock) -> None:
    """persist() makes a key permanent and returns True if it had a timeout (False when
    it is absent or already permanent, as Redis's PERSIST)."""
    backend.set("k", "v", timeout=10)
    assert backend.persist("k") is True
    assert backend.ttl("k") is None
    assert backend.persist("k") is False
    assert backend.persist("absent") is False
    clock.advance(10 * 365 * 86400)
    assert backend.get("k") == "v"


def test_ttl_expire_persist_honour_version_and_key_prefix(make_backend: Factory) -> None:
    """The extras map keys as get/set do: VERSION and KEY_PREFIX apply."""
    backend = make_backend(KEY_PREFIX="p", VERSION=3)
    backend.set("k", 1, timeout=50, version=2)
    assert backend.ttl("k") == 0
    assert backend.ttl("k", version=2) == 50
    assert backend.expire("k", 60, version=2) is True
    assert backend.ttl("k", version=2) == 60
    assert backend.persist("k", version=2) is True
    assert make_backend(KEY_PREFIX="q").ttl("k", version=2) == 0


# -- delete_pattern, keys, iter_keys ----------------------------------------------------------


def test_delete_pattern_deletes_only_matching_keys_of_this_cache(
    make_backend: Factory, namespace: str
) -> None:
    """delete_pattern() deletes this cache's matching keys and returns their count; another
    KEY_PREFIX, version or namespace on the same store is untouched."""
    backend = make_backend(KEY_PREFIX="app")
    other_prefix = make_backend(KEY_PREFIX="other")
    other_namespace = make_backend(KEY_PREFIX="app", OPTIONS={"namespace": namespace + "x"})
    for target in (backend, other_prefix, other_namespace):
        target.set_many({"user:1": 1, "user:2": 2, "order:1": 3})
    backend.set("user:1", "v2", version=2)

    assert backend.delete_pattern("user:*") == 2
    assert backend.get_many(["user:1", "user:2", "order:1"]) == {"order:1": 3}
    assert backend.get("user:1", version=2) == "v2"
    assert len(other_prefix.get_many(["user:1", "user:2", "order:1"])) == 3
    assert len(other_namespace.get_many(["user:1", "user:2", "order:1"])) == 3
    assert backend.delete_pattern("user:*") == 0
    assert backend.delete_pattern("user:?", version=2) == 1


@pytest.mark.parametrize(("prefix", "bystander"), [("a*", "ab"), ("[ab]", "a"), ("a?", "ab")])
def test_glob_characters_in_key_prefix_match_literally(
    make_backend: Factory, prefix: str, bystander: str
) -> None:
    """KEY_PREFIX is glob-escaped: only the caller's pattern is a glob, so a prefix with
    * ? [ ] never reaches another prefix's keys."""
    backend = make_backend(KEY_PREFIX=prefix)
    other = make_backend(KEY_PREFIX=bystander)
    backend.set("k", 1)
    other.set("k", 2)
    assert other.keys("*") == ["k"]
    assert backend.keys("*") == ["k"]
    assert backend.delete_pattern("*") == 1
    assert other.get("k") == 2
    assert backend.get("k") is None


def test_keys_and_iter_keys_yield_the_callers_keys(backend: CacheBackend) -> None:
    """keys()/iter_keys() return the keys callers used, with braces, percent signs and
    glob characters as they wrote them, for the pattern given."""
    names = ["user:1", "user:2", "order:1", "{tag}%25", "star*key"]
    backend.set_many(dict.fromkeys(names, 0))
    assert sorted(backend.keys("*")) == sorted(names)
    assert sorted(backend.iter_keys("user:*")) == ["user:1", "user:2"]
    assert backend.keys("{tag}*") == ["{tag}%25"]
    assert backend.keys("star\\*key") == ["star*key"]
    assert backend.keys("nothing*") == []
    assert backend.delete_pattern("{tag}%*") == 1
    assert backend.get("{tag}%25") is None


def test_keys_follow_version_and_key_function(make_backend: Factory) -> None:
    """keys() lists one version's keys, and reverses any KEY_FUNCTION that keeps the key
    as it is."""
    backend = make_backend(KEY_FUNCTION=slash_key, KEY_PREFIX="p")
    backend.set("a", 1)
    backend.set("b", 1, version=2)
    assert backend.keys("*") == ["a"]
    assert backend.keys("*", version=2) == ["b"]
    assert backend.delete_pattern("*", version=2) == 1
    assert backend.get("a") == 1


def test_a_key_function_that_hides_the_key_is_refused(make_backend: Factory) -> None:
    """Patterns need the key unchanged inside the made key: otherwise ValueError."""
    backend = make_backend(KEY_FUNCTION=hiding_key)
    backend.set("k", 1)
    with pytest.raises(ValueError, match="KEY_FUNCTION"):
        backend.keys("*")
    with pytest.raises(ValueError, match="KEY_FUNCTION"):
        backend.delete_pattern("*")


def test_long_keys_are_hashed_and_not_matched(make_backend: Factory) -> None:
    """A key longer than max_key_length is stored hashed: no pattern lists or deletes it
    (clear() does), and get/delete still work."""
    backend = make_backend(OPTIONS={"max_key_length": 64})
    long_key = "user:" + "x" * 80
    backend.set(long_key, 1)
    backend.set("user:1", 1)
    assert backend.keys("user:*") == ["user:1"]
    assert backend.delete_pattern("user:*") == 1
    assert backend.get(long_key) == 1
    assert backend.delete(long_key) is True


def test_delete_pattern_voids_loads_in_flight(backend: CacheBackend) -> None:
    """delete_pattern() deletes each key's lease with it, so a fill that started before
    the delete cannot land afterwards."""
    engine = backend.cache.engine
    full = engine.keys.full(backend.make_key("user:1"))
    backend.set("user:1", 1)
    lease = "{" + full + "}:lease"
    engine.runner.store.set(lease, b"token", 30)
    assert backend.delete_pattern("user:*") == 1
    assert engine.runner.store.get(lease) is None


def test_delete_pattern_in_batches(backend: CacheBackend) -> None:
    """More keys than one delete step holds are all deleted, and all counted."""
    backend.set_many({f"k{i}": i for i in range(1203)})
    assert backend.delete_pattern("k*") == 1203
    assert backend.keys("k*") == []


# -- lock -------------------------------------------------------------------------------------


def test_lock_maps_the_key_and_excludes_other_holders(make_backend: Factory) -> None:
    """lock() names the lock by the Django key (KEY_PREFIX, VERSION); two backends of one
    alias exclude each other, and a waiting thread gets the lock after the release."""
    first, second = make_backend(KEY_PREFIX="p"), make_backend(KEY_PREFIX="p")
    owner = first.lock("job", timeout=30)
    assert isinstance(owner, Lock)
    assert owner.key == derived_key(first.cache.engine.keys.full(first.make_key("job")), "lock")
    assert owner.acquire()
    assert make_backend(KEY_PREFIX="q").lock("job").acquire(blocking=False) is True
    assert first.lock("job", version=2).acquire(blocking=False) is True
    refused, got = threading.Event(), threading.Event()

    def wait_for_it() -> None:
        waiter = second.lock("job", sleep=0.005)
        assert waiter.acquire(blocking=False) is False
        refused.set()
        assert waiter.acquire(blocking_timeout=10)
        got.set()
        waiter.release()

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    assert refused.wait(10)
    assert not got.is_set()
    owner.release()
    thread.join(10)
    assert got.is_set()


def test_lock_blocking_timeout_and_non_owner_release(backend: CacheBackend) -> None:
    """A second holder waits at most blocking_timeout, and cannot release the lock."""
    owner = backend.lock("job")
    with owner:
        other = backend.lock("job", blocking_timeout=0.02, sleep=0.005)
        assert other.acquire() is False
        with pytest.raises(LockError):
            other.release()
        assert owner.locked()
    assert not owner.locked()


def test_lock_does_not_fail_open(dead_location: str) -> None:
    """With the store down the backend's lock raises StoreUnavailable, though its other
    calls fail open."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"namespace": "down"}})
    try:
        assert backend.get("k") is None
        with pytest.raises(StoreUnavailable):
            backend.lock("job").acquire()
    finally:
        backend.cache.close()


# -- failures ---------------------------------------------------------------------------------


def test_extras_fail_open_when_the_store_is_down(dead_location: str) -> None:
    """With the store down ttl() is 0, expire()/persist() are False, keys() is empty and
    delete_pattern() is 0, counted as an invalidation error."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"namespace": "down"}})
    try:
        assert backend.ttl("k") == 0
        assert backend.expire("k", 10) is False
        assert backend.persist("k") is False
        assert backend.keys("*") == []
        assert list(backend.iter_keys("*")) == []
        before = backend.cache.stats.invalidation_errors
        assert backend.delete_pattern("*") == 0
        assert backend.cache.stats.invalidation_errors == before + 1
    finally:
        backend.cache.close()


def test_extras_raise_with_on_error_raise(dead_location: str) -> None:
    """OPTIONS on_error="raise" makes the extras raise StoreUnavailable."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"on_error": "raise"}})
    try:
        with pytest.raises(StoreUnavailable):
            backend.ttl("k")
        with pytest.raises(StoreUnavailable):
            backend.delete_pattern("*")
        with pytest.raises(StoreUnavailable):
            backend.keys("*")
    finally:
        backend.cache.close()


# -- async ------------------------------------------------------------------------------------


async def test_async_extras(abackend: CacheBackend, clock: FakeClock) -> None:
    """attl/apttl/aexpire/apersist/akeys/aiter_keys/adelete_pattern mirror the sync API."""
    assert await abackend.attl("k") == 0
    await abackend.aset("k", "v", timeout=100)
    await abackend.aset("user:1", 1)
    await abackend.aset("user:2", 2)
    clock.advance(0.25)
    assert await abackend.attl("k") == 100
    assert await abackend.apttl("k") == 99_750
    assert await abackend.aexpire("k", 20) is True
    assert await abackend.attl("k") == 20
    assert await abackend.aexpire("absent", 20) is False
    assert await abackend.apersist("k") is True
    assert await abackend.attl("k") is None
    assert await abackend.apersist("k") is False
    assert sorted(await abackend.akeys("user:*")) == ["user:1", "user:2"]
    assert sorted([key async for key in abackend.aiter_keys("*")]) == ["k", "user:1", "user:2"]
    assert await abackend.adelete_pattern("user:*") == 2
    assert await abackend.akeys("*") == ["k"]


async def test_async_lock(abackend: CacheBackend) -> None:
    """The backend's lock works with async with, and excludes a second holder."""
    async with abackend.lock("job", timeout=30) as held:
        assert await held.alocked()
        assert await abackend.lock("job").aacquire(blocking=False) is False
    assert await abackend.lock("job").aacquire(blocking=False) is True


async def test_async_extras_when_the_store_is_down(dead_location: str) -> None:
    """The async extras fail open the same way; the async lock raises StoreUnavailable."""
    backend = CacheBackend(dead_location, {"OPTIONS": {"namespace": "down"}})
    try:
        assert await backend.attl("k") == 0
        assert await backend.aexpire("k", 1) is False
        assert await backend.akeys("*") == []
        assert await backend.adelete_pattern("*") == 0
        with pytest.raises(StoreUnavailable):
            await backend.lock("job").aacquire()
    finally:
        await backend.cache.aclose()


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[%]*", ["%discount"]),
        ("a?", ["a{", "ab"]),
        ("x[}]", ["x}"]),
        ("*%*", ["%discount", "50%"]),
    ],
)
def test_patterns_meet_escaped_characters_exactly(
    make_backend: Factory, pattern: str, expected: list[str]
) -> None:
    """A ? or a [...] class over %, { or } (stored escaped, three characters each) matches
    exactly what it says: "[%]*" once deleted "2024-report" too."""
    backend = make_backend()
    names = ["%discount", "2024-report", "5star", "a{", "ab", "abc", "x}", "xy", "50%"]
    for name in names:
        backend.set(name, 1)
    assert sorted(backend.keys(pattern)) == sorted(expected)
    assert backend.delete_pattern(pattern) == len(expected)
    assert sorted(backend.keys("*")) == sorted(set(names) - set(expected))
