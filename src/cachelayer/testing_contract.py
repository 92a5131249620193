"""The store contract suite, shipped for store authors (docs/stores.md).

Subclass :class:`StoreContract` in a test module, say how to build your store, and run
pytest: every test runs on the store's sync face and on its async face::

    from cachelayer.testing_contract import StoreContract

    class TestMyStore(StoreContract):
        def make_store(self):
            return MyStore(...)

A store that needs fixtures (a server URL, a temporary directory) overrides the
``store`` fixture instead of :meth:`StoreContract.make_store`. Each test works under a
fresh key prefix and clears it afterwards, so the suite can share a server with other
tests. Needs pytest; ``import cachelayer`` never imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .backends.base import AsyncPublisher, AsyncStore, Publisher, Store

__all__ = ["Face", "PublisherContract", "StoreContract"]

#: Keys written by the scan test that spans pages: more than two SCAN calls' worth.
MANY_KEYS = 2500


class Face:
    """One face of a store (sync or async) called with one sync syntax, so each contract
    test is written once: ``face.get(key)`` blocks on the sync face and runs the
    coroutine to completion on a private event loop on the async face.

    Args:
        store: the store under test.
        use_async: drive ``store.asynchronous()`` instead of ``store``.
        prefix: the key prefix this test owns (cleared by :meth:`finish`).
    """

    def __init__(self, store: Store, use_async: bool, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.target: Any = store.asynchronous() if use_async else store
        self.loop = asyncio.new_event_loop() if use_async else None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                assert self.loop is not None
                return self.loop.run_until_complete(result)
            return result

        return call

    def scan(self, pattern: str) -> list[str]:
        """Every key ``scan(pattern)`` yields, in a list (either face)."""
        if self.loop is None:
            return list(self.target.scan(pattern))

        async def collect() -> list[str]:
            return [key async for key in self.target.scan(pattern)]

        return self.loop.run_until_complete(collect())

    def finish(self) -> None:
        """Clear this test's prefix and close the async face in its loop."""
        self.clear(self.prefix)
        if self.loop is not None:
            self.loop.run_until_complete(self.target.close())
            self.loop.close()


def _wait_gone(face: Face, key: str) -> None:
    """Poll until ``key`` reads as absent (5 s at most): real TTLs, bounded waits."""
    deadline = time.monotonic() + 5
    while face.get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.01)


class StoreContract:
    """The behaviour every store must have, as pytest tests; subclass it to run them.

    Override :meth:`make_store`, or the ``store`` fixture when building the store needs
    other fixtures (it yields the store and closes it afterwards).
    """

    def make_store(self) -> Store:
        """Build a fresh store object for one test (it is closed afterwards)."""
        raise NotImplementedError(
            f"{type(self).__name__}: override make_store() or the store fixture"
        )

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        """The store under test, closed after the test."""
        store = self.make_store()
        yield store
        store.close()

    @pytest.fixture(params=["sync", "async"])
    def face(self, request: pytest.FixtureRequest, store: Store) -> Iterator[Face]:
        """Each face of the store, with a key prefix of its own that is cleared afterwards."""
        face = Face(store, request.param == "async", f"ct{uuid.uuid4().hex[:10]}:")
        yield face
        face.finish()

    # -- the protocol ------------------------------------------------------------------

    def test_faces_implement_the_protocols(self, store: Store) -> None:
        """The store satisfies Store, and its async face AsyncStore."""
        assert isinstance(store, Store)
        assert isinstance(store.asynchronous(), AsyncStore)

    # -- get, set, delete ------------------------------------------------------------

    def test_get_absent_is_none(self, face: Face) -> None:
        """A key never written reads as None."""
        assert face.get(face.prefix + "nothing") is None

    def test_set_get_roundtrip_bytes_exactly(self, face: Face) -> None:
        """Bytes come back exactly, including empty and non-UTF-8 bytes."""
        p = face.prefix
        for i, value in enumerate([b"", b"\x00\xff\xfe", b"x" * 100_000]):
            face.set(f"{p}k{i}", value, 60.0)
            assert face.get(f"{p}k{i}") == value

    def test_set_overwrites(self, face: Face) -> None:
        """A second set replaces the first value."""
        p = face.prefix
        face.set(p + "k", b"1", 60.0)
        face.set(p + "k", b"2", None)
        assert face.get(p + "k") == b"2"

    def test_set_voids_the_given_key(self, face: Face) -> None:
        """set(..., void=lease) stores the value and deletes the lease in one step."""
        p = face.prefix
        face.set(p + "lease", b"token", 60.0)
        face.set(p + "k", b"v", 60.0, p + "lease")
        assert face.get(p + "k") == b"v"
        assert face.get(p + "lease") is None

    def test_get_many_in_order_with_gaps(self, face: Face) -> None:
        """get_many returns values in key order, None for absent keys; [] for no keys."""
        p = face.prefix
        face.set(p + "a", b"1", 60.0)
        face.set(p + "c", b"3", 60.0)
        assert face.get_many([p + "a", p + "b", p + "c"]) == [b"1", None, b"3"]
        assert face.get_many([]) == []

    def test_set_many_with_and_without_void(self, face: Face) -> None:
        """set_many writes every item and voids the paired keys."""
        p = face.prefix
        face.set(p + "la", b"t", 60.0)
        face.set_many([(p + "a", b"1", 60.0), (p + "b", b"2", None)], [p + "la"])
        assert face.get_many([p + "a", p + "b", p + "la"]) == [b"1", b"2", None]

    def test_delete_counts_existing(self, face: Face) -> None:
        """delete removes the keys and counts those that existed; no keys is 0."""
        p = face.prefix
        face.set(p + "a", b"1", 60.0)
        face.set(p + "b", b"2", 60.0)
        assert face.delete([p + "a", p + "b", p + "zz"]) == 2
        assert face.get(p + "a") is None
        assert face.delete([]) == 0

    def test_add_only_when_absent(self, face: Face) -> None:
        """add stores only if the key is absent and says whether it did."""
        p = face.prefix
        assert face.add(p + "k", b"first", 60.0) is True
        assert face.add(p + "k", b"second", 60.0) is False
        assert face.get(p + "k") == b"first"

    # -- leases and guarded fills ------------------------------------------------------

    def test_fill_needs_the_current_token(self, face: Face) -> None:
        """fill writes only while the lease holds its token, and then drops the lease."""
        p = face.prefix
        assert face.fill(p + "k", b"v0", 60.0, p + "lease", b"tok") is False  # no lease
        assert face.get(p + "k") is None
        face.add(p + "lease", b"tok", 60.0)
        assert face.fill(p + "k", b"v1", 60.0, p + "lease", b"other") is False
        assert face.fill(p + "k", b"v1", 60.0, p + "lease", b"tok") is True
        assert face.get(p + "k") == b"v1"
        assert face.get(p + "lease") is None
        assert face.fill(p + "k", b"v2", 60.0, p + "lease", b"tok") is False  # used up
        assert face.get(p + "k") == b"v1"

    def test_delete_of_lease_voids_fill(self, face: Face) -> None:
        """An invalidation that deletes the lease makes a later fill with its token fail."""
        p = face.prefix
        face.add(p + "lease", b"tok", 60.0)
        face.delete([p + "k", p + "lease"])
        assert face.fill(p + "k", b"old", 60.0, p + "lease", b"tok") is False
        assert face.get(p + "k") is None

    def test_lease_returns_a_value_that_appeared(self, face: Face) -> None:
        """lease() hands back a value filled since the miss instead of taking the lease."""
        p = face.prefix
        face.set(p + "k", b"filled", 60.0)
        assert face.lease(p + "k", p + "lease", b"tok", 60.0) == b"filled"
        assert face.get(p + "lease") is None

    def test_lease_is_taken_once(self, face: Face) -> None:
        """lease() on an absent key takes the lease once; a second caller is refused."""
        p = face.prefix
        assert face.lease(p + "k", p + "lease", b"t1", 60.0) is True
        assert face.lease(p + "k", p + "lease", b"t2", 60.0) is False
        assert face.get(p + "lease") == b"t1"
        assert face.fill(p + "k", b"v", 60.0, p + "lease", b"t1") is True

    # -- swap: compare-and-set ---------------------------------------------------------

    def test_swap_when_absent(self, face: Face) -> None:
        """swap(expected=None) stores only while the key is absent."""
        p = face.prefix
        assert face.swap(p + "k", None, b"v1", 60.0) is True
        assert face.get(p + "k") == b"v1"
        assert face.swap(p + "k", None, b"v2", 60.0) is False
        assert face.get(p + "k") == b"v1"

    def test_swap_when_expected(self, face: Face) -> None:
        """swap stores when the key holds exactly the expected bytes."""
        p = face.prefix
        face.set(p + "k", b"old", 60.0)
        assert face.swap(p + "k", b"old", b"new", None) is True
        assert face.get(p + "k") == b"new"

    def test_swap_refuses_a_mismatch(self, face: Face) -> None:
        """swap leaves the key (and the void key) alone when it holds other bytes or none."""
        p = face.prefix
        face.set(p + "k", b"theirs", 60.0)
        face.set(p + "lease", b"tok", 60.0)
        assert face.swap(p + "k", b"mine", b"new", 60.0, p + "lease") is False
        assert face.swap(p + "absent", b"mine", b"new", 60.0) is False
        assert face.get(p + "k") == b"theirs"
        assert face.get(p + "lease") == b"tok"
        assert face.get(p + "absent") is None

    def test_swap_deletes_the_void_key(self, face: Face) -> None:
        """A successful swap deletes ``void`` in the same step."""
        p = face.prefix
        face.set(p + "lease", b"tok", 60.0)
        assert face.swap(p + "k", None, b"v", 60.0, p + "lease") is True
        assert face.get(p + "k") == b"v"
        assert face.get(p + "lease") is None

    def test_swap_sets_the_ttl(self, face: Face) -> None:
        """A swapped value lives for the ttl given (short real TTL, bounded wait)."""
        p = face.prefix
        face.set(p + "k", b"old", None)
        assert face.swap(p + "k", b"old", b"new", 0.05) is True
        _wait_gone(face, p + "k")
        assert face.get(p + "k") is None

    def test_swap_keep_ttl_keeps_the_expiry(self, face: Face) -> None:
        """keep_ttl keeps the key's expiry (none stays none) instead of using ttl."""
        p = face.prefix
        face.set(p + "short", b"1", 0.2)
        face.set(p + "forever", b"1", None)
        assert face.swap(p + "short", b"1", b"2", None, None, True) is True
        assert face.swap(p + "forever", b"1", b"2", 0.05, None, True) is True
        assert face.get(p + "short") == b"2"
        _wait_gone(face, p + "short")
        assert face.get(p + "short") is None
        assert face.get(p + "forever") == b"2"

    def test_swap_keep_ttl_on_an_absent_key_never_expires(self, face: Face) -> None:
        """keep_ttl on an absent key (expected None) stores the value without an expiry."""
        p = face.prefix
        assert face.swap(p + "k", None, b"v", 0.05, None, True) is True
        face.set(p + "probe", b"x", 0.05)
        _wait_gone(face, p + "probe")
        assert face.get(p + "k") == b"v"

    # -- delete_if: a token-checked release --------------------------------------------

    def test_delete_if_needs_the_token(self, face: Face) -> None:
        """delete_if deletes only while the key holds exactly the token."""
        p = face.prefix
        face.set(p + "lock", b"mine", 60.0)
        assert face.delete_if(p + "lock", b"theirs") is False
        assert face.get(p + "lock") == b"mine"
        assert face.delete_if(p + "lock", b"mine") is True
        assert face.get(p + "lock") is None
        assert face.delete_if(p + "lock", b"mine") is False

    # -- scan --------------------------------------------------------------------------

    def test_scan_glob_semantics(self, face: Face) -> None:
        """scan matches Redis globs: *, ?, classes, ranges, negation and escapes."""
        p = face.prefix
        names = ["hello", "hallo", "hxllo", "hllo", "heeello", "a*b", "a?b", "a[b", "a\\b", "axb"]
        for name in names:
            face.set(p + name, b"1", 60.0)

        def matched(glob: str) -> set[str]:
            return {key.removeprefix(p) for key in face.scan(p + glob)}

        assert matched("*") == set(names)
        assert matched("h?llo") == {"hello", "hallo", "hxllo"}
        assert matched("h*llo") == {"hello", "hallo", "hxllo", "hllo", "heeello"}
        assert matched("h[ae]llo") == {"hello", "hallo"}
        assert matched("h[^e]llo") == {"hallo", "hxllo"}
        assert matched("h[a-b]llo") == {"hallo"}
        assert matched("h[b-a]llo") == {"hallo"}  # a reversed range is the same range
        assert matched("a\\*b") == {"a*b"}
        assert matched("a\\?b") == {"a?b"}
        assert matched("a\\[b") == {"a[b"}
        assert matched("a\\\\b") == {"a\\b"}
        assert matched("a[\\*]b") == {"a*b"}
        assert matched("a?b") == {"a*b", "a?b", "a[b", "a\\b", "axb"}
        assert matched("nothing*") == set()

    def test_scan_skips_expired_and_deleted_keys(self, face: Face) -> None:
        """Keys that expired or were deleted are not returned."""
        p = face.prefix
        face.set(p + "live", b"1", 60.0)
        face.set(p + "gone", b"1", 60.0)
        face.set(p + "expiring", b"1", 0.05)
        face.delete([p + "gone"])
        _wait_gone(face, p + "expiring")
        assert set(face.scan(p + "*")) == {p + "live"}

    def test_scan_returns_every_key_across_pages(self, face: Face) -> None:
        """scan walks the whole keyspace, however many pages it takes."""
        p = face.prefix
        keys = [f"{p}many:{i}" for i in range(MANY_KEYS)]
        face.set_many([(key, b"v", 60.0) for key in keys])
        found = face.scan(p + "many:*")
        assert set(found) == set(keys)
        assert all(isinstance(key, str) for key in found)

    # -- clear, TTLs -------------------------------------------------------------------

    def test_clear_removes_prefix_and_braced_prefix_only(self, face: Face) -> None:
        """clear(prefix) deletes keys starting with prefix or '{'+prefix, nothing else."""
        p = face.prefix
        other = f"other{uuid.uuid4().hex[:8]}:"
        face.set(p + "a", b"1", 60.0)
        face.set("{" + p + "a}:lease", b"1", 60.0)
        face.set(other + "a", b"1", 60.0)
        try:
            assert face.clear(p) == 2
            assert face.get(p + "a") is None
            assert face.get(other + "a") == b"1"
        finally:
            face.clear(other)

    def test_ttl_expires_entries(self, face: Face) -> None:
        """An entry set with a TTL is gone after it (short real TTL, bounded wait)."""
        p = face.prefix
        face.set(p + "k", b"v", 0.05)
        face.set(p + "forever", b"v", None)
        _wait_gone(face, p + "k")
        assert face.get(p + "k") is None
        assert face.get(p + "forever") == b"v"

    def test_add_succeeds_over_an_expired_entry(self, face: Face) -> None:
        """An expired lease does not block a new one."""
        p = face.prefix
        face.add(p + "lease", b"old", 0.02)
        _wait_gone(face, p + "lease")
        assert face.add(p + "lease", b"new", 60.0) is True


class PublisherContract:
    """What a store that carries local tiers must do (:class:`~cachelayer.backends.
    Publisher`): subclass it next to :class:`StoreContract` with the same ``store``
    fixture. Each test uses a channel of its own."""

    @pytest.fixture
    def channel(self) -> str:
        """A fresh channel name."""
        return f"ct{uuid.uuid4().hex[:10]}:purge"

    def test_faces_implement_the_publisher_protocols(self, store: Store) -> None:
        """The sync face publishes and subscribes; the async face publishes."""
        assert isinstance(store, Publisher)
        assert isinstance(store.asynchronous(), AsyncPublisher)

    @pytest.mark.parametrize("use_async", [False, True])
    def test_published_messages_arrive_in_order(
        self, store: Store, channel: str, use_async: bool
    ) -> None:
        """A confirmed subscription receives every later message, in order, exactly;
        ``publish`` counts the subscriber (sync and async faces)."""
        assert isinstance(store, Publisher)
        subscription = store.subscribe(channel)
        face = Face(store, use_async, channel)
        try:
            assert subscription.receive(0.01) is None
            assert face.publish(channel, b"\x00one") == 1
            assert face.publish(channel, b"two") == 1
            got = [subscription.receive(2.0), subscription.receive(2.0)]
            assert got == [b"\x00one", b"two"]
            assert face.publish(channel + "x", b"elsewhere") == 0
            assert subscription.receive(0.05) is None
        finally:
            subscription.close()
            face.finish()

    def test_a_closed_subscription_is_not_counted(self, store: Store, channel: str) -> None:
        """After ``close`` the subscriber no longer receives (publish counts 0)."""
        assert isinstance(store, Publisher)
        subscription = store.subscribe(channel)
        subscription.close()
        deadline = time.monotonic() + 5
        while store.publish(channel, b"x") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.publish(channel, b"x") == 0
