"""The Redis Cluster store on a real local cluster: 3 primaries with a replica each.

The cluster is started once for this module from the redis-server binary the suite finds
(``find_server_binary``): six servers in cluster mode, each in a temp dir on free ports,
joined through redis-py alone (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE; no redis-cli),
and stopped by their pids at the end.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from cachelayer import Cache
from cachelayer.backends import Store, store_from_url
from cachelayer.backends.cluster import ClusterStore
from cachelayer.errors import ConfigurationError, StoreBusy
from cachelayer.testing import RedisServer, free_port
from cachelayer.testing_contract import Face, StoreContract

from ._cache_e2e import CacheEndToEnd

PRIMARIES = 3
SLOTS = 16384
HOST = "127.0.0.1"


def _wait(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster did not come up: {what} after {timeout} s")
        time.sleep(0.05)


def form_cluster(servers: list[RedisServer], buses: list[int]) -> None:
    """Join ``servers`` into one cluster: the first PRIMARIES own the slots in equal
    ranges, each of the others replicates one of them."""
    nodes = [redis.Redis(HOST, s.port, socket_timeout=5, decode_responses=True) for s in servers]
    try:
        ids = [node.execute_command("CLUSTER MYID") for node in nodes]
        for server, bus in zip(servers[1:], buses[1:], strict=True):
            nodes[0].execute_command("CLUSTER MEET", HOST, server.port, bus)
        for i, node in enumerate(nodes[:PRIMARIES]):
            first, last = i * SLOTS // PRIMARIES, (i + 1) * SLOTS // PRIMARIES - 1
            node.execute_command("CLUSTER ADDSLOTSRANGE", first, last)

        def all_known() -> bool:
            # (redis-py parses CLUSTER NODES into {address: {"flags": ..., ...}})
            return all(
                sum(
                    "handshake" not in n["flags"]
                    for n in node.execute_command("CLUSTER NODES").values()
                )
                == len(nodes)
                for node in nodes
            )

        _wait("every node knows every other", all_known)
        for i, node in enumerate(nodes[PRIMARIES:]):
            node.execute_command("CLUSTER REPLICATE", ids[i % PRIMARIES])

        def ready() -> bool:
            infos = [node.execute_command("CLUSTER INFO") for node in nodes]
            links = [node.info("replication") for node in nodes[PRIMARIES:]]
            return all(info["cluster_state"] == "ok" for info in infos) and all(
                link.get("master_link_status") == "up" for link in links
            )

        _wait("cluster_state:ok and every replica in sync", ready)
    finally:
        for node in nodes:
            node.close()


@pytest.fixture(autouse=True)
def _collect_stray_sockets() -> Iterator[None]:
    """redis-py's asyncio cluster client leaves some node connections (and, after a full
    pool, ClusterNode objects) of a closed loop to the garbage collector, with a
    ResourceWarning. Collect them here, where they come from, with that warning alone
    silenced, rather than failing whichever test happens to run next. (A leak to chase
    in the async cluster face: noted for issue 12.)"""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """A redis+cluster:// URL of a fresh 6-node cluster (stopped by pid at the end)."""
    buses = [free_port() for _ in range(2 * PRIMARIES)]
    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000")  # fmt: skip
    servers = [RedisServer(args=(*cluster_args, "--cluster-port", str(bus))) for bus in buses]
    try:
        for server in servers:
            server.start()
        form_cluster(servers, buses)
        yield "redis+cluster://" + ",".join(f"{HOST}:{s.port}" for s in servers[:2])
    finally:
        for server in servers:
            server.close()


def _store(url: str) -> ClusterStore:
    # Generous timeouts: these tests pin behaviour, not latency, on a busy machine.
    return ClusterStore(url, socket_timeout=2.0, connect_timeout=2.0)


class TestClusterStore(StoreContract):
    """The contract suite on the cluster, sync and async faces.

    The suite pairs keys like ``<prefix>k`` and ``<prefix>lease`` in its atomic steps,
    where cachelayer pairs a key with its derived key (same slot, docs/keys.md). A
    hash-tagged prefix puts each test's keys in one slot so those pairs are valid on a
    cluster; test_keys_of_every_primary and the Cache tests cover keys of many slots.
    """

    @pytest.fixture
    def store(self, cluster_url: str) -> Iterator[Store]:
        store = _store(cluster_url)
        yield store
        store.close()

    @pytest.fixture(params=["sync", "async"])
    def face(self, request: pytest.FixtureRequest, store: Store) -> Iterator[Face]:
        """Each face, with a hash-tagged key prefix of its own (one slot per test)."""
        face = Face(store, request.param == "async", "{ct" + uuid.uuid4().hex[:10] + "}:")
        yield face
        face.finish()


class TestCacheOnCluster(CacheEndToEnd):
    """A Cache end to end on the cluster."""

    @pytest.fixture
    def make_store(self, cluster_url: str) -> Callable[[], Store]:
        return lambda: _store(cluster_url)


def test_keys_of_every_primary(cluster_url: str) -> None:
    """Many-key calls over keys of every primary: get_many in order, delete counts,
    scan and clear reach every primary."""
    store = _store(cluster_url)
    try:
        client = store.client
        keys = [f"spread{i}:k" for i in range(60)]
        owners = {client.get_node_from_key(key).name for key in keys}
        assert len(owners) == PRIMARIES
        store.set_many([(key, key.encode(), 60.0) for key in keys[::2]])
        assert store.get_many(keys) == [k.encode() if i % 2 == 0 else None for i, k in
                                        enumerate(keys)]  # fmt: skip
        assert set(store.scan("spread*")) == set(keys[::2])
        assert store.delete(keys[:10]) == 5
        assert store.clear("spread") == 25
        assert store.get_many(keys) == [None] * len(keys)
    finally:
        store.close()


def test_urls_build_cluster_stores(cluster_url: str) -> None:
    """redis+cluster:// URLs build a ClusterStore (via a Cache too); bad ones are refused."""
    store = store_from_url(cluster_url)
    assert isinstance(store, ClusterStore)
    store.close()
    cache = Cache(cluster_url + "?socket_timeout=2", namespace="urls")
    cache.set("k", 1, ttl=5)
    assert cache.get("k") == 1
    cache.clear()
    cache.close()
    for bad in (cluster_url + "/3", cluster_url + "?sockettimeout=1", "redis+cluster://"):
        with pytest.raises(ConfigurationError):
            store_from_url(bad)


def test_cluster_down_at_start_fails_open() -> None:
    """A Cache made while no node answers still starts; its calls miss (fail open)."""
    cache = Cache(f"redis+cluster://{HOST}:{free_port()}", namespace="down")
    assert cache.get("k", default="fallback") == "fallback"
    assert cache.get_or_load("k", lambda: 7, ttl=5) == 7
    cache.close()


async def test_ready_clients(cluster_url: str) -> None:
    """A ready RedisCluster (and a builder for the asyncio one) for what a URL cannot say."""
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    host, port = cluster_url.removeprefix("redis+cluster://").split(",")[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    store = ClusterStore(
        client=client,
        async_client=lambda: AsyncCluster(startup_nodes=[AsyncNode(host, int(port))]),
    )
    cache = Cache(store, namespace="ready")
    try:
        cache.set("k", 1, ttl=5)
        assert await cache.aget("k") == 1
        await cache.adelete("k")
        assert cache.get("k") is None
    finally:
        await cache.aclose()
        client.close()
    async_face = ClusterStore(client=client).asynchronous()
    with pytest.raises(ConfigurationError, match="async_client"):
        await async_face.get("k")


async def test_async_pool_full_is_store_busy(cluster_url: str) -> None:
    """On the asyncio face a full connection pool is StoreBusy (this process's
    congestion, a miss that never opens the breaker), not a store failure."""
    store = ClusterStore(cluster_url + "?max_connections=1", socket_timeout=2.0)
    face = store.asynchronous()
    try:
        replies = await asyncio.gather(
            *(face.get("{busy}:k") for _ in range(20)), return_exceptions=True
        )
        assert any(isinstance(reply, StoreBusy) for reply in replies)
        assert all(reply is None or isinstance(reply, StoreBusy) for reply in replies)
    finally:
        await face.close()
        store.close()
