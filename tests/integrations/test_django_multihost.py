"""The Django backend on Redis Cluster: LOCATION takes a redis+cluster:// URL as a
Cache does (and redis+sentinel://, through the same store_from_url), every feature of
the backend included: compare-and-set writes, patterns, tags through the decorator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends._topology import LocalCluster

from .conftest import Factory


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("store_kind", ["redis"])
def test_backend_on_a_cluster(make_backend: Factory, cluster: LocalCluster) -> None:
    backend = make_backend(LOCATION=cluster.url)
    assert type(backend.cache.store).__name__ == "ClusterStore"
    backend.set_many({f"user:{i}": i for i in range(20)})
    assert backend.get_many([f"user:{i}" for i in range(20)]) == {
        f"user:{i}": i for i in range(20)
    }
    assert backend.add("n", 1)
    assert not backend.add("n", 2)
    assert backend.incr("n", 5) == 6
    assert backend.touch("n", 100)
    assert backend.delete_pattern("user:1*") == 11  # user:1, user:10 .. user:19
    assert sorted(backend.keys("user:*")) == sorted(f"user:{i}" for i in (0, *range(2, 10)))

    calls = []

    @backend.cache.cached(ttl=60, tags=["org:{org}"])
    def members(org: int) -> list[int]:
        calls.append(org)
        return [org]

    assert members(1) == members(1) == [1]
    backend.cache.invalidate_tags("org:1")
    assert members(1) == [1]
    assert calls == [1, 1]
    assert backend.cache.stats().store_errors == 0


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_async_backend_on_a_cluster(make_backend: Factory, cluster: LocalCluster) -> None:
    backend = make_backend(LOCATION=cluster.url)
    await backend.aset("k", {"v": 1})
    assert await backend.aget("k") == {"v": 1}
    assert await backend.aadd("c", 1)
    assert await backend.aincr("c", 1) == 2
    assert await backend.aget("c") == 2
    await backend.adelete_many(["k", "c"])
    assert await backend.aget_many(["k", "c"]) == {}
    await backend.cache.aclose()
