"""The read path, step by step: each branch of ``read_through``, ``refresh`` and
``plain_get`` driven by hand with scripted store replies and no I/O.

Each test plays the shell: it takes the step the flow yields, checks it, and sends back
what a store would have answered. (The end-to-end tests in test_cache.py,
test_concurrency.py and test_refresh.py run the same flows against real stores.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cachelayer import Cache, Fresh
from cachelayer._engine import Engine, lease_key
from cachelayer._flight import Flight
from cachelayer._options import ErrorPolicy, ReadOptions
from cachelayer._readpath import plain_get, read_through, refresh
from cachelayer._steps import (
    FAILED,
    LEAD,
    LOAD,
    Add,
    Delete,
    Fill,
    Flow,
    Get,
    GetMany,
    JoinFlight,
    Lease,
    Publish,
    Refresh,
    Sleep,
    Step,
)
from tests.conftest import FakeClock

KEY = "t:v1:k"
LEASE = lease_key(KEY)


class NotFound(Exception):
    pass


class Draw:
    """An rng tests set: jitter and XFetch draws are what the test says."""

    def __init__(self) -> None:
        self.value = 0.5

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def draw() -> Draw:
    return Draw()


@pytest.fixture
def engine(clock: FakeClock, draw: Draw) -> Iterator[Engine]:
    """An engine with a fake clock, a fixed draw and no jitter; no store is ever called."""
    cache = Cache(namespace="t", ttl=60, jitter=0.0, clock=clock, rng=draw, lease_wait=0.01)
    yield cache.engine
    cache.close()


class Script:
    """Drives a flow by hand: ``step()`` is the pending step, ``send`` answers it."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.pending: Step = next(flow)
        self.result: Any = None
        self.done = False

    def send(self, reply: Any) -> Step | None:
        try:
            self.pending = self.flow.send(reply)
        except StopIteration as stop:
            self.result, self.done = stop.value, True
            return None
        return self.pending

    def throw(self, exc: BaseException) -> Step | None:
        try:
            self.pending = self.flow.throw(exc)
        except StopIteration as stop:
            self.result, self.done = stop.value, True
            return None
        return self.pending

    def expect(self, kind: type[Step], **fields: Any) -> Any:
        step = self.pending
        assert type(step) is kind, f"expected {kind.__name__}, got {step!r}"
        for name, value in fields.items():
            assert getattr(step, name) == value, f"{kind.__name__}.{name}: {step!r}"
        return step


def entry(
    engine: Engine,
    value: Any,
    seconds: float | None = 60,
    *,
    duration_ms: int = 0,
    tags: list[tuple[str, bytes]] | None = None,
    key: str = KEY,
) -> bytes:
    return engine.encode(value, seconds, duration_ms, tags=tags or [], key=key)


def test_fresh_hit_is_one_get(engine: Engine) -> None:
    """A fresh entry: one Get, its value returned, a hit counted."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    s.expect(Get, key=KEY)
    s.send(entry(engine, {"a": 1}))
    assert s.done
    assert s.result == {"a": 1}
    assert engine.stats.hits == 1
    assert engine.stats.misses == 0


def test_early_refresh_serves_and_refreshes(engine: Engine, clock: FakeClock, draw: Draw) -> None:
    """Near expiry with a slow load on record, the XFetch draw asks for a refresh: the
    value is served and one Refresh step carries the refresh flow."""
    raw = entry(engine, "v", 60, duration_ms=5000)
    clock.advance(59)
    draw.value = 0.999  # -ln(1 - U) large: refresh now
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    s.send(raw)
    refresh_step = s.expect(Refresh, key=KEY)
    s.send(None)
    assert s.result == "v"
    assert engine.stats.early_refreshes == 1
    refresh_step.flow.close()


def test_stale_entry_served_while_refreshing(engine: Engine, clock: FakeClock) -> None:
    """Within stale_ttl an expired value is served at once, with a background refresh."""
    raw = entry(engine, "old", 10)
    clock.advance(15)
    s = Script(read_through(engine, KEY, ReadOptions(10, stale_ttl=30)))
    s.send(raw)
    s.expect(Refresh, key=KEY).flow.close()
    s.send(None)
    assert s.result == "old"
    assert engine.stats.stale_hits == 1


def test_cached_error_raises_without_load(engine: Engine) -> None:
    """A fresh negative entry of a configured type raises that error; nothing loads."""
    errors = ErrorPolicy({NotFound: 30})
    raw = engine.encode_error(NotFound, NotFound("user 7"), 30, key=KEY)
    s = Script(read_through(engine, KEY, ReadOptions(60, errors)))
    with pytest.raises(NotFound, match="user 7"):
        s.send(raw)
    assert engine.stats.negative_hits == 1
    assert engine.stats.loads == 0


def miss_to_load(s: Script) -> bytes:
    """Absent value -> lead the flight -> take the lease: returns the lease token."""
    s.expect(Get, key=KEY)
    s.send(None)
    s.expect(JoinFlight, key=KEY)
    s.send(LEAD)
    token: bytes = s.expect(Lease, key=KEY, lease=LEASE).token
    return token


def test_miss_leases_loads_fills_and_publishes(engine: Engine) -> None:
    """Miss: lease, load, a guarded fill under the same token, then the trusted outcome."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    token = miss_to_load(s)
    s.send(True)
    s.expect(type(LOAD))
    fill = s.send("loaded")
    assert isinstance(fill, Fill)
    assert fill.key == KEY
    assert fill.lease == LEASE
    assert fill.token == token
    assert fill.ttl == 60
    assert engine.decode(fill.value, key=KEY).value == "loaded"  # type: ignore[union-attr]
    s.send(True)
    s.expect(Publish, raw=fill.value, trusted=True)
    s.send(None)
    assert s.result == "loaded"
    assert engine.stats.fills == 1


def test_rejected_fill_is_published_untrusted(engine: Engine) -> None:
    """A fill refused (an invalidation voided the lease): the value is returned to this
    caller but its followers may not share it."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    s.send(True)
    fill = s.send("v")
    s.send(False)
    s.expect(Publish, raw=fill.value, trusted=False)  # type: ignore[union-attr]
    s.send(None)
    assert s.result == "v"
    assert engine.stats.fills_rejected == 1


def test_value_filled_since_the_miss_is_served_from_the_lease_step(engine: Engine) -> None:
    """The atomic lease step finds a value filled since our miss: served, no load."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    raw = entry(engine, "theirs")
    s.send(raw)
    s.expect(Publish, raw=raw, trusted=True)
    s.send(None)
    assert s.result == "theirs"
    assert engine.stats.loads == 0
    assert engine.stats.lease_waits == 1


def test_lease_held_elsewhere_waits_for_the_fill(engine: Engine) -> None:
    """Another process holds the lease: sleep, poll with the lease step, take its fill."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    s.send(False)
    s.expect(Sleep, seconds=0.002)
    s.send(None)
    s.expect(Lease, key=KEY, lease=LEASE)
    s.send(False)  # still loading
    s.expect(Sleep, seconds=0.004)
    s.send(None)
    s.expect(Lease, key=KEY)
    raw = entry(engine, "filled")
    s.send(raw)
    s.expect(Publish, raw=raw, trusted=True)
    s.send(None)
    assert s.result == "filled"
    assert engine.stats.loads == 0


def test_waiter_takes_over_a_voided_lease(engine: Engine) -> None:
    """While waiting, the lease step hands us the lease (the holder's was voided): we
    load and fill under our own new token."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    s.send(False)
    s.send(None)  # Sleep
    mine = s.expect(Lease).token
    s.send(True)
    s.expect(type(LOAD))
    fill = s.send("v")
    assert isinstance(fill, Fill)
    assert fill.token == mine


def test_wait_times_out_then_loads_without_filling(engine: Engine) -> None:
    """The holder never fills within lease_wait: load anyway, fill nothing, and publish
    the value as untrusted (it may predate an invalidation)."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    step = s.send(False)
    while isinstance(step, (Sleep, Lease)):
        step = s.send(None if isinstance(step, Sleep) else False)
    s.expect(type(LOAD))
    publish = s.send("v")
    assert isinstance(publish, Publish)
    assert publish.trusted is False
    s.send(None)
    assert s.result == "v"
    assert engine.stats.lease_timeouts == 1


def test_store_down_loads_at_once_and_trusts_the_value(engine: Engine) -> None:
    """The first read failed: no lease, no wait; the loaded value is shared with
    followers (with no cache there is nothing to be stale against)."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    s.send(FAILED)
    s.expect(JoinFlight)
    s.send(LEAD)
    s.expect(type(LOAD))
    publish = s.send("v")
    assert isinstance(publish, Publish)
    assert publish.trusted is True


def test_lease_step_failing_loads_without_fill(engine: Engine) -> None:
    """The store fails at the lease step: load, no fill, trusted outcome."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    s.send(FAILED)
    s.expect(type(LOAD))
    s.send("v")
    s.expect(Publish, trusted=True)


def test_failing_loader_releases_the_lease(engine: Engine) -> None:
    """An uncached loader error deletes our lease (the next caller need not wait) and
    reaches the caller unchanged."""
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    miss_to_load(s)
    s.send(True)
    s.throw(RuntimeError("db down"))
    s.expect(Delete, keys=[LEASE])
    with pytest.raises(RuntimeError, match="db down"):
        s.send(1)
    assert engine.stats.load_errors == 1


def test_cached_loader_error_fills_a_negative_entry(engine: Engine) -> None:
    """A loader error of a cached type is filled as a negative entry under the lease,
    published, then raised."""
    s = Script(read_through(engine, KEY, ReadOptions(60, ErrorPolicy({NotFound: 30}))))
    token = miss_to_load(s)
    s.send(True)
    fill = s.throw(NotFound("nope"))
    assert isinstance(fill, Fill)
    assert fill.token == token
    assert fill.ttl == 30
    stored = engine.decode(fill.value, key=KEY)
    assert stored is not None
    assert stored.negative
    s.send(True)
    s.expect(Publish, raw=fill.value, trusted=True)
    with pytest.raises(NotFound):
        s.send(None)


def test_stale_if_error_returns_the_expired_value(engine: Engine, clock: FakeClock) -> None:
    """Within stale_if_error, a failing load returns the expired value instead."""
    raw = entry(engine, "old", 10)
    clock.advance(20)
    s = Script(read_through(engine, KEY, ReadOptions(10, stale_if_error=60)))
    s.send(raw)
    s.expect(JoinFlight)
    s.send(LEAD)
    s.expect(Add, key=LEASE)  # an entry exists, so a plain add takes the lease
    s.send(True)
    s.throw(RuntimeError("db down"))
    s.expect(Publish, raw=raw, trusted=True)
    s.send(None)
    assert s.result == "old"
    assert engine.stats.stale_on_error == 1


def test_stale_if_error_beats_waiting_for_another_loader(engine: Engine, clock: FakeClock) -> None:
    """Within stale_if_error and with the lease held elsewhere, the expired value is
    served at once rather than waited on."""
    raw = entry(engine, "old", 10)
    clock.advance(20)
    s = Script(read_through(engine, KEY, ReadOptions(10, stale_if_error=60)))
    s.send(raw)
    s.send(LEAD)
    s.send(False)
    s.expect(Publish, raw=raw, trusted=True)
    s.send(None)
    assert s.result == "old"


def test_trusted_flight_is_shared_without_a_store_step(engine: Engine) -> None:
    """A trusted outcome of this process's leader is shared: no lease, no load."""
    flight = Flight(threading.Event())
    flight.publish(entry(engine, "shared"), True)
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    s.send(None)
    s.expect(JoinFlight)
    s.send(flight)
    assert s.result == "shared"
    assert engine.stats.flight_joins == 1


def test_untrusted_flight_reads_for_itself(engine: Engine) -> None:
    """An untrusted outcome (the leader's fill was refused) is not shared."""
    flight = Flight(threading.Event())
    flight.publish(entry(engine, "maybe old"), False)
    s = Script(read_through(engine, KEY, ReadOptions(60)))
    s.send(None)
    s.send(flight)
    s.expect(Lease, key=KEY)


TAG = "{t:v1:tags}:user:1"


def test_tagged_miss_stamps_the_tokens_read_with_the_value(engine: Engine) -> None:
    """Tagged read: value and tag tokens in one GetMany; the fill is stamped with them."""
    s = Script(read_through(engine, KEY, ReadOptions(60), [TAG]))
    s.expect(GetMany, keys=[KEY, TAG])
    s.send([None, b"tok1"])
    s.send(LEAD)
    s.expect(Add, key=LEASE)
    s.send(True)
    fill = s.send("v")
    assert isinstance(fill, Fill)
    stored = engine.decode(fill.value, key=KEY)
    assert stored is not None
    assert stored.tags == [(TAG, b"tok1")]


def test_tagged_entry_under_an_old_token_is_a_miss(engine: Engine) -> None:
    """An entry stamped with a token its tag no longer holds is not served."""
    raw = entry(engine, "before the write", tags=[(TAG, b"old")])
    s = Script(read_through(engine, KEY, ReadOptions(60), [TAG]))
    s.send([raw, b"new"])
    s.expect(JoinFlight)
    assert engine.stats.misses == 1
    assert engine.stats.hits == 0


def test_tagged_waiter_loads_under_the_tokens_it_read_last(engine: Engine) -> None:
    """A tagged waiter that finds no usable value takes the free lease and loads under
    the tokens of its last read (a write moved the tag meanwhile)."""
    s = Script(read_through(engine, KEY, ReadOptions(60), [TAG]))
    s.send([None, b"tok1"])
    s.send(LEAD)
    s.send(False)  # lease held elsewhere
    s.expect(Sleep)
    s.send(None)
    s.expect(GetMany, keys=[KEY, TAG])
    s.send([None, b"tok2"])
    s.expect(Add, key=LEASE)
    s.send(True)
    fill = s.send("v")
    assert isinstance(fill, Fill)
    stored = engine.decode(fill.value, key=KEY)
    assert stored is not None
    assert stored.tags == [(TAG, b"tok2")]


def test_fresh_from_the_loader_sets_ttl_and_caps_the_stale_window(engine: Engine) -> None:
    """A loader's Fresh(value, ttl, stale_ttl): the caller gets the bare value; the fill
    keeps it for the loader's TTL plus its stale window, capped by the call's."""
    s = Script(read_through(engine, KEY, ReadOptions(600, stale_ttl=10)))
    miss_to_load(s)
    s.send(True)
    fill = s.send(Fresh({"page": 1}, ttl=5, stale_ttl=100))
    assert isinstance(fill, Fill)
    assert fill.ttl == pytest.approx(15)
    stored = engine.decode(fill.value, key=KEY)
    assert stored is not None
    assert stored.value == {"page": 1}
    assert stored.fresh_until_ms - stored.written_ms == 5000
    s.send(True)
    s.send(None)
    assert s.result == {"page": 1}


def test_refresh_flow_fills_under_its_own_lease(engine: Engine) -> None:
    """A background refresh takes the lease with add, loads and fills under it."""
    s = Script(refresh(engine, KEY, ReadOptions(60), []))
    token = s.expect(Add, key=LEASE).value
    s.send(True)
    s.expect(type(LOAD))
    fill = s.send("new")
    assert isinstance(fill, Fill)
    assert fill.token == token
    s.send(True)
    assert s.done
    assert engine.stats.refreshes == 1


def test_refresh_skips_when_another_caller_refreshes(engine: Engine) -> None:
    """The lease is taken: another caller refreshes; this one does nothing."""
    s = Script(refresh(engine, KEY, ReadOptions(60), []))
    s.send(False)
    assert s.done
    assert engine.stats.refreshes == 0


def test_plain_get_checks_tags_with_one_more_read(engine: Engine) -> None:
    """get_many: values in one read, the tags of the tagged ones in a second; an entry
    under a moved tag is a miss."""
    keys = ["t:v1:a", "t:v1:b"]
    s = Script(plain_get(engine, keys))
    s.expect(GetMany, keys=keys)
    s.send([entry(engine, 1, tags=[(TAG, b"old")]), entry(engine, 2)])
    s.expect(GetMany, keys=[TAG])
    s.send([b"new"])
    assert s.result == [FAILED, 2]
    assert engine.stats.hits == 1
    assert engine.stats.misses == 1


def test_read_options_are_immutable() -> None:
    """ReadOptions cannot change after construction (one object serves every call)."""
    options = ReadOptions(60)
    with pytest.raises(AttributeError, match="immutable"):
        options.ttl = 5  # type: ignore[misc]
