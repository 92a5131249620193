"""The Cache API on every store: values, TTLs, keys, get_or_load, sync and async."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from cachelayer import MISSING, Cache, ConfigurationError
from tests.conftest import FakeClock

FALSY = [0, 0.0, "", [], {}, False, None, (), b""]


@pytest.mark.parametrize("value", FALSY, ids=repr)
def test_falsy_values_are_cached(cache: Cache, value: Any) -> None:
    """A falsy value is stored and read back as itself, not as 'absent'."""
    cache.set("k", value)
    assert cache.get("k", MISSING) == value
    assert type(cache.get("k", MISSING)) is type(value)


def test_get_default_and_missing(cache: Cache) -> None:
    """An absent key gives None by default, or the caller's sentinel."""
    assert cache.get("absent") is None
    assert cache.get("absent", MISSING) is MISSING
    cache.set("none", None)
    assert cache.get("none", MISSING) is None


def test_rich_value_roundtrip(cache: Cache) -> None:
    """A profile-like value with every supported type comes back equal and typed."""
    value = {
        "id": 42,
        "name": "Ada",
        "joined": dt.datetime(2020, 5, 1, 12, 0, tzinfo=dt.timezone.utc),
        "birthday": dt.date(1815, 12, 10),
        "balance": Decimal("10.50"),
        "uuid": UUID(int=42),
        "coords": (1.5, -2.0),
        "tags": {"a", "b"},
        "blob": b"\x00\x01",
        "nested": [{"k": None}, [True, False]],
    }
    cache.set("profile", value)
    assert cache.get("profile") == value


def test_unsupported_type_raises_at_set(cache: Cache) -> None:
    """set() of an unsupported type raises TypeError naming it, and stores nothing."""

    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(TypeError, match="Point"):
        cache.set("k", Point(1))
    with pytest.raises(TypeError, match="complex"):
        cache.set("k", 1 + 2j)
    assert cache.get("k", MISSING) is MISSING


def test_registered_type_roundtrips(cache: Cache) -> None:
    """A registered dataclass comes back as the dataclass, not a dict."""

    @dataclasses.dataclass
    class User:
        id: int
        name: str

    cache.register_type(User, name="test.User")
    cache.set("u", [User(1, "Ada")])
    assert cache.get("u") == [User(1, "Ada")]


def test_delete(cache: Cache) -> None:
    """delete removes the entry and says whether there was one."""
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.get("k", MISSING) is MISSING
    assert cache.delete("k") is False


def test_many(cache: Cache) -> None:
    """get_many returns only present keys; set_many and delete_many cover all keys."""
    cache.set_many({"a": 1, "b": 0, "c": None}, ttl=60)
    assert cache.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": 0, "c": None}
    assert cache.delete_many(["a", "b"]) == 2
    assert cache.get_many(["a", "b", "c"]) == {"c": None}


def test_expiry_follows_the_cache_clock(cache_factory: Any, clock: FakeClock) -> None:
    """An entry is fresh until its TTL passes on the Cache's clock, then absent."""
    cache = cache_factory(clock=clock, jitter=0)
    cache.set("k", "v", ttl=10)
    clock.advance(9.9)
    assert cache.get("k") == "v"
    clock.advance(0.2)
    assert cache.get("k", MISSING) is MISSING


def test_ttl_none_never_expires(cache_factory: Any, clock: FakeClock) -> None:
    """ttl=None stores without expiry."""
    cache = cache_factory(clock=clock)
    cache.set("k", "v", ttl=None)
    clock.advance(10 * 365 * 86400)
    assert cache.get("k") == "v"


def test_ttl_classes(cache_factory: Any, clock: FakeClock) -> None:
    """A named TTL class resolves to its seconds; an unknown one is a clear error."""
    cache = cache_factory(clock=clock, ttls={"leaderboard": 60}, jitter=0)
    cache.set("k", 1, ttl="leaderboard")
    clock.advance(59)
    assert cache.get("k") == 1
    clock.advance(2)
    assert cache.get("k") is None
    with pytest.raises(ConfigurationError, match="unknown TTL class 'nope'"):
        cache.set("k", 1, ttl="nope")


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "3"])
def test_bad_ttl_is_rejected(cache: Cache, bad: Any) -> None:
    """A TTL that is not positive seconds, None or a class raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        cache.set("k", 1, ttl=bad)


def test_jitter_bounds_ttl(cache_factory: Any, clock: FakeClock) -> None:
    """With jitter 0.1 the effective TTL lies in [90%, 110%] of the asked one."""
    low = cache_factory(clock=clock, jitter=0.1, rng=lambda: 0.0)
    high = cache_factory(clock=clock, jitter=0.1, rng=lambda: 0.999999)
    low.set("low", 1, ttl=100)
    high.set("high", 1, ttl=100)
    clock.advance(89.9)
    assert low.get("low") == 1
    clock.advance(0.2)
    assert low.get("low") is None
    assert high.get("high") == 1
    clock.advance(19.8)
    assert high.get("high") == 1
    clock.advance(0.2)
    assert high.get("high") is None


def test_get_or_load_loads_once_even_for_falsy(cache: Cache) -> None:
    """get_or_load calls the loader on the first miss only, for falsy values too."""
    for i, value in enumerate(FALSY):
        calls: list[int] = []

        def loader(value: Any = value, calls: list[int] = calls) -> Any:
            calls.append(1)
            return value

        assert cache.get_or_load(f"k{i}", loader) == value
        assert cache.get_or_load(f"k{i}", loader) == value
        assert len(calls) == 1, value


def test_get_or_load_loader_error_propagates_and_caches_nothing(cache: Cache) -> None:
    """A loader's exception reaches the caller unchanged and the next call loads again."""
    err = KeyError("boom")

    def failing() -> Any:
        raise err

    with pytest.raises(KeyError) as info:
        cache.get_or_load("k", failing)
    assert info.value is err
    assert cache.get_or_load("k", lambda: "ok") == "ok"


def test_get_or_load_unsupported_value_raises(cache: Cache) -> None:
    """A loader returning an unsupported type raises TypeError; the next loader fills."""
    with pytest.raises(TypeError, match="object"):
        cache.get_or_load("k", object)
    assert cache.get_or_load("k", lambda: 1) == 1
    assert cache.get_or_load("k", lambda: 2) == 1


def test_corrupt_entry_is_a_miss_and_is_overwritten(cache: Cache) -> None:
    """Bytes that do not decode count as a miss: the loader runs and replaces them."""
    full = cache.engine.keys.full("k")
    cache.store.set(full, b"garbage", 60.0)
    assert cache.get("k", MISSING) is MISSING
    assert cache.get_or_load("k", lambda: "fresh") == "fresh"
    assert cache.get("k") == "fresh"
    assert cache.stats.decode_errors == 2


def test_foreign_format_version_is_a_miss(cache: Cache) -> None:
    """An envelope of another format version is a miss, never an exception."""
    cache.set("k", 1)
    full = cache.engine.keys.full("k")
    raw = bytearray(cache.store.get(full) or b"")
    raw[2] = 99
    cache.store.set(full, bytes(raw), 60.0)
    assert cache.get_or_load("k", lambda: 2) == 2


def test_signed_cache_rejects_unsigned_entries(cache_factory: Any) -> None:
    """With a signing key, an entry written without one is a miss."""
    plain = cache_factory()
    signed = cache_factory(signing_key=b"0123456789abcdef")
    plain.set("k", "unsigned")
    assert signed.get("k", MISSING) is MISSING
    signed.set("k", "signed")
    assert signed.get("k") == "signed"
    assert plain.get("k", MISSING) is MISSING


def test_pickle_needs_signing_key() -> None:
    """codec='pickle' without a signing key is refused at construction."""
    with pytest.raises(ConfigurationError, match="signing_key"):
        Cache("memory://", codec="pickle")


def test_msgpack_codec(cache_factory: Any) -> None:
    """The msgpack codec stores and reads back exact types."""
    cache = cache_factory(codec="msgpack")
    cache.set("k", {"a": (1, 2), 3: {b"x"}})
    assert cache.get("k") == {"a": (1, 2), 3: {b"x"}}


def test_compressed_values_roundtrip(cache_factory: Any) -> None:
    """Values above the compression threshold are stored smaller and read back."""
    cache = cache_factory(compress_threshold=100)
    value = ["the same words again"] * 500
    cache.set("k", value)
    raw = cache.store.get(cache.engine.keys.full("k"))
    assert raw is not None
    assert len(raw) < 2000
    assert cache.get("k") == value


def test_version_bump_orphans_old_entries(cache_factory: Any) -> None:
    """A Cache with a new version does not see the old version's entries."""
    v1 = cache_factory(version=1)
    v2 = cache_factory(version=2)
    v1.set("k", "old")
    assert v2.get("k", MISSING) is MISSING
    assert v1.get("k") == "old"


def test_clear_removes_only_this_namespace(cache_factory: Any, namespace: str) -> None:
    """clear() empties this namespace and version only."""
    a = cache_factory()
    b = cache_factory(version=2)
    a.set("k", 1)
    b.set("k", 2)
    assert a.clear() >= 1
    assert a.get("k") is None
    assert b.get("k") == 2


def test_keys_of_wrong_type(cache: Cache) -> None:
    """A non-str key is a TypeError, an empty key a ValueError."""
    with pytest.raises(TypeError, match="str"):
        cache.get(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        cache.set("", 1)


def test_configuration_errors() -> None:
    """Bad options are named in the error."""
    with pytest.raises(ConfigurationError, match="namespace"):
        Cache(namespace="a:b")
    with pytest.raises(ConfigurationError, match="on_error"):
        Cache(on_error="explode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="jitter"):
        Cache(jitter=1.5)
    with pytest.raises(ConfigurationError, match="not a Redis URL"):
        Cache("http://localhost")
    with pytest.raises(ConfigurationError, match="max_entries"):
        Cache("memory://?max_entries=lots")
    with pytest.raises(ConfigurationError, match="bogus"):
        Cache("memory://?bogus=1")


def test_repr_hides_password() -> None:
    """A password in the URL never appears in repr()."""
    cache = Cache("redis://app:s3cret@localhost:6379/0", namespace="x")
    assert "s3cret" not in repr(cache)
    cache.close()


def test_stats_count_hits_misses_loads(cache: Cache) -> None:
    """Hits, misses, loads and fills are counted."""
    cache.get_or_load("k", lambda: 1)
    cache.get_or_load("k", lambda: 1)
    snap = cache.stats.snapshot()
    assert (snap["hits"], snap["misses"], snap["loads"], snap["fills"]) == (1, 1, 1, 1)


# -- async twins ------------------------------------------------------------------------


async def test_async_api_roundtrip(acache: Cache) -> None:
    """aset/aget/adelete and the many-variants behave like their sync twins."""
    await acache.aset("k", 0)
    assert await acache.aget("k", MISSING) == 0
    assert await acache.adelete("k") is True
    assert await acache.aget("k", MISSING) is MISSING
    await acache.aset_many({"a": [], "b": ""})
    assert await acache.aget_many(["a", "b", "c"]) == {"a": [], "b": ""}
    assert await acache.adelete_many(["a", "b"]) == 2


async def test_aget_or_load_with_sync_and_async_loaders(acache: Cache) -> None:
    """aget_or_load accepts sync loaders and coroutine functions, loading once."""
    calls: list[str] = []

    async def aload() -> str:
        calls.append("a")
        return "A"

    def load() -> str:
        calls.append("s")
        return "S"

    assert await acache.aget_or_load("a", aload) == "A"
    assert await acache.aget_or_load("a", aload) == "A"
    assert await acache.aget_or_load("s", load) == "S"
    assert await acache.aget_or_load("s", load) == "S"
    assert calls == ["a", "s"]


async def test_async_loader_error_propagates(acache: Cache) -> None:
    """An async loader's exception reaches the caller unchanged."""

    async def failing() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        await acache.aget_or_load("k", failing)
    assert await acache.aget("k", MISSING) is MISSING


async def test_sync_and_async_share_entries(acache: Cache) -> None:
    """The sync and async faces of one Cache see the same data."""
    acache.set("k", "from sync")
    assert await acache.aget("k") == "from sync"
    await acache.aset("k", "from async")
    assert acache.get("k") == "from async"
