"""The store contract: every store, sync and async face, behaves the same.

A new store joins by adding itself to the ``store`` fixture's parameters.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cachelayer.backends import AsyncStore, MemoryStore, Store
from cachelayer.backends.redis import RedisStore


class Face:
    """Calls a store's sync or async face with one sync syntax, so the contract is one text."""

    def __init__(self, store: Store, use_async: bool) -> None:
        self.store = store
        self.target: Any = store.asynchronous() if use_async else store
        self.loop = asyncio.new_event_loop() if use_async else None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        def call(*args: Any) -> Any:
            result = method(*args)
            if inspect.isawaitable(result):
                assert self.loop is not None
                return self.loop.run_until_complete(result)
            return result

        return call

    def finish(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.target.close())
            self.loop.close()


@pytest.fixture(params=["memory-sync", "memory-async", "redis-sync", "redis-async"])
def face(request: pytest.FixtureRequest, redis_url: str) -> Iterator[tuple[Face, str]]:
    """(store face, key prefix) for each store and face; the prefix is cleared afterwards."""
    kind, mode = str(request.param).split("-")
    store: Store = MemoryStore() if kind == "memory" else RedisStore(redis_url, socket_timeout=2.0)
    prefix = f"ct{uuid.uuid4().hex[:10]}:"
    f = Face(store, mode == "async")
    yield f, prefix
    f.clear(prefix)
    f.finish()
    store.close()


def test_faces_implement_the_protocols(redis_url: str) -> None:
    """Both stores satisfy Store, and their async faces AsyncStore."""
    for store in (MemoryStore(), RedisStore(redis_url)):
        assert isinstance(store, Store)
        assert isinstance(store.asynchronous(), AsyncStore)
        store.close()


def test_get_absent_is_none(face: tuple[Face, str]) -> None:
    """A key never written reads as None."""
    f, p = face
    assert f.get(p + "nothing") is None


def test_set_get_roundtrip_bytes_exactly(face: tuple[Face, str]) -> None:
    """Bytes come back exactly, including empty and non-UTF-8 bytes."""
    f, p = face
    for i, value in enumerate([b"", b"\x00\xff\xfe", b"x" * 100_000]):
        f.set(f"{p}k{i}", value, 60.0)
        assert f.get(f"{p}k{i}") == value


def test_set_overwrites(face: tuple[Face, str]) -> None:
    """A second set replaces the first value."""
    f, p = face
    f.set(p + "k", b"1", 60.0)
    f.set(p + "k", b"2", None)
    assert f.get(p + "k") == b"2"


def test_set_voids_the_given_key(face: tuple[Face, str]) -> None:
    """set(..., void=lease) stores the value and deletes the lease in one step."""
    f, p = face
    f.set(p + "lease", b"token", 60.0)
    f.set(p + "k", b"v", 60.0, p + "lease")
    assert f.get(p + "k") == b"v"
    assert f.get(p + "lease") is None


def test_get_many_in_order_with_gaps(face: tuple[Face, str]) -> None:
    """get_many returns values in key order, None for absent keys; [] for no keys."""
    f, p = face
    f.set(p + "a", b"1", 60.0)
    f.set(p + "c", b"3", 60.0)
    assert f.get_many([p + "a", p + "b", p + "c"]) == [b"1", None, b"3"]
    assert f.get_many([]) == []


def test_set_many_with_and_without_void(face: tuple[Face, str]) -> None:
    """set_many writes every item and voids the paired keys."""
    f, p = face
    f.set(p + "la", b"t", 60.0)
    f.set_many([(p + "a", b"1", 60.0), (p + "b", b"2", None)], [p + "la"])
    assert f.get_many([p + "a", p + "b", p + "la"]) == [b"1", b"2", None]


def test_delete_counts_existing(face: tuple[Face, str]) -> None:
    """delete removes the keys and counts those that existed; no keys is 0."""
    f, p = face
    f.set(p + "a", b"1", 60.0)
    f.set(p + "b", b"2", 60.0)
    assert f.delete([p + "a", p + "b", p + "zz"]) == 2
    assert f.get(p + "a") is None
    assert f.delete([]) == 0


def test_add_only_when_absent(face: tuple[Face, str]) -> None:
    """add stores only if the key is absent and says whether it did."""
    f, p = face
    assert f.add(p + "k", b"first", 60.0) is True
    assert f.add(p + "k", b"second", 60.0) is False
    assert f.get(p + "k") == b"first"


def test_fill_needs_the_current_token(face: tuple[Face, str]) -> None:
    """fill writes only while the lease holds its token, and then drops the lease."""
    f, p = face
    assert f.fill(p + "k", b"v0", 60.0, p + "lease", b"tok") is False  # no lease
    assert f.get(p + "k") is None
    f.add(p + "lease", b"tok", 60.0)
    assert f.fill(p + "k", b"v1", 60.0, p + "lease", b"other") is False
    assert f.fill(p + "k", b"v1", 60.0, p + "lease", b"tok") is True
    assert f.get(p + "k") == b"v1"
    assert f.get(p + "lease") is None
    assert f.fill(p + "k", b"v2", 60.0, p + "lease", b"tok") is False  # lease used up
    assert f.get(p + "k") == b"v1"


def test_delete_of_lease_voids_fill(face: tuple[Face, str]) -> None:
    """An invalidation that deletes the lease makes a later fill with its token fail."""
    f, p = face
    f.add(p + "lease", b"tok", 60.0)
    f.delete([p + "k", p + "lease"])
    assert f.fill(p + "k", b"old", 60.0, p + "lease", b"tok") is False
    assert f.get(p + "k") is None


def test_clear_removes_prefix_and_braced_prefix_only(face: tuple[Face, str]) -> None:
    """clear(prefix) deletes keys starting with prefix or '{'+prefix, nothing else."""
    f, p = face
    other = f"other{uuid.uuid4().hex[:8]}:"
    f.set(p + "a", b"1", 60.0)
    f.set("{" + p + "a}:lease", b"1", 60.0)
    f.set(other + "a", b"1", 60.0)
    assert f.clear(p) == 2
    assert f.get(p + "a") is None
    assert f.get(other + "a") == b"1"
    f.clear(other)


def test_ttl_expires_entries(face: tuple[Face, str]) -> None:
    """An entry set with a TTL is gone after it (short real TTL, bounded wait)."""
    f, p = face
    f.set(p + "k", b"v", 0.05)
    f.set(p + "forever", b"v", None)
    deadline = time.monotonic() + 5
    while f.get(p + "k") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.get(p + "k") is None
    assert f.get(p + "forever") == b"v"


def test_add_succeeds_over_an_expired_entry(face: tuple[Face, str]) -> None:
    """An expired lease does not block a new one."""
    f, p = face
    f.add(p + "lease", b"old", 0.02)
    deadline = time.monotonic() + 5
    while f.get(p + "lease") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.add(p + "lease", b"new", 60.0) is True


def test_lease_returns_a_value_that_appeared(face: tuple[Face, str]) -> None:
    """lease() hands back a value filled since the miss instead of taking the lease."""
    f, p = face
    f.set(p + "k", b"filled", 60.0)
    assert f.lease(p + "k", p + "lease", b"tok", 60.0) == b"filled"
    assert f.get(p + "lease") is None


def test_lease_is_taken_once(face: tuple[Face, str]) -> None:
    """lease() on an absent key takes the lease once; a second caller is refused."""
    f, p = face
    assert f.lease(p + "k", p + "lease", b"t1", 60.0) is True
    assert f.lease(p + "k", p + "lease", b"t2", 60.0) is False
    assert f.get(p + "lease") == b"t1"
    assert f.fill(p + "k", b"v", 60.0, p + "lease", b"t1") is True
