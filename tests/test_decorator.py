"""@cache.cached on def and async def: keys, invalidation, negative caching, signatures."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from cachelayer import Cache, ConfigurationError


class NotFound(Exception):
    """A loader's 'no such row'."""


def test_sync_function_loads_once(cache: Cache) -> None:
    """A decorated function runs once per distinct argument set."""
    calls: list[int] = []

    @cache.cached(ttl=300, key="user:{user_id}")
    def get_user(user_id: int) -> dict[str, Any]:
        calls.append(user_id)
        return {"id": user_id}

    assert get_user(1) == {"id": 1}
    assert get_user(1) == {"id": 1}
    assert get_user(user_id=1) == {"id": 1}
    assert get_user(2) == {"id": 2}
    assert calls == [1, 2]


@pytest.mark.parametrize("value", [0, "", [], {}, False, None])
def test_falsy_results_are_cached(cache: Cache, value: Any) -> None:
    """A falsy return value is a hit on the next call."""
    calls: list[int] = []

    @cache.cached()
    def f() -> Any:
        calls.append(1)
        return value

    assert f() == value
    assert f() == value
    assert len(calls) == 1


def test_auto_key_positional_keyword_and_defaults_agree(cache: Cache) -> None:
    """Without key=, f(1), f(1, 2), f(a=1) and f(b=2, a=1) are one entry."""
    calls: list[tuple[int, int]] = []

    @cache.cached()
    def f(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert f(1) == f(1, 2) == f(a=1) == f(b=2, a=1) == 3
    assert calls == [(1, 2)]
    assert f.key(1) == f.key(a=1, b=2)
    assert "f:a=1,b=2" in f.key(1)


def test_distinct_arguments_get_distinct_entries(cache: Cache) -> None:
    """'42' and 42, and 'a b' and 'a%20b', are different calls with different entries."""

    @cache.cached()
    def echo(x: Any) -> str:
        return repr(x)

    assert echo("42") == "'42'"
    assert echo(42) == "42"
    assert echo("a b") == "'a b'"
    assert echo("a%20b") == "'a%20b'"
    assert echo("1:*") == "'1:*'"


def test_unrenderable_argument_raises_before_load(cache: Cache) -> None:
    """An argument with no stable rendering raises TypeError naming it; no load runs."""
    calls: list[object] = []

    @cache.cached()
    def f(thing: object) -> int:
        calls.append(thing)
        return 1

    with pytest.raises(TypeError, match="'thing'"):
        f(object())
    assert calls == []


def test_cache_key_hook(cache: Cache) -> None:
    """An object with __cache_key__ can be an argument."""

    class Tenant:
        def __init__(self, slug: str) -> None:
            self.slug = slug

        def __cache_key__(self) -> str:
            return self.slug

    calls: list[str] = []

    @cache.cached()
    def plan(tenant: Tenant) -> str:
        calls.append(tenant.slug)
        return tenant.slug.upper()

    assert plan(Tenant("acme")) == plan(Tenant("acme")) == "ACME"
    assert calls == ["acme"]


def test_invalidate_drops_one_entry(cache: Cache) -> None:
    """invalidate(args) drops that entry only; the next call loads again."""
    version = {"n": 0}

    @cache.cached(key="user:{user_id}")
    def get_user(user_id: int) -> int:
        version["n"] += 1
        return version["n"]

    assert get_user(1) == 1
    assert get_user(2) == 2
    assert get_user.invalidate(user_id=1) is True
    assert get_user(1) == 3
    assert get_user(2) == 2


def test_uncached_calls_through(cache: Cache) -> None:
    """uncached() runs the function and neither reads nor writes the cache."""
    calls: list[int] = []

    @cache.cached()
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f.uncached(1) == 1
    assert f.uncached(1) == 1
    assert f(1) == 1
    assert calls == [1, 1, 1]


def test_negative_caching(cache: Cache) -> None:
    """A listed exception is cached and re-raised (same type, same args) without a load."""
    calls: list[int] = []

    @cache.cached(cache_errors={NotFound: 30})
    def find(x: int) -> int:
        calls.append(x)
        raise NotFound(f"no row {x}")

    for _ in range(3):
        with pytest.raises(NotFound, match="no row 7"):
            find(7)
    assert calls == [7]
    assert cache.stats.negative_hits == 2


def test_negative_entry_expires(cache_factory: Any, clock: Any) -> None:
    """A cached error lives for its own TTL, then the loader runs again."""
    cache = cache_factory(clock=clock, jitter=0)
    calls: list[int] = []

    @cache.cached(ttl=300, cache_errors={NotFound: 30})
    def find(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise NotFound(x)
        return x

    with pytest.raises(NotFound):
        find(1)
    clock.advance(29)
    with pytest.raises(NotFound):
        find(1)
    clock.advance(2)
    assert find(1) == 1
    assert calls == [1, 1]


def test_negative_entry_carries_the_tags(cache: Cache) -> None:
    """Invalidating a tag drops a cached error too: "not found" does not outlive the create."""
    rows: dict[int, str] = {}

    @cache.cached(ttl=300, key="user:{user_id}", tags=["user:{user_id}"],
                  cache_errors={NotFound: 30})  # fmt: skip
    def find(user_id: int) -> str:
        if user_id not in rows:
            raise NotFound(user_id)
        return rows[user_id]

    with pytest.raises(NotFound):
        find(42)
    with pytest.raises(NotFound):
        find(42)  # served from the negative entry
    rows[42] = "Ada"
    assert cache.invalidate_tags("user:42")
    assert find(42) == "Ada"


def test_unlisted_exception_is_not_cached(cache: Cache) -> None:
    """An exception not in cache_errors propagates and is not cached."""
    calls: list[int] = []

    @cache.cached(cache_errors={NotFound: 30})
    def f() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("transient")
        return 5

    with pytest.raises(ValueError, match="transient"):
        f()
    assert f() == 5
    assert calls == [1, 1]


def test_template_errors_at_decoration_time(cache: Cache) -> None:
    """A template naming a missing parameter fails when decorating, naming it."""
    with pytest.raises(ConfigurationError, match="user_id"):

        @cache.cached(key="user:{user_id}")
        def f(uid: int) -> int:
            return uid


def test_bad_ttl_errors_at_decoration_time(cache: Cache) -> None:
    """An unknown TTL class fails when decorating."""
    with pytest.raises(ConfigurationError, match="unknown TTL class"):
        cache.cached(ttl="nope")


def test_signature_and_metadata_are_kept(cache: Cache) -> None:
    """The wrapper keeps the name, docstring and signature of the function."""

    @cache.cached()
    def get_user(user_id: int, *, full: bool = False) -> dict[str, int]:
        """Load a user."""
        return {"id": user_id}

    assert get_user.__name__ == "get_user"
    assert get_user.__doc__ == "Load a user."
    assert str(inspect.signature(get_user)) == str(inspect.signature(get_user.__wrapped__))


def test_methods_with_cache_key(cache: Cache) -> None:
    """A decorated method binds self, which renders through __cache_key__."""

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls = 0

        def __cache_key__(self) -> str:
            return self.name

        @cache.cached()
        def count(self, x: int) -> int:
            self.calls += 1
            return x * 2

    repo = Repo("users")
    assert repo.count(2) == repo.count(2) == 4
    assert repo.calls == 1


def test_callable_key(cache: Cache) -> None:
    """key= may be a callable with the function's signature."""

    @cache.cached(key=lambda user_id, lang="en": f"greeting:{user_id}:{lang}")
    def greet(user_id: int, lang: str = "en") -> str:
        return f"hi {user_id} {lang}"

    assert greet(1) == "hi 1 en"
    assert greet.key(1) == cache.engine.keys.full("greeting:1:en")
    assert cache.get("greeting:1:en") == "hi 1 en"


# -- async ------------------------------------------------------------------------------


async def test_async_function_loads_once(acache: Cache) -> None:
    """An async def is wrapped by a coroutine function that loads once."""
    calls: list[int] = []

    @acache.cached(ttl=300, key="user:{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    assert inspect.iscoroutinefunction(get_user)
    assert await get_user(1) == {"id": 1}
    assert await get_user(user_id=1) == {"id": 1}
    assert calls == [1]
    assert await get_user.ainvalidate(1) is True
    assert await get_user(1) == {"id": 1}
    assert calls == [1, 1]
    assert await get_user.uncached(5) == {"id": 5}


async def test_async_negative_caching(acache: Cache) -> None:
    """Negative caching works the same for async functions."""
    calls: list[int] = []

    @acache.cached(cache_errors={NotFound: 30})
    async def find(x: int) -> int:
        calls.append(x)
        raise NotFound(x)

    for _ in range(2):
        with pytest.raises(NotFound):
            await find(3)
    assert calls == [3]


def test_unhashable_arguments_still_make_keys(cache: Cache) -> None:
    """Lists, dicts and sets are arguments like any other (the key memo, which only
    remembers int and str arguments, never hashes them)."""
    calls: list[object] = []

    @cache.cached(ttl=60)
    def size(x: object) -> int:
        calls.append(x)
        return len(x)  # type: ignore[arg-type]

    for arg in ([1, 2], {"a": 1}, {1, 2}):
        assert size(arg) == len(arg)
        assert size(arg) == len(arg)
    assert len(calls) == 3
