"""Least privilege: each feature runs as a Redis user allowed exactly the commands that
docs/security.md lists for it, on its namespace's keys and purge channel only.

Every test has a private server. Its script cache is flushed first (so the one-time
``SCRIPT LOAD`` is exercised), its command statistics are reset, the feature runs as the
restricted user, and then ``INFO commandstats`` must show exactly the feature's commands,
none of them refused, and ``ACL LOG`` must be empty: a command the user may not run
would fail the test even where cachelayer fails open and hides it. Commands run by a
Lua script are counted too (Redis checks them against the user as well).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from cachelayer import Cache, CircuitBreaker
from cachelayer.testing import RedisServer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "security.md"

SHOP_KEYS = ("~shop:*", "~{shop:*")
SHOP_CHANNELS = ("&{shop:*",)
#: Sent when a connection opens and allowed to every user (AUTH, HELLO), or sent by
#: redis-py with a refusal ignored (CLIENT SETINFO, Redis >= 7.2): never granted here.
CONNECTION = frozenset({"auth", "hello", "client|setinfo"})
#: What the tests' admin connection itself runs between reset and reading.
ADMIN = frozenset({"config|resetstat", "info"})

BASE = ("get", "set", "del", "evalsha", "script|load")

# feature -> (commands, what the sync face adds, channels): docs/security.md's table,
# in the ACL's names (lower case, "script|load" for SCRIPT LOAD).
FEATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "get, set, delete, delete_many": (BASE, (), ()),
    "get_many, set_many": (
        ("mget", "set", "del", "evalsha", "script|load"),
        ("script|exists",),
        (),
    ),
    "get_or_load (leases), @cached, invalidate": (BASE, (), ()),
    "tags=, invalidate_tags": (("mget", *BASE), (), ()),
    "stale_ttl (stale-while-revalidate)": (BASE, (), ()),
    "early_refresh": (BASE, (), ()),
    "lock": (BASE, (), ()),
    "clear": (("scan", "unlink"), (), ()),
    "local= (the local tier)": ((*BASE, "publish", "subscribe", "ping"), (), ("{shop:v1:}purge",)),
    "publish_invalidations=True": ((*BASE, "publish"), (), ("{shop:v1:}purge",)),
    "publish_stats=": (BASE, (), ()),
    "Django: the cache API, incr, touch, ttl, expire, persist, lock": (
        ("mget", *BASE),
        ("script|exists",),
        (),
    ),
    "Django: keys, iter_keys": (("scan",), (), ()),
    "Django: delete_pattern": (("scan", "del"), (), ()),
    "a database other than 0 in the URL": (("select",), (), ()),
    "client_name= in the URL": (("client|setname",), (), ()),
}
FACES = ["sync", "async"]


# -- the server and its users -----------------------------------------------------------------


class AclServer:
    """A private server with an admin connection: makes users, reads what ran."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.admin = redis.Redis.from_url(server.url)
        #: every Cache made for the test, closed at its end even when it failed
        self.caches: list[Cache] = []

    def close(self) -> None:
        for cache in self.caches:
            cache.close()  # (a no-op for a Cache the test closed)
        self.admin.close()

    def user(
        self,
        commands: tuple[str, ...],
        *,
        keys: tuple[str, ...] = SHOP_KEYS,
        channels: tuple[str, ...] = (),
        path: str = "/0",
        query: str = "",
    ) -> str:
        """A new user allowed exactly ``commands`` on ``keys`` and ``channels``; its URL."""
        name = "u" + uuid.uuid4().hex[:8]
        self.admin.execute_command(
            "ACL", "SETUSER", name, "reset", "on", ">pw", *keys, *channels,
            *(f"+{command}" for command in commands),
        )  # fmt: skip
        timeouts = "socket_timeout=2&socket_connect_timeout=2"
        return f"redis://{name}:pw@127.0.0.1:{self.server.port}{path}?{timeouts}{query}"

    def start(self) -> None:
        """Forget loaded scripts and command statistics: what follows is measured."""
        self.admin.script_flush()
        self.admin.execute_command("ACL", "LOG", "RESET")
        self.admin.config_resetstat()

    def stats(self) -> dict[str, dict[str, int]]:
        """``INFO commandstats`` since :meth:`start`, by ACL command name."""
        found = self.admin.info("commandstats")
        return {name.removeprefix("cmdstat_"): dict(s) for name, s in found.items()}

    def used(self) -> set[str]:
        """The commands that ran (or were refused) since :meth:`start`, connection
        set-up and the admin's own left out."""
        return (
            {name for name, s in self.stats().items() if s["calls"] or s["rejected_calls"]}
            - CONNECTION
            - ADMIN
        )

    def refused(self) -> dict[str, int]:
        """Commands Redis refused since :meth:`start` (NOPERM), by name."""
        found = self.stats().items()
        return {
            n: s["rejected_calls"] for n, s in found if s["rejected_calls"] and n not in CONNECTION
        }

    def acl_log(self) -> list[dict[Any, Any]]:
        entries = self.admin.execute_command("ACL", "LOG")
        return [e for e in entries if _text(e, "object") not in CONNECTION]

    def assert_exactly(self, expected: set[str]) -> None:
        """Exactly ``expected`` ran, nothing was refused, the ACL log is empty."""
        used = self.used()
        assert self.refused() == {}, self.acl_log()
        assert self.acl_log() == []
        assert used == expected, f"missing {expected - used}, unlisted {used - expected}"


def _text(entry: Any, field: str) -> str:
    if isinstance(entry, list):  # redis-py 5.0 leaves an ACL LOG entry as flat pairs
        entry = dict(zip(entry[::2], entry[1::2], strict=True))
    value = entry.get(field.encode(), entry.get(field)) if isinstance(entry, dict) else None
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def acl(private_redis: RedisServer) -> Iterator[AclServer]:
    server = AclServer(private_redis)
    yield server
    server.close()


def feature_user(acl: AclServer, feature: str, face: str) -> tuple[str, set[str]]:
    """A user for ``feature`` on ``face``, and the commands it must run exactly."""
    commands, sync_also, channels = FEATURES[feature]
    allowed = (*commands, *sync_also) if face == "sync" else commands
    url = acl.user(allowed, channels=tuple(f"&{c}" for c in channels))
    return url, set(allowed)


# -- one spelling for both faces -------------------------------------------------------------


class Face:
    """A Cache's sync methods, or their ``a``-prefixed twins, called the same way."""

    def __init__(self, cache: Cache, kind: str) -> None:
        self.cache = cache
        self.kind = kind

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "async":
            return await getattr(self.cache, "a" + method)(*args, **kwargs)
        return getattr(self.cache, method)(*args, **kwargs)

    async def close(self) -> None:
        await self("close")


def make(acl: AclServer, url: str, **options: Any) -> Cache:
    """A Cache of namespace ``shop`` without a breaker (every failure counted)."""
    options.setdefault("breaker", CircuitBreaker(threshold=0))
    options.setdefault("namespace", "shop")
    cache = Cache(url, **options)
    acl.caches.append(cache)
    return cache


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll ``check`` until it holds (bounded): refreshes and purges run behind."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def clean(cache: Cache) -> None:
    """No store call failed."""
    s = cache.stats
    assert (s.store_errors, s.invalidation_errors, s.decode_errors) == (0, 0, 0)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


# -- the features ----------------------------------------------------------------------------

#: Runs a feature as the user of a URL on a face; may return checks the admin makes
#: after the measurement (the admin's own commands would count otherwise).
Scenario = Callable[[AclServer, str, str], Awaitable["Callable[[], None] | None"]]


async def plain(acl: AclServer, url: str, face: str) -> None:
    """Values round-trip, are overwritten and deleted."""
    f = Face(make(acl, url), face)
    await f("set", "a", {"x": 1})
    assert await f("get", "a") == {"x": 1}
    await f("set", "a", 2)
    assert await f("get", "a") == 2
    assert await f("get", "absent", "default") == "default"
    assert await f("delete", "a") is True
    assert await f("get", "a") is None
    await f("set", "b", 3)
    assert await f("delete_many", ["b", "c"]) == 1
    clean(f.cache)
    await f.close()


async def many(acl: AclServer, url: str, face: str) -> None:
    """set_many then get_many: the values back, the absent key left out."""
    f = Face(make(acl, url), face)
    await f("set_many", {"a": 1, "b": [2]})
    assert await f("get_many", ["a", "b", "c"]) == {"a": 1, "b": [2]}
    clean(f.cache)
    await f.close()


async def load(acl: AclServer, url: str, face: str) -> None:
    """One load per key (leases); a decorated function and its invalidate."""
    cache = make(acl, url)
    f = Face(cache, face)
    calls: list[int] = []

    def loader() -> int:
        calls.append(1)
        return len(calls)

    assert await f("get_or_load", "k", loader) == 1
    assert await f("get_or_load", "k", loader) == 1  # a hit: no second load

    @cache.cached(key="user:{user_id}")
    def user(user_id: int) -> dict[str, int]:
        calls.append(1)
        return {"id": user_id, "load": len(calls)}

    @cache.cached(key="user:{user_id}")
    async def auser(user_id: int) -> dict[str, int]:
        return user.uncached(user_id)

    async def get_user() -> Any:
        return await auser(7) if face == "async" else user(7)

    first = await get_user()
    assert await get_user() == first
    if face == "async":
        await auser.ainvalidate(7)
    else:
        user.invalidate(7)
    assert (await get_user())["load"] == first["load"] + 1
    clean(cache)
    await f.close()


async def tags(acl: AclServer, url: str, face: str) -> None:
    """A tagged entry is served until its tag is invalidated, then loaded again."""
    f = Face(make(acl, url), face)
    assert await f("get_or_load", "k", lambda: 1, tags=["t"]) == 1
    assert await f("get_or_load", "k", lambda: 2, tags=["t"]) == 1
    assert await f("invalidate_tags", "t") is True
    assert await f("get_or_load", "k", lambda: 3, tags=["t"]) == 3
    clean(f.cache)
    await f.close()


async def stale(acl: AclServer, url: str, face: str) -> None:
    """An expired entry is served stale while one background refresh replaces it."""
    clock = Clock()
    f = Face(make(acl, url, clock=clock, jitter=0), face)
    assert await f("get_or_load", "k", lambda: 1, ttl=10, stale_ttl=60) == 1
    clock.now += 20  # expired, within the stale window
    assert await f("get_or_load", "k", lambda: 2, ttl=10, stale_ttl=60) == 1  # served stale

    async def refreshed() -> bool:  # (a poll may start the refresh itself: same loader)
        return bool(await f("get_or_load", "k", lambda: 2, ttl=10, stale_ttl=60) == 2)

    assert await eventually(refreshed), f.cache.stats()
    assert f.cache.stats.stale_hits >= 1
    assert f.cache.stats.refresh_errors == 0
    clean(f.cache)
    await f.close()


async def early(acl: AclServer, url: str, face: str) -> None:
    """Near expiry, XFetch refreshes behind a hit."""
    clock = Clock()
    f = Face(make(acl, url, clock=clock, rng=lambda: 0.9, jitter=0), face)

    def slow(value: int) -> Callable[[], int]:
        def loader() -> int:
            time.sleep(0.05)  # a 50 ms load: XFetch weighs its duration
            return value

        return loader

    assert await f("get_or_load", "k", slow(1), ttl=10) == 1
    clock.now += 9.99  # 10 ms before expiry: -ln(0.1) * 50 ms says refresh
    assert await f("get_or_load", "k", slow(2), ttl=10) == 1  # the caller does not wait

    async def refreshed() -> bool:
        return bool(await f("get", "k") == 2)

    assert await eventually(refreshed)
    assert f.cache.stats.early_refreshes == 1
    clean(f.cache)
    await f.close()


async def lock(acl: AclServer, url: str, face: str) -> None:
    """A held lock refuses a second holder, and is free once released."""
    cache = make(acl, url)
    holder, other = cache.lock("job", timeout=5), cache.lock("job", timeout=5)
    if face == "async":
        async with holder:
            assert await holder.alocked()
            assert await other.aacquire(blocking=False) is False
        assert await other.aacquire(blocking=False) is True
        await other.arelease()
        await cache.aclose()
    else:
        with holder:
            assert holder.locked()
            assert other.acquire(blocking=False) is False
        assert other.acquire(blocking=False) is True
        other.release()
        cache.close()
    clean(cache)


async def clear(acl: AclServer, url: str, face: str) -> Callable[[], None]:
    """clear deletes the namespace's values, leases and tag tokens, nothing else."""
    # What a Cache leaves: a value, a lease, a tag token; and another namespace's key.
    names = ["shop:v1:a", "{shop:v1:a}:lease", "{shop:v1:}tags:t", "other:v1:a"]
    acl.admin.mset(dict.fromkeys(names, b"x"))
    acl.start()  # the seeding is not the feature's
    f = Face(make(acl, url), face)
    assert await f("clear") == 3
    clean(f.cache)
    await f.close()

    def after() -> None:
        assert acl.admin.keys("*") == [b"other:v1:a"]

    return after


async def local(acl: AclServer, url: str, face: str) -> None:
    """A write in one Cache purges another's local tier over the channel."""
    reader = make(acl, url, local={"max_entries": 100, "max_ttl": 30})
    writer = make(acl, url, local={"max_entries": 100, "max_ttl": 30})
    assert reader.wait_local(5)
    assert writer.wait_local(5)
    r, w = Face(reader, face), Face(writer, face)
    await w("set", "k", 1)

    async def served_locally() -> bool:
        # (the writer's purge of its own write may reach the reader after a read)
        return bool(await r("get", "k") == 1 and reader.stats.local_hits > 0)

    assert await eventually(served_locally)
    await w("set", "k", 2)  # published: the reader's tier drops k

    async def purged() -> bool:
        return bool(await r("get", "k") == 2)

    assert await eventually(purged)
    snapshot = reader.stats().local
    assert snapshot is not None
    assert snapshot.purges >= 1
    await asyncio.sleep(1.5)  # a silent channel: the subscription PINGs (a heartbeat)
    assert reader.wait_local(0)  # still subscribed: the PING was answered
    clean(reader)
    clean(writer)
    await r.close()
    await w.close()


async def publish_only(acl: AclServer, url: str, face: str) -> None:
    """A Cache without a tier publishes its invalidations."""
    listener = acl.admin.pubsub()
    listener.subscribe("{shop:v1:}purge")
    assert listener.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
    acl.start()
    f = Face(make(acl, url, publish_invalidations=True), face)
    await f("set", "k", 1)
    assert await f("get", "k") == 1
    await f("delete", "k")
    heard = [listener.get_message(timeout=2) for _ in range(2)]
    listener.close()
    assert [m["type"] for m in heard if m] == ["message", "message"]
    clean(f.cache)
    await f.close()


async def fleet(acl: AclServer, url: str, face: str) -> Callable[[], None]:
    """publish_stats writes a snapshot, joins the index, deletes it on close."""
    cache = make(acl, url, publish_stats=0.05)
    f = Face(cache, face)
    await f("get", "a")  # something to report

    async def published() -> bool:
        return {"set", "evalsha", "get"} <= {n for n, s in acl.stats().items() if s["calls"]}

    assert await eventually(published)  # a snapshot written and the index joined
    await f.close()  # the snapshot is deleted
    clean(cache)

    def after() -> None:
        assert acl.admin.keys("*") == [b"{shop:}fleet"]  # the index; its entry expires

    return after


def _backend(acl: AclServer, url: str) -> Any:
    """A Django backend (namespace ``shop``) that raises store errors instead of hiding
    them. (Django needs no settings for this; the import stays in the Django tests.)"""
    from cachelayer.django import CacheBackend

    backend = CacheBackend(
        url, {"TIMEOUT": 60, "OPTIONS": {"namespace": "shop", "on_error": "raise"}}
    )
    acl.caches.append(backend.cache)
    return backend


async def django_api(acl: AclServer, url: str, face: str) -> None:
    """Django's cache API and django-redis's extras, with errors raised."""
    b = _backend(acl, url)
    a = face == "async"

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        if a:
            return await getattr(b, "a" + method)(*args, **kwargs)
        return getattr(b, method)(*args, **kwargs)

    await call("set", "k", 1)
    assert await call("get", "k") == 1
    assert await call("add", "k", 2) is False
    assert await call("add", "a", 2) is True
    assert await call("incr", "k") == 2
    assert await call("decr", "k") == 1
    assert await call("touch", "k", 100) is True
    assert await call("ttl", "k") == 100
    assert await call("expire", "k", 50) is True
    assert 0 < await call("pttl", "k") <= 50_000
    assert await call("persist", "k") is True
    assert await call("ttl", "k") is None
    assert await call("has_key", "k") is True
    assert await call("get_or_set", "g", "v") == "v"
    assert await call("set_many", {"m": 1, "n": 2}) == []
    assert await call("get_many", ["k", "m", "x"]) == {"k": 1, "m": 1}
    await call("delete_many", ["m", "n"])
    assert await call("delete", "a") is True
    assert await call("incr_version", "g") == 2
    if a:
        async with b.lock("job", timeout=5):
            pass
        await b.cache.aclose()
    else:
        with b.lock("job", timeout=5):
            pass
        b.cache.close()
    clean(b.cache)


async def _seeded_backend(acl: AclServer, url: str) -> Any:
    """A backend as ``url``'s user, over keys an admin backend wrote first."""
    seeder = _backend(acl, acl.server.url)
    seeder.set_many({"user:1": 1, "user:2": 2, "page:1": 3})
    seeder.cache.close()
    acl.start()
    return _backend(acl, url)


async def django_keys(acl: AclServer, url: str, face: str) -> None:
    """keys() lists the matching keys as callers wrote them."""
    b = await _seeded_backend(acl, url)
    found = await b.akeys("user:*") if face == "async" else b.keys("user:*")
    assert sorted(found) == ["user:1", "user:2"]
    await b.cache.aclose() if face == "async" else b.cache.close()
    clean(b.cache)


async def django_delete_pattern(acl: AclServer, url: str, face: str) -> Callable[[], None]:
    """delete_pattern deletes the matching keys only."""
    b = await _seeded_backend(acl, url)
    if face == "async":
        assert await b.adelete_pattern("user:*") == 2
        await b.cache.aclose()
    else:
        assert b.delete_pattern("user:*") == 2
        b.cache.close()
    clean(b.cache)

    def after() -> None:
        left = [k.decode() for k in acl.admin.keys("*")]
        assert len(left) == 1
        assert "page" in left[0]

    return after


SCENARIOS: dict[str, Scenario] = {
    "get, set, delete, delete_many": plain,
    "get_many, set_many": many,
    "get_or_load (leases), @cached, invalidate": load,
    "tags=, invalidate_tags": tags,
    "stale_ttl (stale-while-revalidate)": stale,
    "early_refresh": early,
    "lock": lock,
    "clear": clear,
    "local= (the local tier)": local,
    "publish_invalidations=True": publish_only,
    "publish_stats=": fleet,
    "Django: the cache API, incr, touch, ttl, expire, persist, lock": django_api,
    "Django: keys, iter_keys": django_keys,
    "Django: delete_pattern": django_delete_pattern,
}


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("feature", list(SCENARIOS))
async def test_feature_runs_with_exactly_its_commands(
    acl: AclServer, feature: str, face: str
) -> None:
    """Each feature works fully as a user allowed only its documented commands, and runs
    every one of them (the list holds nothing it does not need)."""
    url, expected = feature_user(acl, feature, face)
    acl.start()
    after = await SCENARIOS[feature](acl, url, face)
    acl.assert_exactly(expected)
    if after is not None:
        after()


@pytest.mark.parametrize("face", FACES)
async def test_connection_options_add_select_and_client_setname(acl: AclServer, face: str) -> None:
    """A URL naming database 1 and a client name needs SELECT and CLIENT SETNAME too, on
    every connection of either face."""
    extra = (*FEATURES["a database other than 0 in the URL"][0],
             *FEATURES["client_name= in the URL"][0])  # fmt: skip
    url = acl.user((*BASE, *extra), path="/1", query="&client_name=shop-app")
    acl.start()
    await plain(acl, url, face)
    f = Face(make(acl, url), face)
    await f("set", "kept", 1)
    acl.assert_exactly({*BASE, *extra})
    names = {c["name"] for c in acl.admin.client_list()}
    await f.close()
    assert "shop-app" in names
    db1 = redis.Redis(port=acl.server.port, db=1)
    try:
        assert db1.exists("shop:v1:kept") == 1
    finally:
        db1.close()


# -- what a user may not do ------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES)
async def test_other_namespace_is_out_of_reach(acl: AclServer, face: str) -> None:
    """The shop user's calls on namespace ``other`` are refused (NOPERM, counted as store
    errors, never raised), and nothing of ``other`` is written."""
    commands, sync_also, _ = FEATURES["tags=, invalidate_tags"]
    url = acl.user((*commands, *sync_also))
    f = Face(make(acl, url, namespace="other"), face)
    await f("set", "k", 1)
    assert await f("get_or_load", "k", lambda: "loaded", tags=["t"]) == "loaded"
    assert await f("invalidate_tags", "t") is False
    stats = f.cache.stats
    assert stats.store_errors >= 2
    assert stats.invalidation_errors >= 1
    await f.close()
    assert acl.admin.keys("*other*") == []
    reasons = {_text(e, "reason") for e in acl.acl_log()}
    assert reasons == {"key"}


@pytest.mark.parametrize("face", FACES)
async def test_a_missing_command_fails_open(acl: AclServer, face: str) -> None:
    """A user without EVALSHA: writes and loads fail open (no exception, the loader's
    value, a store error counted), and the ACL log names the command."""
    url = acl.user(tuple(c for c in BASE if c != "evalsha"))
    f = Face(make(acl, url), face)
    await f("set", "k", 1)  # a guarded write is a script
    assert await f("get_or_load", "j", lambda: "loaded") == "loaded"
    assert await f("get", "k") is None
    assert f.cache.stats.store_errors >= 2
    await f.close()
    assert {_text(e, "object") for e in acl.acl_log()} == {"evalsha"}


def test_a_tier_without_subscribe_never_serves(acl: AclServer) -> None:
    """Without SUBSCRIBE the local tier stays off (it cannot hear purges) and reads go
    to Redis, correct and without an exception."""
    commands, _, channels = FEATURES["local= (the local tier)"]
    url = acl.user(
        tuple(c for c in commands if c != "subscribe"),
        channels=tuple(f"&{c}" for c in channels),
    )
    reader, writer = (
        make(acl, url, local={"max_entries": 10}),
        make(acl, url, local={"max_entries": 10}),
    )
    try:
        assert not reader.wait_local(0.3)
        writer.set("k", 1)
        assert reader.get("k") == 1
        writer.set("k", 2)
        assert reader.get("k") == 2  # never a stale local value
    finally:
        reader.close()
        writer.close()


# -- the documents say the same ----------------------------------------------------------------


def _doc_table() -> dict[str, tuple[set[str], set[str], set[str]]]:
    """docs/security.md's "Redis commands per feature" table, in ACL names."""
    text = DOCS.read_text()
    section = text.split("## Redis commands per feature", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[set[str], set[str], set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("feature", "") or set(cells[0]) <= {"-"}:
            continue

        def names(cell: str) -> set[str]:
            return {c.lower().replace(" ", "|") for c in re.findall(r"`([^`]+)`", cell)}

        feature = cells[0].replace("`", "")
        rows[feature] = (names(cells[1]), names(cells[2]), names(cells[3]))
    return rows


def test_docs_list_the_tested_commands() -> None:
    """The table in docs/security.md is FEATURES, row for row."""
    expected = {
        feature: ({*commands}, {*sync_also}, {*channels})
        for feature, (commands, sync_also, channels) in FEATURES.items()
    }
    assert _doc_table() == expected


def _doc_acl_line() -> list[str]:
    """The words of the ``ACL SETUSER app ...`` line docs/security.md shows."""
    text = DOCS.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ACL SETUSER app "))
    return line.split()


def test_least_privilege_fixture_is_the_documented_user(least_privilege_url: str) -> None:
    """tests/conftest.py's least-privilege user, and the ACL line docs/security.md shows,
    are the union of the table's rows for namespace ``shop`` on database 0."""
    union = {
        command
        for feature, (commands, sync_also, _) in FEATURES.items()
        if feature not in ("a database other than 0 in the URL", "client_name= in the URL")
        for command in (*commands, *sync_also)
    }
    admin = redis.Redis(port=urlsplit(least_privilege_url).port)
    try:
        rules = admin.acl_getuser("app")
    finally:
        admin.close()
    assert {rule.removeprefix("+") for rule in rules["commands"]} == union
    assert (rules["keys"], rules["channels"]) == (list(SHOP_KEYS), list(SHOP_CHANNELS))
    words = _doc_acl_line()
    assert words[:5] == ["ACL", "SETUSER", "app", "reset", "on"]
    assert {w.removeprefix("+") for w in words if w.startswith("+")} == union
    assert [w for w in words if w[0] in "~&"] == [*SHOP_KEYS, *SHOP_CHANNELS]
