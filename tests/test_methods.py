"""``@cache.cached`` on methods: they bind like methods, helpers included, and ``self``
stays out of the key unless a template names it."""

from __future__ import annotations

import inspect

import pytest

from cachelayer import Cache


def make_repo(cache: Cache) -> tuple[type, list[int]]:
    calls: list[int] = []

    class Repo:
        def __init__(self, name: str = "main") -> None:
            self.name = name

        @cache.cached(ttl=300, key="item:{item_id}")
        def item(self, item_id: int) -> dict[str, int]:
            calls.append(item_id)
            return {"id": item_id}

        @cache.cached(ttl=300)
        def auto(self, item_id: int) -> int:
            calls.append(item_id)
            return item_id * 2

        @cache.cached(ttl=300, key="count:{kind}")
        @classmethod
        def count(cls, kind: str) -> int:
            calls.append(-1)
            return len(kind)

        @cache.cached(ttl=300, key="double:{n}")
        @staticmethod
        def double(n: int) -> int:
            calls.append(-2)
            return n * 2

    return Repo, calls


def test_a_method_is_cached_and_its_helpers_bind_the_instance(cache: Cache) -> None:
    """repo.item(1) is cached; repo.item.invalidate(1), .key(1) and .uncached(1) bind
    repo as a method does (invalidate raised "missing a required argument" before)."""
    repo_cls, calls = make_repo(cache)
    repo = repo_cls()
    assert repo.item(1) == {"id": 1}
    assert repo.item(1) == {"id": 1}
    assert calls == [1]
    assert repo.item.key(1) == cache.engine.keys.full("item:1")
    assert repo.item.invalidate(1) is True
    assert repo.item(1) == {"id": 1}
    assert calls == [1, 1]
    assert repo.item.uncached(2) == {"id": 2}
    assert repo_cls.item(repo, 1) == {"id": 1}  # through the class: self passed by hand


def test_self_is_not_in_the_automatic_key(cache: Cache) -> None:
    """Two instances share the entries of a call: self stays out of an automatic key
    (its default repr would make every instance a key of its own)."""
    repo_cls, calls = make_repo(cache)
    first, second = repo_cls("a"), repo_cls("b")
    assert first.auto(3) == 6
    assert second.auto(3) == 6
    assert calls == [3]
    assert first.auto.key(3) == second.auto.key(3)


def test_a_template_can_name_self_with_a_cache_key(cache: Cache) -> None:
    """key="{self}:..." puts the instance in the key through its __cache_key__()."""

    class Tenant:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant

        def __cache_key__(self) -> str:
            return self.tenant

        @cache.cached(ttl=300, key="t:{self}:user:{user_id}")
        def user(self, user_id: int) -> str:
            return f"{self.tenant}/{user_id}"

    assert Tenant("acme").user(1) == "acme/1"
    assert Tenant("umbrella").user(1) == "umbrella/1"
    assert Tenant("acme").user.key(1) != Tenant("umbrella").user.key(1)


def test_classmethod_and_staticmethod(cache: Cache) -> None:
    """@cache.cached over @classmethod binds the class; over @staticmethod, nothing."""
    repo_cls, calls = make_repo(cache)
    assert repo_cls.count("abc") == 3
    assert repo_cls().count("abc") == 3
    assert calls.count(-1) == 1
    assert repo_cls.count.invalidate("abc") is True
    assert repo_cls.double(4) == 8
    assert repo_cls().double(4) == 8
    assert calls.count(-2) == 1
    assert repo_cls.double.invalidate(4) is True


def test_warm_a_method(cache: Cache) -> None:
    """repo.item.warm([...]) warms the instance's calls."""
    repo_cls, calls = make_repo(cache)
    repo = repo_cls()
    assert repo.item.warm([1, 2, 3]).loaded == 3
    assert [repo.item(i) for i in (1, 2, 3)] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert sorted(calls) == [1, 2, 3]


async def test_an_async_method(acache: Cache) -> None:
    """An async method is cached, invalidated and warmed through its instance, and
    frameworks see a coroutine function (FastAPI checks __call__)."""
    loads: list[int] = []

    class Service:
        @acache.cached(ttl=300, key="svc:{n}")
        async def get(self, n: int) -> int:
            loads.append(n)
            return n + 1

    svc = Service()
    assert await svc.get(1) == 2
    assert await svc.get(1) == 2
    assert loads == [1]
    assert await svc.get.ainvalidate(1) is True
    assert (await svc.get.awarm([1, 2])).loaded == 2
    assert inspect.iscoroutinefunction(svc.get.__call__)
    assert inspect.iscoroutinefunction(Service.get)
    assert list(inspect.signature(svc.get).parameters) == ["n"]


def test_a_function_nested_in_a_function_is_not_a_method(cache: Cache) -> None:
    """Only functions of a class body bind: a nested function keeps its first argument."""

    @cache.cached(ttl=300, key="nested:{x}")
    def nested(x: int) -> int:
        return x

    assert nested(5) == 5
    assert nested.invalidate(5) is True
    with pytest.raises(TypeError):
        nested.invalidate()  # type: ignore[call-arg]


def test_automatic_keys_keep_tenants_subclasses_and_static_arguments_apart(
    cache: Cache,
) -> None:
    """From review: an instance with __cache_key__ (a tenant), a subclass inheriting a
    method, a classmethod's cls and a staticmethod's first argument all enter the key;
    dropping them served one caller another's value."""

    class Repo:
        def __init__(self, tenant: str) -> None:
            self.tenant = tenant

        def __cache_key__(self) -> str:
            return self.tenant

        @cache.cached(ttl=60)
        def item(self, item_id: int) -> str:
            return f"{self.tenant}:{item_id}"

    assert Repo("a").item(1) == "a:1"
    assert Repo("b").item(1) == "b:1"

    class Base:
        prefix = "base"

        @cache.cached(ttl=60)
        def load(self, n: int) -> str:
            return f"{self.prefix}:{n}"

        @cache.cached(ttl=60)
        @classmethod
        def make(cls, n: int) -> str:
            return f"{cls.__name__}:{n}"

    class Sub(Base):
        prefix = "sub"

    assert Base().load(1) == "base:1"
    assert Sub().load(1) == "sub:1"
    assert Base.make(1) == "Base:1"
    assert Sub.make(1) == "Sub:1"

    class Calc:
        @staticmethod
        @cache.cached(ttl=60)
        def double(n: int) -> int:
            return n * 2

    assert Calc.double(1) == 2
    assert Calc.double(2) == 4
