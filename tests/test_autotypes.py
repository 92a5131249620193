"""Values a new team caches on day one: pydantic models, dataclasses, Enums and the
collections types, through the type registry, with no registration code."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
from typing import Any

import pytest
from pydantic import BaseModel

from cachelayer import Cache, ConfigurationError


class UserOut(BaseModel):
    id: int
    name: str
    joined: dt.datetime
    tags: list[str] = []


class Plan(enum.Enum):
    FREE = "free"
    PRO = "pro"


@dataclasses.dataclass
class Order:
    id: int
    total: str
    plan: Plan


class Opaque:
    """A class no codec can store."""


def test_a_pydantic_return_annotation_just_works(cache: Cache) -> None:
    """-> UserOut: the model is registered at decoration; hits rebuild an equal model
    (a TypeError after the query ran, on every call, before)."""
    calls: list[int] = []

    @cache.cached(ttl=60, key="user:{user_id}")
    def get_user(user_id: int) -> UserOut:
        calls.append(user_id)
        return UserOut(id=user_id, name="Ada", joined=dt.datetime(2024, 1, 1), tags=["x"])

    first = get_user(1)
    second = get_user(1)
    assert second == first
    assert isinstance(second, UserOut)
    assert calls == [1]


async def test_containers_of_models_and_async_functions(acache: Cache) -> None:
    """list[UserOut] | None on an async def: every class the annotation names counts."""

    @acache.cached(ttl=60, key="team:{team_id}")
    async def team(team_id: int) -> list[UserOut] | None:
        return [UserOut(id=i, name=f"u{i}", joined=dt.datetime(2024, 1, i)) for i in (1, 2)]

    assert await team(7) == await team(7)
    assert all(isinstance(u, UserOut) for u in await team(7))


def test_dataclasses_and_enums_from_annotations(cache: Cache) -> None:
    """A dataclass holding an Enum member, both named by the annotation."""

    @cache.cached(ttl=60, key="order:{order_id}")
    def order(order_id: int) -> Order | Plan:
        return Order(id=order_id, total="9.99", plan=Plan.PRO)

    assert order(3) == Order(3, "9.99", Plan.PRO)
    assert order(3).plan is Plan.PRO


def test_register_type_needs_no_functions_for_models_and_enums(cache: Cache) -> None:
    """register_type(UserOut) and register_type(Plan) work without dump/load."""
    cache.register_type(UserOut)
    cache.register_type(Plan)
    value = {"user": UserOut(id=1, name="a", joined=dt.datetime(2024, 5, 1)), "plan": Plan.FREE}
    cache.set("k", value)
    assert cache.get("k") == value


@pytest.mark.parametrize(
    "value",
    [
        collections.Counter("abracadabra"),
        collections.OrderedDict([("b", 1), ("a", 2)]),
        collections.deque([1, 2, 3], maxlen=5),
        collections.defaultdict(list, {"a": [1]}),
        collections.defaultdict(None, {1: 2}),
    ],
)
def test_collections_types_round_trip(cache: Cache, value: Any) -> None:
    """Counter, OrderedDict, deque and defaultdict (a built-in factory) come back exactly."""
    cache.set("k", value)
    back = cache.get("k")
    assert type(back) is type(value)
    assert back == value
    if isinstance(value, collections.deque):
        assert back.maxlen == value.maxlen
    if isinstance(value, collections.defaultdict):
        assert back.default_factory is value.default_factory


def test_an_annotation_naming_an_unstorable_class_fails_at_decoration(cache: Cache) -> None:
    """-> Opaque is refused when the function is decorated, naming the class and what
    to do, instead of after the first query."""
    with pytest.raises(ConfigurationError, match="Opaque"):

        @cache.cached(ttl=60)
        def load() -> Opaque:
            return Opaque()


def test_forward_references_and_protocols_are_left_to_run_time(cache: Cache) -> None:
    """An annotation that does not resolve yet, or names an interface, is not judged."""

    @cache.cached(ttl=60, key="later")
    def later() -> DefinedLater:  # type: ignore[name-defined]  # noqa: F821
        return 1  # type: ignore[return-value]

    assert later() == 1


def test_stored_data_never_names_a_class_into_being(cache: Cache) -> None:
    """Only classes the application registered are rebuilt: a value naming another
    class (say a pydantic model registered by nobody) is a miss."""
    other = Cache(namespace=cache.engine.keys.namespace)  # a process that knows UserOut
    other.register_type(UserOut)
    blob = other.engine.encode(
        UserOut(id=1, name="x", joined=dt.datetime(2024, 1, 1)),
        60,
        key=cache.engine.keys.full("k"),
    )
    cache.store.set(cache.engine.keys.full("k"), blob, 60)
    fresh = Cache(cache.store, namespace=cache.engine.keys.namespace)  # never registered it
    assert fresh.get("k", "miss") == "miss"
    other.close()
