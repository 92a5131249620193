"""Refresh before expiry (XFetch), stale-while-revalidate, stale-if-error, tags, write path.

Time is the Cache's injected clock and randomness its injected rng, so each decision is
forced; background refreshes are awaited through the Cache's refresher, never slept on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from cachelayer import MISSING, Cache, ConfigurationError
from tests.conftest import FakeClock


class Rng:
    """An injectable 'random' source the test sets by hand."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class Versioned:
    """A loader returning v1, v2, ... and counting its calls."""

    def __init__(self, pause: float = 0.0, fail_after: int | None = None) -> None:
        self.calls = 0
        self.pause = pause
        self.fail_after = fail_after

    def __call__(self) -> str:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ConnectionError("database is down")
        if self.pause:
            time.sleep(self.pause)  # a slow query: its duration is stored for XFetch
        return f"v{self.calls}"


def settle(cache: Cache) -> None:
    assert cache.engine.runner.refresher.wait_idle(10.0)


def test_xfetch_refreshes_early_when_the_dice_say_so(cache_factory: Any) -> None:
    """Near expiry, a hit whose XFetch draw fires returns at once and refreshes behind."""
    clock, rng = FakeClock(), Rng(0.0)
    cache = cache_factory(clock=clock, rng=rng, jitter=0)
    load = Versioned(pause=0.05)  # a 50 ms load
    assert cache.get_or_load("k", load, ttl=10) == "v1"
    clock.advance(9.99)  # 10 ms before expiry
    rng.value = 0.0  # -ln(1 - 0) = 0: no early refresh, however close
    assert cache.get_or_load("k", load, ttl=10) == "v1"
    settle(cache)
    assert load.calls == 1
    rng.value = 0.9  # -ln(0.1) * 50 ms = 115 ms >= 10 ms: refresh early
    assert cache.get_or_load("k", load, ttl=10) == "v1"  # the caller does not wait
    settle(cache)
    assert load.calls == 2
    assert cache.stats.early_refreshes == 1
    assert cache.get("k") == "v2"


def test_xfetch_off_and_far_from_expiry(cache_factory: Any) -> None:
    """early_refresh=0 never refreshes early, and far from expiry nothing fires either."""
    clock, rng = FakeClock(), Rng(0.999999)
    cache = cache_factory(clock=clock, rng=rng, jitter=0)
    load = Versioned(pause=0.02)
    cache.get_or_load("k", load, ttl=100)
    cache.get_or_load("k", load, ttl=100)  # 100 s away: -ln(1e-6) * 20 ms = 0.28 s < 100 s
    clock.advance(99.99)
    cache.get_or_load("k", load, ttl=100, early_refresh=0)
    settle(cache)
    assert load.calls == 1


def test_stale_while_revalidate(cache_factory: Any) -> None:
    """In the stale window the old value is returned at once and one refresh runs."""
    clock = FakeClock()
    cache = cache_factory(clock=clock, jitter=0)
    load = Versioned()

    @cache.cached(ttl=10, stale_ttl=60, early_refresh=0)
    def get() -> str:
        return load()

    assert get() == "v1"
    clock.advance(15)
    assert get() == "v1"  # stale, served at once
    settle(cache)
    assert load.calls == 2
    assert get() == "v2"  # the refresh landed
    assert cache.stats.stale_hits == 1
    clock.advance(10 + 61)  # past fresh + stale: a plain miss
    assert get() == "v3"


def test_stale_if_error_serves_the_old_value(cache_factory: Any) -> None:
    """A failing load within stale_if_error returns the expired value, not the error."""
    clock = FakeClock()
    cache = cache_factory(clock=clock, jitter=0)
    load = Versioned(fail_after=1)

    @cache.cached(ttl=10, stale_if_error=60, early_refresh=0)
    def get() -> str:
        return load()

    assert get() == "v1"
    clock.advance(30)
    assert get() == "v1"  # the load failed; the expired value is returned
    assert cache.stats.stale_on_error == 1
    clock.advance(50)  # past the window: the error reaches the caller
    with pytest.raises(ConnectionError):
        get()


def test_failed_background_refresh_is_counted_and_logged(
    cache_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refresh whose loader fails keeps the stale value, counts and logs the failure."""
    clock = FakeClock()
    cache = cache_factory(clock=clock, jitter=0)
    load = Versioned(fail_after=1)
    cache.get_or_load("k", load, ttl=10, stale_ttl=60, early_refresh=0)
    clock.advance(15)
    with caplog.at_level("WARNING", logger="cachelayer"):
        assert cache.get_or_load("k", load, ttl=10, stale_ttl=60, early_refresh=0) == "v1"
        settle(cache)
    assert cache.stats.refresh_errors == 1
    assert any("background refresh failed" in r.getMessage() for r in caplog.records)


def test_refresh_after_write_warms_the_key(cache: Cache) -> None:
    """With refresh_after_write, invalidate() reloads the entry in the background."""
    load = Versioned()

    @cache.cached(ttl=60, key="user:{user_id}", refresh_after_write=True)
    def get_user(user_id: int) -> str:
        return load()

    assert get_user(1) == "v1"
    get_user.invalidate(1)
    settle(cache)
    assert load.calls == 2
    assert cache.get("user:1") == "v2"  # warm: the next reader hits
    assert get_user(1) == "v2"
    assert load.calls == 2


async def test_async_stale_while_revalidate(
    store_kind: str, redis_url: str, namespace: str
) -> None:
    """Async functions refresh in a tracked task; aclose() leaves nothing running."""
    from tests.conftest import make_cache

    clock = FakeClock()
    cache = make_cache(store_kind, redis_url, namespace, clock=clock, jitter=0)
    calls: list[int] = []

    @cache.cached(ttl=10, stale_ttl=60, early_refresh=0)
    async def get() -> int:
        calls.append(1)
        return len(calls)

    assert await get() == 1
    clock.advance(20)
    assert await get() == 1
    await cache.engine.runner.refresher.drain()
    assert await get() == 2
    await cache.aclear()
    await cache.aclose()
    assert cache.engine.runner.refresher.pending == 0


# -- tags -----------------------------------------------------------------------------------


def test_tags_invalidate_every_carrier_and_nothing_else(cache: Cache) -> None:
    """invalidate_tags drops all entries with the tag, across functions; others stay."""
    loads: list[str] = []

    @cache.cached(ttl=60, key="profile:{user_id}", tags=["user:{user_id}"])
    def profile(user_id: int) -> str:
        loads.append(f"profile{user_id}")
        return f"p{user_id}"

    @cache.cached(ttl=60, key="orders:{user_id}", tags=["user:{user_id}", "orders"])
    def orders(user_id: int) -> str:
        loads.append(f"orders{user_id}")
        return f"o{user_id}"

    for fn in (profile, orders):
        fn(1)
        fn(2)
    assert len(loads) == 4
    assert cache.invalidate_tags("user:1") is True
    for fn in (profile, orders):
        fn(1)
        fn(2)
    assert loads[4:] == ["profile1", "orders1"]
    cache.invalidate_tags("orders")
    orders(2)
    profile(2)
    assert loads[6:] == ["orders2"]


def test_plain_get_checks_tags(cache: Cache) -> None:
    """get() of a tagged entry returns it only while its tags hold."""
    cache.get_or_load("k", lambda: "v", tags=["t"])
    assert cache.get("k") == "v"
    assert cache.get_many(["k"]) == {"k": "v"}
    cache.invalidate_tags("t")
    assert cache.get("k", MISSING) is MISSING
    assert cache.get_many(["k"]) == {}


def test_tagged_entries_must_expire_before_their_tags(cache: Cache) -> None:
    """A tagged function without expiry (or longer than tag_ttl) is refused."""
    with pytest.raises(ConfigurationError, match="tag_ttl"):
        cache.cached(ttl=None, tags=["t"])


async def test_async_tags(acache: Cache) -> None:
    """ainvalidate_tags works for async functions."""
    calls: list[int] = []

    @acache.cached(ttl=60, tags=["team:{team_id}"])
    async def team(team_id: int) -> int:
        calls.append(team_id)
        return team_id

    await team(7)
    await team(7)
    await acache.ainvalidate_tags("team:7")
    await team(7)
    assert calls == [7, 7]


# -- the write path ---------------------------------------------------------------------------


def test_invalidate_after_commit_waits_for_the_commit(cache: Cache) -> None:
    """Nothing is invalidated until the transaction's on-commit hooks run."""
    hooks: list[Any] = []
    cache.set("user:1", "old")
    cache.get_or_load("profile:1", lambda: "old profile", tags=["user:1"])
    cache.invalidate_after_commit(hooks.append, keys=["user:1"], tags=["user:1"])
    assert cache.get("user:1") == "old"  # not yet committed
    for hook in hooks:  # the transaction commits
        hook()
    assert cache.get("user:1", MISSING) is MISSING
    assert cache.get("profile:1", MISSING) is MISSING


def test_stale_if_error_does_not_wait_on_a_failed_loader(cache_factory: Any) -> None:
    """After one failed load, others in the window get the expired value without waiting."""
    clock = FakeClock()
    a = cache_factory(clock=clock, jitter=0)
    b = cache_factory(clock=clock, jitter=0, lease_wait=30.0)  # "another process"
    load = Versioned(fail_after=1)
    options: dict[str, Any] = {"ttl": 10, "stale_if_error": 60, "early_refresh": 0}
    assert a.get_or_load("k", load, **options) == "v1"
    clock.advance(20)
    assert a.get_or_load("k", load, **options) == "v1"  # load failed: stale, lease kept
    assert b.get_or_load("k", load, **options) == "v1"  # lease held: stale at once
    assert load.calls == 2
    assert b.stats.stale_hits == 1


async def test_async_refresh_after_write(acache: Cache) -> None:
    """For an async function, ainvalidate() reloads the entry in a tracked task."""
    calls: list[int] = []

    @acache.cached(ttl=60, key="team:{team_id}", refresh_after_write=True)
    async def team(team_id: int) -> int:
        calls.append(team_id)
        return len(calls)

    assert await team(1) == 1
    await team.ainvalidate(1)
    await acache.engine.runner.refresher.drain()
    assert await acache.aget("team:1") == 2
    assert await team(1) == 2
    assert len(calls) == 2
