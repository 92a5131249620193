"""The local tier against a real Redis: hits, purges from other Caches (as other
processes would send them) for every kind of invalidation, sync and async; the racing
read; a lost channel; and the multi-process coherence run (bench/bench_local.py)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cachelayer import Cache, ConfigurationError, LocalTier, StoreUnavailable
from cachelayer._local import MISSING
from cachelayer.backends import MemoryStore
from cachelayer.backends.base import SyncAsAsync
from cachelayer.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it holds (bounded): purges arrive asynchronously."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


@pytest.fixture
def pair(redis_url: str) -> Iterator[tuple[Cache, Cache]]:
    """Two Caches on one namespace, each with its own tier and subscription."""
    ns = f"lt{uuid.uuid4().hex[:8]}"
    a = Cache(redis_url, namespace=ns, local={"max_entries": 100, "max_ttl": 30})
    b = Cache(redis_url, namespace=ns, local={"max_entries": 100, "max_ttl": 30})
    assert a.wait_local(5)
    assert b.wait_local(5)
    yield a, b
    a.clear()
    a.close()
    b.close()


def held(cache: Cache, key: str) -> bool:
    assert cache.local is not None
    return cache.local.get(cache.engine.keys.full(key)) is not MISSING


def purges(cache: Cache) -> int:
    """How many purges from other processes the cache's tier has applied."""
    local = cache.stats().local
    assert local is not None
    return local.purges


def test_get_is_served_locally_after_one_store_read(pair: tuple[Cache, Cache]) -> None:
    """The first get reads the store and keeps the value; the next is a local hit
    returning the same object."""
    a, _ = pair
    a.set("k", {"n": 1})
    first = a.get("k")
    assert held(a, "k")
    assert a.get("k") is first
    assert a.stats.local_hits == 1


@pytest.mark.parametrize(
    "write",
    [
        lambda c: c.set("k", {"n": 2}),
        lambda c: c.delete("k"),
        lambda c: c.delete_many(["k", "other"]),
        lambda c: c.set_many({"k": {"n": 2}}),
        lambda c: c.clear(),
    ],
    ids=["set", "delete", "delete_many", "set_many", "clear"],
)
def test_writes_elsewhere_purge_this_tier(pair: tuple[Cache, Cache], write: Callable) -> None:
    """Every kind of write in another process drops the key from this one's tier."""
    a, b = pair
    a.set("k", {"n": 1})
    a.get("k")
    assert held(a, "k")
    write(b)
    assert eventually(lambda: not held(a, "k"))
    assert a.get("k") in (None, {"n": 2})


def test_own_writes_are_read_at_once(pair: tuple[Cache, Cache]) -> None:
    """A process reads its own write immediately (its tier is purged in the call)."""
    a, _ = pair
    a.set("k", 1)
    a.get("k")
    a.set("k", 2)
    assert a.get("k") == 2
    a.delete("k")
    assert a.get("k") is None


def test_decorated_tags_purge_across_processes(pair: tuple[Cache, Cache]) -> None:
    """A tag invalidated elsewhere drops every local entry carrying it; others stay."""
    a, b = pair
    loads: list[int] = []

    @a.cached(key="u:{i}", tags=["user:{i}"])
    def user(i: int) -> dict[str, int]:
        loads.append(i)
        return {"i": i, "load": len(loads)}

    for _ in range(3):
        user(1), user(2)
    assert loads == [1, 2]
    assert a.stats.local_hits >= 2
    b.invalidate_tags("user:1")
    assert eventually(lambda: not held(a, "u:1"))
    assert held(a, "u:2")
    assert user(1)["load"] == 3
    assert user(2)["load"] == 2


def test_decorated_invalidate_purges_other_processes(pair: tuple[Cache, Cache]) -> None:
    """fn.invalidate in one process drops the entry from another's tier."""
    a, b = pair

    @a.cached(key="p:{i}")
    def fa(i: int) -> str:
        return "a"

    @b.cached(key="p:{i}")
    def fb(i: int) -> str:
        return "b"

    fa(1), fa(1)
    assert held(a, "p:1")
    fb.invalidate(1)
    assert eventually(lambda: not held(a, "p:1"))


def test_async_faces_use_and_purge_the_tier(pair: tuple[Cache, Cache]) -> None:
    """aget, an async decorated function and every async write behave as the sync ones."""
    a, b = pair

    async def scenario() -> None:
        await a.aset("k", 1)
        assert await a.aget("k") == 1
        assert held(a, "k")
        await b.aset("k", 2)
        assert eventually(lambda: not held(a, "k"))
        assert await a.aget("k") == 2

        calls: list[int] = []

        @a.cached(key="ak:{i}", tags=["t:{i}"])
        async def load(i: int) -> int:
            calls.append(i)
            return len(calls)

        assert [await load(1) for _ in range(3)] == [1, 1, 1]
        assert held(a, "ak:1")
        await b.ainvalidate_tags("t:1")
        assert eventually(lambda: not held(a, "ak:1"))
        assert await load(1) == 2
        await load(1)
        await b.adelete_many(["ak:1"])
        assert eventually(lambda: not held(a, "ak:1"))
        await a.aget("k")
        await b.aclear()
        assert eventually(lambda: not held(a, "k"))
        await a.aset_many({"m": 1})
        await a.aget("m")
        await b.adelete("m")
        assert eventually(lambda: not held(a, "m"))

    asyncio.run(scenario())


def test_a_read_racing_an_invalidation_is_not_kept(pair: tuple[Cache, Cache]) -> None:
    """Step by step: a read starts, another process writes, the purge arrives, the read
    finishes with the old value -- which is returned but not kept."""
    a, b = pair
    assert a.local is not None
    a.set("k", "old")
    key = a.engine.keys.full("k")
    since = a.local.seq  # taken before the store read, as the read path does
    raw = a.store.get(key)
    seq = a.local.seq
    b.set("k", "new")
    assert eventually(lambda: a.local is not None and a.local.seq > seq)
    entry = a.engine.decode(raw, key=key)
    assert entry is not None
    assert entry.value == "old"
    assert not a.local.keep_entry(key, entry, a.engine.now_ms(), since)
    assert a.get("k") == "new"


def test_a_writer_without_a_tier_publishes_when_asked(redis_url: str) -> None:
    """publish_invalidations=True makes a tier-less process purge the others; by default
    a Cache without a tier publishes nothing."""
    ns = f"lt{uuid.uuid4().hex[:8]}"
    reader = Cache(redis_url, namespace=ns, local={})
    quiet = Cache(redis_url, namespace=ns)
    loud = Cache(redis_url, namespace=ns, publish_invalidations=True)
    try:
        assert reader.wait_local(5)
        reader.set("k", 1)
        reader.get("k")
        quiet.set("k", 2)
        time.sleep(0.05)
        assert held(reader, "k")  # never told: served until max_ttl or its freshness
        loud.set("k", 3)
        assert eventually(lambda: not held(reader, "k"))
        assert reader.get("k") == 3
    finally:
        reader.clear()
        for c in (reader, quiet, loud):
            c.close()


def test_a_lost_channel_flushes_the_tier_until_it_is_back() -> None:
    """Killing the subscription flushes and disables the tier; a write made while it is
    down is never served stale; the tier serves again once resubscribed."""
    with RedisServer() as server:
        ns = "lost"
        a = Cache(server.url, namespace=ns, local={"max_ttl": 30})
        b = Cache(server.url, namespace=ns)  # writes without publishing: a's channel is down
        try:
            assert a.wait_local(5)
            assert a.local is not None
            a.set("k", "old")
            a.get("k")
            assert held(a, "k")
            admin = redis.Redis.from_url(server.url)
            admin.client_kill_filter(_type="pubsub")
            # the loss flushes the tier (then it resubscribes at once, empty)
            assert eventually(lambda: a.local is not None and a.local.purged >= 1)
            assert not held(a, "k")
            b.set("k", "new")
            assert a.get("k") == "new"
            assert a.wait_local(10)
            assert a.get("k") == "new"
            assert held(a, "k")
            assert a.get("k") == "new"
            admin.close()
        finally:
            a.close()
            b.close()


def test_close_stops_the_subscriber_and_disables_the_tier(redis_url: str) -> None:
    """close() (and aclose()) stop the thread; the tier is flushed and off."""
    ns = f"lt{uuid.uuid4().hex[:8]}"
    for use_async in (False, True):
        c = Cache(redis_url, namespace=ns, local=LocalTier(max_entries=10))
        assert c.wait_local(5)
        assert c.local is not None
        c.set("k", 1)
        c.get("k")
        if use_async:
            asyncio.run(c.aclose())
        else:
            c.close()
        assert not c.local.enabled
        assert len(c.local) == 0


class StoreWithoutPubSub:
    """A store that cannot publish: a MemoryStore's store methods only."""

    def __init__(self) -> None:
        self.inner = MemoryStore()

    def asynchronous(self) -> SyncAsAsync:
        return SyncAsAsync(self)  # type: ignore[arg-type]


for _name in ("get", "get_many", "set", "set_many", "delete", "add", "lease", "fill",
              "swap", "delete_if", "scan", "clear", "close"):  # fmt: skip
    setattr(
        StoreWithoutPubSub,
        _name,
        (lambda n: lambda self, *a, **k: getattr(self.inner, n)(*a, **k))(_name),
    )


def test_local_needs_a_publishing_store() -> None:
    """A store that cannot publish, and publish_invalidations=False, are refused."""
    with pytest.raises(ConfigurationError, match="cannot"):
        Cache(StoreWithoutPubSub(), local={})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="publish"):
        Cache(StoreWithoutPubSub(), publish_invalidations=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="needs publish_invalidations"):
        Cache("redis://127.0.0.1:1/0", local={}, publish_invalidations=False)


async def test_memory_store_carries_a_local_tier() -> None:
    """memory:// publishes in-process: two Caches on one MemoryStore keep their tiers
    coherent, and a decorated hit is served from the tier (the same object)."""
    store = MemoryStore()
    a = Cache(store, namespace="mem", local={"max_entries": 100})
    b = Cache(store, namespace="mem", local={"max_entries": 100})
    try:
        assert a.wait_local(5)
        assert b.wait_local(5)

        @b.cached(ttl=60)
        def profile(user_id: int) -> dict[str, int]:
            return {"id": user_id, "v": a.get("v", 0)}

        a.set("v", 1)
        assert eventually(lambda: purges(b) == 1)
        assert profile(7) == {"id": 7, "v": 1}  # loaded and filled
        kept = profile(7)  # read from the store, kept in the tier
        assert profile(7) is kept  # from the tier: the same object
        assert b.stats().local_hits == 1
        profile.invalidate(7)
        a.set("v", 2)
        assert eventually(lambda: purges(b) == 2)
        assert profile(7) == {"id": 7, "v": 2}
        b.set("x", "from b")
        assert eventually(lambda: purges(a) == 1)
        assert a.get("x") == "from b"
        await a.aset("x", "from a")
        assert eventually(lambda: b.get("x") == "from a")
    finally:
        a.close()
        b.close()


def test_processes_see_no_stale_value_after_the_window(redis_url: str) -> None:
    """Three spawned reader processes (one async) reading through their tiers while this
    process writes: no read starting 1 s after a write returned sees an older value
    (bench/bench_local.py coherence; it prints the timings)."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_local.py"),
            "coherence",
            "--quick",
            "--redis-url",
            redis_url,
            "--writes",
            "30",
            "--idle",
            "0.01",  # light readers: the suite's other tests share the CPUs
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"stale_after_window": 0' in done.stdout


def test_one_tier_cannot_serve_two_caches(redis_url: str) -> None:
    """From review: a LocalTier given to two Caches was turned off for both when one
    closed, while wait_local() said it served. A tier follows one Cache."""
    shared = LocalTier(max_entries=10)
    first = Cache(redis_url, namespace=f"lt{uuid.uuid4().hex[:8]}", local=shared)
    with pytest.raises(ConfigurationError, match="already serves another Cache"):
        Cache(redis_url, namespace=f"lt{uuid.uuid4().hex[:8]}", local=shared)
    first.close()


def test_a_write_that_raises_still_purges_this_process(private_redis: RedisServer) -> None:
    """From review: with on_error="raise", a set the store refused (or whose reply timed
    out) skipped the purge, and this process kept serving the value it may have replaced.
    (A user that may read and subscribe but not run the write's script stands for it.)"""
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command(
        "ACL", "SETUSER", "nowrite", "reset", "on", ">pw", "~*", "&*", "+@all", "-evalsha",
        "-eval",
    )  # fmt: skip
    writer = Cache(private_redis.url, namespace="ltraise")
    writer.set("k", "v1")
    url = f"redis://nowrite:pw@127.0.0.1:{private_redis.port}/0"
    cache = Cache(url, namespace="ltraise", local={"max_entries": 10}, on_error="raise")
    assert cache.wait_local(5)
    assert cache.get("k") == "v1"
    assert held(cache, "k")
    with pytest.raises(StoreUnavailable):
        cache.set("k", "v2")
    assert cache.local is not None
    assert cache.local.enabled  # the channel is still up: the purge, not a loss, dropped it
    assert not held(cache, "k")
    cache.close()
    writer.close()
    admin.close()


def test_remembered_keys_keep_equal_arguments_of_other_types_apart(
    pair: tuple[Cache, Cache],
) -> None:
    """The local wrapper remembers the store keys of int/str arguments: 1, True and 1.0
    compare equal but are three calls with three keys and three values."""
    cache, _ = pair
    seen: list[object] = []

    @cache.cached(ttl=60)
    def echo(x: object, y: object = "d") -> list[object]:
        seen.append(x)
        return [type(x).__name__, x, y]

    for _ in range(2):  # the second round is served by the tier, with remembered keys
        assert echo(1) == ["int", 1, "d"]
        assert echo(True) == ["bool", True, "d"]
        assert echo(1.0) == ["float", 1.0, "d"]
        assert echo("1") == ["str", "1", "d"]
        assert echo(1, "e") == ["int", 1, "e"]
        assert echo(1, y="f") == ["int", 1, "f"]
    assert seen == [1, True, 1.0, "1", 1, 1]
    assert len({echo.key(1), echo.key(True), echo.key(1.0), echo.key("1")}) == 4
    # A key function is the user's: it may read state the arguments do not show, so its
    # keys are never remembered.
    tenant = ["a"]

    @cache.cached(ttl=60, key=lambda x: f"{tenant[0]}:{x}")
    def per_tenant(x: int) -> str:
        return f"{tenant[0]}-{x}"

    assert per_tenant(1) == "a-1"
    tenant[0] = "b"
    assert per_tenant(1) == "b-1"


async def test_get_many_serves_what_the_tier_holds(pair: tuple[Cache, Cache]) -> None:
    """get_many reads the store only for the keys the tier does not hold, and keeps
    what it read; a purge from elsewhere sends that key back to the store."""
    a, b = pair
    a.set_many({"x": 1, "y": 2})
    # (Once b has heard a's purge: a read racing it would rightly not be kept.)
    assert eventually(lambda: purges(b) > 0)
    assert b.get_many(["x", "y", "z"]) == {"x": 1, "y": 2}  # from the store, then kept
    assert held(b, "x")
    assert held(b, "y")
    before = b.stats()
    assert b.get_many(["x", "y"]) == {"x": 1, "y": 2}
    assert await b.aget_many(["y", "x"]) == {"y": 2, "x": 1}
    after = b.stats()
    assert after.local_hits - before.local_hits == 4
    assert after.bytes_read == before.bytes_read  # no store read at all
    a.set("x", 10)
    assert eventually(lambda: not held(b, "x"))
    assert b.get_many(["x", "y"]) == {"x": 10, "y": 2}


def test_a_cache_dropped_unclosed_stops_its_subscriber(redis_url: str) -> None:
    """No close(): once the Cache is collected, its purge thread ends (and with it the
    subscription's connection)."""
    ns = f"lt{uuid.uuid4().hex[:8]}"
    cache = Cache(redis_url, namespace=ns, local={"max_entries": 10})
    assert cache.wait_local(5)
    name = f"cachelayer-purge {{{ns}:v1:}}purge"
    assert any(t.name == name for t in threading.enumerate())
    del cache
    gc.collect()
    assert eventually(lambda: all(t.name != name for t in threading.enumerate()))
