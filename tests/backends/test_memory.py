"""What only the memory store does: LRU bounds by entries and bytes, sizes, URLs."""

from __future__ import annotations

import threading

import pytest

from cachelayer import Cache, ConfigurationError
from cachelayer.backends import MemoryStore, store_from_url
from cachelayer.backends.memory import ENTRY_OVERHEAD, parse_size
from tests.conftest import FakeClock


def test_evicts_least_recently_used_by_entries() -> None:
    """Past max_entries the least recently used entry goes; a read refreshes recency."""
    store = MemoryStore(max_entries=2)
    store.set("a", b"1", None)
    store.set("b", b"2", None)
    assert store.get("a") == b"1"  # a is now most recent
    store.set("c", b"3", None)
    assert store.get("b") is None
    assert store.get("a") == b"1"
    assert store.get("c") == b"3"
    assert len(store) == 2


def test_bounded_by_bytes() -> None:
    """The bytes held never exceed max_bytes; old entries make room."""
    entry = len("k0") + 1000 + ENTRY_OVERHEAD
    store = MemoryStore(max_entries=1000, max_bytes=entry * 3)
    for i in range(10):
        store.set(f"k{i}", b"x" * 1000, None)
        assert store.bytes_used <= entry * 3
    assert store.get("k9") is not None
    assert store.get("k0") is None


def test_value_larger_than_budget_is_not_kept() -> None:
    """A value that can never fit is dropped, and so is the key's old value."""
    store = MemoryStore(max_bytes=1000)
    store.set("k", b"small", None)
    store.set("k", b"x" * 2000, None)
    assert store.get("k") is None
    assert store.bytes_used == 0


def test_expired_entries_are_never_returned() -> None:
    """Expiry follows the injected clock: returned until the TTL, never after."""
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.set("k", b"v", 5.0)
    clock.advance(4.99)
    assert store.get("k") == b"v"
    assert store.get_many(["k"]) == [b"v"]
    clock.advance(0.02)
    assert store.get("k") is None
    assert store.get_many(["k"]) == [None]
    assert store.delete(["k"]) == 0


def test_threads_hammering_keep_it_consistent() -> None:
    """Concurrent writers and readers keep the byte count and bounds exact."""
    store = MemoryStore(max_entries=50)
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(2000):
            store.set(f"{n}:{i % 80}", b"v" * (i % 7), None)
            store.get(f"{(n + 1) % 4}:{i % 80}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 50
    assert store.bytes_used == sum(
        len(k) + len(v) + ENTRY_OVERHEAD for k, (v, _) in store._data.items()
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("65536", 65536), ("64MB", 64 * 1024**2), ("1GiB", 1024**3), ("10k", 10_000), (7, 7)],
)
def test_parse_size(text: str | int, size: int) -> None:
    """Sizes follow Redis's units (kb = 1024, k = 1000) and accept KiB/MiB/GiB."""
    assert parse_size(text) == size


def test_parse_size_rejects_nonsense() -> None:
    """An unparseable size names itself in the error."""
    with pytest.raises(ConfigurationError, match="'lots'"):
        parse_size("lots")


def test_memory_url_options() -> None:
    """memory://?max_entries=&max_bytes= configures the store."""
    store = store_from_url("memory://?max_entries=10&max_bytes=1MB")
    assert isinstance(store, MemoryStore)
    assert (store.max_entries, store.max_bytes) == (10, 1024**2)
    with pytest.raises(ConfigurationError, match="host"):
        store_from_url("memory://somehost")


def test_default_cache_is_memory() -> None:
    """Cache() with no URL is a working in-process cache."""
    cache = Cache()
    cache.set("k", "v")
    assert cache.get("k") == "v"
    assert isinstance(cache.store, MemoryStore)
