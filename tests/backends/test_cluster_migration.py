"""A Cache on a Redis Cluster whose topology changes under load.

- Slot migration (MOVED / ASK / TRYAGAIN): on the session's cluster (conftest.py), while
  threads (then coroutines) call a tagged cached function and ``get_or_load`` over keys
  whose slots all live on one primary, and a writer bumps rows and invalidates them
  (keys and tags), those slots (the keys', the tag tokens' and a hash-tagged slot holding
  many keys) move to another primary as a resharding moves them.
- Failover: on a private cluster, the primary serving every key is killed (SIGKILL) while
  threads read and a writer writes and invalidates.

Each test asserts no call raised and no value was wrong, and prints its figures
(``pytest tests/backends/test_cluster_migration.py -s``).
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from cachelayer import Cache
from cachelayer.backends._clustermux import ClusterClient
from cachelayer.backends.cluster import ClusterStore

from ._topology import (
    LocalCluster,
    ReadCounts,
    VersionedSource,
    measure_failover,
    slot_of,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("collect_stray_sockets")

#: rows of the decorated function, and tag groups over them
ITEMS, GROUPS = 40, 4
#: rows read with get_or_load under one hash tag: one slot holding many keys, moved in
#: small batches (the window of ASK and TRYAGAIN)
HOT = 60
#: the hit ratio readers must see in the 2 s after the migration ends
MIN_HIT_RATIO_AFTER = 0.5


@dataclass
class Layout:
    """Where a test's keys live: everything it touches is on primary ``source``."""

    namespace: str
    source: int
    target: int
    items: list[int]
    hot_tag: str
    slots: list[int]


def plan(cluster: LocalCluster) -> Layout:
    """A namespace, item rows and a hash tag whose slots all live on one primary; the
    slots to move to another primary (its tag tokens' slot last: the slot of
    ``{<namespace>:v1:}``)."""
    owners = cluster.owners()
    source, target = cluster.primary_indexes()[:2]
    rng = random.Random()
    while True:
        namespace = "mig" + uuid.uuid4().hex[:8]
        if owners[slot_of(namespace + ":v1:")] == source:
            break
    items = [i for i in range(5000) if owners[slot_of(f"{namespace}:v1:item:{i}")] == source]
    hot_tag = next(
        tag for tag in (f"hot{rng.randrange(10**6)}" for _ in range(1000))
        if owners[slot_of(tag)] == source
    )  # fmt: skip
    items = items[:ITEMS]
    slots = {slot_of(f"{namespace}:v1:item:{i}") for i in items} | {slot_of(hot_tag)}
    slots.discard(slot_of(namespace + ":v1:"))
    return Layout(
        namespace, source, target, items, hot_tag, [*sorted(slots), slot_of(namespace + ":v1:")]
    )


def invalidated(cache: Cache, invalidate: Callable[[], object]) -> bool:
    """Run an invalidation; did it reach the store? (one writer: the counter is its own)"""
    before = cache.stats.invalidation_errors
    invalidate()
    return cache.stats.invalidation_errors == before


def report(title: str, counts: ReadCounts, cache: Cache, **figures: object) -> None:
    stats = cache.stats
    extra = " ".join(f"{name}={value}" for name, value in figures.items())
    print(
        f"\n{title}: calls={counts.calls} raised={len(counts.raised)} "
        f"wrong={len(counts.wrong)} stale_after_acked_invalidation={counts.stale_acked} "
        f"stale_after_failed_invalidation={counts.stale_unacked} hits={stats.hits} "
        f"misses={stats.misses} store_errors={stats.store_errors} "
        f"invalidation_errors={stats.invalidation_errors} "
        f"short_circuits={stats.short_circuits} {extra}"
    )


class Load:
    """The load of one migration test: rows, the reads' checks, the hot keys' names."""

    def __init__(self, cache: Cache, layout: Layout) -> None:
        self.cache = cache
        self.layout = layout
        self.items = VersionedSource(layout.items)
        self.hot = VersionedSource(range(HOT))

    def hot_key(self, j: int) -> str:
        return f"{{{self.layout.hot_tag}}}:row:{j}"

    def counts(self) -> ReadCounts:
        """Both sources' reads, summed."""
        a, b = self.items.counts, self.hot.counts
        return ReadCounts(
            a.calls + b.calls,
            a.raised + b.raised,
            a.wrong + b.wrong,
            a.stale_acked + b.stale_acked,
            a.stale_unacked + b.stale_unacked,
            a.stale_at + b.stale_at,
        )

    def hit_ratio(self, seconds: float) -> float:
        """The hit ratio of the reads in the next ``seconds``."""
        before = self.cache.stats.snapshot()
        time.sleep(seconds)
        after = self.cache.stats.snapshot()
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        return hits / max(1, hits + misses)


async def test_moved_updates_one_slot(cluster_url: str) -> None:
    """Both faces take a MOVED as news of its one slot. The sync client has
    reinitialize_steps=0: redis-py's default re-reads the slot map every fifth MOVED,
    and its asyncio client did that by closing every connection, those of calls in
    flight too. The asyncio face (cachelayer's own routing) follows the MOVED and
    updates that slot, nothing else."""
    store = ClusterStore(cluster_url)
    face = store.asynchronous()
    try:
        assert store.client.reinitialize_steps == 0
        await face.set("k", b"v", 60)
        client = face.clients.get()  # type: ignore[attr-defined]
        assert isinstance(client, ClusterClient)
        slot = key_slot(b"k")
        right = client.slots[slot]
        wrong = next(a for a in client.slots if a is not None and a != right)
        before = list(client.slots)
        client.slots[slot] = wrong  # as if the slot had moved away from `right`
        assert await face.get("k") == b"v"  # MOVED from `wrong`, then `right` answers
        assert client.slots == before
        await face.delete(["k"])
    finally:
        await face.close()
        store.close()


@pytest.fixture
def layout(cluster: LocalCluster) -> Layout:
    return plan(cluster)


@pytest.fixture
def cache(cluster: LocalCluster, layout: Layout) -> Iterator[Cache]:
    """A Cache with the default breaker; 0.5 s timeouts (a loaded 2-core machine)."""
    store = ClusterStore(cluster.url, socket_timeout=0.5, connect_timeout=0.5)
    cache = Cache(store, namespace=layout.namespace)
    yield cache
    cache.clear()
    cache.close()


def test_slot_migration_under_threads(cluster: LocalCluster, layout: Layout, cache: Cache) -> None:
    """Slots (keys, tag tokens, a slot of many keys) move to another primary while 8
    threads read and a writer invalidates keys and tags: no call raises, no value is
    wrong or older than an invalidation that succeeded, and hits go on after."""
    load = Load(cache, layout)

    @cache.cached(ttl=60, key="item:{i}", tags=["grp:{g}"])
    def item(i: int, g: int) -> list[int]:
        return load.items.load(i)

    def read_hot(j: int) -> list[int]:
        return cache.get_or_load(
            load.hot_key(j), lambda: load.hot.load(j), ttl=60, tags=[f"hot:{j % GROUPS}"]
        )  # type: ignore[no-any-return]

    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            i = rng.choice(layout.items)
            load.items.read(i, functools.partial(item, i, i % GROUPS))
            j = rng.randrange(HOT)
            load.hot.read(j, functools.partial(read_hot, j))

    def write(source: VersionedSource, rows: list[int], invalidate: Callable[[], object]) -> None:
        source.write(rows, functools.partial(invalidated, cache, invalidate))

    def writer() -> None:
        rng = random.Random(0)
        while not stop.is_set():
            g = rng.randrange(GROUPS)
            roll = rng.random()
            if roll < 0.4:
                i = rng.choice(layout.items)
                write(load.items, [i], functools.partial(item.invalidate, i, g))
            elif roll < 0.6:
                rows = [i for i in layout.items if i % GROUPS == g]
                write(load.items, rows, functools.partial(cache.invalidate_tags, f"grp:{g}"))
            elif roll < 0.8:
                j = rng.randrange(HOT)
                write(load.hot, [j], functools.partial(cache.delete, load.hot_key(j)))
            else:
                rows = [j for j in range(HOT) if j % GROUPS == g]
                write(load.hot, rows, functools.partial(cache.invalidate_tags, f"hot:{g}"))
            time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    try:
        wait_for("warm hits", lambda: cache.stats.hits > 2000, timeout=20)
        before = cache.stats.snapshot()
        started = time.monotonic()
        moved = cluster.migrate(layout.slots, layout.source, layout.target, batch=3, pause=0.01)
        took = time.monotonic() - started
        during = cache.stats.snapshot()
        ratio_after = load.hit_ratio(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    owners = cluster.owners()
    counts = load.counts()
    report(
        "slot migration, 8 threads",
        counts,
        cache,
        slots=len(layout.slots),
        keys_moved=moved,
        migration_s=f"{took:.2f}",
        store_errors_during=during["store_errors"] - before["store_errors"],
        hit_ratio_after=f"{ratio_after:.3f}",
    )
    assert all(owners[slot] == layout.target for slot in layout.slots)
    assert counts.raised == []
    assert counts.wrong == []
    assert counts.stale_acked == 0
    assert ratio_after > MIN_HIT_RATIO_AFTER


async def test_slot_migration_under_coroutines(
    cluster: LocalCluster, layout: Layout, cache: Cache
) -> None:
    """The same on the asyncio face: 100 coroutines read (an async cached function with
    tags, aget_or_load) and one writes and invalidates while the slots move."""
    load = Load(cache, layout)

    @cache.cached(ttl=60, key="item:{i}", tags=["grp:{g}"])
    async def item(i: int, g: int) -> list[int]:
        return load.items.load(i)

    async def read_hot(j: int) -> list[int]:
        return await cache.aget_or_load(  # type: ignore[no-any-return]
            load.hot_key(j), lambda: load.hot.load(j), ttl=60, tags=[f"hot:{j % GROUPS}"]
        )

    stop = asyncio.Event()

    async def aread(
        source: VersionedSource, key: int, call: Callable[[], Awaitable[object]]
    ) -> None:
        floors = source.floors(key)
        try:
            value = await call()
        except BaseException as exc:  # the figure: calls that raised
            source.counts.calls += 1
            source.counts.raised.append(exc)
            return
        source.check(key, floors, value)

    async def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            i = rng.choice(layout.items)
            await aread(load.items, i, functools.partial(item, i, i % GROUPS))
            j = rng.randrange(HOT)
            await aread(load.hot, j, functools.partial(read_hot, j))

    async def awrite(
        source: VersionedSource, rows: list[int], invalidate: Awaitable[object]
    ) -> None:
        done = source.bump(rows)
        before = cache.stats.invalidation_errors  # one writer task: the counter is its own
        await invalidate
        source.invalidated(done, cache.stats.invalidation_errors == before)

    async def writer() -> None:
        rng = random.Random(0)
        while not stop.is_set():
            g = rng.randrange(GROUPS)
            roll = rng.random()
            if roll < 0.4:
                i = rng.choice(layout.items)
                await awrite(load.items, [i], item.ainvalidate(i, g))
            elif roll < 0.6:
                rows = [i for i in layout.items if i % GROUPS == g]
                await awrite(load.items, rows, cache.ainvalidate_tags(f"grp:{g}"))
            elif roll < 0.8:
                j = rng.randrange(HOT)
                await awrite(load.hot, [j], cache.adelete(load.hot_key(j)))
            else:
                rows = [j for j in range(HOT) if j % GROUPS == g]
                await awrite(load.hot, rows, cache.ainvalidate_tags(f"hot:{g}"))
            await asyncio.sleep(0.01)

    async def ratio(seconds: float) -> float:
        before = cache.stats.snapshot()
        await asyncio.sleep(seconds)
        after = cache.stats.snapshot()
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        return hits / max(1, hits + misses)

    tasks = [asyncio.create_task(reader(n)) for n in range(100)]
    tasks.append(asyncio.create_task(writer()))
    try:
        await asyncio.to_thread(wait_for, "warm hits", lambda: cache.stats.hits > 2000, 20)
        before = cache.stats.snapshot()
        started = time.monotonic()
        moved = await asyncio.to_thread(
            cluster.migrate, layout.slots, layout.source, layout.target, 3, 0.01
        )
        took = time.monotonic() - started
        during = cache.stats.snapshot()
        ratio_after = await ratio(2.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    owners = cluster.owners()
    counts = load.counts()
    report(
        "slot migration, 100 coroutines",
        counts,
        cache,
        slots=len(layout.slots),
        keys_moved=moved,
        migration_s=f"{took:.2f}",
        store_errors_during=during["store_errors"] - before["store_errors"],
        hit_ratio_after=f"{ratio_after:.3f}",
    )
    await cache.aclear()
    assert all(owners[slot] == layout.target for slot in layout.slots)
    assert counts.raised == []
    assert counts.wrong == []
    assert counts.stale_acked == 0
    assert ratio_after > MIN_HIT_RATIO_AFTER


def rows_on(cluster: LocalCluster, primary: int, count: int) -> tuple[str, list[int]]:
    """A namespace whose tag tokens, and ``count`` rows ``item:<i>`` of it, all live on
    ``primary``."""
    owners = cluster.owners()
    while True:
        namespace = "fo" + uuid.uuid4().hex[:8]
        if owners[slot_of(namespace + ":v1:")] == primary:
            break
    rows = [i for i in range(5000) if owners[slot_of(f"{namespace}:v1:item:{i}")] == primary]
    return namespace, rows[:count]


def test_failover_under_load() -> None:
    """The primary serving every key (and the tag tokens) is killed (SIGKILL) while 4
    threads read and a writer writes and invalidates: no call raises, no value is wrong,
    the replica is promoted and hits resume on it. Stale reads after the failover are
    counted and printed, not asserted (docs/scaling.md explains them)."""
    cluster = LocalCluster(node_timeout_ms=1000).start()  # private: a node is killed
    try:
        victim = 0  # a seed of the URL too
        replica = cluster.replica_of(victim)
        namespace, rows = rows_on(cluster, victim, 50)
        cache = Cache(ClusterStore(cluster.url), namespace=namespace)  # every default
        figures = measure_failover(
            cache,
            rows,
            kill=lambda: cluster.kill(victim),
            promoted=lambda: cluster.owners(via=replica).count(replica) > 0,
            after=4.0,
        )
        print(f"\ncluster failover under load (4 threads, every default): {figures.line()}")
        cache.clear()
        cache.close()
    finally:
        cluster.close()
    assert figures.raised == 0
    assert figures.wrong == 0
    assert figures.promoted_after is not None, "the replica was not promoted in 30 s"
    assert figures.hits_resumed_after is not None, "no hits on the promoted replica in 30 s"
