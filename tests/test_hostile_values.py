"""Hostile values: what someone who can write to the store, without the signing key, can
make a reader do. Every forged entry is a miss (counted in ``stats.decode_errors``),
never an exception, a large allocation or another key's value."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelayer import Cache
from cachelayer._steps import Get, Set
from cachelayer.backends import MemoryStore
from cachelayer.errors import ConfigurationError
from tests.conftest import make_cache

HEADER = struct.Struct(">2sBBBBIQQ")
SECRET = b"hostile-test-secret-0123456789"
MISS = object()
P = 2**61 - 1  # hash(k * P) == 0 for every int k


class NotFound(Exception):
    pass


def plant(cache: Cache, key: str, raw: bytes) -> None:
    """Write raw bytes under ``key`` (a caller key), as a foreign writer would."""
    cache.engine.call(Set(cache.engine.keys.full(key), raw, None, None), True)


def stored(cache: Cache, key: str) -> bytes:
    """The raw bytes the store holds for ``key`` (a caller key)."""
    raw = cache.engine.call(Get(cache.engine.keys.full(key)), True)
    assert isinstance(raw, bytes)
    return raw


def envelope(codec_id: int, payload: bytes, flags: int = 0) -> bytes:
    """An unsigned version 1 envelope around ``payload``."""
    return HEADER.pack(b"cL", 1, codec_id, flags, 0, 0, 1_700_000_000_000, 0) + payload


def zstd_bomb(codec: str, mib: int) -> bytes:
    """A small compressed entry whose payload is ``mib`` MiB of tiny containers."""
    if codec == "json":
        body, codec_id = b"[" + b"[]," * (mib * 1024 * 1024 // 3) + b"[]]", 1
    else:
        count = mib * 1024 * 1024
        body, codec_id = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count, 2
    return envelope(codec_id, zstandard.ZstdCompressor(level=3).compress(body), 0x01)


@pytest.fixture
def factory(store_kind: str, redis_url: str, namespace: str) -> Iterator[Callable[..., Cache]]:
    """Caches on one store (memory or Redis) and namespace; cleared and closed after."""
    made: list[Cache] = []
    memory = MemoryStore()

    def make(**options: Any) -> Cache:
        cache = make_cache(store_kind, redis_url, namespace, memory, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.clear()
        cache.close()


# -- 1. decompression bombs and what decoding may build ---------------------------------


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_compressed_bomb_is_a_miss_before_it_is_decompressed(
    factory: Callable[..., Cache], codec: str
) -> None:
    """A 16 MiB zstd bomb (over the 8 MiB default) is a counted miss that allocates ~nothing."""
    cache = factory(codec=codec)
    plant(cache, "k", zstd_bomb(codec, 16))
    tracemalloc.start()
    try:
        assert cache.get("k", MISS) is MISS
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    assert cache.stats.decode_errors == 1


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_compressed_bomb_is_a_miss_async(factory: Callable[..., Cache], codec: str) -> None:
    """aget and aget_or_load see a bomb as a miss: the loader runs and its value is kept."""
    cache = factory(codec=codec)
    plant(cache, "k", zstd_bomb(codec, 16))
    assert await cache.aget("k", MISS) is MISS
    assert await cache.aget_or_load("k", lambda: "loaded", 60) == "loaded"
    assert await cache.aget("k") == "loaded"


def test_uncompressed_payload_over_max_value_size_is_a_miss(factory: Callable[..., Cache]) -> None:
    """A stored payload over max_value_size is refused before it is decoded."""
    small = factory(max_value_size=1024)
    plant(small, "k", envelope(1, orjson.dumps(["x" * 2000])))
    assert small.get("k", MISS) is MISS
    assert small.get_or_load("k", lambda: "loaded") == "loaded"
    assert small.stats.decode_errors == 2  # the get, and the read_through's first look


def test_value_over_max_value_size_is_refused_on_write(factory: Callable[..., Cache]) -> None:
    """set() of a value no reader would accept raises ValueError naming the option."""
    cache = factory(max_value_size=1024, compress_threshold=0)
    with pytest.raises(ValueError, match="max_value_size"):
        cache.set("k", "x" * 2000)  # compresses to a few bytes: the limit is the payload's
    cache.set("k", "x" * 1000)
    assert cache.get("k") == "x" * 1000


def test_a_loaded_value_over_max_value_size_is_returned_not_stored(
    factory: Callable[..., Cache],
) -> None:
    """A load too large to store still answers its caller (a failing store never fails
    an API call, nor does a big value): not stored, counted as oversized."""
    cache = factory(max_value_size=1024)
    calls: list[int] = []

    @cache.cached(ttl=60, key="big:{n}")
    def big(n: int) -> str:
        calls.append(n)
        return "y" * n

    assert big(5000) == "y" * 5000
    assert big(5000) == "y" * 5000
    assert calls == [5000, 5000]
    assert cache.stats.oversized == 2
    assert big(10) == "y" * 10
    assert big(10) == "y" * 10
    assert calls == [5000, 5000, 10]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "8MiB", None])
def test_max_value_size_must_be_a_positive_int(bad: Any) -> None:
    """A max_value_size that is not an int >= 1 is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="max_value_size"):
        Cache(max_value_size=bad)


def _colliding_json(n: int, tag: str) -> bytes:
    ints = [{"$cl": ["int", str(k * P)]} for k in range(10, 10 + n)]
    if tag == "map":
        return orjson.dumps({"$cl": ["map", [[i, None] for i in ints]]})
    return orjson.dumps({"$cl": [tag, ints]})


def _colliding_msgpack(n: int, kind: str) -> bytes:
    ints = [msgpack.ExtType(4, str(k * P).encode()) for k in range(10, 10 + n)]
    if kind == "map":
        return bytes(msgpack.packb(dict.fromkeys(ints)))
    return bytes(msgpack.packb(msgpack.ExtType(2, msgpack.packb(ints))))


@pytest.mark.parametrize(
    ("codec_id", "payload"),
    [
        (1, _colliding_json(2000, "set")),
        (1, _colliding_json(2000, "frozenset")),
        (1, _colliding_json(2000, "map")),
        (2, _colliding_msgpack(2000, "set")),
        (2, _colliding_msgpack(2000, "map")),
    ],
    ids=["json-set", "json-frozenset", "json-map", "msgpack-set", "msgpack-map"],
)
def test_keys_sharing_one_hash_are_a_miss(codec_id: int, payload: bytes) -> None:
    """A set or map of many distinct keys with one hash (n**2 / 2 comparisons to build) is
    refused in linear time: a miss."""
    cache = Cache(codec="json" if codec_id == 1 else "msgpack")
    plant(cache, "k", envelope(codec_id, payload, 0x08 if codec_id == 1 else 0))
    assert cache.get("k", MISS) is MISS
    assert cache.stats.decode_errors == 1


def test_a_few_keys_sharing_a_hash_still_round_trip() -> None:
    """Legitimate collisions (-1 and -2, multiples of 2**61-1) are values like any other."""
    value = {frozenset({-1, -2}), (-1, -2), (-2, -1), *(k * P for k in range(-20, 20))}
    for codec in ("json", "msgpack"):
        cache = Cache(codec=codec)
        cache.set("k", [value, {(-1,): 1, (-2,): 2}])
        assert cache.get("k") == [value, {(-1,): 1, (-2,): 2}]


# -- 2. a signed value is bound to its store key ----------------------------------------


def test_signed_value_copied_to_another_key_is_a_miss(factory: Callable[..., Cache]) -> None:
    """Copying user:1's signed permissions onto user:2 does not give user:2 those rights."""
    cache = factory(signing_key=SECRET)
    cache.set("user:1:permissions", ["admin", "billing"])
    plant(cache, "user:2:permissions", stored(cache, "user:1:permissions"))
    assert cache.get("user:2:permissions", MISS) is MISS
    assert cache.get_many(["user:2:permissions"]) == {}
    assert cache.get_or_load("user:2:permissions", lambda: ["reader"]) == ["reader"]
    assert cache.get("user:1:permissions") == ["admin", "billing"]


async def test_signed_value_copied_to_another_key_is_a_miss_async(
    factory: Callable[..., Cache],
) -> None:
    """The same through aget and aget_or_load."""
    cache = factory(signing_key=SECRET)
    await cache.aset("user:1:permissions", ["admin", "billing"])
    plant(cache, "user:2:permissions", stored(cache, "user:1:permissions"))
    assert await cache.aget("user:2:permissions", MISS) is MISS
    assert await cache.aget_or_load("user:2:permissions", lambda: ["reader"]) == ["reader"]


def test_signed_negative_entry_copied_to_another_key_does_not_raise(
    factory: Callable[..., Cache],
) -> None:
    """A cached NotFound copied onto another key is a miss there: its loader runs."""
    cache = factory(signing_key=SECRET)

    @cache.cached(60, key="user:{uid}", cache_errors={NotFound: 60})
    def user(uid: int) -> str:
        if uid == 1:
            raise NotFound(uid)
        return f"user {uid}"

    with pytest.raises(NotFound):
        user(1)
    plant(cache, "user:2", stored(cache, "user:1"))
    assert user(2) == "user 2"
    with pytest.raises(NotFound):  # still cached where it was written
        user(1)


async def test_signed_negative_entry_copied_to_another_key_does_not_raise_async(
    factory: Callable[..., Cache],
) -> None:
    """The same for an async decorated function."""
    cache = factory(signing_key=SECRET)

    @cache.cached(60, key="user:{uid}", cache_errors={NotFound: 60})
    async def user(uid: int) -> str:
        if uid == 1:
            raise NotFound(uid)
        return f"user {uid}"

    with pytest.raises(NotFound):
        await user(1)
    plant(cache, "user:2", stored(cache, "user:1"))
    assert await user(2) == "user 2"


def test_signed_value_does_not_move_across_versions_or_namespaces(
    store_kind: str, redis_url: str, namespace: str
) -> None:
    """The store key signed includes the namespace and the version."""
    memory = MemoryStore()
    v1 = make_cache(store_kind, redis_url, namespace, memory, signing_key=SECRET)
    v2 = make_cache(store_kind, redis_url, namespace, memory, signing_key=SECRET, version=2)
    other = make_cache(store_kind, redis_url, namespace + "x", memory, signing_key=SECRET)
    try:
        v1.set("k", "v1 value")
        plant(v2, "k", stored(v1, "k"))
        plant(other, "k", stored(v1, "k"))
        assert v2.get("k", MISS) is MISS
        assert other.get("k", MISS) is MISS
        assert v1.get("k") == "v1 value"
    finally:
        for cache in (v1, v2, other):
            cache.clear()
            cache.close()


# -- 3. forged negative entries ----------------------------------------------------------


FORGED_NEGATIVES = [
    {"error": ["tests.test_hostile_values.NotFound"], "args": []},
    {"error": {"a": 1}, "args": []},
    {"error": f"{__name__}.NotFound", "args": {"a": 1}},
    {"error": f"{__name__}.NotFound", "args": "ab"},
    {"error": f"{__name__}.NotFound", "args": [], "more": 1},
    {"error": f"{__name__}.NotFound"},
    [f"{__name__}.NotFound", []],
    None,
]


@pytest.mark.parametrize("forged", FORGED_NEGATIVES, ids=repr)
def test_malformed_negative_entry_is_a_counted_miss(
    factory: Callable[..., Cache], forged: Any
) -> None:
    """A negative entry whose error or args have the wrong type is a miss, never a raise."""
    cache = factory()
    plant(cache, "k", envelope(1, orjson.dumps(forged), 0x04))
    got = cache.get_or_load("k", lambda: "loaded", 60, cache_errors={NotFound: 60})
    assert got == "loaded"
    assert cache.stats.decode_errors == 1


@pytest.mark.parametrize("forged", FORGED_NEGATIVES[:3], ids=repr)
async def test_malformed_negative_entry_is_a_counted_miss_async(
    factory: Callable[..., Cache], forged: Any
) -> None:
    """The same through an async decorated function."""
    cache = factory()

    @cache.cached(60, key="k", cache_errors={NotFound: 60})
    async def load() -> str:
        return "loaded"

    plant(cache, "k", envelope(1, orjson.dumps(forged), 0x04))
    assert await load() == "loaded"
    assert cache.stats.decode_errors == 1


# -- 4. pickle only for a pickle Cache -----------------------------------------------------


class Opaque:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_json_or_msgpack_cache_never_unpickles(factory: Callable[..., Cache], codec: str) -> None:
    """A signed pickle entry (same key, same secret) is a miss for a non-pickle Cache."""
    writer = factory(codec="pickle", signing_key=SECRET)
    reader = factory(codec=codec, signing_key=SECRET)
    writer.set("k", Opaque(1))
    assert writer.get("k") == Opaque(1)
    assert reader.get("k", MISS) is MISS
    assert reader.stats.decode_errors == 1


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_json_or_msgpack_cache_never_unpickles_async(
    factory: Callable[..., Cache], codec: str
) -> None:
    """The same through aget_or_load: the loader's value replaces the pickle entry."""
    writer = factory(codec="pickle", signing_key=SECRET)
    reader = factory(codec=codec, signing_key=SECRET)
    await writer.aset("k", Opaque(1))
    assert await reader.aget_or_load("k", lambda: [1], 60) == [1]
    assert await reader.aget("k") == [1]


# -- the hostile-input property suite ----------------------------------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=5)
        | st.frozensets(st.integers(), max_size=5)
    ),
    max_leaves=20,
)


def _frame_declaring(size: int) -> bytes:
    """A zstd frame whose header declares ``size`` bytes of content (it holds 3)."""
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"[1]"))
    # single-segment frame, 1-byte FCS: rewrite the descriptor for an 8-byte FCS
    descriptor = frame[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    fcs_len = {0: single, 1: 2, 2: 4, 3: 8}[fcs_flag]
    start = 5 + (0 if single else 1)
    rest = frame[start + fcs_len :]
    head = bytes([frame[4] | 0xC0 | 0x20]) if single else bytes([(frame[4] & 0x3F) | 0xC0])
    window = b"" if single else bytes(frame[5:6])
    return bytes(frame[:4]) + head + window + size.to_bytes(8, "little") + bytes(rest)


def _deep(codec_id: int, depth: int, tagged: bool) -> bytes:
    if codec_id == 2:
        return b"\x91" * depth + b"\xc0"
    if tagged:
        return b'{"$cl":["tuple",[' * depth + b"1" + b"]]}" * depth
    return b"[" * depth + b"]" * depth


@st.composite
def mutations(draw: st.DrawFn, raw: bytes, moved: bytes) -> bytes:
    """A forged variant of the envelope ``raw``, or ``moved`` (another key's envelope)."""
    kind = draw(
        st.sampled_from(
            ["flip", "truncate", "extend", "header", "swap", "random", "zstd", "deep", "moved"]
        )
    )
    data = bytearray(raw)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif kind == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    elif kind == "header":
        field = draw(st.sampled_from([2, 3, 4, 5]))  # version, codec, flags, reserved
        data[field] = draw(st.integers(0, 255))
    elif kind == "swap":
        other = draw(st.sampled_from([1, 2, 3]))
        flags = draw(st.integers(0, 0x1F))
        head = HEADER.pack(b"cL", draw(st.sampled_from([1, 2])), other, flags, 0, 0, 0, 0)
        data[:26] = head
    elif kind == "random":
        data = bytearray(draw(st.binary(max_size=80)))
    elif kind == "zstd":
        size = draw(st.sampled_from([2**63, 2**40, 600 * 2**20, 9 * 2**20, 3, 2]))
        codec_id = draw(st.sampled_from([1, 2]))
        version, signed = draw(st.sampled_from([(1, 0), (2, 0x02)]))
        head = HEADER.pack(b"cL", version, codec_id, 0x01 | signed, 0, 0, 0, 0)
        data = bytearray(head + _frame_declaring(size) + raw[-32:] * (signed // 2))
    elif kind == "moved":
        data = bytearray(moved)
    else:
        codec_id = draw(st.sampled_from([1, 2]))
        tagged = draw(st.booleans())
        payload = _deep(codec_id, draw(st.sampled_from([90, 101, 300, 1100, 20_000])), tagged)
        flags = 0x08 if tagged and codec_id == 1 else 0
        data = bytearray(HEADER.pack(b"cL", 1, codec_id, flags, 0, 0, 0, 0) + payload)
    return bytes(data)


def _check(cache: Cache, value: Any, forged: bytes, signed: bool) -> None:
    """Reads of ``forged`` under key "k" never raise; signed, they never return anything
    but ``value`` (an unsigned store can be written by anyone: any value may come back)."""
    plant(cache, "k", forged)
    got = cache.get("k", MISS)
    many = cache.get_many(["k"]).get("k", MISS)
    try:
        loaded = cache.get_or_load("k", lambda: "LOADED", 60, cache_errors={NotFound: 60})
    except NotFound:
        assert not signed  # a well-formed negative entry is what an unsigned writer may plant
        loaded = MISS
    if signed:
        for result in (got, many):
            assert result is MISS or result == value
        assert loaded == "LOADED" or loaded == value


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), value=values)
def test_forged_envelopes_never_raise_or_lie(
    codec: str, signed: bool, data: st.DataObject, value: Any
) -> None:
    """Mutated, truncated, extended, re-headed, random, bomb and deeply nested envelopes:
    a miss or (signed) the value stored under the key, never an exception."""
    cache = Cache(codec=codec, signing_key=SECRET if signed else None, compress_threshold=0)
    cache.set("k", value)
    cache.set("other", ("OTHER", value))
    _check(cache, value, data.draw(mutations(stored(cache, "k"), stored(cache, "other"))), signed)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), value=values)
def test_forged_envelopes_never_raise_or_lie_on_redis(
    redis_url: str, namespace: str, data: st.DataObject, value: Any
) -> None:
    """The same against Redis, signed, fewer examples."""
    cache = make_cache("redis", redis_url, namespace, signing_key=SECRET, compress_threshold=0)
    try:
        cache.set("k", value)
        cache.set("other", ("OTHER", value))
        moved = stored(cache, "other")
        _check(cache, value, data.draw(mutations(stored(cache, "k"), moved)), True)
    finally:
        cache.clear()
        cache.close()


@settings(max_examples=40, deadline=None)
@given(raw=st.binary(max_size=200), key=st.text("ab:_", min_size=1, max_size=10))
def test_arbitrary_bytes_under_any_key_never_raise(raw: bytes, key: str) -> None:
    """Any bytes at any key: get and get_or_load return a miss, a loaded or decoded value."""
    cache = Cache(codec="msgpack", signing_key=SECRET)
    plant(cache, key, b"cL" + raw)
    assert cache.get(key, MISS) is MISS
    assert cache.get_or_load(key, lambda: 1, 60) == 1
